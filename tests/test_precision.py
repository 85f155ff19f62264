"""The ``compute`` section: dtype per stage (bf16_on_gpu, auto with a measured CPU check, explicit),
attention implementation per model load, bf16 end to end (reference log-probs and the trainer's
first step agree), the stored checkpoint dtype, and models split across devices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO

from nashflow import onednn, precision
from nashflow.config import validate_config
from nashflow.errors import ConfigError, DataError
from nashflow.io import read_provenance, write_table
from nashflow.logps import encode_pair_side, packing_mode, sequence_logps
from nashflow.models import load_for_stage, load_model, load_tokenizer
from nashflow.placement import GIB, gpus_needed, parameter_count, plan
from nashflow.precision import resolve, stage_compute

SETTINGS = {"dtype": "float32", "attn_implementation": "sdpa", "memory_headroom": 0.25}


def _config(**compute):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["compute"] = compute
    return validate_config(cfg, REPO / "config" / "schema.yaml")


def test_dtype_policies_resolve_per_device(monkeypatch):
    assert resolve("bf16_on_gpu", "cpu") == "float32"  # the default: a CPU result is the same on every host
    for name in ("float32", "bfloat16", "float16"):
        assert resolve(name, "cpu") == resolve(name, "cuda:0") == name
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve("bf16_on_gpu", "cuda:0") == resolve("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve("bf16_on_gpu", "cuda:0") == "float32"  # e.g. a V100
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda onednn=False: 4.2)  # an AVX512-BF16 host
    assert resolve("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda onednn=False: 0.005)  # bf16 emulated in software
    assert resolve("auto", "cpu") == "float32"
    # auto compares bf16 with the float32 path the job takes: MKL's (aten) or oneDNN's
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda onednn=False: 1.2 if onednn else 3.5)
    assert resolve("auto", "cpu", "aten") == "bfloat16"
    assert resolve("auto", "cpu", "onednn") == ("float32" if onednn.available() else "bfloat16")
    with pytest.raises(ValueError, match="unknown dtype setting 'bf32'"):
        resolve("bf32", "cpu")


def test_the_cpu_check_measures_both_dtypes():
    precision.cpu_bf16_speedup.cache_clear()
    if onednn.available():
        ratio = precision.cpu_bf16_speedup(n=64, seconds=0.01, onednn=True)
        assert np.isfinite(ratio) and ratio > 0
    ratio = precision.cpu_bf16_speedup(n=64, seconds=0.01)
    assert np.isfinite(ratio) and ratio > 0  # a measured ratio, whichever host this is


def test_each_stage_takes_its_own_dtype_or_the_common_one():
    cfg = _config(dtype="bfloat16", logps_dtype="float32", checkpoint_dtype="bfloat16")
    assert stage_compute(cfg, "sampling")["dtype"] == stage_compute(cfg, "scoring")["dtype"] == "bfloat16"
    assert stage_compute(cfg, "logps") == {"dtype": "float32", "attn_implementation": "sdpa", "cpu_linear": "onednn",
                                           "memory_headroom": 0.25}
    assert stage_compute(cfg, "training") == {"dtype": "bfloat16", "attn_implementation": "sdpa",
                                              "cpu_linear": "onednn", "checkpoint_dtype": "bfloat16"}
    assert _config()["compute"]["dtype"] == "bf16_on_gpu"


def test_bad_compute_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"compute.attn_implementation.*bfloat16 or float16 only.*logps stage"):
        _config(attn_implementation="flash_attention_2", logps_dtype="float32")
    with pytest.raises(ConfigError, match=r"compute.dtype"):
        _config(dtype="fp8")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["training"]["mixed_precision"] = "bf16"
    with pytest.raises(ConfigError, match=r"'training.mixed_precision' has moved: use compute.training_dtype"):
        validate_config(cfg, REPO / "config" / "schema.yaml")
    _config(attn_implementation="flash_attention_2")  # bf16_on_gpu: bf16 wherever flash-attention can run


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_every_load_takes_the_configured_attention(tiny_model_dir, attn):
    model, chosen = load_for_stage(tiny_model_dir, dict(SETTINGS, attn_implementation=attn))
    assert model.config._attn_implementation == attn and chosen["attn_implementation"] == attn
    linear = "onednn" if onednn.available() else "aten"  # compute.cpu_linear's default where it runs
    assert packing_mode(model) == "tree" and chosen == {"dtype": "float32", "attn_implementation": attn,
                                                        "cpu_linear": linear, "device_map": "cpu"}


def test_flash_attention_falls_back_to_sdpa_on_a_cpu(tiny_model_dir, caplog):
    model, chosen = load_for_stage(tiny_model_dir, dict(SETTINGS, attn_implementation="flash_attention_2"))
    assert chosen["attn_implementation"] == model.config._attn_implementation == "sdpa"
    assert "needs a CUDA GPU" in caplog.text


def test_scorer_models_take_the_scoring_stage_settings(tmp_path):
    from conftest import build_tiny_reward_model

    from nashflow.scorers.reward_model import RewardModelScorer

    path = build_tiny_reward_model(tmp_path / "rm")
    compute = {"dtype": "bfloat16", "attn_implementation": "eager", "memory_headroom": 0.25}
    rm = RewardModelScorer(str(path), compute=compute)
    assert rm.model.dtype == torch.bfloat16 and rm.model.config._attn_implementation == "eager"
    assert RewardModelScorer(str(path), compute=compute, dtype="float32").model.dtype == torch.float32  # args win


def _pairs(tmp_path, tok, ref_model):
    rows = [{"pair_id": f"p{i}", "prompt_id": f"q{i}", "messages": [{"role": "user", "content": f"Say {i} things"}],
             "chosen": "happy good day " * (i + 1), "rejected": "sad bad", "chosen_finish": "stop",
             "rejected_finish": "length", "chosen_reward": 1.0, "rejected_reward": 0.0, "pref_prob": 1.0,
             "chosen_target": 1.0, "rejected_target": 0.0, "generator": "base"} for i in range(4)]
    pairs = pd.DataFrame(rows)
    write_table(pairs, tmp_path / "pairs.parquet")
    enc = [encode_pair_side(tok, m, t, finished=f == "stop", max_length=96, max_prompt_length=64)
           for side in ("chosen", "rejected") for m, t, f in zip(pairs.messages, pairs[side], pairs[f"{side}_finish"])]
    sums, counts = sequence_logps(ref_model, enc, tok.pad_token_id, progress=False)
    write_table(pd.DataFrame({"pair_id": pairs.pair_id, "model": "ref", "chosen_logp": sums[:4],
                              "chosen_tokens": counts[:4], "rejected_logp": sums[4:], "rejected_tokens": counts[4:]}),
                tmp_path / "ref.parquet")


def test_bf16_reference_and_first_training_step_agree(tmp_path, tiny_model_dir, monkeypatch):
    """Reference log-probs from the log-prob stage's loader in bfloat16, then the trainer under
    accelerate's bf16 mixed precision: the first DPO step's loss is log 2 within bf16's precision
    (the two forwards round differently: bf16 weights vs autocast over float32 weights), and the
    saved iterate has the configured checkpoint dtype."""
    from accelerate.state import AcceleratorState

    from nashflow.settings import LossConfig, TrainConfig
    from nashflow.training import train

    tok = load_tokenizer(tiny_model_dir)
    ref, chosen = load_for_stage(tiny_model_dir, dict(SETTINGS, dtype="bfloat16"))
    assert ref.dtype == torch.bfloat16 and chosen["dtype"] == "bfloat16"
    _pairs(tmp_path, tok, ref)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(True)
    try:
        train(policy_path=str(tiny_model_dir), pairs_path=str(tmp_path / "pairs.parquet"),
              logps={"reference": [str(tmp_path / "ref.parquet")]}, output_dir=str(tmp_path / "out"),
              metrics_path=str(tmp_path / "metrics.csv"),
              train_cfg=TrainConfig(learning_rate=1e-3, batch_size=4, epochs=1, max_length=96, max_prompt_length=64,
                                    warmup_ratio=0.0),
              loss_cfg=LossConfig(name="dpo", beta=0.1), progress=False,
              compute={"attn_implementation": "sdpa", "checkpoint_dtype": "bfloat16"})
    finally:
        AcceleratorState._reset_state(True)
    loss = pd.read_csv(tmp_path / "metrics.csv").loss[0]
    # bf16 keeps 8 bits of mantissa: a sequence log-prob of ~-40 nats is off by up to ~0.2; the DPO
    # loss moves by beta/2 times the margin's error
    assert loss == pytest.approx(np.log(2), abs=0.02)
    prov = read_provenance(tmp_path / "out")
    assert prov["config"]["compute"]["mixed_precision"] == "bf16"
    assert prov["config"]["compute"]["checkpoint_dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as st:
        assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"BF16"}
    assert load_model(tmp_path / "out").dtype == torch.float32  # jobs load it in their own dtype


def test_the_placement_rule():
    """One GPU when the weights fit it with the headroom, else split across the job's GPUs, else an
    error naming how many GPUs it needs (numbers of the paper-scale models in bf16)."""
    h100 = 80 * GIB
    llama8b, gemma9b, llama70b = 8.03e9 * 2, 9.24e9 * 2, 70.6e9 * 2
    assert plan(int(llama8b), [h100], 0.25).device_map is None
    assert plan(int(gemma9b), [h100] * 4, 0.25).device == "cuda:0"  # fits one: the others stay idle
    split = plan(int(llama70b), [h100] * 4, 0.25)
    assert split.device_map == "balanced" and split.max_memory == {i: int(0.75 * h100) for i in range(4)}
    assert gpus_needed(int(llama70b), h100, 0.25) == 3
    with pytest.raises(DataError, match=r"131.5 GiB of weights: the job's 2 GPU\(s\).*at least 3 GPUs"):
        plan(int(llama70b), [h100] * 2, 0.25)
    assert plan(int(llama70b), [], 0.25).device == "cpu"


def test_parameter_count_reads_only_the_headers(tiny_model_dir, tiny_model):
    model, _ = tiny_model
    # parameters() yields tied weights once, as save_pretrained stores them
    assert parameter_count(tiny_model_dir) == sum(p.numel() for p in model.parameters())


def test_a_model_split_across_two_devices_gives_the_same_log_probs(tiny_model_dir, tmp_path):
    """The placement path on a CPU: half the layers on the CPU, half offloaded to disk (accelerate's
    hooks move them in for each forward, as a device map across GPUs does), packed and padded."""
    tok = load_tokenizer(tiny_model_dir)
    whole = load_model(tiny_model_dir)
    n_layers = whole.config.num_hidden_layers
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" if i < n_layers // 2 else "disk" for i in range(n_layers)}}
    split = load_model(tiny_model_dir, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert {"cpu", "disk"} <= set(split.hf_device_map.values())
    enc = [encode_pair_side(tok, [{"role": "user", "content": f"Tell me about {w}"}], f"{w} is nice " * k,
                            finished=k % 2 == 0, max_length=64, max_prompt_length=32)
           for w in ("cats", "rain", "tea") for k in (1, 3)]
    for packing in (True, False):
        a = sequence_logps(whole, enc, tok.pad_token_id, progress=False, packing=packing)[0]
        b = sequence_logps(split, enc, tok.pad_token_id, progress=False, packing=packing)[0]
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
