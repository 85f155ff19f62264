"""The vLLM backend's contract, checked with a stand-in `vllm` module for the paths that need a GPU
(tensor parallel from the job's GPUs, one seed per request, which vLLM's CPU build cannot do) and
for the config checks without vllm installed: same table as the transformers backend, the same
stop ids (every eos_token_id of generation_config.json) cut the same way, one engine for several
prompt sets, engine arguments passed through and checked, a clear message when vllm is missing.
The real engine (vLLM's CPU build) is run by test_vllm_real.py."""

import dataclasses
import json
import shutil
import sys
import types

import pandas as pd
import pytest
from conftest import REPO

from nashflow.config import validate_config
from nashflow.errors import ConfigError, NashflowError
from nashflow.generation.generate import SamplingConfig, generate_samples
from nashflow.generation.vllm_backend import generate_vllm, generate_vllm_sets

SCHEMA = REPO / "config" / "schema.yaml"


class _Out:
    def __init__(self, text, token_ids, finish_reason):
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


def fake_vllm(record, stop_id, monkeypatch=None, cpu=False):
    """A stand-in: a sample stops (keeping the stop id in token_ids, as vLLM does) when its seed is
    even, else runs to max_tokens. With ``cpu``, ``vllm.platforms.current_platform.is_cpu()``."""
    mod = types.ModuleType("vllm")
    mod.__path__ = []

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            record["engine"] = kw
            record["engines"] = record.get("engines", 0) + 1

        def generate(self, requests, sampling_params, use_tqdm=True):
            record["params"] = sampling_params
            record.setdefault("calls", []).append(len(requests))
            outs = []
            for i, p in enumerate(sampling_params):
                stop = (p.seed if p.seed is not None else i) % 2 == 0
                ids = [5, 6, 7] + ([stop_id, 9] if stop else [8] * (p.max_tokens - 3))
                outs.append(types.SimpleNamespace(outputs=[_Out("ignored", ids, "stop" if stop else "length")]))
            return outs

    @dataclasses.dataclass
    class EngineArgs:
        model: str = ""
        seed: int = 0
        tensor_parallel_size: int = 1
        gpu_memory_utilization: float = 0.9
        max_model_len: int | None = None

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    engine, arg_utils = types.ModuleType("vllm.engine"), types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    if monkeypatch:
        for name, m in (("vllm", mod), ("vllm.engine", engine), ("vllm.engine.arg_utils", arg_utils),
                        ("vllm.platforms", platforms)):
            monkeypatch.setitem(sys.modules, name, m)
    return mod


PROMPTS = pd.DataFrame({"prompt_id": ["b", "a"], "messages": [[{"role": "user", "content": "hello there"}],
                                                             [{"role": "user", "content": "how are you"}]]})


def test_same_table_as_the_transformers_backend(tiny_model, tiny_model_dir, monkeypatch):
    model, tok = tiny_model
    record = {}
    fake_vllm(record, tok.eos_token_id, monkeypatch)
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=6, top_k=0, backend="vllm",
                         vllm={"gpu_memory_utilization": 0.5})
    df = generate_vllm(str(tiny_model_dir), tok, PROMPTS, cfg, seed=11, generator="run/iter1", tensor_parallel=4)
    ref = generate_samples(model, tok, PROMPTS, cfg, seed=11, generator="run/iter1", progress=False)
    assert list(df.columns) == list(ref.columns) and dict(df.dtypes) == dict(ref.dtypes)
    assert df[["prompt_id", "sample_index", "prompt_tokens"]].equals(ref[["prompt_id", "sample_index", "prompt_tokens"]])
    assert record["engine"]["tensor_parallel_size"] == 4 and record["engine"]["gpu_memory_utilization"] == 0.5
    assert record["engine"]["seed"] == 11
    params = record["params"]
    assert len({p.seed for p in params}) == 6 and all(p.n == 1 and p.top_k == -1 for p in params)
    assert all(p.stop_token_ids == [tok.eos_token_id] for p in params)
    stop = df[df.finish_reason == "stop"]
    assert (stop.token_count == 3).all() and (df[df.finish_reason == "length"].token_count == 6).all()
    # the text is decoded here, from the kept ids, as the transformers backend does
    assert (stop.response == tok.decode([5, 6, 7], skip_special_tokens=True).strip()).all()
    # the same seed gives the same requests
    generate_vllm(str(tiny_model_dir), tok, PROMPTS, cfg, seed=11, generator="x")
    assert sorted(p.seed for p in record["params"]) == sorted(df.seed)


def test_every_eos_of_the_generation_config_stops(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    """Llama-3-Instruct style: generation_config.json lists a second EOS that the tokenizer does not."""
    _, tok = tiny_model
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, 42]
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    record = {}
    fake_vllm(record, 42, monkeypatch)
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=6, backend="vllm")
    df = generate_vllm(str(model_dir), tok, PROMPTS, cfg, seed=3, generator="g")
    assert all(p.stop_token_ids == sorted([tok.eos_token_id, 42]) for p in record["params"])
    stop = df[df.finish_reason == "stop"]
    assert len(stop) and (stop.token_count == 3).all()  # 42 and what follows it are not counted


def test_one_engine_serves_every_prompt_set(tiny_model, tiny_model_dir, monkeypatch):
    _, tok = tiny_model
    record = {}
    fake_vllm(record, tok.eos_token_id, monkeypatch)
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=6, backend="vllm")
    tables = generate_vllm_sets(str(tiny_model_dir), tok, [PROMPTS, PROMPTS.iloc[:1], PROMPTS], cfg, seed=1,
                                generator="g")
    assert record["engines"] == 1 and record["calls"] == [4, 2, 4]
    assert [len(t) for t in tables] == [4, 2, 4]


def test_cpu_build_seeds_the_engine_instead(tiny_model, tiny_model_dir, monkeypatch, caplog):
    _, tok = tiny_model
    record = {}
    fake_vllm(record, tok.eos_token_id, monkeypatch, cpu=True)
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=6, backend="vllm")
    with caplog.at_level("WARNING"):
        df = generate_vllm(str(tiny_model_dir), tok, PROMPTS, cfg, seed=17, generator="g")
    assert all(p.seed is None for p in record["params"]) and record["engine"]["seed"] == 17
    assert (df.seed == 17).all() and "depends on the others in its batch" in caplog.text


def test_missing_vllm_says_how_to_install(tiny_model, tiny_model_dir, monkeypatch):
    _, tok = tiny_model
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.delenv("NASHFLOW_VLLM_PYTHON", raising=False)
    with pytest.raises(NashflowError, match="nashflow\\[gpu\\].*setup_vllm_cpu.sh"):
        generate_vllm(str(tiny_model_dir), tok, PROMPTS, SamplingConfig(backend="vllm"), seed=0, generator="x")


def test_mixture_sampler_is_refused_with_vllm():
    with pytest.raises(ConfigError, match="generation.backend.*transformers backend only"):
        validate_config({"algorithm": {"name": "nash_md"}, "generation": {"backend": "vllm"}}, SCHEMA)


@pytest.mark.parametrize("gen,match", [
    ({"vllm": {"seed": 3}}, "config key 'generation.vllm.seed': set by nashflow"),
    ({"backend": "vllm", "vllm": {"model": "x"}}, "config key 'generation.vllm.model': set by nashflow"),
    ({"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}, "config key 'generation.vllm.tensor_parallel_size'"),
    ({"backend": "vllm", "temperature": 2.5}, r"config key 'generation.temperature': vLLM accepts .*\[0, 2\]"),
])
def test_vllm_settings_refused_without_vllm(gen, match, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=match):
        validate_config({"generation": gen}, SCHEMA)


def test_vllm_temperature_limit_covers_evaluation_and_only_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match="config key 'evaluation.temperature'"):
        validate_config({"generation": {"backend": "vllm"}, "evaluation": {"temperature": 3.0}}, SCHEMA)
    validate_config({"generation": {"temperature": 2.5}, "evaluation": {"temperature": 3.0}}, SCHEMA)
    # unknown engine arguments can only be told with vllm at hand
    validate_config({"generation": {"backend": "vllm", "vllm": {"bogus": 1}}}, SCHEMA)


def test_engine_arguments_checked_against_engine_args(monkeypatch):
    fake_vllm({}, 0, monkeypatch)
    ok = validate_config({"generation": {"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.5}}}, SCHEMA)
    assert ok["generation"]["vllm"] == {"gpu_memory_utilization": 0.5}
    with pytest.raises(ConfigError, match="config key 'generation.vllm.swap_space': not an engine argument"):
        validate_config({"generation": {"backend": "vllm", "vllm": {"swap_space": 4}}}, SCHEMA)
    with pytest.raises(ConfigError, match="config key 'runs.x.generation.vllm.bogus'"):
        validate_config({"runs": {"x": {"generation": {"backend": "vllm", "vllm": {"bogus": 1}}}}}, SCHEMA)


def test_moodpo_evaluation_weights_share_one_engine(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    """The held-out job samples every weight vector of the evaluation grid from one engine."""
    from conftest import tiny_config

    from nashflow import stages
    from nashflow.io import read_table, write_table
    from nashflow.plan import job_settings

    _, tok = tiny_model
    record = {}
    fake_vllm(record, tok.eos_token_id, monkeypatch)
    cfg = validate_config(tiny_config(tiny_model_dir, algorithm={"name": "moodpo"}, generation={"backend": "vllm"},
                                      scorer={"components": [{"type": "length", "name": "long", "args": {"scale": 10}},
                                                             {"type": "sentiment", "name": "happy"}]}), SCHEMA)
    write_table(PROMPTS, tmp_path / "eval.parquet")
    stages.eval_generate(job_settings("eval_generate", cfg), model_dir=str(tiny_model_dir),
                         eval_prompts=str(tmp_path / "eval.parquet"), out=str(tmp_path / "responses.parquet"))
    df = read_table(tmp_path / "responses.parquet")
    assert record["engines"] == 1 and record["calls"] == [2, 2, 2]  # the 0.5-grid of 2 objectives: 3 weights
    assert sorted(df.sample_index.unique()) == [0, 1, 2] and len(df) == 6
