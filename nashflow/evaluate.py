"""Held-out evaluation: mean reward, win rates against the base and the previous iterate, length.

Responses of different checkpoints are compared per prompt (joined by ``prompt_id``). With a
reward scorer a higher reward wins (1), a tie counts ½. With a preference scorer (judge, GPM,
PairRM) the outcome is the scorer's P(current ≻ other), both positions judged, and there is no
mean reward. Intervals are percentile bootstraps over prompts.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from nashflow.errors import DataError


def win_rate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-prompt outcome of a vs b: 1 win, ½ tie, 0 loss."""
    return (a > b).astype(np.float64) + 0.5 * (a == b)


def bootstrap_ci(values: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


Compare = Callable[[list, list, list], np.ndarray]  # (messages, responses a, responses b) -> P(a ≻ b)


def _paired(cur: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    """Join by prompt (and by weight vector: sample_index, for MOODPO's evaluation grid)."""
    key = ["prompt_id", "sample_index"]
    cols = key + ["reward"] + (["response"] if "response" in cur.columns and "response" in other.columns else [])
    prompt_cols = [c for c in ("messages", "raw_messages") if c in cur.columns]
    m = cur[cols + prompt_cols].merge(other[cols], on=key, suffixes=("", "_other"))
    if len(m) != len(cur):
        raise DataError(f"evaluation tables of this iteration and of {name} cover different prompts")
    return m


def _mean(x: pd.Series) -> float | None:
    return float(x.mean()) if x.notna().any() else None


def outcomes(m: pd.DataFrame, compare: Compare | None) -> np.ndarray:
    """Per-prompt outcome of current vs other: reward comparison, or the preference scorer's P."""
    if compare is None:
        return win_rate(m["reward"].to_numpy(), m["reward_other"].to_numpy())
    msgs = [list(x) for x in (m["raw_messages"] if "raw_messages" in m.columns else m["messages"])]
    return np.asarray(compare(msgs, list(m["response"]), list(m["response_other"])), dtype=np.float64)


def iteration_metrics(iteration: int, current: pd.DataFrame, base: pd.DataFrame,
                      previous: pd.DataFrame, compare: Compare | None = None) -> dict[str, Any]:
    """Metrics of one iteration's held-out responses (tables: prompt_id, reward, token_count, finish_reason)."""
    out: dict[str, Any] = {
        "iteration": iteration,
        "n_prompts": int(len(current)),
        "mean_reward": _mean(current["reward"]),
        "mean_reward_ci": bootstrap_ci(current["reward"].to_numpy()) if compare is None else (None, None),
        "mean_length": float(current["token_count"].mean()),
        "finished_fraction": float((current["finish_reason"] == "stop").mean()),
        "base_mean_reward": _mean(base["reward"]),
    }
    done: dict[int, np.ndarray] = {}  # iteration 1: previous is base, judged once
    for name, other in (("base", base), ("previous", previous)):
        if id(other) not in done:
            done[id(other)] = outcomes(_paired(current, other, name), compare)
        w = done[id(other)]
        out[f"win_rate_vs_{name}"] = float(w.mean())
        out[f"win_rate_vs_{name}_ci"] = bootstrap_ci(w, seed=iteration)
    return out


def base_metrics(base: pd.DataFrame) -> dict[str, Any]:
    """Metrics row for iteration 0 (the base model), so plots start from it."""
    return {
        "iteration": 0, "n_prompts": int(len(base)), "mean_reward": _mean(base["reward"]),
        "mean_reward_ci": bootstrap_ci(base["reward"].to_numpy()) if base["reward"].notna().any() else (None, None),
        "mean_length": float(base["token_count"].mean()),
        "finished_fraction": float((base["finish_reason"] == "stop").mean()),
        "base_mean_reward": _mean(base["reward"]),
        "win_rate_vs_base": 0.5, "win_rate_vs_base_ci": (0.5, 0.5),
        "win_rate_vs_previous": 0.5, "win_rate_vs_previous_ci": (0.5, 0.5),
    }


def round_robin(players: dict[str, pd.DataFrame], compare: Compare | None = None, seed: int = 0) -> pd.DataFrame:
    """Every pair of players (name → held-out responses of one checkpoint) on the same prompts.

    One row per unordered pair (a, b) in the given order: ``win_rate`` = mean per-prompt outcome of
    a vs b (reward comparison with ties ½, or the preference scorer's P(a ≻ b)), a 95% bootstrap
    interval over prompts, and the number of prompts. b's win rate against a is 1 − ``win_rate``.
    """
    names = list(players)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            w = outcomes(_paired(players[a], players[b], b), compare)
            lo, hi = bootstrap_ci(w, seed=seed + i)
            rows.append({"player_a": a, "player_b": b, "win_rate": float(w.mean()), "ci_low": lo, "ci_high": hi,
                         "n_prompts": int(len(w))})
    return pd.DataFrame(rows, columns=["player_a", "player_b", "win_rate", "ci_low", "ci_high", "n_prompts"])


def win_matrix(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Square matrix of row-vs-column win rates from a ``round_robin`` table (diagonal ½)."""
    m = pd.DataFrame(0.5, index=names, columns=names)
    for r in table.itertuples():
        m.loc[r.player_a, r.player_b] = r.win_rate
        m.loc[r.player_b, r.player_a] = 1.0 - r.win_rate
    return m
