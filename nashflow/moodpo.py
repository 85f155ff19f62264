"""MOODPO: weights on the simplex grid and weight-conditioned system instructions.

Weights are drawn uniformly over the grid of multiples of ``step`` on the simplex (stars and
bars: C(1/step + K − 1, K − 1) points, 6 for K = 2 and step 0.2). The instruction is prepended
as (or merged into) the system message; rewards are computed on the *unconditioned* prompt,
log-probs on the conditioned one.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from nashflow.seeding import derive_seed

TEMPLATES = {
    "assistant": ("[Begin System Instruction]\nYou are an assistant. For every user query, respond in a way that "
                  "your answers are {parts}.\n[End System Instruction]"),
    "summary": ("[Begin System Instruction]\nYou are a summarization assistant. Summarize the given text by focusing "
                "{w0:.0f}% on producing a high-quality, fluent summary and {w1:.0f}% on staying faithful to the "
                "original text (no unsupported claims; preserve key details).\n[End System Instruction]"),
}


def simplex_grid(k: int, step: float) -> list[tuple[float, ...]]:
    """All weight vectors of length k whose entries are multiples of ``step`` and sum to 1."""
    n = int(round(1.0 / step))
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"grid step {step} must divide 1")
    pts = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    return [tuple(round(x / n, 10) for x in c) for c in sorted(pts, reverse=True)]


def sample_weights(k: int, step: float, seed: int, *key: object) -> tuple[float, ...]:
    grid = simplex_grid(k, step)
    return grid[np.random.default_rng(derive_seed(seed, "moodpo", *key)).integers(len(grid))]


def instruction(weights, names, template: str = "assistant") -> str:
    if template == "summary":
        if len(weights) != 2:
            raise ValueError("the summary template needs exactly two objectives")
        return TEMPLATES["summary"].format(w0=weights[0] * 100, w1=weights[1] * 100)
    parts = " and ".join(f"{w * 100:.1f}% {n}" for w, n in zip(weights, names))
    return TEMPLATES["assistant"].format(parts=parts)


def condition(messages: list[dict], weights, names, template: str = "assistant") -> list[dict]:
    """Insert the weight instruction as the system message, or prepend it to an existing one."""
    text = instruction(weights, names, template)
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = text + "\n" + msgs[0]["content"]
        return msgs
    return [{"role": "system", "content": text}] + msgs


def condition_table(prompts: pd.DataFrame, weights: list, moodpo: dict) -> pd.DataFrame:
    """The prompts with the weight instruction added to ``messages``; the plain prompt stays in
    ``raw_messages`` (scorers read it) and the weights in ``weights``. ``moodpo``: the job's
    conditioning settings (``template``, ``objectives``; see nashflow.plan)."""
    out = prompts.copy()
    out["raw_messages"] = [list(m) for m in prompts["messages"]]
    out["weights"] = [list(w) for w in weights]
    out["messages"] = [condition(list(m), w, moodpo["objectives"], moodpo["template"])
                       for m, w in zip(prompts["messages"], weights)]
    return out


def with_prompt_columns(df: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """Samples with their prompt's ``raw_messages`` and ``weights`` (conditioned prompts only)."""
    extra = [c for c in ("raw_messages", "weights") if c in prompts.columns]
    if not extra or not len(df):
        return df
    return df.merge(prompts[["prompt_id"] + extra], on="prompt_id", how="left", validate="many_to_one")
