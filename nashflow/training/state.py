"""The resumable training state: where training stands (:class:`Progress`) and its atomic save and
load (:class:`TrainState`), keyed by a fingerprint of the inputs and settings."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nashflow.io import config_hash
from nashflow.settings import LossConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands: the optimizer step, the metric rows, the tokens seen by this process and
    the best validation state so far (step 0 = the initial policy). All but the clock is saved."""

    step: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    best_val_loss: float | None = None
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    t0: float = field(default_factory=time.time)

    def meta(self) -> dict[str, Any]:
        return {"step": self.step, "rows": self.rows, "tokens": self.tokens, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step, "best_state": self.best_state}

    def restore(self, meta: dict[str, Any]) -> None:
        self.step, self.rows, self.tokens = int(meta["step"]), list(meta["rows"]), int(meta["tokens"])
        self.best_val_loss, self.best_step = meta["best_val_loss"], int(meta["best_step"])
        self.best_state = meta["best_state"]


class TrainState:
    """A resumable training state outside the job's declared outputs (Snakemake deletes those when a
    job fails), saved every ``checkpoint_every`` optimizer steps into ``<folder>/current``:
    accelerate's ``save_state`` (weights, optimizer and scheduler; one shard per rank under
    DeepSpeed and FSDP, written collectively) and ``meta.pt`` (step, metric rows, the best validation
    state, loaded with ``torch.load(weights_only=True)``: no pickled code). A new state is written
    beside the old one and renamed into place; a kill between the two renames leaves the old one as
    ``previous``, which is then loaded, so a kill never leaves a torn or lost state. A state is used
    only when its fingerprint (inputs, settings, processes) matches; it is removed once the model is
    saved."""

    def __init__(self, acc, folder: str | None, fingerprint: str):
        self.acc = acc
        self.folder = Path(folder) if folder else None
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path | None:
        return self.folder / "current" if self.folder else None

    def load(self) -> dict[str, Any] | None:
        """The saved meta data, with model, optimizer and scheduler restored (every rank), or None."""
        if self.folder is None:
            return None
        found = [p for p in (self.path, self.folder / "previous") if (p / "meta.pt").exists()]
        if not found:
            return None
        path = found[0]
        try:
            meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # a torn file cannot happen (atomic rename), a foreign one can
            log.warning("ignoring unreadable training state %s: %s", path, err)
            return None
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("ignoring training state %s: it was made with other inputs or settings", path)
            return None
        self.acc.load_state(str(path))
        return meta

    def save(self, meta: dict[str, Any]) -> None:
        """Collective: every rank calls it."""
        if self.folder is None:
            return
        nxt, old = self.folder / "next", self.folder / "previous"
        if self.acc.is_main_process:
            shutil.rmtree(nxt, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(nxt), safe_serialization=True)
        self.acc.wait_for_everyone()  # every rank has written its shard (and its RNG state) before the rename
        if self.acc.is_main_process:
            torch.save({**meta, "fingerprint": self.fingerprint}, nxt / "meta.pt")
            shutil.rmtree(old, ignore_errors=True)
            if self.path.exists():
                self.path.rename(old)
            nxt.rename(self.path)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def clear(self) -> None:
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.exists():
        return ""
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def fingerprint(*, policy_path: str, pairs_path: str, logps: dict[str, Any], train_cfg: TrainConfig,
                loss_cfg: LossConfig, processes: int, distributed: str) -> str:
    """What a saved state must have been made with to be resumed: the inputs (paths, and the size and
    mtime of the policy weights and the pairs), the settings and the processes."""
    return config_hash([policy_path, _file_digest(str(Path(policy_path) / "model.safetensors")), pairs_path,
                        _file_digest(pairs_path), logps, asdict(train_cfg), asdict(loss_cfg), processes, distributed])
