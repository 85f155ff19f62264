"""Local GPU pool: concurrent jobs get disjoint devices; SLURM's assignment is left alone."""

import os
import subprocess
import sys
import time

import pytest

from nashflow.devices import claim_gpus
from nashflow.errors import NashflowError

HOLD = """
import os, sys, time
from pathlib import Path
from nashflow.devices import claim_gpus
got = claim_gpus(int(sys.argv[1]), lock_dir=Path(sys.argv[2]), timeout=float(sys.argv[3]))
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(float(sys.argv[4]))
"""


def _job(n, lock_dir, hold, timeout=5.0):
    env = {**os.environ, "NASHFLOW_GPUS": "0,1,2"}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, "-c", HOLD, str(n), str(lock_dir), str(timeout), str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_concurrent_jobs_get_disjoint_devices_and_free_them_when_they_end(tmp_path):
    a = _job(2, tmp_path, hold=3)
    time.sleep(1.5)
    b = _job(1, tmp_path, hold=0)
    out_a, out_b = a.communicate(timeout=30)[0].strip(), b.communicate(timeout=30)[0].strip()
    assert sorted(out_a.split(",") + out_b.split(",")) == ["0", "1", "2"]
    c = _job(3, tmp_path, hold=0)  # all three free again once a and b ended
    assert c.communicate(timeout=30)[0].strip() == "0,1,2"
    a = _job(3, tmp_path, hold=3)  # killed: the OS drops its locks
    time.sleep(1.5)
    a.kill()
    a.wait()
    assert _job(1, tmp_path, hold=0).communicate(timeout=30)[0].strip() == "0"


def test_too_many_or_none_free(tmp_path, monkeypatch):
    monkeypatch.setenv("NASHFLOW_GPUS", "0,1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(NashflowError, match="asks for 3 GPU"):
        claim_gpus(3, lock_dir=tmp_path)
    holder = _job(2, tmp_path, hold=4)
    time.sleep(1.5)
    with pytest.raises(NashflowError, match="no 1 free GPU"):
        claim_gpus(1, lock_dir=tmp_path, timeout=0.5)
    holder.wait()


def test_slurm_and_cpu_jobs_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim_gpus(1, lock_dir=tmp_path) == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert claim_gpus(0, lock_dir=tmp_path) == []
