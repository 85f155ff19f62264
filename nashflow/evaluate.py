"""Held-out evaluation: mean reward, win rates against the base and the previous iterate, length.

Responses of different checkpoints are compared per prompt (joined by ``prompt_id``): a win
counts 1, a tie ½. Intervals are percentile bootstraps over prompts.
"""

from __future__ import annotations

from typing import Any

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


def _paired(cur: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.DataFrame:
    """Join by prompt (and by weight vector: sample_index, for MOODPO's evaluation grid)."""
    key = ["prompt_id", "sample_index"]
    m = cur[key + ["reward"]].merge(other[key + ["reward"]], on=key, suffixes=("", "_other"))
    if len(m) != len(cur):
        raise DataError(f"evaluation tables of this iteration and of {name} cover different prompts")
    return m


def iteration_metrics(iteration: int, current: pd.DataFrame, base: pd.DataFrame,
                      previous: pd.DataFrame) -> dict[str, Any]:
    """Metrics of one iteration's held-out responses (tables: prompt_id, reward, token_count, finish_reason)."""
    out: dict[str, Any] = {
        "iteration": iteration,
        "n_prompts": int(len(current)),
        "mean_reward": float(current["reward"].mean()),
        "mean_reward_ci": bootstrap_ci(current["reward"].to_numpy()),
        "mean_length": float(current["token_count"].mean()),
        "finished_fraction": float((current["finish_reason"] == "stop").mean()),
        "base_mean_reward": float(base["reward"].mean()),
    }
    for name, other in (("base", base), ("previous", previous)):
        m = _paired(current, other, name)
        w = win_rate(m["reward"].to_numpy(), m["reward_other"].to_numpy())
        out[f"win_rate_vs_{name}"] = float(w.mean())
        out[f"win_rate_vs_{name}_ci"] = bootstrap_ci(w, seed=iteration)
    return out


def base_metrics(base: pd.DataFrame) -> dict[str, Any]:
    """Metrics row for iteration 0 (the base model), so plots start from it."""
    return {
        "iteration": 0, "n_prompts": int(len(base)), "mean_reward": float(base["reward"].mean()),
        "mean_reward_ci": bootstrap_ci(base["reward"].to_numpy()), "mean_length": float(base["token_count"].mean()),
        "finished_fraction": float((base["finish_reason"] == "stop").mean()),
        "base_mean_reward": float(base["reward"].mean()),
        "win_rate_vs_base": 0.5, "win_rate_vs_base_ci": (0.5, 0.5),
        "win_rate_vs_previous": 0.5, "win_rate_vs_previous_ci": (0.5, 0.5),
    }
