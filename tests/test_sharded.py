"""The trainer under the real DeepSpeed (ZeRO-2, ZeRO-3) and FSDP2 on 2 CPU processes over gloo,
launched through ``accelerate launch`` with the shipped configs as a train job does: training
finishes, the processes really hold shards (ZeRO-3, FSDP), the saved folder reloads with full-size
tensors, and the weights equal a single process's with the same global batch (batch 1 x 2
processes vs batch 1 x 2 accumulation steps) to 1e-5 (gradients clipped at ``max_grad_norm`` 0.5,
well under their norms of 2-5 here, so DeepSpeed must clip with our value, not its default 1.0),
for tied and untied embeddings and for the packed (DPO), per-token (Nash-MD, padded) and
best-validation (COMAL) paths. A job killed after a training state resumes from it and still
equals the uninterrupted single process.

DeepSpeed is the ``deepspeed`` extra (scripts/setup.sh installs it); these tests are skipped only
where it is not installed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import REPO
from test_model_units import _pairs_table

from nashflow.launch import launch_training
from nashflow.models import load_model, load_tokenizer
from nashflow.settings import LossConfig, TrainConfig

pytestmark = pytest.mark.slow
CONFIGS = REPO / "config" / "accelerate"


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    """Tied (the shared tiny model) and untied tiny models, one pairs table and reference log-probs."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("sharded")
    tok = load_tokenizer(tiny_model_dir)
    tied = load_model(tiny_model_dir)
    cfg = tied.config.to_dict() | {"tie_word_embeddings": False}
    torch.manual_seed(1)
    untied = LlamaForCausalLM(type(tied.config)(**cfg))
    untied.generation_config = tied.generation_config
    untied.save_pretrained(root / "untied", safe_serialization=True)
    tok.save_pretrained(root / "untied")
    _pairs_table(root, tok, tied)
    return {"root": root, "tied": Path(tiny_model_dir), "untied": root / "untied", "done": {}}


def _spec(work, model, out, grad_accum, loss="dpo", epochs=1, select_best=False, checkpoint_every=0):
    root = work["root"]
    loss_cfg = LossConfig(name=loss, beta=0.1, select_best=select_best, val_fraction=0.2)
    return {"policy_path": str(work[model]), "pairs_path": str(root / "pairs.parquet"),
            "logps": {"reference": [str(root / "ref.parquet")], "history": []},
            "output_dir": str(root / out), "metrics_path": str(root / f"{out}.csv"), "threads": 1,
            "train": asdict(TrainConfig(learning_rate=1e-3, batch_size=1, grad_accum=grad_accum, epochs=epochs,
                                        max_length=96, max_prompt_length=64, warmup_ratio=0.0, report_to=(),
                                        checkpoint_every=checkpoint_every, max_grad_norm=0.5)),
            "loss": asdict(loss_cfg), "progress": False, "state_dir": str(root / f"{out}.state")}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder).state_dict()


def _single_process(work, model, loss, **kw) -> Path:
    """The reference: one process, 2 accumulation steps (cached per setting)."""
    key = f"one-{model}-{loss}-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
    if key not in work["done"]:
        launch_training(_spec(work, model, key, 2, loss, **kw), n_gpus=0, log_path=str(work["root"] / f"{key}.log"))
        work["done"][key] = work["root"] / key
    return work["done"][key]


def _sharded(work, kind, model, loss, **kw) -> tuple[Path, str]:
    out = f"{kind}-{model}-{loss}-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
    log = work["root"] / f"{out}.log"
    launch_training(_spec(work, model, out, 1, loss, **kw), n_gpus=0, cpu_processes=2,
                    accelerate_config=str(CONFIGS / f"{kind}.yaml"), log_path=str(log))
    return work["root"] / out, log.read_text()


def _assert_equal_to(reference: Path, got: Path, log: str):
    one, two = _weights(reference), _weights(got)
    base = _weights(Path(json.loads((got / "provenance.json").read_text())["parents"]["policy_init"]))
    assert one.keys() == two.keys()
    assert all(one[k].shape == two[k].shape for k in one), "the saved weights are not full size"
    assert not all(torch.equal(one[k], base[k]) for k in one), "nothing trained"
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"{got.name}: largest weight difference to one process {worst:.2e}")
    assert worst < 1e-5, f"differs from 1 process by {worst}\n{log[-3000:]}"


SHARDS = [  # (accelerate config, model, loss): each path of the trainer under each sharding
    ("zero2", "tied", "dpo"),
    ("zero3", "untied", "dpo"),
    ("zero3", "tied", "nash_md"),
    ("fsdp", "tied", "dpo"),
    ("fsdp", "untied", "nash_md"),
]


@pytest.mark.parametrize("kind,model,loss", SHARDS)
def test_two_sharded_processes_equal_one(work, kind, model, loss):
    pytest.importorskip("deepspeed") if kind.startswith("zero") else None
    got, log = _sharded(work, kind, model, loss)
    prov = json.loads((got / "provenance.json").read_text())
    assert prov["processes"] == 2 and prov["distributed"] == ("FSDP" if kind == "fsdp" else "DEEPSPEED"), prov
    held = [tuple(map(int, m)) for m in re.findall(r"this one holds (\d+) of (\d+) parameter values", log)]
    assert len(held) == 2, log[-3000:]
    if kind in ("zero3", "fsdp"):  # each process holds about half of the weights
        assert all(h < t for h, t in held) and sum(h for h, _ in held) >= held[0][1], held
    else:
        assert all(h == t for h, t in held)
    _assert_equal_to(_single_process(work, model, loss), got, log)


def test_fsdp_best_validation_state_is_gathered_by_every_process(work):
    """COMAL's select_best: the best state is gathered collectively at each validation, saved by one."""
    got, log = _sharded(work, "fsdp", "untied", "dpo", epochs=2, select_best=True)
    prov = json.loads((got / "provenance.json").read_text())
    assert "best_step" in prov
    _assert_equal_to(_single_process(work, "untied", "dpo", epochs=2, select_best=True), got, log)


@pytest.mark.parametrize("kind", ["zero3", "fsdp"])
def test_killed_sharded_job_resumes_from_its_state(work, kind):
    if kind.startswith("zero"):
        pytest.importorskip("deepspeed")
    out = f"resume-{kind}"
    spec = _spec(work, "tied", out, 1, "dpo", epochs=4, checkpoint_every=1)
    state = Path(spec["state_dir"]) / "current" / "meta.pt"
    log = work["root"] / f"{out}.log"
    script = ("import json, sys\nfrom nashflow.launch import launch_training\n"
              f"launch_training(json.loads(sys.argv[1]), n_gpus=0, cpu_processes=2, "
              f"accelerate_config={str(CONFIGS / f'{kind}.yaml')!r}, log_path={str(log)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)], start_new_session=True)
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, accelerate and both trainer processes
    proc.wait()
    assert state.exists() and not Path(spec["output_dir"]).exists(), "the job finished before it could be killed"
    launch_training(spec, n_gpus=0, cpu_processes=2, accelerate_config=str(CONFIGS / f"{kind}.yaml"),
                    log_path=str(log))
    text = log.read_text()
    assert "resumed from the training state at optimizer step" in text, text[-3000:]
    assert not Path(spec["state_dir"]).exists()  # removed once the model is saved
    _assert_equal_to(_single_process(work, "tied", "dpo", epochs=4), Path(spec["output_dir"]), text)
