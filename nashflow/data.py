"""Prompt sets: loading, validation and the per-iteration split.

A prompt set is any source of :mod:`nashflow.sources` (a file, a glob of shards, a dataset folder,
a ``save_to_disk`` folder or a hub id) with one prompt per row: text, or a conversation (a list of
messages ending with a user turn). Every prompt gets a stable ``prompt_id`` (the id column, or a
hash of the prompt) so that shards and gathers join by id, never by row order.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nashflow.errors import DataError
from nashflow.messages import conversation_id, last_user_text, prompt_conversation, prompt_id_for, to_messages
from nashflow.settings import PromptsConfig
from nashflow.sources import SourceTable, open_source

log = logging.getLogger(__name__)

__all__ = ["PromptsConfig", "load_prompts", "prompt_table", "split_prompts", "iteration_prompts", "shard_rows",
           "prompt_id_for", "to_messages", "drop_repeats"]


def load_prompts(cfg: PromptsConfig) -> pd.DataFrame:
    """Read and validate the prompts; returns columns ``prompt_id``, ``prompt`` (the last user turn),
    ``messages`` (the conversation sent to the chat template) and ``source_row``.

    Raises :class:`DataError` naming the source, row, column or config key for every problem found.
    """
    return _read_prompts(cfg)[0]


def prompt_table(cfg: PromptsConfig) -> tuple[pd.DataFrame, dict]:
    """:func:`load_prompts` and the record of what was read (source, version, rows used, duplicates dropped)."""
    df, table, dropped = _read_prompts(cfg)
    return df, {**table.record(), "duplicates_dropped": dropped}


def _read_prompts(cfg: PromptsConfig) -> tuple[pd.DataFrame, SourceTable, int]:
    table = open_source(cfg.source)
    table.require(cfg.column, "prompts.column")
    if cfg.id_column:
        table.require(cfg.id_column, "prompts.id_column")
    df = table.read([cfg.column] + ([cfg.id_column] if cfg.id_column else []))
    msgs = [prompt_conversation(v, table.where(r, cfg.column), cfg.system_prompt)
            for v, r in zip(df[cfg.column], df["source_row"])]
    ids = df[cfg.id_column].astype(str).tolist() if cfg.id_column else [conversation_id(m, cfg.system_prompt)
                                                                           for m in msgs]
    out = pd.DataFrame({"prompt_id": ids, "prompt": [last_user_text(m).strip() for m in msgs], "messages": msgs,
                        "source_row": df["source_row"].to_numpy()})
    what = "prompt id" if cfg.id_column else "prompt (ids are hashes of the prompt)"
    out, dropped = drop_repeats(out, table, drop=cfg.drop_duplicates, what=what, key="prompts.drop_duplicates")
    return out, table, dropped


def drop_repeats(df: pd.DataFrame, table: SourceTable, *, drop: bool, what: str, key: str) -> tuple[pd.DataFrame, int]:
    """Rows whose ``prompt_id`` repeats an earlier row's: dropped and counted with ``drop``, else a
    DataError naming the first repeat and the config key ``key`` that drops them."""
    dup = df["prompt_id"].duplicated()
    if not dup.any():
        return df, 0
    if not drop:
        first = df[dup].iloc[0]
        raise DataError(f"{table.where(first['source_row'])}: duplicate {what} '{first['prompt_id']}'; "
                        f"make them unique or set {key}: true to keep the first of each")
    log.info("%s: dropped %d rows that repeat an earlier prompt", table.label, int(dup.sum()))
    return df[~dup].reset_index(drop=True), int(dup.sum())


def split_prompts(df: pd.DataFrame, cfg: PromptsConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle once (seeded) and cut into a held-out evaluation part and training parts.

    Training part ``p`` holds positions ``[p*P, (p+1)*P)`` of the shuffled pool (P =
    ``prompts_per_iteration``); a remainder smaller than P is left unused. Iteration ``t``
    uses part ``(t-1) mod n_parts``, so adding iterations never changes earlier ones.
    """
    if len(df) < cfg.eval_size + 1:
        raise DataError(
            f"prompts {cfg.path} has {len(df)} prompts; prompts.eval_size={cfg.eval_size} leaves none for training"
        )
    order = np.random.default_rng(cfg.seed).permutation(len(df))
    shuffled = df.iloc[order].reset_index(drop=True)
    eval_df = shuffled.iloc[: cfg.eval_size].reset_index(drop=True)
    pool = shuffled.iloc[cfg.eval_size:].reset_index(drop=True)
    n_parts = max(1, len(pool) // cfg.prompts_per_iteration)
    pos = np.arange(len(pool))
    part = pos // cfg.prompts_per_iteration
    part[part >= n_parts] = -1  # remainder (only when the pool holds more than one part)
    if n_parts == 1:
        part[:] = 0
    pool["part"] = part
    pool["position"] = pos
    eval_df["position"] = np.arange(len(eval_df))
    return eval_df, pool


def iteration_prompts(pool: pd.DataFrame, iteration: int, shard: int, n_shards: int,
                      prompts_per_iteration: int) -> pd.DataFrame:
    """The prompts of ``iteration`` (1-based) that belong to ``shard`` (interleaved by position)."""
    n_parts = int(pool["part"].max()) + 1
    part = pool[pool["part"] == (iteration - 1) % n_parts].head(prompts_per_iteration)
    part = part.reset_index(drop=True)
    return part[part.index % n_shards == shard].reset_index(drop=True)


def shard_rows(df: pd.DataFrame, shard: int, n_shards: int, key: str = "pair_id") -> pd.DataFrame:
    """Rows of ``shard`` chosen by the stable order of ``key`` (used to shard pairs)."""
    order = df.sort_values(key).reset_index(drop=True)
    return order[order.index % n_shards == shard].reset_index(drop=True)
