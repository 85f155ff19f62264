"""Logging for workflow jobs: everything (logging, warnings, tqdm) goes to the job's log file.

A :class:`~nashflow.errors.NashflowError` becomes one clear line on stderr (and in the log)
and exit status 1, instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from nashflow.errors import NashflowError


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in clock ticks
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def job_logging(log_path: str | None, gpus: int = 0) -> Iterator[None]:
    """Run a job body with its log file, offline defaults, and (local runs) its own ``gpus`` devices."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    orig_stderr = sys.stderr
    fh = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a", buffering=1)
        sys.stderr = fh
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    started, age = time.perf_counter(), process_age()
    if log_path and age is not None:  # benchmarks/perf.py reads these two lines: a job's fixed cost per rule
        logging.getLogger("nashflow").info("job start-up %.2f s (interpreter, Snakemake's script preamble, imports)",
                                           age)
    try:
        from nashflow.devices import claim_gpus

        claim_gpus(int(gpus or 0))
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        if devices is not None or os.environ.get("SLURM_JOB_ID"):
            logging.getLogger("nashflow").info("job %s on %s: CUDA_VISIBLE_DEVICES=%s",
                                               os.environ.get("SLURM_JOB_ID", "-"), os.uname().nodename, devices)
        yield
    except NashflowError as err:
        logging.getLogger("nashflow").error("%s", err)
        print(f"nashflow: error: {err}", file=orig_stderr)
        raise SystemExit(1) from None
    finally:
        if log_path and age is not None:
            logging.getLogger("nashflow").info("job body %.2f s", time.perf_counter() - started)
        sys.stderr = orig_stderr
        if fh:
            fh.close()
