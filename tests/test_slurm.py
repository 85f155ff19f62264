"""The tiny DAG through a real single-node SLURM (scripts/slurm_single_node.sh) with the shipped
profile, profiles/slurm: jobs go through sbatch (SLURM job ids in the logs), the outputs equal a
local run's byte for byte, a job that fails once is retried by the profile, and a job that SLURM
requeues (as on preemption) leaves no duplicate or partial outputs. Skipped, with the reason, only
where SLURM cannot be installed or started (no root, no apt-get)."""

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, SLURM_FAST, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

FLAKY = '''
from pathlib import Path


def reward(messages, response):
    """Length reward that fails the first time it runs in a workdir (a transient fault)."""
    marker = Path("flaky_failed_once")
    if not marker.exists():
        marker.write_text("")
        raise RuntimeError("transient failure (first attempt)")
    return float(len(response))
'''

# The shipped profile, with resources that fit the test node (2 CPUs, 2 fake GPUs) and fast polling.
SMALL = ["--set-resources"] + [f"{r}:gpu=0" for r in ("generate", "score", "logps", "train", "eval_generate",
                                                          "eval_metrics")] + \
        [f"{r}:mem_mb=1500" for r in ("generate", "score", "logps", "train", "eval_generate", "eval_metrics",
                                      "export_answers")] + ["export_answers:gpu=1"] + \
        ["--set-threads"] + [f"{r}=1" for r in ("generate", "score", "logps", "train", "eval_generate")] + \
        SLURM_FAST


def test_profile_dry_run_needs_no_cluster(tmp_path, tiny_model_dir):
    write_config(tmp_path, tiny_config(tiny_model_dir))
    bin_dir = tmp_path / "bin"  # basic tools only: no sbatch, squeue, sinfo or sacct to be found
    bin_dir.mkdir()
    for tool in ("which", "sh", "bash", "uname", "git"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    cmd = [os.sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(tmp_path / "config.yaml"),
           "-n"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train" in out.stdout and "gpu=8" in out.stdout


def test_profile_by_name_after_setup(tmp_path, tiny_model_dir):
    """`snakemake --profile slurm`, typed in the repository root, finds the profile once
    scripts/setup.sh has linked it into the user's Snakemake folder; a profile of that name the
    user already has is left alone."""
    write_config(tmp_path, tiny_config(tiny_model_dir))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "SNAKEMAKE_PROFILE")}
    env["HOME"] = str(home)
    cmd = [os.sys.executable, "-m", "snakemake", "--profile", "slurm", "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "-n"]
    before = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert before.returncode != 0 and "profile directory given (slurm)" in before.stderr
    setup = [str(REPO / "scripts" / "setup.sh"), "--profiles-only"]
    subprocess.run(setup, check=True, env=env, timeout=60)
    linked = home / ".config" / "snakemake" / "slurm"
    assert linked.resolve() == (REPO / "profiles" / "slurm").resolve()
    after = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "train" in after.stdout and "gpu=8" in after.stdout
    # run again: nothing changes; someone else's `slurm` profile stays as it is, with a note
    linked.unlink()
    linked.mkdir()
    out = subprocess.run(setup, check=True, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "is another profile, left as it is" in out and linked.is_dir() and not linked.is_symlink()


def tables(root: Path) -> dict[str, bytes]:
    res = root / "results"
    files = sorted(res.rglob("*.parquet")) + sorted(res.rglob("model.safetensors"))
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _requeue_train_once(wd: Path, stop: threading.Event, seen: dict) -> None:
    """Like a preemption: once the train job has saved a training state (the trainer is held
    stopped from then on, so it cannot finish first), SLURM requeues it."""
    from test_crash_resume import freeze_trainer_after_a_state

    while not stop.is_set():
        if freeze_trainer_after_a_state(wd, time.time() + 600):
            out = subprocess.run(["squeue", "-h", "-o", "%i %j %k"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if "train" in line:
                    job = line.split()[0]
                    subprocess.run(["scontrol", "requeue", job], check=False)
                    # the stopped trainer ignores SLURM's SIGTERM; SIGKILL follows after KillWait (5 s here)
                    # a requeued job waits for its BeginTime (about 2 minutes), as a preempted job on a
                    # busy cluster would; here it may start again as soon as it is pending
                    for _ in range(120):
                        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                               text=True).stdout.strip()
                        if state == "PENDING":
                            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
                            break
                        time.sleep(0.5)
                    seen["requeued"] = job
                    return
        time.sleep(0.2)


def test_tiny_dag_through_slurm_with_a_retry_and_a_requeue(slurm, tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "flaky.py").write_text(FLAKY)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cfg = tiny_config(tiny_model_dir, iterations=1, shards=1,
                      scorer={"components": [{"type": "python", "args": {"function": "flaky:reward"}}]})
    cfg["training"]["epochs"] = 2  # long enough to be requeued mid-way
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for wd in (local, remote):
        write_config(wd, cfg)
    (local / "flaky_failed_once").write_text("")  # the local reference never fails
    # iteration 1 up to its model, and the base model's evaluation and export (which asks for a GPU)
    targets = ["results/tiny/iter1/model", "results/tiny/iter0/eval/alpaca_eval.json"]
    snakemake(local, "--cores", "2", *targets)

    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=_requeue_train_once, args=(remote, stop, seen), daemon=True)
    watcher.start()
    try:
        proc = snakemake(remote, "--profile", str(REPO / "profiles" / "slurm"), *targets, *SMALL, timeout=1500,
                         check=False)
    finally:
        stop.set()
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    # every job went through SLURM: "Job <n> has been submitted with SLURM jobid <id>"
    ids = re.findall(r"SLURM jobid (\d+)", text)
    assert len(ids) >= 8, text[-3000:]
    assert list((remote / "logs" / "slurm").rglob("*.log"))
    # the transient failure was retried (a second attempt of the score job)
    assert (remote / "flaky_failed_once").exists()
    assert re.search(r"rule score.*\n(.*\n)*?.*attempt: 2|Trying to restart job", text) or text.count("rule score") >= 2
    # the requeued training resumed from its state and left one model, no temporaries, no state
    assert seen.get("requeued"), "the train job was never requeued"
    res = remote / "results" / "tiny"
    assert not list(res.rglob("*.tmp")) and not (res / "iter1" / "train_state").exists()
    train_log = (remote / "logs" / "tiny" / "iter1" / "train.log").read_text()
    assert "resumed from the training state at optimizer step" in train_log
    # the export job asked for a GPU: SLURM scheduled it on the fake GRES and set its devices
    export_log = (remote / "logs" / "tiny" / "iter0" / "eval" / "export.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=0" in export_log or "CUDA_VISIBLE_DEVICES=1" in export_log
    a, b = tables(local), tables(remote)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
