"""Fixtures: a tiny random Llama model and a BPE tokenizer with a ChatML template, built here
(no download), plus helpers to run the workflow on them in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "resources" / "prompts" / "default.jsonl"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from nashflow.testing import (  # noqa: E402,F401  (tests import them from here)
    BRACKETS,
    CHATML,
    build_tiny_gpm,
    build_tiny_judge,
    build_tiny_model,
    build_tiny_reward_model,
    build_tiny_tokenizer,
)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one state per process: an Accelerator made in one test (TRL's DPOTrainer picks
    bf16 mixed precision on a CPU with fast bf16) would hand its settings to the next test's trainer.
    Jobs never share a process, so only the tests need this."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from nashflow.models import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def tiny_config(model_dir: Path, **overrides) -> dict:
    """A config for the tiny model: small, fast, with a reward that varies on random text."""
    cfg = {
        "run": "tiny",
        "seed": 7,
        "iterations": 2,
        "shards": 2,
        "base_model": {"path": str(model_dir)},
        "prompts": {"path": str(PROMPTS), "id_column": "id", "eval_size": 8, "prompts_per_iteration": 8},
        "generation": {"samples_per_prompt": 3, "max_new_tokens": 12, "temperature": 1.0, "batch_size": 8},
        "scorer": {"components": [{"type": "length", "args": {"scale": 10}}]},
        "algorithm": {"name": "dpo", "beta": 0.1},
        "training": {"learning_rate": 1.0e-3, "epochs": 1, "batch_size": 2, "max_length": 96,
                     "max_prompt_length": 64, "checkpoint_every": 1},
        "evaluation": {"max_new_tokens": 12, "batch_size": 8},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(workdir: Path, cfg: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _no_slurm_probe_path() -> str:
    """PATH with a failing ``scontrol`` first. The SLURM executor plugin (installed with the slurm
    extra) runs ``scontrol show config`` whenever Snakemake starts, with any executor; on a machine
    with SLURM's client but no controller that waits 10 s. Runs that do not submit to SLURM skip it."""
    stub = Path(tempfile.gettempdir()) / "nashflow-test-no-scontrol"
    if not (stub / "scontrol").exists():
        stub.mkdir(exist_ok=True)
        (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (stub / "scontrol").chmod(0o755)
    return f"{stub}{os.pathsep}{os.environ.get('PATH', '')}"


def snakemake(workdir: Path, *args: str, config: Path | None = None, timeout: int = 900,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config or workdir / "config.yaml"), *args]
    env = None if "--profile" in args else {**os.environ, "PATH": _no_slurm_probe_path()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run of the whole tiny DAG (2 iterations, 2 shards), shared by the tests
    that compare against it; tests must leave it as they found it."""
    wd = tmp_path_factory.mktemp("full")
    write_config(wd, tiny_config(tiny_model_dir))
    snakemake(wd, "--cores", "2")
    return wd


# Fast polling of the test SLURM (scripts/slurm_single_node.sh) by the shipped profile's plugin.
SLURM_FAST = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
              "--slurm-no-account", "--latency-wait", "5"]


@pytest.fixture(scope="session")
def slurm():
    """The test SLURM, started once (needs root and apt-get; otherwise the tests using it skip, saying why)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_single_node.sh"), "start"], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 3:
        reason = proc.stderr.strip().splitlines()[-1]
        print(f"SKIP SLURM tests: {reason}")
        pytest.skip(f"no SLURM here: {reason}")
    assert proc.returncode == 0, proc.stderr
    return True


def dataset_folder(folder: Path, splits: dict[str, list[dict]], config: str = "default") -> Path:
    """A dataset folder as on the Hub: one Parquet file per split under data/, and a README whose YAML
    header declares the config and its splits (what `datasets.load_dataset(folder, config)` reads)."""
    import pandas as pd

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pd.DataFrame(rows).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    files = "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in splits)
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n{files}---\n")
    return folder


def cache_hub_dataset(cache: Path, repo_id: str, splits: dict[str, list[dict]], config: str = "default",
                      commit: str = "c0ffee" + "0" * 34) -> Path:
    """Put a dataset into a Hugging Face datasets cache as `datasets.load_dataset(repo_id, config)` leaves
    it after a download (datasets 5.x layout `<org>___<name>/<config>/<version>/<commit>/` with the
    Arrow files and dataset_info.json), so that it loads offline by its hub id. The Arrow files are
    prepared by datasets itself from a local dataset folder of the same name; only the folder is renamed."""
    import shutil
    import tempfile

    import datasets

    org, name = repo_id.split("/")
    with tempfile.TemporaryDirectory() as tmp:
        src = dataset_folder(Path(tmp) / name, splits, config)
        builder = datasets.load_dataset_builder(str(src), name=config, cache_dir=str(Path(tmp) / "cache"))
        builder.download_and_prepare()
        dest = cache / f"{org}___{name}" / config / str(builder.config.version) / commit
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(builder.cache_dir, dest)
    return dest
