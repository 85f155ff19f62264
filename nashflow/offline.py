"""Iteration 1 from an existing preference dataset (MNPO's offline first part).

The dataset is any source of :mod:`nashflow.sources`, one row per prompt, in one of three shapes
recognised by their columns (names configurable with ``initial_data.*_column``):

* K responses + K scores, any K >= 2: ``responses`` + ``scores``, or MNPO's
  ``all_generated_responses`` + ``all_rm_scores``. They are the samples and scores of iteration 1,
  so any pair builder applies (MNPO: argmax vs argmin).
* ``chosen`` + ``rejected`` (K = 2, rewards 1 and 0), as text or as conversations whose last turn
  is the assistant's answer (``HuggingFaceH4/ultrafeedback_binarized``).
* The same conversations without a prompt column (TRL's implicit prompt,
  ``trl-lib/ultrafeedback_binarized``): the prompt is the turns before the last, which chosen and
  rejected must share.

Prompts are text or conversations ending with a user turn. A row whose responses are all the same
text (chosen = rejected) is skipped and counted, as the pair builders skip such samples. The rows
become the ordinary samples and scores tables (split into shards by position), so the rest of the
DAG does not know the difference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nashflow.data import drop_repeats
from nashflow.errors import DataError
from nashflow.messages import (
    conversation,
    conversation_id,
    is_conversation,
    prompt_conversation,
    response_text,
)
from nashflow.settings import InitialDataConfig
from nashflow.sources import SourceTable, open_source

log = logging.getLogger(__name__)

RESPONSES = ("responses", "all_generated_responses")
SCORES = ("scores", "all_rm_scores")


@dataclass(frozen=True)
class _Shape:
    kind: str  # "scored" (K responses + scores) or "pair" (chosen + rejected)
    first: str  # responses or chosen column
    second: str  # scores or rejected column
    prompt: str | None  # None: implicit prompt (the turns before the last of chosen and rejected)


def load_initial(cfg: InitialDataConfig, system_prompt: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(samples, scores, record) of iteration 1: the two tables and what was read and skipped.

    Raises :class:`DataError` naming the source, row, column or config key for every problem found.
    """
    kept, table, shape, counts = _read_initial(cfg, system_prompt)
    generator = f"offline:{cfg.path if table.kind == 'hub' else Path(cfg.path).name}"
    samples, scores = _tables(kept, generator)
    names = ("responses", "scores") if shape.kind == "scored" else ("chosen", "rejected")
    columns = {"prompt": shape.prompt, names[0]: shape.first, names[1]: shape.second}
    return samples, scores, {**table.record(), "shape": shape.kind, "columns": columns, **counts}


def check_initial(cfg: InitialDataConfig, system_prompt: str | None = None) -> None:
    """Read and check every row of ``initial_data`` (the start-up check); DataError on the first problem."""
    _read_initial(cfg, system_prompt)


def _read_initial(cfg: InitialDataConfig, system_prompt: str | None):
    """The kept rows (prompt_id, messages, responses, scores, source_row), the source, its shape and
    the counts of rows skipped (all responses the same) and dropped (repeated prompts)."""
    table = open_source(cfg.source)
    shape = _shape(table, cfg)
    df = table.read([c for c in (shape.prompt, shape.first, shape.second) if c])
    rows, identical = [], []
    for rec in df.to_dict("records"):
        one = _row(rec, shape, table, system_prompt)
        if one is None:
            identical.append(rec["source_row"])
        else:
            rows.append(one)
    if identical:
        shown = ", ".join(str(int(r) + 1) for r in identical[:5]) + (", ..." if len(identical) > 5 else "")
        log.info("%s: skipped %d rows whose responses are all identical (chosen = rejected): rows %s",
                 table.label, len(identical), shown)
    kept = pd.DataFrame(rows, columns=["prompt_id", "messages", "responses", "scores", "source_row"])
    kept, dropped = drop_repeats(kept, table, drop=cfg.drop_duplicates, what="prompt",
                                 key="initial_data.drop_duplicates")
    if kept.empty:
        raise DataError(f"{table.label}: no row has two different responses to train on")
    return kept, table, shape, {"skipped_identical": len(identical), "duplicates_dropped": dropped}


def initial_shard(samples: pd.DataFrame, scores: pd.DataFrame, shard: int, n_shards: int):
    """The rows of one shard (prompts interleaved by position) of the samples and scores tables."""
    keep = samples[samples["position"] % n_shards == shard].drop(columns="position").reset_index(drop=True)
    ids = set(keep["prompt_id"])
    return keep, scores[scores["prompt_id"].isin(ids)].reset_index(drop=True)


def _shape(table: SourceTable, cfg: InitialDataConfig) -> _Shape:
    """Which columns hold the responses: the configured ones, else the recognised names."""
    cols = set(table.columns)
    if cfg.responses_column or cfg.scores_column or not (cfg.chosen_column or cfg.rejected_column):
        resp = cfg.responses_column or next((c for c in RESPONSES if c in cols), None)
        score = cfg.scores_column or next((c for c in SCORES if c in cols), None)
        if cfg.responses_column or cfg.scores_column or (resp and score):
            table.require(resp or RESPONSES[0], "initial_data.responses_column")
            table.require(score or SCORES[0], "initial_data.scores_column")
            return _Shape("scored", resp, score, _prompt_column(table, cfg, implicit_ok=False))
    chosen, rejected = cfg.chosen_column or "chosen", cfg.rejected_column or "rejected"
    if cfg.chosen_column or cfg.rejected_column or {chosen, rejected} <= cols:
        table.require(chosen, "initial_data.chosen_column")
        table.require(rejected, "initial_data.rejected_column")
        implicit_ok = is_conversation(table.reader(table.rows[:1], [chosen])[chosen].iloc[0])
        return _Shape("pair", chosen, rejected, _prompt_column(table, cfg, implicit_ok=implicit_ok))
    raise DataError(f"{table.label} needs columns responses+scores or chosen+rejected (also recognised: "
                    "all_generated_responses+all_rm_scores; other names: initial_data.responses_column, "
                    f"scores_column, chosen_column, rejected_column); columns found: {', '.join(map(str, table.columns))}")


def _prompt_column(table: SourceTable, cfg: InitialDataConfig, *, implicit_ok: bool) -> str | None:
    """The prompt column, or None for an implicit prompt (chosen/rejected conversations, no prompt column)."""
    if cfg.prompt_column in table.columns or not implicit_ok:
        table.require(cfg.prompt_column, "initial_data.prompt_column")
        return cfg.prompt_column
    return None


def _row(rec: dict, shape: _Shape, table: SourceTable, system_prompt: str | None) -> tuple | None:
    """(prompt_id, messages, responses, scores, source_row) of one row; None if its responses are all the same."""
    src_row = rec["source_row"]
    where = lambda col: table.where(src_row, col)
    if shape.prompt is None:
        msgs = _implicit_prompt(rec[shape.first], rec[shape.second], table.where(src_row), system_prompt)
    else:
        msgs = prompt_conversation(rec[shape.prompt], where(shape.prompt), system_prompt)
    if shape.kind == "scored":
        responses = [response_text(x, where(shape.first)) for x in _cells(rec[shape.first], where(shape.first))]
        scores = _numbers(rec[shape.second], where(shape.second))
        if len(responses) != len(scores) or len(responses) < 2:
            raise DataError(f"{table.where(src_row)}: needs at least 2 responses and one score per response "
                            f"({len(responses)} responses, {len(scores)} scores)")
    else:
        responses = [response_text(rec[shape.first], where(shape.first)),
                     response_text(rec[shape.second], where(shape.second))]
        scores = [1.0, 0.0]
    if len(set(responses)) < 2:
        return None
    return conversation_id(msgs, system_prompt), msgs, responses, scores, src_row


def _implicit_prompt(chosen: Any, rejected: Any, where: str, system_prompt: str | None) -> list[dict]:
    """The turns before the last that chosen and rejected share (TRL's implicit prompt)."""
    c, r = conversation(chosen, where + " (chosen)"), conversation(rejected, where + " (rejected)")
    if c[:-1] != r[:-1] or len(c) < 2:
        raise DataError(f"{where}: without a prompt column, chosen and rejected must be conversations that share "
                        "every turn before their last (the prompt)")
    return prompt_conversation(c[:-1], where + " (the turns before the answer)", system_prompt)


def _cells(value: Any, where: str) -> list:
    """A list cell (JSON list, Arrow list as NumPy array) as a Python list."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    raise DataError(f"{where}: expected a list of responses, got {type(value).__name__}")


def _numbers(value: Any, where: str) -> list[float]:
    """A list cell of finite numbers (the scores)."""
    try:
        out = [float(x) for x in _cells(value, where)]
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: scores must be numbers ({err})") from err
    if not all(np.isfinite(out)):
        raise DataError(f"{where}: scores must be finite numbers")
    return out


def _tables(kept: pd.DataFrame, generator: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The samples and scores tables of the kept rows (``position`` = row order, for sharding)."""
    samples, score_rows = [], []
    for pos, r in enumerate(kept.itertuples(index=False)):
        for k, (text, s) in enumerate(zip(r.responses, r.scores)):
            samples.append({"prompt_id": r.prompt_id, "messages": r.messages, "sample_index": k, "response": text,
                            "token_count": len(text.split()), "prompt_tokens": 0, "finish_reason": "stop",
                            "seed": 0, "generator": generator, "sampler": "offline", "position": pos})
            score_rows.append({"prompt_id": r.prompt_id, "sample_index": k, "reward": s})
    return pd.DataFrame(samples), pd.DataFrame(score_rows)


__all__ = ["InitialDataConfig", "load_initial", "check_initial", "initial_shard"]
