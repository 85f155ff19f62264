"""Outputs in the formats of other tools: TRL's preference datasets and external judges' answer files.

* TRL (``DPOTrainer`` and the other preference trainers): every iteration's pairs as a Parquet
  table in TRL's conversational preference format with an explicit prompt: ``prompt`` (the
  conversation the policy saw), ``chosen`` and ``rejected`` (one assistant turn each), plus
  ``prompt_id``, ``pair_id``, ``score_chosen``, ``score_rejected`` (rewards) and
  ``chosen_finish``, ``rejected_finish`` (``length``: cut at ``max_new_tokens``). Load it with
  ``datasets.load_dataset("parquet", data_files=...)``.

Held-out responses, to judge them elsewhere:

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

from nashflow.io import atomic_path, provenance, read_table, write_table
from nashflow.messages import conversation, last_user_text


def trl_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs (``pairs.parquet``) in TRL's conversational preference format (see the module docstring)."""
    turn = lambda text: [{"role": "assistant", "content": str(text)}]
    return pd.DataFrame({
        "prompt": [conversation(m, f"pair {pid}") for m, pid in zip(pairs["messages"], pairs["pair_id"])],
        "chosen": [turn(t) for t in pairs["chosen"]],
        "rejected": [turn(t) for t in pairs["rejected"]],
        "prompt_id": pairs["prompt_id"].astype(str).to_numpy(),
        "pair_id": pairs["pair_id"].astype(str).to_numpy(),
        "score_chosen": pairs["chosen_reward"].astype("float64").to_numpy(),
        "score_rejected": pairs["rejected_reward"].astype("float64").to_numpy(),
        "chosen_finish": pairs["chosen_finish"].astype(str).to_numpy(),
        "rejected_finish": pairs["rejected_finish"].astype(str).to_numpy(),
    })


def export_trl_pairs(pairs_path: str, out: str) -> None:
    """Write ``trl_pairs`` of the pairs table at ``pairs_path`` to ``out`` (Parquet, with provenance)."""
    write_table(trl_pairs(read_table(pairs_path)), out, provenance(parents={"pairs": pairs_path},
                                                                    format="trl-preference-conversational"))


def _instruction(row) -> str:
    msgs = row["raw_messages"] if "raw_messages" in row and row["raw_messages"] is not None else row["messages"]
    return last_user_text(msgs)


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


def export_answers(*, responses: str, out_alpaca: str, out_mt_bench: str) -> None:
    """Held-out responses in AlpacaEval's and MT-Bench's answer formats."""
    from nashflow.io import read_table

    df = read_table(responses)
    model_id = df["generator"].iloc[0] if len(df) else "unknown"
    write_alpaca_eval(df, model_id, out_alpaca)
    write_mt_bench(df, model_id, out_mt_bench)
