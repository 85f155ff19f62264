"""Scorers that need no model download: lexicon sentiment, length, regex/format checks and a
user's Python function (``module:function``, named in the config, never in data)."""

from __future__ import annotations

import importlib
import re
from typing import Callable

import numpy as np

from nashflow.errors import ConfigError
from nashflow.scorers.base import Scorer


class SentimentScorer(Scorer):
    """VADER compound sentiment of the response, in [-1, 1] (lexicon based, no download)."""

    name = "sentiment"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, messages, responses):
        return np.array([self._analyzer.polarity_scores(r)["compound"] for r in responses], dtype=np.float64)


class LengthScorer(Scorer):
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


_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


class RegexScorer(Scorer):
    """Format check: ``match`` if the pattern is found in the response (``mode: search``) or the
    whole response matches it (``mode: fullmatch``), else ``miss``. With ``count: true`` the reward
    is ``match`` × the number of non-overlapping occurrences (e.g. bullet points)."""

    name = "regex"

    def __init__(self, pattern: str, mode: str = "search", match: float = 1.0, miss: float = 0.0,
                 count: bool = False, flags: list[str] | None = None):
        if mode not in ("search", "fullmatch"):
            raise ConfigError(f"scorer regex: 'mode' must be search or fullmatch, got {mode!r}")
        unknown = [f for f in flags or [] if f not in _FLAGS]
        if unknown:
            raise ConfigError(f"scorer regex: unknown flag {unknown[0]!r}; known: {', '.join(_FLAGS)}")
        try:
            self.regex = re.compile(pattern, sum(_FLAGS[f] for f in flags or []))
        except re.error as err:
            raise ConfigError(f"scorer regex: invalid pattern {pattern!r}: {err}") from err
        self.mode, self.match, self.miss, self.count = mode, float(match), float(miss), bool(count)

    def score(self, messages, responses):
        if self.count:
            return np.array([self.match * len(self.regex.findall(r)) for r in responses], dtype=np.float64)
        test = self.regex.search if self.mode == "search" else self.regex.fullmatch
        return np.array([self.match if test(r) else self.miss for r in responses], dtype=np.float64)


class PythonScorer(Scorer):
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
