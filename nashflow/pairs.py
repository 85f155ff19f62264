"""Pair builders: from scored samples to (chosen, rejected) pairs with targets.

``PAIR_BUILDERS`` maps a name to a function ``(group) -> (chosen_row, rejected_row) | None``
where ``group`` holds one prompt's samples with a ``reward`` column, sorted by sample index.
The gather step joins samples and scores by (prompt_id, sample_index), never by row order.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from nashflow.errors import DataError


def _distinct(group: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated response texts (keep the first), as MNPO's post-processing does."""
    return group.drop_duplicates("response", keep="first")


def max_min(group: pd.DataFrame):
    """chosen = highest reward, rejected = lowest reward (ties: lowest sample index)."""
    g = _distinct(group)
    r = g["reward"].to_numpy()
    if len(g) < 2 or r.max() == r.min():
        return None
    return g.iloc[int(np.argmax(r))], g.iloc[int(np.argmin(r))]


def top1_top2(group: pd.DataFrame):
    """chosen = highest reward, rejected = second highest (COMAL)."""
    g = _distinct(group)
    if len(g) < 2:
        return None
    order = np.argsort(-g["reward"].to_numpy(), kind="stable")
    if g["reward"].iloc[order[0]] == g["reward"].iloc[order[1]]:
        return None
    return g.iloc[order[0]], g.iloc[order[1]]


PAIR_BUILDERS: dict[str, Callable] = {"max_min": max_min, "top1_top2": top1_top2}


def build_pairs(samples: pd.DataFrame, scores: pd.DataFrame, builder: str = "max_min") -> pd.DataFrame:
    """Join samples and scores by (prompt_id, sample_index) and build one pair per prompt."""
    if builder not in PAIR_BUILDERS:
        raise DataError(f"unknown pair builder '{builder}'; known: {', '.join(PAIR_BUILDERS)}")
    key = ["prompt_id", "sample_index"]
    if samples.duplicated(key).any() or scores.duplicated(key).any():
        raise DataError("samples or scores hold duplicate (prompt_id, sample_index) rows; were shards mixed up?")
    merged = samples.merge(scores, on=key, how="inner", validate="one_to_one")
    if len(merged) != len(samples):
        missing = len(samples) - len(merged)
        raise DataError(f"{missing} samples have no score; re-run the score stage for every shard")
    fn = PAIR_BUILDERS[builder]
    rows = []
    for pid, group in merged.sort_values(key).groupby("prompt_id", sort=True):
        picked = fn(group)
        if picked is None:
            continue
        c, r = picked
        rows.append({
            "pair_id": f"{pid}:{int(c.sample_index)}-{int(r.sample_index)}",
            "prompt_id": pid,
            "messages": list(c.messages),
            "chosen": c.response, "rejected": r.response,
            "chosen_sample": int(c.sample_index), "rejected_sample": int(r.sample_index),
            "chosen_finish": c.finish_reason, "rejected_finish": r.finish_reason,
            "chosen_reward": float(c.reward), "rejected_reward": float(r.reward),
            "pref_prob": float(1.0 / (1.0 + np.exp(-(c.reward - r.reward)))),
            "chosen_target": float(c.reward), "rejected_target": float(r.reward),
            "generator": c.generator,
        })
    if not rows:
        raise DataError(
            f"no pairs could be built from {merged.prompt_id.nunique()} prompts: every prompt has fewer than "
            "2 distinct responses with different rewards; raise generation.temperature or change the scorer"
        )
    return pd.DataFrame(rows)
