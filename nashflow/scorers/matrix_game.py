"""A matrix-game preference scorer: responses are actions of a game with a known A×A preference matrix.

The action rule reads a response's first token (with the tokenizer of ``model``, by default the
workflow's base model, i.e. the policy's own). The actions' tokens are the vocabulary's tokens whose
text matches the regular expression ``tokens``, in token-id order; the k-th of them plays action
k mod A. A token qualifies only if it is not special, its text has no surrounding whitespace and it
encodes back to itself alone (so that the text of a sampled token gives that token back). A
response whose first token is none of these, or an empty one, plays "no action", which loses to
every action and ties with itself (``nashflow.game.with_no_action``).

Between the K samples of a prompt, P[i][j] = P(action_i ≻ action_j), or with ``outcome: sample``
one Bernoulli draw of it per pair (a binary preference label, as the INPO and COMAL analyses
assume), seeded by ``seed``, the prompt and the responses; same actions always tie at ½. Held-out
evaluation (``compare``) always uses the probabilities.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from nashflow.errors import ConfigError, DataError
from nashflow.game import check_preference_matrix, with_no_action
from nashflow.scorers.base import PreferenceResult, Scorer, check_model_dir, resolve_model_path

DEFAULT_TOKENS = ".+"
NO_ACTION = -1


def action_map(tokenizer, pattern: str, n_actions: int) -> np.ndarray:
    """Action of every token id (``NO_ACTION`` for tokens that play none), for a ``tokenizers.Tokenizer``.

    The qualifying tokens whose text matches ``pattern`` (``re.search``), in id order: the k-th plays
    action k mod ``n_actions``.
    """
    rx = re.compile(pattern)
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out = np.full(tokenizer.get_vocab_size(with_added_tokens=True), NO_ACTION, dtype=np.int64)
    k = 0
    for i in range(len(out)):
        if i in special:
            continue
        text = tokenizer.decode([i], skip_special_tokens=False)
        if not text or text != text.strip() or not rx.search(text):
            continue
        if tokenizer.encode(text, add_special_tokens=False).ids != [i]:
            continue
        out[i] = k % n_actions
        k += 1
    return out


def missing_actions(actions: np.ndarray, n_actions: int) -> list[int]:
    """Actions that no token plays."""
    return sorted(set(range(n_actions)) - set(int(a) for a in actions if a != NO_ACTION))


def check_args(matrix, tokens: str = DEFAULT_TOKENS, outcome: str = "probability") -> np.ndarray:
    """The scorer's arguments as the config gives them; ValueError names the argument."""
    try:
        P = check_preference_matrix(matrix)
    except ValueError as err:
        raise ValueError(f"matrix: {err}") from None
    try:
        re.compile(tokens)
    except (re.error, TypeError) as err:
        raise ValueError(f"tokens: {tokens!r} is not a regular expression ({err})") from None
    if outcome not in ("probability", "sample"):
        raise ValueError(f"outcome: must be probability or sample, got {outcome!r}")
    return P


@lru_cache(maxsize=4)
def fast_tokenizer(path: str):
    """The ``tokenizers.Tokenizer`` of a model folder (its tokenizer.json)."""
    from tokenizers import Tokenizer

    f = Path(path) / "tokenizer.json"
    if not f.exists():
        raise DataError(f"scorer 'matrix_game': {path} has no tokenizer.json (a fast tokenizer is needed to read "
                        "the first response token)")
    return Tokenizer.from_file(str(f))


class MatrixGameScorer(Scorer):
    """K×K preferences from the actions of the responses in the game ``matrix`` (see the module docstring)."""

    name = "matrix_game"
    kind = "preference"

    def __init__(self, matrix, tokens: str = DEFAULT_TOKENS, outcome: str = "probability", seed: int = 0,
                 model: str = "base", base_model_dir: str | None = None, component: str = "matrix_game"):
        try:
            self.P = check_args(matrix, tokens, outcome)
        except ValueError as err:
            raise ConfigError(f"scorer '{component}': {err}") from None
        self.n_actions = self.P.shape[0]
        self.P_ext = with_no_action(self.P)
        self.outcome, self.seed = outcome, int(seed)
        path = str(check_model_dir(resolve_model_path(model, base_model_dir, component), component))
        self.tokenizer = fast_tokenizer(path)
        self.actions = action_map(self.tokenizer, tokens, self.n_actions)
        missing = missing_actions(self.actions, self.n_actions)
        if missing:
            raise ConfigError(f"scorer '{component}': tokens {tokens!r} gives no token of {path} to action(s) "
                              f"{missing}")

    @classmethod
    def validate_args(cls, matrix=None, tokens: str = DEFAULT_TOKENS, outcome: str = "probability", **_):
        """Before any job runs (``nashflow.config.check_matrix_game`` also checks the action rule)."""
        try:
            check_args(matrix, tokens, outcome)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def action_of(self, responses: Sequence[str]) -> np.ndarray:
        """The action of each response (``NO_ACTION`` = A when indexing ``P_ext``)."""
        out = np.full(len(responses), self.n_actions, dtype=np.int64)
        for n, text in enumerate(responses):
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids if text else []
            if ids and self.actions[ids[0]] != NO_ACTION:
                out[n] = self.actions[ids[0]]
        return out

    def _draws(self, messages, responses) -> np.random.Generator:
        key = json.dumps([self.seed, list(messages), list(responses)], sort_keys=True, default=str)
        return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))

    def preferences(self, groups):
        out = []
        for messages, responses in groups:
            a = self.action_of(responses)
            P = self.P_ext[np.ix_(a, a)].copy()
            if self.outcome == "sample":
                rng = self._draws(messages, responses)
                k = len(a)
                for i in range(k):
                    for j in range(i + 1, k):
                        if a[i] != a[j]:
                            P[i, j] = float(rng.random() < P[i, j])
                            P[j, i] = 1.0 - P[i, j]
            out.append(PreferenceResult(P=P))
        return out

    def compare(self, messages, a, b) -> np.ndarray:
        """P(a_n ≻ b_n) from the matrix (never sampled: evaluation is exact)."""
        return self.P_ext[self.action_of(a), self.action_of(b)]


__all__ = ["MatrixGameScorer", "action_map", "fast_tokenizer", "missing_actions", "check_args", "DEFAULT_TOKENS",
           "NO_ACTION"]
