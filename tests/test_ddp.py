"""Data-parallel training: 2 CPU processes (DDP over gloo) give the same model as 1 process with
the same global batch (batch b × 2 processes vs batch b × 2 accumulation steps)."""

from dataclasses import asdict

import pytest
import torch
from test_model_units import _pairs_table

from nashflow.launch import launch_training
from nashflow.models import load_model
from nashflow.settings import LossConfig, TrainConfig

pytestmark = pytest.mark.slow


def _spec(tmp_path, model_dir, out, grad_accum):
    return {"policy_path": str(model_dir), "pairs_path": str(tmp_path / "pairs.parquet"),
            "logps": {"reference": [str(tmp_path / "ref.parquet")], "history": []},
            "output_dir": str(tmp_path / out), "metrics_path": str(tmp_path / f"{out}.csv"), "threads": 1,
            "train": asdict(TrainConfig(learning_rate=1e-3, batch_size=1, grad_accum=grad_accum, epochs=1,
                                        max_length=96, max_prompt_length=64, warmup_ratio=0.0, report_to=())),
            "loss": asdict(LossConfig(name="dpo", beta=0.1)), "progress": False}


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, tiny_model):
    model, tok = tiny_model
    _pairs_table(tmp_path, tok, model)
    launch_training(_spec(tmp_path, tiny_model_dir, "one", grad_accum=2), n_gpus=0,
                    log_path=str(tmp_path / "one.log"))
    launch_training(_spec(tmp_path, tiny_model_dir, "ddp", grad_accum=1), n_gpus=0, cpu_processes=2,
                    log_path=str(tmp_path / "ddp.log"))
    ddp_log = (tmp_path / "ddp.log").read_text()
    one, ddp = load_model(tmp_path / "one").state_dict(), load_model(tmp_path / "ddp").state_dict()
    base = load_model(tiny_model_dir).state_dict()
    assert not all(torch.equal(one[k], base[k]) for k in one)  # it trained
    worst = max(float((one[k] - ddp[k]).abs().max()) for k in one)
    assert worst < 1e-5, f"DDP differs from 1 process by {worst}\n{ddp_log[-2000:]}"
    from nashflow.io import read_provenance

    assert read_provenance(tmp_path / "ddp")["processes"] == 2 and read_provenance(tmp_path / "one")["processes"] == 1
    assert read_provenance(tmp_path / "ddp")["steps"] == read_provenance(tmp_path / "one")["steps"] == 3
