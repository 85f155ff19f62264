"""Scorers: turn (prompt messages, response) into rewards.

A scorer is a callable object with ``name`` and ``score(messages, responses) -> np.ndarray``
(one float per response). ``SCORERS`` maps a config ``type`` to its class, so new scorers plug
in by name. The score stage combines components with weights into a ``reward`` column and
keeps each component as ``reward_<name>``.

Scorers that need no download ship here: a lexicon sentiment scorer (VADER), a length term,
and a user's Python function (``module:function``, named in the config, never in data).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from nashflow.errors import ConfigError, DataError


class SentimentScorer:
    """VADER compound sentiment of the response, in [-1, 1] (lexicon based, no download)."""

    name = "sentiment"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, messages: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(r)["compound"] for r in responses], dtype=np.float64)


class LengthScorer:
    """Response length in words divided by ``scale`` (optionally capped at ``cap`` words)."""

    name = "length"

    def __init__(self, scale: float = 100.0, cap: int | None = None):
        if scale <= 0:
            raise ConfigError("scorer length: 'scale' must be > 0")
        self.scale, self.cap = float(scale), cap

    def score(self, messages, responses):
        n = np.array([len(r.split()) for r in responses], dtype=np.float64)
        if self.cap is not None:
            n = np.minimum(n, self.cap)
        return n / self.scale


class PythonScorer:
    """A user's function ``module:function`` taking (messages, response) and returning a float."""

    name = "python"

    def __init__(self, function: str):
        if not isinstance(function, str) or ":" not in function:
            raise ConfigError(f"scorer python: 'function' must look like 'module:function', got {function!r}")
        mod_name, fn_name = function.split(":", 1)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"scorer python: cannot import {function!r}: {err}") from err
        self.fn: Callable[[list[dict], str], float] = fn
        self.name = fn_name

    def score(self, messages, responses):
        return np.array([float(self.fn(list(m), r)) for m, r in zip(messages, responses)], dtype=np.float64)


SCORERS: dict[str, type] = {
    "sentiment": SentimentScorer,
    "length": LengthScorer,
    "python": PythonScorer,
}


@dataclass(frozen=True)
class ComponentConfig:
    type: str
    weight: float = 1.0
    name: str | None = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScorerConfig:
    """A weighted sum of scorer components, minus ``missing_eos_penalty`` for truncated responses."""

    components: tuple[ComponentConfig, ...] = (ComponentConfig("sentiment"),)
    missing_eos_penalty: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "ScorerConfig":
        comps = tuple(ComponentConfig(**c) for c in d.get("components", [{"type": "sentiment"}]))
        if not comps:
            raise ConfigError("scorer.components must list at least one scorer")
        for c in comps:
            if c.type not in SCORERS:
                raise ConfigError(f"scorer.components: unknown type '{c.type}'; known: {', '.join(SCORERS)}")
        return cls(components=comps, missing_eos_penalty=float(d.get("missing_eos_penalty", 0.0)))


class CompositeScorer:
    def __init__(self, cfg: ScorerConfig):
        self.cfg = cfg
        self.parts = []
        for c in cfg.components:
            scorer = SCORERS[c.type](**c.args)
            self.parts.append((c.name or scorer.name, c.weight, scorer))

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.parts]

    def score_table(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Scores for a samples table: prompt_id, sample_index, reward, reward_<component>.

        With a ``weights`` column (MOODPO) the reward is Σ_k w_k·r_k with the row's weights, and
        scorers see ``raw_messages`` (the prompt without the weight instruction).
        """
        col = "raw_messages" if "raw_messages" in samples.columns else "messages"
        msgs = [list(m) for m in samples[col]]
        resp = list(samples["response"])
        out = pd.DataFrame({"prompt_id": samples["prompt_id"].to_numpy(),
                            "sample_index": samples["sample_index"].to_numpy()})
        total = np.zeros(len(samples))
        row_w = np.array([list(w) for w in samples["weights"]], dtype=np.float64) \
            if "weights" in samples.columns else None
        if row_w is not None and row_w.shape[1] != len(self.parts):
            raise DataError(f"samples carry {row_w.shape[1]} objective weights for {len(self.parts)} scorer components")
        for k, (name, weight, scorer) in enumerate(self.parts):
            vals = np.asarray(scorer.score(msgs, resp), dtype=np.float64)
            bad = ~np.isfinite(vals)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"scorer '{name}' returned {vals[i]} for prompt_id={out.prompt_id[i]} "
                    f"sample_index={out.sample_index[i]}; rewards must be finite numbers"
                )
            out[f"reward_{name}"] = vals
            total += (row_w[:, k] if row_w is not None else weight) * vals
        if self.cfg.missing_eos_penalty:
            total -= self.cfg.missing_eos_penalty * (samples["finish_reason"].to_numpy() != "stop")
        out["reward"] = total
        assert all(math.isfinite(x) for x in total)
        return out
