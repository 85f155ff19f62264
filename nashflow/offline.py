"""Iteration 1 from an existing preference dataset (MNPO's offline first part).

Two layouts are accepted, one row per prompt:
  * ``prompt`` + ``responses`` (list of K texts) + ``scores`` (list of K rewards): the samples
    and scores of iteration 1, so any pair builder applies (MNPO: argmax vs argmin);
  * ``prompt`` + ``chosen`` + ``rejected`` (texts): K = 2 with rewards 1 and 0.
They become the ordinary samples and scores tables (split into shards by position), so the
rest of the DAG does not know the difference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nashflow.data import PromptsConfig, _read_any, prompt_id_for, to_messages
from nashflow.errors import DataError


def load_initial(path: str, prompt_column: str = "prompt", system_prompt: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, scores) tables of iteration 1 from the dataset at ``path``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"initial data {p} does not exist (config key initial_data.path)")
    df = _read_any(p)
    if prompt_column not in df.columns:
        raise DataError(f"initial data {p} has no column '{prompt_column}' (config key initial_data.prompt_column)")
    if {"responses", "scores"} <= set(df.columns):
        responses, scores = list(df["responses"]), list(df["scores"])
    elif {"chosen", "rejected"} <= set(df.columns):
        responses = [[c, r] for c, r in zip(df["chosen"], df["rejected"])]
        scores = [[1.0, 0.0]] * len(df)
    else:
        raise DataError(f"initial data {p} needs columns responses+scores or chosen+rejected; "
                        f"found: {', '.join(map(str, df.columns))}")
    samples, score_rows = [], []
    seen = set()
    for i, (prompt, resp, sc) in enumerate(zip(df[prompt_column], responses, scores)):
        resp, sc = list(resp), [float(x) for x in sc]
        if len(resp) != len(sc) or len(resp) < 2:
            raise DataError(f"initial data {p}, row {i + 1}: needs at least 2 responses and one score per response")
        if not all(np.isfinite(sc)):
            raise DataError(f"initial data {p}, row {i + 1}: scores must be finite numbers")
        pid = prompt_id_for(str(prompt).strip())
        if pid in seen:
            raise DataError(f"initial data {p}, row {i + 1}: duplicate prompt")
        seen.add(pid)
        msgs = to_messages(str(prompt).strip(), system_prompt)
        for k, (text, s) in enumerate(zip(resp, sc)):
            samples.append({"prompt_id": pid, "messages": msgs, "sample_index": k, "response": str(text),
                            "token_count": len(str(text).split()), "prompt_tokens": 0, "finish_reason": "stop",
                            "seed": 0, "generator": f"offline:{p.name}", "sampler": "offline", "position": i})
            score_rows.append({"prompt_id": pid, "sample_index": k, "reward": s})
    return pd.DataFrame(samples), pd.DataFrame(score_rows)


def initial_shard(samples: pd.DataFrame, scores: pd.DataFrame, shard: int, n_shards: int):
    keep = samples[samples["position"] % n_shards == shard].drop(columns="position").reset_index(drop=True)
    ids = set(keep["prompt_id"])
    return keep, scores[scores["prompt_id"].isin(ids)].reset_index(drop=True)


__all__ = ["load_initial", "initial_shard", "PromptsConfig"]
