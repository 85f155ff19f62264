"""``CompositeScorer``: the configured scorer components, loaded once, scoring a samples table.

Reward components are combined into ``reward`` (see ``nashflow.scorers``); a preference
component's K×K matrices are checked (square, finite, P + Pᵀ = 1) and stored per sample row.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nashflow.errors import DataError
from nashflow.pairs import mean_win_prob
from nashflow.scorers.base import PreferenceResult, Scorer

if TYPE_CHECKING:
    from nashflow.scorers import ComponentConfig, ScorerConfig


def _check_matrix(P: np.ndarray, k: int, where: str) -> None:
    if P.shape != (k, k) or not np.isfinite(P).all():
        raise DataError(f"preference matrix for {where} has shape {P.shape} or non-finite values (expected {k}×{k})")
    if not np.allclose(P + P.T, 1.0, atol=1e-6):
        raise DataError(f"preference matrix for {where} violates P + Pᵀ = 1")


class CompositeScorer:
    """Loads every component once; ``score_table`` scores a whole samples table in batches."""

    def __init__(self, cfg: ScorerConfig, base_model_dir: str | None = None, compute: dict | None = None):
        """``compute``: the scoring stage's settings (:func:`nashflow.precision.stage_compute`) for
        model-backed components."""
        from nashflow.scorers import SCORERS  # the registry, defined where this module is imported

        self.cfg = cfg
        self.parts: list[tuple[ComponentConfig, Scorer]] = []
        for c in cfg.components:
            cls = SCORERS[c.type]
            params = inspect.signature(cls.__init__).parameters
            extra = {k: v for k, v in (("base_model_dir", base_model_dir), ("component", c.label),
                                       ("compute", compute)) if k in params}
            self.parts.append((c, cls(**c.args, **extra)))

    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def names(self) -> list[str]:
        return self.cfg.objective_names()

    def objective_values(self, messages, responses, keys: pd.DataFrame) -> np.ndarray:
        """[N, M] per-objective rewards, z-normalised where configured; non-finite values are errors."""
        cols = []
        for c, scorer in self.parts:
            vals = np.asarray(scorer.score(messages, responses), dtype=np.float64).reshape(len(responses), -1)
            bad = ~np.isfinite(vals)
            if bad.any():
                i, j = map(int, np.argwhere(bad)[0])
                raise DataError(
                    f"scorer '{c.objectives[j]}' returned {vals[i, j]} for prompt_id={keys.prompt_id.iloc[i]} "
                    f"sample_index={keys.sample_index.iloc[i]}; rewards must be finite numbers"
                )
            if c.normalize is not None:
                vals = (vals - c.vector("normalize.mean", c.normalize["mean"])) / c.vector("normalize.std",
                                                                                          c.normalize["std"])
            cols.append(vals)
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(responses), 0))

    def score_table(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Scores for a samples table: prompt_id, sample_index, reward, reward_<objective>
        (rewards) or reward, preference, [score_table] (a preference scorer).

        With a ``weights`` column (MOODPO) the reward is Σ_m w_m·r_m with the row's weights, and
        scorers see ``raw_messages`` (the prompt without the weight instruction).
        """
        col = "raw_messages" if "raw_messages" in samples.columns else "messages"
        out = pd.DataFrame({"prompt_id": samples["prompt_id"].to_numpy(),
                            "sample_index": samples["sample_index"].to_numpy()})
        if self.kind == "preference":
            if "weights" in samples.columns:
                raise DataError("MOODPO weight-conditioned samples need reward scorers, not a preference scorer")
            return self._preference_table(samples, col)
        msgs = [list(m) for m in samples[col]]
        values = self.objective_values(msgs, list(samples["response"]), out)
        names = self.names
        for k, name in enumerate(names):
            out[f"reward_{name}"] = values[:, k]
        if "weights" in samples.columns:
            w = np.array([list(x) for x in samples["weights"]], dtype=np.float64)
            if w.shape[1] != len(names):
                raise DataError(f"samples carry {w.shape[1]} objective weights for {len(names)} objectives")
        else:
            w = np.concatenate([c.vector("weight", c.weight) for c, _ in self.parts])[None, :]
        total = (w * values).sum(axis=1)
        if self.cfg.missing_eos_penalty:
            total = total - self.cfg.missing_eos_penalty * (samples["finish_reason"].to_numpy() != "stop")
        out["reward"] = total
        return out

    def _preference_table(self, samples: pd.DataFrame, col: str) -> pd.DataFrame:
        c, scorer = self.parts[0]
        ordered = samples.sort_values(["prompt_id", "sample_index"])
        groups, keys = [], []
        for pid, g in ordered.groupby("prompt_id", sort=True):
            groups.append((list(g[col].iloc[0]), list(g["response"])))
            keys.append(g[["prompt_id", "sample_index"]])
        results: list[PreferenceResult] = scorer.preferences(groups)
        rows = []
        for key, res in zip(keys, results):
            k = len(key)
            _check_matrix(res.P, k, f"prompt_id={key.prompt_id.iloc[0]}")
            reward = res.scores if res.scores is not None else mean_win_prob(res.P)
            for pos in range(k):
                row = {"prompt_id": key.prompt_id.iloc[pos], "sample_index": int(key.sample_index.iloc[pos]),
                       "reward": float(reward[pos]), "preference": res.P.tolist()}
                if res.table is not None:
                    row["score_table"] = res.table.tolist()
                rows.append(row)
        return pd.DataFrame(rows)

    def compare(self, messages, a, b) -> np.ndarray:
        """P(a ≻ b) per row, from the preference scorer (evaluation)."""
        return self.parts[0][1].compare(messages, a, b)


__all__ = ["CompositeScorer"]
