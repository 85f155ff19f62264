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
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sections, in benchmarks/perfkit/
from perfkit.common import (  # noqa: E402
    RANDOM_LLAMA,
    make_pairs,
    model_params,
    onednn_runs,
    peak_matmul_gflops,
    random_llama,
)
from perfkit.generate import bench_generate  # noqa: E402
from perfkit.logps import bench_logps  # noqa: E402
from perfkit.orchestration import bench_orchestration  # noqa: E402
from perfkit.scaling import bench_scaling  # noqa: E402
from perfkit.train import bench_train  # noqa: E402

SECTIONS = ("train", "logps", "generate", "orchestration", "scaling")


def summary_table(res: dict) -> str:
    lines = ["| benchmark | nashflow | peer | ratio | target |", "|---|---|---|---|---|"]
    r = res["results"]
    if "train" in r:
        t = r["train"]
        lines.append(f"| training step (tokens/s) | {t['nashflow_tokens_per_s']:.0f} | TRL DPOTrainer "
                     f"{t['trl_tokens_per_s']:.0f} | {t['speedup_vs_trl']:.2f}x | >= 2x |")
        if "nashflow_aten_tokens_per_s" in t:
            lines.append(f"| training step, PyTorch's linears (`compute.cpu_linear: aten`) | "
                         f"{t['nashflow_aten_tokens_per_s']:.0f} | TRL DPOTrainer {t['trl_tokens_per_s']:.0f} | "
                         f"{t['speedup_aten_vs_trl']:.2f}x | |")
        if "fraction_of_peak" in t:
            lines.append(f"| training, model FLOP utilisation (6·params·tokens/s) | {t['fraction_of_peak']:.1%} of "
                         f"peak matmul {res['peak_matmul_gflops']:.0f} GFLOP/s | | | |")
    if "logps" in r:
        t = r["logps"]
        lines.append(f"| reference log-probs (tokens/s) | {t['nashflow_tokens_per_s']:.0f} | TRL precompute "
                     f"{t['trl_tokens_per_s']:.0f} | {t['speedup_vs_trl']:.2f}x | >= 2x |")
        if "nashflow_aten_tokens_per_s" in t:
            lines.append(f"| reference log-probs, PyTorch's linears | {t['nashflow_aten_tokens_per_s']:.0f} | "
                         f"oneDNN {t['nashflow_tokens_per_s']:.0f} | {t['speedup_onednn_vs_aten']:.2f}x (oneDNN) | |")
        lines.append(f"| log-probs, share of peak matmul | {t['nashflow_gflops']:.0f} GFLOP/s | peak "
                     f"{t['peak_matmul_gflops']:.0f} GFLOP/s | {t['fraction_of_peak']:.0%} | >= 50% |")
    if "generate" in r:
        t = r["generate"]
        lines.append(f"| generation (new tokens/s) | {t['nashflow_tokens_per_s']:.1f} | batched `generate` "
                     f"{t['generate_batched_tokens_per_s']:.1f} | {t['speedup_vs_generate']:.2f}x | >= 2x |")
        if "nashflow_aten_tokens_per_s" in t:
            lines.append(f"| generation, PyTorch's linears | {t['nashflow_aten_tokens_per_s']:.1f} | batched `generate` "
                         f"{t['generate_batched_tokens_per_s']:.1f} | {t['speedup_aten_vs_generate']:.2f}x | |")
        for kind, b in t.get("breakdown", {}).items():
            lines.append(f"| generation pass by part, {kind} linears (s) | prefill {b['prefill']:.1f}, step forwards "
                         f"{b['step_forward']:.1f} (output layer {b['output_layer']:.1f}), sampler {b['sampler']:.1f}, "
                         f"rest {b['rest']:.1f} | wall {b['wall_seconds']:.1f} | | |")
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


def parse_args(argv=None) -> argparse.Namespace:
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
    args.section_list = [s for s in args.sections.split(",") if s]
    unknown = set(args.section_list) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


def workloads(quick: bool) -> dict:
    """Each section's workload: small with --quick (CI), the default iteration's scale otherwise."""
    q = quick
    return {
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


def benchmark_model(args, work: Path) -> tuple[Path, str]:
    """The model folder and its description: the tiny fixture (--quick), --model, or a random Llama."""
    if args.quick:
        from nashflow.testing import build_tiny_model

        model_dir, model_name = build_tiny_model(work / "tiny"), "tiny random Llama (test fixture)"
    else:
        model_dir = Path(args.model)
        if not (model_dir / "config.json").exists():
            sys.exit(f"no model at {model_dir}: build it with `snakemake --cores 2 results/base_model` "
                     "or pass --model (or use --quick)")
        model_name = str(model_dir)
    if args.random_llama:
        model_dir = random_llama(model_dir, args.random_llama, work / f"random-llama-{args.random_llama}")
        model_name = f"random Llama {args.random_llama} (tokenizer of {model_name})"
    return model_dir, model_name


def run_section(section: str, args, model_dir: Path, tok, settings: dict, res: dict, work: Path) -> dict:
    peak = res["peak_matmul_gflops"]
    if section == "logps":
        s = settings["logps"]
        return bench_logps(args, model_dir, make_pairs(tok, s["pairs"], s["resp"], seed=1),
                           max_length=s["max_length"], max_prompt_length=s["max_prompt_length"],
                           batch_pairs=s["batch_pairs"], repeats=args.repeats, peak=peak)
    if section == "train":
        s = settings["train"]
        out = bench_train(args, model_dir, make_pairs(tok, s["pairs"], s["resp"], seed=2),
                          max_length=s["max_length"], max_prompt_length=s["max_prompt_length"],
                          batch_pairs=s["batch_pairs"], repeats=args.repeats, work=work / "train")
        # model FLOP utilisation: 6·params per trained token (forward + backward) over the matmul peak
        out["fraction_of_peak"] = 6 * res["params"] * out["nashflow_tokens_per_s"] / (peak * 1e9)
        return out
    if section == "generate":
        return bench_generate(args, model_dir, repeats=args.repeats, **settings["generate"])
    if section == "orchestration":
        return bench_orchestration(args, work / "orchestration", args.repeats)
    return bench_scaling(args, model_dir, work / "scaling", repeats=args.repeats, **settings["scaling"])


def save(args, res: dict, sections: list[str]) -> None:
    """The JSON (merged into an existing one with --merge) and the summary table."""
    dest = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        f"perf-{'gpu' if args.device.startswith('cuda') else 'cpu'}{'-quick' if args.quick else ''}.json")
    if args.merge and dest.exists():
        old = json.loads(dest.read_text())
        if (old.get("model"), old.get("device"), old.get("dtype"), old.get("quick")) != (res["model"], res["device"],
                                                                                       res["dtype"], res["quick"]):
            sys.exit(f"--merge: {dest} was measured with another model, device, dtype or mode")
        res["results"] = {**old["results"], **res["results"]}
        res["settings"] = {**old.get("settings", {}), **{k: res["settings"][k] for k in sections
                                                         if k in res["settings"]}}
    table = summary_table(res)
    res["table"] = table
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(table)
    print(f"wrote {dest}")


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from nashflow.io import package_versions
    from nashflow.models import load_tokenizer

    torch.set_num_threads(args.threads)
    args.torch_dtype = getattr(torch, args.dtype)
    if args.dtype == "bfloat16":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    work = Path(tempfile.mkdtemp(prefix="nashflow-perf-"))
    model_dir, model_name = benchmark_model(args, work)
    tok = load_tokenizer(model_dir)
    settings = workloads(args.quick)
    # on a GPU 2048^3 is too small to reach the matmul peak (an H200 needs ~8192^3)
    size = 512 if args.quick else 8192 if args.device.startswith("cuda") else 2048
    res = {"benchmark": "perf", "quick": args.quick, "model": model_name, "device": args.device, "dtype": args.dtype,
           "threads": args.threads, "repeats": args.repeats, "settings": settings,
           **peaks(args, size),
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "versions": {**package_versions(), "trl": _version("trl")}, "params": model_params(model_dir),
           "results": {}}
    for section in args.section_list:
        t0 = time.perf_counter()
        print(f"== {section}", flush=True)
        out = run_section(section, args, model_dir, tok, settings, res, work)
        out["section_seconds"] = time.perf_counter() - t0
        out["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res["results"][section] = out
        print(json.dumps({k: v for k, v in out.items() if not isinstance(v, (list, dict))}), flush=True)
    save(args, res, args.section_list)


def peaks(args, size: int) -> dict:
    """The matmul peak the utilisation figures divide by: the faster of ``torch.mm`` and, for float32
    on a CPU where it runs, oneDNN's matmul (MKL takes an AVX2 kernel on AMD CPUs)."""

    out = {"peak_matmul_gflops_torch_mm": peak_matmul_gflops(args.device, args.torch_dtype, size)}
    if onednn_runs(args):
        out["peak_matmul_gflops_onednn"] = peak_matmul_gflops(args.device, args.torch_dtype, size, onednn=True)
    return {"peak_matmul_gflops": max(out.values()), **out}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
