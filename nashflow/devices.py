"""GPUs for local jobs: each job that asks for ``gpu: n`` gets n devices of its own.

Snakemake's local executor counts the ``gpu`` resource (``--resources gpu=4`` caps the total) but
does not say *which* devices a job may use. ``claim_gpus`` picks free devices from the pool by
taking an exclusive lock file per device (released when the job's process ends, even by SIGKILL)
and sets ``CUDA_VISIBLE_DEVICES`` before CUDA starts, so concurrent jobs never share a GPU by
accident. Under SLURM (``SLURM_JOB_ID`` set) SLURM has already set the job's devices and nothing
is changed. The pool is ``NASHFLOW_GPUS`` (ids, "0,1,2,3"), else the devices the workflow itself
sees (``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from nashflow.errors import NashflowError

log = logging.getLogger(__name__)
LOCK_DIR = Path(".snakemake") / "nashflow_gpu_locks"
_held: list = []  # open lock files: the claim lasts as long as the process


def gpu_pool() -> list[str]:
    env = os.environ.get("NASHFLOW_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
    return []


def claim_gpus(n: int, *, lock_dir: Path = LOCK_DIR, timeout: float = 600.0) -> list[str]:
    """Claim ``n`` free devices of the pool for this process and expose only them."""
    if n <= 0 or os.environ.get("SLURM_JOB_ID"):
        return []
    pool = gpu_pool()
    if len(pool) < n:
        raise NashflowError(f"the job asks for {n} GPU(s) but {len(pool)} are visible "
                            f"({', '.join(pool) or 'none'}); lower its gpu resource or set NASHFLOW_GPUS")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + timeout
    while True:
        got = []
        for dev in pool:
            fh = open(lock_dir / f"gpu{dev}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            got.append((dev, fh))
            if len(got) == n:
                break
        if len(got) == n:
            _held.extend(fh for _, fh in got)
            devices = [d for d, _ in got]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            log.info("claimed GPU(s) %s of the pool %s", ",".join(devices), ",".join(pool))
            return devices
        for _, fh in got:
            fh.close()
        if time.time() > deadline:
            raise NashflowError(f"no {n} free GPU(s) in the pool {','.join(pool)} after {timeout:.0f} s; is "
                                "--resources gpu=<n> larger than the devices there are?")
        time.sleep(1.0)
