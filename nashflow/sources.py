"""Where prompt and preference tables come from: files, shard globs, dataset folders, hub ids.

``path`` (config key ``<section>.path``) is, in this order:

* a single ``.jsonl``/``.json``/``.csv``/``.parquet`` file, read with pandas (CSV cells as text);
* a glob of such files (``data/part-*.parquet``), read the same way and concatenated in name order;
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, read with
  ``datasets.load_from_disk``;
* any other folder (Parquet/JSONL/CSV shards, optionally with a README that declares configs and
  splits, e.g. a clone of a hub dataset repository), read with ``datasets.load_dataset(folder)``;
* otherwise a Hugging Face hub id (``org/name``), read with ``datasets.load_dataset``. Jobs run with
  ``HF_HUB_OFFLINE=1``: the dataset comes from the local datasets cache, and a dataset that is not
  there is an error that says how to fill the cache.

``split`` picks a split (single tables have one, ``train``), ``name`` a config and ``revision`` a
hub commit. ``select`` then keeps a count of rows from the start or a ``start:stop`` slice, and
``sample`` a seeded subsample of those. Rows keep their index in the split (``source_row``), and
:meth:`SourceTable.record` says what was read, for provenance.
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from nashflow.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SLICE = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


@dataclass(frozen=True)
class Source:
    """A table to read (one config section's ``path``, ``split``, ``name``, ``revision``, ``select``,
    ``sample``); ``key`` is the section, named in every message."""

    path: str
    split: str | None = None
    name: str | None = None
    revision: str | None = None
    select: int | str | None = None
    sample: int | None = None
    seed: int = 42
    key: str = "prompts"

    def __post_init__(self):
        if isinstance(self.select, bool) or (isinstance(self.select, int) and self.select < 1):
            raise ValueError(f"{self.key}.select must be a row count >= 1 or a 'start:stop' slice")
        if isinstance(self.select, str):
            m = _SLICE.match(self.select)
            if not m or (m.group(1) and m.group(2) and int(m.group(2)) <= int(m.group(1))):
                raise ValueError(f"{self.key}.select '{self.select}' is not a 'start:stop' row slice with start < stop")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"{self.key}.sample must be >= 1")

    def selection(self, n: int) -> np.ndarray:
        """Row indices kept by ``select`` out of ``n`` rows (a slice past the end stops at the end)."""
        if self.select is None:
            return np.arange(n)
        if isinstance(self.select, int):
            return np.arange(min(n, self.select))
        start, stop = _SLICE.match(self.select).groups()
        return np.arange(n)[slice(int(start) if start else None, int(stop) if stop else None)]


@dataclass
class SourceTable:
    """An opened source: its columns, the rows kept by ``select`` and ``sample``, and a reader."""

    source: Source
    label: str  # "prompts file data/p.jsonl", "prompts dataset org/name (split train)", ...
    kind: str  # file | glob | save_to_disk | folder | hub
    columns: list[str]
    num_rows: int  # rows of the split, before select and sample
    rows: np.ndarray  # indices into the split, ascending
    reader: Callable[[np.ndarray, list[str]], pd.DataFrame]
    info: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the files of a single file or glob (hashed in record)

    def read(self, columns: list[str]) -> pd.DataFrame:
        """The kept rows' ``columns`` plus ``source_row`` (0-based row of the split)."""
        df = self.reader(self.rows, columns).reset_index(drop=True)
        df["source_row"] = self.rows
        return df

    def where(self, source_row: int, column: str | None = None) -> str:
        """'<label>, row N[, column c]' (N 1-based within the split), for messages."""
        return f"{self.label}, row {int(source_row) + 1}" + (f", column '{column}'" if column else "")

    def require(self, column: str, config_key: str) -> None:
        """DataError naming the config key and the columns there are, if ``column`` is missing."""
        if column not in self.columns:
            raise DataError(f"{self.label} has no column '{column}' (config key {config_key}); "
                            f"columns found: {', '.join(map(str, self.columns))}")

    def record(self) -> dict[str, Any]:
        """What was read, for provenance: the source, its version and the rows used."""
        s = self.source
        rec = {"path": s.path, "kind": self.kind, "split": self.info.get("split", s.split), "name": s.name,
               "revision": s.revision, "rows_in_split": self.num_rows, "select": s.select, "sample": s.sample,
               "seed": s.seed if s.sample else None, "rows_used": int(len(self.rows))}
        rec.update({k: v for k, v in self.info.items() if k != "split"})
        if self.kind in ("file", "glob"):
            rec["sha256"] = _files_sha256(self.files)
        return rec


def open_source(src: Source) -> SourceTable:
    """Open ``src`` (see the module docstring) and apply ``select`` and ``sample``; DataError on any problem."""
    kind, files = source_kind(src.path, src.key)
    if kind in ("file", "glob"):
        _refuse(src, ("name", "revision"), f"a {kind}")
        if src.split not in (None, "train"):
            raise DataError(f"{src.key}.split '{src.split}': {src.path} is a single table (split 'train'); "
                            f"leave {src.key}.split unset")
        table = _open_frame(src, kind, files)
    else:
        table = _open_dataset(src, kind)
    if table.num_rows == 0:
        raise DataError(f"{table.label} has no rows")
    rows = src.selection(table.num_rows)
    if len(rows) == 0:
        raise DataError(f"{table.label}: {src.key}.select '{src.select}' keeps none of its {table.num_rows} rows")
    if src.sample is not None:
        if src.sample > len(rows):
            raise DataError(f"{table.label}: {src.key}.sample {src.sample} is more than the {len(rows)} rows there are"
                            + (f" after {src.key}.select" if src.select is not None else ""))
        rows = np.sort(np.random.default_rng(src.seed).choice(rows, size=src.sample, replace=False))
    table.rows = rows
    return table


def source_kind(path: str, key: str = "prompts") -> tuple[str, list[str]]:
    """(kind, local files or folder) of a ``path``; a missing local path is a DataError, a hub id has none."""
    p = Path(path)
    if p.is_file():
        return "file", [str(p)]
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{key}.path {path} matches no files")
        return "glob", files
    if p.is_dir():
        saved = (p / "dataset_dict.json").is_file() or (p / "state.json").is_file()
        return ("save_to_disk" if saved else "folder"), [str(p)]
    if _looks_local(path):
        what = "file" if path.lower().endswith(FILE_SUFFIXES) else "path"
        raise DataError(f"{key} {what} {path} does not exist (config key {key}.path)")
    return "hub", []


def local_inputs(path: str | None) -> list[str]:
    """The local files or folder a source reads (a rule's inputs, so that an edit re-runs it); none for
    a hub id or a path that does not exist (the start-up check reports that)."""
    if not path:
        return []
    try:
        return source_kind(path)[1]
    except DataError:
        return []


def _looks_local(path: str) -> bool:
    """A path that cannot be a hub id (``name`` or ``org/name``): absolute, relative with ./ or ../,
    deeper than one slash, or ending in a data file suffix."""
    return (Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
            or path.lower().endswith(FILE_SUFFIXES))


def _refuse(src: Source, keys: tuple[str, ...], what: str) -> None:
    """DataError for a key set where it has no meaning (a config or revision of a single file, ...)."""
    for key in keys:
        if getattr(src, key):
            raise DataError(f"{src.key}.{key} does not apply to {what} ({src.path}); leave it unset")


# --- pandas: single files and globs ------------------------------------------------------------------


def read_file(path: Path, what: str = "prompts") -> pd.DataFrame:
    """One JSONL/JSON/CSV/Parquet file as a DataFrame (CSV cells as text); DataError naming the file."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty; it needs at least one row")
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding="utf-8")
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{what} file {path} is not valid UTF-8 (byte {err.start}); re-encode it as UTF-8") from err
    except ValueError as err:
        raise DataError(f"{what} file {path} could not be parsed as {suffix[1:]}: {err}") from err
    raise DataError(f"{what} file {path} has unsupported extension '{suffix}'; use .jsonl, .json, .csv or .parquet")


def _open_frame(src: Source, kind: str, files: list[str]) -> SourceTable:
    """A single file or the files of a glob, concatenated, as one table."""
    frames = [read_file(Path(f), src.key) for f in files]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    label = f"{src.key} file {files[0]}" if kind == "file" else f"{src.key} files {src.path} ({len(files)} files)"
    return SourceTable(src, label, kind, list(df.columns), len(df), np.arange(len(df)),
                       lambda rows, cols: df.iloc[rows][cols], files=files)


# --- Hugging Face datasets: save_to_disk folders, dataset folders, hub ids -------------------------


def _open_dataset(src: Source, kind: str) -> SourceTable:
    """A save_to_disk folder, dataset folder or hub id, opened with datasets (rows read only on demand)."""
    import datasets

    if kind == "save_to_disk":
        _refuse(src, ("name", "revision"), "a save_to_disk folder")
        try:
            loaded = datasets.load_from_disk(src.path)
        except Exception as err:  # a damaged folder: missing Arrow files, unreadable state.json, ...
            raise DataError(f"{src.key} dataset {src.path} (a save_to_disk folder) could not be loaded: "
                            f"{_one_line(err)}") from err
    else:
        if kind == "folder":
            _refuse(src, ("revision",), "a local folder")
        loaded = _load_dataset(src, kind)
    ds, split = _pick_split(loaded, src)
    info = {"split": split, "fingerprint": ds._fingerprint}
    if kind == "hub":
        info["commit"] = _cached_commit(ds, src)
    label = f"{src.key} dataset {src.path} (" + (f"config {src.name}, " if src.name else "") + f"split {split})"
    return SourceTable(src, label, kind, list(ds.column_names), ds.num_rows, np.arange(ds.num_rows),
                       lambda rows, cols: ds.select_columns(cols).select(rows).to_pandas(), info=info)


def _load_dataset(src: Source, kind: str):
    """``datasets.load_dataset`` of a folder or hub id (every split), its errors as one-line DataErrors."""
    import datasets

    try:
        return datasets.load_dataset(src.path, name=src.name, revision=src.revision if kind == "hub" else None)
    except (ConnectionError, FileNotFoundError) as err:
        if kind == "hub":
            raise DataError(_not_cached(src, datasets.config.HF_DATASETS_CACHE, datasets.config.HF_HUB_OFFLINE)) from err
        raise DataError(f"{src.key} dataset {src.path}: {_one_line(err)}") from err
    except ValueError as err:
        raise DataError(_config_problem(src, _one_line(err))) from err
    except Exception as err:  # datasets raises many types (DatasetNotFoundError, EmptyDatasetError, ...)
        raise DataError(f"{src.key} dataset {src.path} could not be loaded: {_one_line(err)}") from err


def _not_cached(src: Source, cache: str, offline: bool) -> str:
    """The message for a hub id that is neither cached nor (offline) downloadable: how to fill the cache."""
    args = ", ".join([repr(src.path)] + [f"{k}={v!r}" for k, v in (("name", src.name), ("revision", src.revision)) if v])
    where = f"HF_DATASETS_CACHE={cache}"
    if not offline:
        return (f"{src.key}.path: dataset {src.path} is neither a local file or folder nor reachable on the Hugging "
                f"Face Hub, and it is not in the datasets cache ({where})")
    return (f"{src.key}.path: dataset {src.path} is not a local file or folder and not in the Hugging Face datasets "
            f"cache ({where}; jobs run with HF_HUB_OFFLINE=1, nothing is downloaded). Fill the cache on a machine "
            f"with hub access and the same HF_DATASETS_CACHE: python -c \"import datasets; "
            f"datasets.load_dataset({args})\"; or save it there with save_to_disk and give that folder")


def _config_problem(src: Source, msg: str) -> str:
    """A one-line message for datasets' config errors (unknown config, several configs and none named)."""
    found = re.search(r"Available(?: configs in the cache)?: \[([^\]]*)\]", msg) \
        or re.search(r"configurations in the cache: ([^.]*?)(?: Please|$)", msg) \
        or re.search(r"available configs: \[([^\]]*)\]", msg)
    configs = found.group(1).replace("'", "") if found else None
    if src.name and ("not found" in msg or "Couldn't find cache" in msg):
        return f"{src.key}.name '{src.name}' is not a config of dataset {src.path}" + (
            f"; configs: {configs}" if configs else f": {msg}")
    if not src.name and configs:
        return f"dataset {src.path} has several configs ({configs}); choose one with {src.key}.name"
    return f"{src.key} dataset {src.path} could not be loaded: {msg}"


def _pick_split(loaded, src: Source):
    """The configured split of a DatasetDict (``train`` or the only split when unset)."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        if src.split not in (None, "train"):
            raise DataError(f"{src.key}.split '{src.split}': {src.path} holds a single table (split 'train'); "
                            f"leave {src.key}.split unset")
        return loaded, "train"
    splits = list(loaded)
    split = src.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if split is None:
        raise DataError(f"dataset {src.path} has several splits ({', '.join(splits)}) and none is 'train'; "
                        f"choose one with {src.key}.split")
    if split not in splits:
        hint = f" (rows: {src.key}.select)" if "[" in split else ""
        raise DataError(f"{src.key}.split '{split}' is not a split of dataset {src.path}"
                        + (f" (config {src.name})" if src.name else "") + f"; splits: {', '.join(splits)}{hint}")
    return loaded[split], split


def _cached_commit(ds, src: Source) -> str | None:
    """The hub commit a cached dataset was prepared from (datasets names the cache folder after it);
    a ``revision`` that is a commit must be the one found."""
    files = ds.cache_files
    commit = Path(files[0]["filename"]).parent.name if files else None
    rev = (src.revision or "").lower()
    if commit and _COMMIT.match(rev) and not commit.startswith(rev):
        raise DataError(f"{src.key}.revision {src.revision}: the datasets cache holds dataset {src.path} at commit "
                        f"{commit} (offline, datasets loads the newest cached version); fill the cache with that "
                        "revision or set revision to the cached commit")
    return commit


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (datasets' messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _files_sha256(files: list[str]) -> str:
    """SHA-256 over the bytes of the files, in order."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
