"""Scorers: rewards, per-objective rewards, or pairwise preference matrices for sampled responses.

``SCORERS`` maps a config ``type`` to its class, so new scorers plug in by name (see
``nashflow.scorers.base`` for the interface). The config lists components:

* reward components (``sentiment``, ``length``, ``regex``, ``python``, ``reward_model``) are
  combined into ``reward`` = Σ_m w_m · (r_m − μ_m)/σ_m over objectives m (z-normalisation only
  where ``normalize`` is given), each kept as a ``reward_<objective>`` column; MOODPO rows carry
  their own weights. A ``reward_model`` with ``heads`` contributes one objective per head.
* a preference component (``judge``, ``gpm``, ``pairrm``) stands alone: the score table gets the
  prompt's K×K matrix in ``preference`` (row-major, repeated on the prompt's rows), GPM's raw
  table in ``score_table``, and as ``reward`` the candidate's score (PairRM's s_i, else its mean
  win probability against the other samples).

Scalar rewards become P = σ(r_i − r_j) where a builder needs preferences (``nashflow.pairs``).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nashflow.errors import ConfigError, DataError
from nashflow.scorers.base import BASE_MODEL_ALIAS, PreferenceResult, Scorer
from nashflow.scorers.gpm import GPMScorer
from nashflow.scorers.judge import JudgeScorer
from nashflow.scorers.matrix_game import MatrixGameScorer
from nashflow.scorers.pairrm import PairRMScorer
from nashflow.scorers.programmatic import LengthScorer, PythonScorer, RegexScorer, SentimentScorer
from nashflow.scorers.reward_model import RewardModelScorer

log = logging.getLogger(__name__)

SCORERS: dict[str, type] = {
    "sentiment": SentimentScorer,
    "length": LengthScorer,
    "regex": RegexScorer,
    "python": PythonScorer,
    "reward_model": RewardModelScorer,
    "judge": JudgeScorer,
    "gpm": GPMScorer,
    "pairrm": PairRMScorer,
    "matrix_game": MatrixGameScorer,
}
#: keywords the composite passes to model-backed scorers itself
INJECTED = ("base_model_dir", "component", "compute")


@dataclass(frozen=True)
class ComponentConfig:
    type: str
    weight: float | list[float] = 1.0
    name: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    normalize: dict[str, Any] | None = None  # {mean: μ, std: σ}, numbers or one per head

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def kind(self) -> str:
        if SCORERS[self.type].kind == "preference":
            return "preference"
        return "objectives" if self.args.get("heads") else "reward"

    @property
    def objectives(self) -> list[str]:
        heads = self.args.get("heads")
        return list(heads) if heads else [self.label]

    def vector(self, key: str, value) -> np.ndarray:
        n = len(self.objectives)
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if len(v) not in (1, n):
            raise ConfigError(f"scorer component '{self.label}': {key} has {len(v)} values for {n} objectives")
        return np.broadcast_to(v, (n,)).copy()


@dataclass(frozen=True)
class ScorerConfig:
    """Scorer components, minus ``missing_eos_penalty`` for truncated responses (rewards only)."""

    components: tuple[ComponentConfig, ...] = (ComponentConfig("sentiment"),)
    missing_eos_penalty: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "ScorerConfig":
        comps = tuple(ComponentConfig(**c) for c in d.get("components", [{"type": "sentiment"}]))
        if not comps:
            raise ConfigError("scorer.components must list at least one scorer")
        for n, c in enumerate(comps):
            key = f"scorer.components[{n}]"
            if c.type not in SCORERS:
                raise ConfigError(f"{key}.type: unknown scorer '{c.type}'; known: {', '.join(SCORERS)}")
            _check_args(SCORERS[c.type], c.args, key)
            c.vector("weight", c.weight)
            if c.normalize is not None:
                if set(c.normalize) != {"mean", "std"}:
                    raise ConfigError(f"{key}.normalize needs exactly the keys mean and std")
                if (c.vector("normalize.std", c.normalize["std"]) <= 0).any():
                    raise ConfigError(f"{key}.normalize.std must be > 0")
        labels = [o for c in comps for o in c.objectives]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"scorer.components: objective names must be unique, got {labels}; set 'name'")
        if any(c.kind == "preference" for c in comps):
            if len(comps) > 1:
                raise ConfigError("scorer.components: a preference scorer (judge, gpm, pairrm) must be the only "
                                  "component; its K×K matrix cannot be summed with rewards")
            if d.get("missing_eos_penalty"):
                raise ConfigError("scorer.missing_eos_penalty applies to rewards, not to a preference scorer")
        return cls(components=comps, missing_eos_penalty=float(d.get("missing_eos_penalty", 0.0)))

    @property
    def kind(self) -> str:
        return "preference" if self.components[0].kind == "preference" else "reward"

    def objective_names(self) -> list[str]:
        return [o for c in self.components for o in c.objectives]

    def uses_base_model(self) -> bool:
        """Whether a component reads the workflow's base model (``model: base``), a DAG input then."""
        for c in self.components:
            params = inspect.signature(SCORERS[c.type].__init__).parameters
            keys = ["model"] + (["template_model"] if c.args.get("prompt_format") == "chat" else [])
            for k in keys:
                if k in params and c.args.get(k, params[k].default) == BASE_MODEL_ALIAS:
                    return True
        return False


def _check_args(cls: type, args: dict, key: str) -> None:
    """Unknown or missing arguments are config errors, found before any model loads."""
    if not isinstance(args, dict):
        raise ConfigError(f"{key}.args must be a mapping")
    bad = [a for a in args if a in INJECTED]
    if bad:
        raise ConfigError(f"{key}.args: '{bad[0]}' is set by nashflow, not in the config")
    sig = inspect.signature(cls.__init__)
    try:
        sig.bind(None, **args)
    except TypeError as err:
        known = [p for p in sig.parameters if p not in ("self", *INJECTED)]
        raise ConfigError(f"{key}.args: {err} (arguments of '{cls.name}': {', '.join(known) or 'none'})") from err
    if hasattr(cls, "validate_args"):
        try:
            cls.validate_args(**args)
        except ConfigError as err:
            raise ConfigError(f"{key}.args: {err}") from err


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
        from nashflow.pairs import mean_win_prob

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


__all__ = ["SCORERS", "Scorer", "PreferenceResult", "ComponentConfig", "ScorerConfig", "CompositeScorer"]
