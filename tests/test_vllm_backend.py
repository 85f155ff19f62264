"""The vLLM backend's contract, checked with a stand-in `vllm` module (vLLM itself needs CUDA and
was not run here): same table as the transformers backend, one seed per sample, tensor parallel
from the job's GPUs, engine arguments passed through, a clear message when vllm is missing."""

import sys
import types

import pandas as pd
import pytest

from nashflow.errors import NashflowError
from nashflow.generate import SamplingConfig, generate_samples
from nashflow.vllm_backend import generate_vllm


class _Out:
    def __init__(self, text, token_ids, finish_reason):
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


def fake_vllm(record, eos):
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            record["engine"] = kw

        def generate(self, requests, sampling_params, use_tqdm=True):
            record["params"] = sampling_params
            outs = []
            for req, p in zip(requests, sampling_params):
                stop = p.seed % 2 == 0  # some samples end with EOS, the others run to max_tokens
                ids = [5, 6, 7] + ([eos] if stop else [8] * (p.max_tokens - 3))
                outs.append(types.SimpleNamespace(outputs=[_Out(f" sample {p.seed} ", ids, "stop" if stop else "length")]))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_same_table_as_the_transformers_backend(tiny_model, tiny_model_dir, monkeypatch):
    model, tok = tiny_model
    record = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(record, tok.eos_token_id))
    prompts = pd.DataFrame({"prompt_id": ["b", "a"], "messages": [[{"role": "user", "content": "hello there"}],
                                                                 [{"role": "user", "content": "how are you"}]]})
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=6, top_k=0, backend="vllm",
                         vllm={"gpu_memory_utilization": 0.5})
    df = generate_vllm(str(tiny_model_dir), tok, prompts, cfg, seed=11, generator="run/iter1", tensor_parallel=4,
                       engine_args=cfg.vllm)
    ref = generate_samples(model, tok, prompts, cfg, seed=11, generator="run/iter1", progress=False)
    assert list(df.columns) == list(ref.columns) and dict(df.dtypes) == dict(ref.dtypes)
    assert df[["prompt_id", "sample_index", "prompt_tokens"]].equals(ref[["prompt_id", "sample_index", "prompt_tokens"]])
    assert record["engine"]["tensor_parallel_size"] == 4 and record["engine"]["gpu_memory_utilization"] == 0.5
    assert len({p.seed for p in record["params"]}) == 6 and all(p.n == 1 and p.top_k == -1 for p in record["params"])
    stop = df[df.finish_reason == "stop"]
    assert (stop.token_count == 3).all() and (df[df.finish_reason == "length"].token_count == 6).all()
    assert df.response.str.startswith("sample ").all()
    # the same seed gives the same requests
    generate_vllm(str(tiny_model_dir), tok, prompts, cfg, seed=11, generator="x")
    assert [p.seed for p in record["params"]] == list(df.sort_index().seed) or \
        sorted(p.seed for p in record["params"]) == sorted(df.seed)


def test_missing_vllm_says_how_to_install(tiny_model, tiny_model_dir, monkeypatch):
    _, tok = tiny_model
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(NashflowError, match="nashflow\\[gpu\\]"):
        generate_vllm(str(tiny_model_dir), tok, pd.DataFrame({"prompt_id": [], "messages": []}),
                      SamplingConfig(backend="vllm"), seed=0, generator="x")


def test_mixture_sampler_is_refused_with_vllm():
    from conftest import REPO

    from nashflow.config import validate_config
    from nashflow.errors import ConfigError

    with pytest.raises(ConfigError, match="generation.backend.*transformers backend only"):
        validate_config({"algorithm": {"name": "nash_md"}, "generation": {"backend": "vllm"}},
                        REPO / "config" / "schema.yaml")
