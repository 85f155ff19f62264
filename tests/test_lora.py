"""LoRA (peft): only adapters train; the iterate holds the merged weights and its adapters. The
whole DAG with LoRA runs in tests/test_compare_e2e.py (its sppo run)."""

import json

import torch
from test_model_units import _pairs_table

from nashflow.models import load_model
from nashflow.settings import LossConfig, TrainConfig
from nashflow.training import train

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def test_adapters_train_and_the_merged_model_is_saved(tmp_path, tiny_model_dir, tiny_model):
    model, tok = tiny_model
    _pairs_table(tmp_path, tok, model)
    train(policy_path=str(tiny_model_dir), pairs_path=str(tmp_path / "pairs.parquet"),
          logps={"reference": [str(tmp_path / "ref.parquet")], "history": []},
          output_dir=str(tmp_path / "out"), metrics_path=str(tmp_path / "m.csv"),
          train_cfg=TrainConfig(learning_rate=5e-3, batch_size=2, epochs=2, max_length=96, max_prompt_length=64,
                                warmup_ratio=0.0, lora=LORA, report_to=()),
          loss_cfg=LossConfig(name="dpo", beta=0.1), progress=False)
    out = tmp_path / "out"
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and (out / "adapter" / "adapter_model.safetensors").exists()
    merged = load_model(out).state_dict()
    base = load_model(tiny_model_dir).state_dict()
    assert merged.keys() == base.keys()  # a plain causal LM: no peft keys left
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    # LoRA reaches the linear layers only: embeddings and norms stay as they were
    assert changed and all("proj" in k for k in changed)
    assert not any("embed" in k or "norm" in k for k in changed)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["lora"]["r"] == 4


def test_the_model_dropout_is_off_and_the_adapters_keep_theirs(tiny_model_dir):
    """As TRL's disable_dropout: the policy's own dropout is 0 in training; training.lora.dropout
    reaches the adapters."""
    from nashflow.training.trainer import prepare_policy

    model = prepare_policy(str(tiny_model_dir), TrainConfig(lora={**LORA, "dropout": 0.3}), "sdpa")
    dropouts = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    adapters = {n: p for n, p in dropouts.items() if "lora_dropout" in n}
    assert adapters and set(adapters.values()) == {0.3}
    assert all(p == 0.0 for n, p in dropouts.items() if n not in adapters)
