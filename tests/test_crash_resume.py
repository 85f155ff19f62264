"""Crash anywhere and resume: each job type is SIGKILLed at a random moment in one tiny run, the
same command is re-run after each kill, and at the end every deterministic output is byte-identical
to an uninterrupted run's and nothing that had finished was recomputed.

The kills come from outside, as a node failure or an OOM killer would: the job's process (the
`.snakemake/scripts/*.<script>.py` one) gets SIGKILL; its children (the trainer under accelerate)
die with it. The last kill takes Snakemake itself down with its jobs. Training is killed after it
saved a resumable state and must resume from it.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

JOBS = ["generate", "score", "build_pairs", "logps", "train", "eval_generate"]


def pids_matching(wd: Path, match) -> list[int]:
    """Processes with working directory ``wd`` whose command line satisfies ``match``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = [c.decode(errors="ignore") for c in (d / "cmdline").read_bytes().split(b"\0")]
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if cwd == str(wd) and match(cmd):
            pids.append(int(d.name))
    return pids


def job_pids(wd: Path, script: str) -> list[int]:
    """Processes running `<script>.py` of a Snakemake job in workdir ``wd``."""
    return pids_matching(wd, lambda cmd: any(c.endswith(f".{script}.py") for c in cmd))


def is_trainer(cmd: list[str]) -> bool:
    """The process that trains: the train job's own (one CPU process trains in the job, see
    nashflow.launch.train_in_process), or `python -m nashflow.training ...` under accelerate's
    launcher (not the launcher, whose arguments name it)."""
    return (len(cmd) > 2 and cmd[1:3] == ["-m", "nashflow.training"]) or any(c.endswith(".train.py") for c in cmd)


def freeze_trainer_after_a_state(wd: Path, deadline: float) -> bool:
    """Single-step the running trainer (SIGSTOP / 20 ms of SIGCONT) until it has saved a training
    state, and leave it stopped: the kill then lands mid-training however fast the tiny model is."""
    trainers = []
    while not trainers and time.time() < deadline:
        trainers = pids_matching(wd, is_trainer)
        time.sleep(0.01)
    if not trainers:
        return False
    pid = trainers[0]
    try:
        os.kill(pid, signal.SIGSTOP)
        while not any(wd.glob("results/tiny/iter*/train_state/current/meta.pt")) and time.time() < deadline:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
            os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    return any(wd.glob("results/tiny/iter*/train_state/current/meta.pt"))


def outputs(wd: Path) -> dict[str, int]:
    """Finished outputs (tables, model weights) and their mtimes."""
    res = wd / "results"
    files = list(res.rglob("*.parquet")) + list(res.rglob("model.safetensors"))
    return {str(p.relative_to(wd)): p.stat().st_mtime_ns for p in files
            if ".tmp" not in p.name and "train_state" not in p.parts}  # the resumable state is no output


def deterministic(wd: Path) -> dict[str, bytes]:
    res = wd / "results"
    files = sorted(res.rglob("*.parquet")) + sorted(res.rglob("model.safetensors"))
    return {str(p.relative_to(wd)): p.read_bytes() for p in files}


def run_and_kill(wd: Path, script: str, rng: random.Random, timeout: float = 600, whole_tree: bool = False) -> str:
    """Start the whole run; SIGKILL the first `script` job at a random moment (with ``whole_tree``,
    Snakemake and all its jobs, as when the node running Snakemake dies); wait for Snakemake."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
           "--configfile", str(wd / "config.yaml"), "--cores", "2", "--rerun-incomplete"]
    log = wd / f"run_{script}.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, killed = time.time() + timeout, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        if job_pids(wd, script):
            if script == "train":  # a moment after its first saved state, before it can finish
                if not freeze_trainer_after_a_state(wd, deadline):
                    continue
            time.sleep(rng.uniform(0.0, 0.8))  # a random moment of the job's life
            if whole_tree:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = proc.pid
            for pid in job_pids(wd, script):
                os.kill(pid, signal.SIGKILL)
                killed = pid
            for pid in pids_matching(wd, is_trainer):  # a stopped trainer: make sure it is gone
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert killed is not None, f"never caught a running {script} job:\n{text[-3000:]}"
    assert proc.returncode != 0, f"the run survived the kill of {script}"
    return text


def test_kill_each_job_type_then_resume(full_run, tmp_path, tiny_model_dir):
    wd = tmp_path / "crashy"
    write_config(wd, tiny_config(tiny_model_dir))
    rng = random.Random(20261121)
    history = []
    for script in JOBS:
        before = outputs(wd)
        last = script == JOBS[-1]
        run_and_kill(wd, script, rng, whole_tree=last)
        if last:  # a dead Snakemake leaves its lock behind: it cannot tell a dead run from a live one
            snakemake(wd, "--unlock")
        after = outputs(wd)
        # nothing that had finished before this attempt was rewritten by it
        changed = [p for p, m in before.items() if after.get(p) != m]
        assert not changed, f"finished outputs recomputed after killing {script}: {changed}"
        history.append((script, len(after)))
    # A file renamed into place just before Snakemake died, whose job it had not recorded as finished,
    # is "incomplete" and redone; every other finished file must be kept as it is.
    dry = snakemake(wd, "-n", check=False).stdout
    incomplete = set(dry.split("Incomplete files:")[1].split()) if "Incomplete files:" in dry else set()
    before = {p: m for p, m in outputs(wd).items() if p not in incomplete}
    final = snakemake(wd, "--cores", "2", "--rerun-incomplete")
    assert "Nothing to be done" not in final.stdout
    after = outputs(wd)
    assert not [p for p, m in before.items() if after[p] != m], "finished outputs were recomputed"
    # training was killed after saving a state and resumed from it; the state is gone once done
    logs = "".join(p.read_text() for p in (wd / "logs" / "tiny").glob("iter*/train.log"))
    assert "resumed from the training state at optimizer step" in logs
    assert not list(wd.glob("results/tiny/iter*/train_state/current/meta.pt"))
    a, b = deterministic(full_run), deterministic(wd)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"outputs differ from the uninterrupted run: {different}"
    assert [s for s, _ in history] == JOBS
