"""Prompt sets: loading, validation and the per-iteration split.

A prompt set is a JSONL, CSV or Parquet file with one prompt per row. Every prompt gets a
stable ``prompt_id`` (the file's id column, or a hash of the text) so that shards and gathers
join by id, never by row order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nashflow.errors import DataError


@dataclass(frozen=True)
class PromptsConfig:
    """Where the prompts come from and how they are split into iterations."""

    path: str
    column: str = "prompt"
    id_column: str | None = None
    system_prompt: str | None = None
    eval_size: int = 48
    prompts_per_iteration: int = 64
    seed: int = 42

    def __post_init__(self):
        if self.eval_size < 1:
            raise ValueError("prompts.eval_size must be >= 1")
        if self.prompts_per_iteration < 1:
            raise ValueError("prompts.prompts_per_iteration must be >= 1")


def _read_any(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding="utf-8")
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"prompts file {path} is not valid UTF-8 (byte {err.start}); re-encode it as UTF-8") from err
    except ValueError as err:
        raise DataError(f"prompts file {path} could not be parsed as {suffix[1:]}: {err}") from err
    raise DataError(f"prompts file {path} has unsupported extension '{suffix}'; use .jsonl, .json, .csv or .parquet")


def prompt_id_for(text: str) -> str:
    return "h" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def load_prompts(cfg: PromptsConfig) -> pd.DataFrame:
    """Read and validate the prompt file; returns columns ``prompt_id``, ``prompt``.

    Raises :class:`DataError` naming the file, column or row for every problem found.
    """
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"prompts file {path} does not exist (config key prompts.path)")
    if path.stat().st_size == 0:
        raise DataError(f"prompts file {path} is empty; it needs at least one prompt")
    df = _read_any(path)
    if len(df) == 0:
        raise DataError(f"prompts file {path} has no rows; it needs at least one prompt")
    if cfg.column not in df.columns:
        raise DataError(
            f"prompts file {path} has no column '{cfg.column}' (config key prompts.column); "
            f"columns found: {', '.join(map(str, df.columns))}"
        )
    prompts = df[cfg.column]
    for i, text in enumerate(prompts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"prompts file {path}, row {i + 1}: column '{cfg.column}' is empty or not text")
    prompts = prompts.str.strip()
    if cfg.id_column:
        if cfg.id_column not in df.columns:
            raise DataError(f"prompts file {path} has no id column '{cfg.id_column}' (config key prompts.id_column)")
        ids = df[cfg.id_column].astype(str)
    else:
        ids = prompts.map(prompt_id_for)
    dup = ids[ids.duplicated()]
    if len(dup):
        row = int(dup.index[0]) + 1
        what = "prompt id" if cfg.id_column else "prompt text (ids are hashes of the text)"
        raise DataError(f"prompts file {path}, row {row}: duplicate {what} '{dup.iloc[0]}'; make ids unique")
    return pd.DataFrame({"prompt_id": ids.to_numpy(), "prompt": prompts.to_numpy()})


def to_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def split_prompts(df: pd.DataFrame, cfg: PromptsConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle once (seeded) and cut into a held-out evaluation part and training parts.

    Training part ``p`` holds positions ``[p*P, (p+1)*P)`` of the shuffled pool (P =
    ``prompts_per_iteration``); a remainder smaller than P is left unused. Iteration ``t``
    uses part ``(t-1) mod n_parts``, so adding iterations never changes earlier ones.
    """
    if len(df) < cfg.eval_size + 1:
        raise DataError(
            f"prompts file {cfg.path} has {len(df)} prompts; prompts.eval_size={cfg.eval_size} leaves none "
            "for training"
        )
    order = np.random.default_rng(cfg.seed).permutation(len(df))
    shuffled = df.iloc[order].reset_index(drop=True)
    shuffled["messages"] = [to_messages(p, cfg.system_prompt) for p in shuffled["prompt"]]
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
