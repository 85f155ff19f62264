"""Atomic table and folder writes, plus the provenance that every output carries.

Outputs appear atomically: tables are written to a temporary file next to the target and
renamed; model folders are written to a temporary folder and renamed. A killed job therefore
never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nashflow.errors import DataError

PROVENANCE_KEY = b"nashflow.provenance"
PACKAGES = ("nashflow", "torch", "transformers", "accelerate", "peft", "pandas", "pyarrow", "snakemake")


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.stdout.strip() or None


def provenance(*, parents: dict[str, str] | None = None, config: Any = None, seed: int | None = None,
               **extra: Any) -> dict[str, Any]:
    """What produced an output: parent files/checkpoints, config hash, versions, seed.

    Deliberately free of timestamps and host names so that deterministic tables stay
    byte-identical between an interrupted and an uninterrupted run.
    """
    rec: dict[str, Any] = {
        "parents": dict(parents or {}),
        "config_hash": config_hash(config) if config is not None else None,
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "git_revision": git_revision(),
    }
    rec.update(extra)
    return rec


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_table(df: pd.DataFrame, path: str | os.PathLike, prov: dict[str, Any] | None = None) -> None:
    """Write a DataFrame as Parquet atomically, with provenance in the schema metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # pandas metadata embeds library versions; keep tables reproducible
    if prov is not None:
        meta[PROVENANCE_KEY] = json.dumps(prov, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as err:
        raise DataError(f"could not write table {path}: {err.strerror or err}; check free disk space "
                        "and permissions, then re-run") from err


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"table {path} does not exist")
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"table {path} is not a readable Parquet file: {err}") from err


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "provenance.json").read_text())
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def checkpoint_name(model_dir: str) -> str:
    """A readable checkpoint id: ``base_model`` or ``<run>/iter<t>`` (``<run>`` may hold a slash:
    ``<comparison>/<name>``), the path under ``results/`` without ``/model``."""
    p = Path(model_dir)
    if p.name != "model":
        return p.name
    parts = p.parent.parts
    if "results" in parts:
        i = len(parts) - 1 - parts[::-1].index("results")
        return "/".join(parts[i + 1:])
    return f"{p.parent.parent.name}/{p.parent.name}"
