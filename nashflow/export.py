"""Held-out responses in the answer formats of external harnesses, to judge them elsewhere.

* AlpacaEval: a JSON list of ``{"instruction", "output", "generator", "dataset"}`` (the format of
  ``alpaca_eval --model_outputs``).
* MT-Bench (FastChat ``llm_judge``): one JSON line per question, ``{"question_id", "answer_id",
  "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}``. ``tstamp`` is 0 so that the
  file is a pure function of the responses.

Rows are one per prompt (MOODPO's evaluation grid: the row of each prompt's first weight vector,
named in ``generator``). The instruction is the unconditioned user turn.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from nashflow.io import atomic_path


def _instruction(row) -> str:
    msgs = row["raw_messages"] if "raw_messages" in row and row["raw_messages"] is not None else row["messages"]
    users = [m["content"] for m in msgs if m["role"] == "user"]
    return users[-1] if users else ""


def answers(df: pd.DataFrame, model_id: str) -> pd.DataFrame:
    """One row per prompt: prompt_id, instruction, output, generator."""
    first = df.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id", sort=True).head(1)
    return pd.DataFrame({
        "prompt_id": first["prompt_id"].to_numpy(),
        "instruction": [_instruction(r) for _, r in first.iterrows()],
        "output": first["response"].to_numpy(),
        "generator": model_id,
    })


def write_alpaca_eval(df: pd.DataFrame, model_id: str, path: str, dataset: str = "nashflow-heldout") -> None:
    rows = [{"instruction": r.instruction, "output": r.output, "generator": r.generator, "dataset": dataset}
            for r in answers(df, model_id).itertuples()]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_mt_bench(df: pd.DataFrame, model_id: str, path: str) -> None:
    lines = []
    for r in answers(df, model_id).itertuples():
        answer_id = hashlib.sha1(f"{model_id}\0{r.prompt_id}\0{r.output}".encode()).hexdigest()[:22]
        lines.append(json.dumps({"question_id": r.prompt_id, "answer_id": answer_id, "model_id": model_id,
                                 "choices": [{"index": 0, "turns": [r.output]}], "tstamp": 0.0},
                                ensure_ascii=False))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
