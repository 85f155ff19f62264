"""Dry runs of the paper-scale example configs in config/examples/ (no job runs, no model loads).

Each example is planned in a temporary directory laid out like the repository root: the embedded
default config/config.yaml (which the Snakefile loads first, so the example extends it exactly as
`snakemake --configfile config/examples/<name>.yaml` does from the repository root), the example
itself unchanged, and stub inputs at the relative paths it names (a base-model folder with a
config.json and a prompt file with a few hundred rows in the configured column). A prompt source
named by hub id is a stub dataset of that id, split and column in a temporary Hugging Face datasets
cache (conftest.cache_hub_dataset), read offline as a warm cache would be.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, cache_hub_dataset, snakemake

from nashflow.config import deep_update, validate_config

EXAMPLES = REPO / "config" / "examples"
SCHEMA = REPO / "config" / "schema.yaml"
JOB_LINE = re.compile(r"^(\w+)\s+(\d+)$")
LOGPS = re.compile(r"^results/[^/]+/iter(\d+)/logps/(base|iter\d+)/shard(\d+)\.parquet$")


def _comal_checkpoints(t: int) -> set[str]:
    """comal.sh: OLD_CKPT = previous iterate; REF_CKPT = π_0, moved to π_12 after the 12th iteration."""
    name = lambda k: "base" if k == 0 else f"iter{k}"
    return {name(0 if t <= 12 else 12), name(t - 1)}


# Checkpoints whose log-probs iteration t reads, per method (written out from docs/algorithms.md, "Iteration roles", not
# computed with nashflow.methods): MNPO = SFT reference + up to 2 history players starting at π_1;
# SPPO/GPO = π_{t-1} as reference; Nash-MD and MOODPO = the SFT model; COMAL = anchor + π_{t-1}.
EXPECTED_LOGPS = {
    "mnpo": {1: {"base"}, 2: {"base", "iter1"}, 3: {"base", "iter1", "iter2"}},
    "sppo": {1: {"base"}, 2: {"iter1"}, 3: {"iter2"}},
    "gpo": {1: {"base"}, 2: {"iter1"}, 3: {"iter2"}},
    "nash_md": {1: {"base"}, 2: {"base"}, 3: {"base"}},
    "moodpo": {1: {"base"}, 2: {"base"}},
    "comal": {t: _comal_checkpoints(t) for t in range(1, 25)},
    "dpo_70b": {1: {"base"}, 2: {"base"}, 3: {"base"}},
}

# Parameters of each example's policy and of its (largest) scorer model, from the published model
# cards; MOODPO's SFT model is a local folder in the seed, taken as a 7B model here.
PARAMS = {
    "mnpo": (9.24e9, 8.03e9), "sppo": (8.03e9, 0.44e9), "gpo": (8.03e9, 8.03e9), "nash_md": (0.49e9, 0.49e9),
    "moodpo": (6.74e9, 0.77e9), "comal": (1.54e9, 8.03e9), "dpo_70b": (70.6e9, 8.03e9),
}
GPU_LINE = re.compile(r"^# GPUs per job .*\n#   (.+)$", re.M)

# The values that make each example "paper scale" (docs/algorithms.md §6), checked on the effective config.
PAPER = {
    "mnpo": {
        "base_model.path": "models/gemma-2-9b-it", "iterations": 3, "shards": 8,
        "prompts.path": "princeton-nlp/gemma2-ultrafeedback-armorm", "prompts.split": "train",
        "prompts.column": "prompt",
        "generation.samples_per_prompt": 5, "generation.temperature": 0.8, "generation.top_p": 0.95,
        "scorer.components.0.type": "reward_model", "scorer.components.0.args.output": "score",
        "scorer.components.0.args.trust_remote_code": True,
        "scorer.components.0.args.model": "models/ArmoRM-Llama3-8B-v0.1",
        "algorithm.name": "mnpo", "algorithm.loss": "mnpo", "algorithm.pairs": "max_min",
        "algorithm.reference": "base", "algorithm.history": 2, "algorithm.history_includes_base": False,
        "algorithm.logp_norm": "mean", "algorithm.beta": 10.0,
        "algorithm.params.eta": 0.0075, "algorithm.params.ratio": 0.3333,
        "training.learning_rate": 5e-7, "training.batch_size": 2, "training.grad_accum": 16,
        "training.lr_scheduler": "cosine", "training.epochs": 1, "training.max_length": 2048,
        "training.max_prompt_length": 1000,
        "compute.dtype": "bf16_on_gpu", "compute.checkpoint_dtype": "bfloat16",
    },
    "sppo": {
        "base_model.path": "models/Meta-Llama-3-8B-Instruct", "iterations": 3,
        "prompts.path": "HuggingFaceH4/ultrafeedback_binarized", "prompts.split": "train_prefs",
        "generation.samples_per_prompt": 5, "generation.temperature": 0.7, "generation.top_p": 0.9,
        "generation.max_new_tokens": 2048,
        "scorer.components.0.type": "pairrm", "scorer.components.0.args.prompt_format": "chat",
        "algorithm.name": "sppo", "algorithm.loss": "sppo", "algorithm.pairs": "sppo",
        "algorithm.reference": "previous", "algorithm.beta": 0.001, "algorithm.logp_norm": "sum",
        "training.learning_rate": 5e-7, "training.optimizer": "rmsprop", "training.batch_size": 8,
        "training.max_length": 1024, "training.max_prompt_length": 512,
        "compute.dtype": "bf16_on_gpu", "compute.checkpoint_dtype": "bfloat16",
    },
    "gpo": {
        "base_model.path": "models/Meta-Llama-3-8B-Instruct", "iterations": 3,
        "prompts.path": "HuggingFaceH4/ultrafeedback_binarized", "prompts.split": "train_prefs",
        "generation.samples_per_prompt": 5, "generation.temperature": 0.7, "generation.top_p": 0.9,
        "generation.max_new_tokens": 2048,
        "scorer.components.0.type": "gpm", "scorer.components.0.args.tau": 0.1,
        "algorithm.name": "gpo", "algorithm.loss": "gpo", "algorithm.pairs": "gpo",
        "algorithm.reference": "previous", "algorithm.beta": 0.001, "algorithm.params.clamp": 1000.0,
        "training.learning_rate": 5e-7, "training.optimizer": "rmsprop",
        "training.max_length": 1024, "training.max_prompt_length": 512,
    },
    "nash_md": {
        "base_model.path": "models/Qwen2-0.5B-Instruct",
        "prompts.path": "trl-lib/ultrafeedback-prompt", "prompts.split": "train", "prompts.column": "prompt",
        "generation.max_new_tokens": 64, "generation.temperature": 0.9, "generation.top_k": 50,
        "scorer.components.0.type": "reward_model", "scorer.missing_eos_penalty": 1.0,
        "algorithm.name": "nash_md", "algorithm.loss": "nash_md", "algorithm.sampler": "mixture",
        "algorithm.pairs": "policy_vs_mixture", "algorithm.reference": "base",
        "algorithm.mixture_coef": 0.5, "algorithm.beta": 0.1,
        "training.learning_rate": 5e-7, "training.batch_size": 4, "training.grad_accum": 32,
        "training.max_length": 512,
    },
    "moodpo": {
        "iterations": 2, "generation.samples_per_prompt": 2, "scorer.components.0.name": "helpful",
        "scorer.components.1.name": "safe", "scorer.components.2.name": "funny", "generation.max_new_tokens": 128,
        "generation.temperature": 1.0, "generation.top_k": 30,
        "scorer.components.0.args.model": "models/gpt2-large-helpful-reward_model",
        "scorer.components.0.args.input_format": "pair",
        "scorer.components.1.args.model": "models/gpt2-large-harmless-reward_model",
        "scorer.components.1.args.input_format": "pair",
        "scorer.components.2.args.model": "models/humor-no-humor",
        "scorer.components.2.args.input_format": "response", "scorer.components.2.args.head": 1,
        "algorithm.name": "moodpo", "algorithm.loss": "dpo", "algorithm.pairs": "better_of_two",
        "algorithm.conditioning": "moodpo", "algorithm.reference": "base", "algorithm.beta": 0.1,
        "conditioning.template": "assistant", "conditioning.grid_step": 0.2,
        "training.learning_rate": 5e-7, "training.batch_size": 1, "training.grad_accum": 8,
    },
    "comal": {
        "base_model.path": "models/comal-qwen2-1.5b-mle", "iterations": 24, "seed": 18890426,
        "prompts.path": "HuggingFaceH4/ultrafeedback_binarized", "prompts.split": "train_prefs",
        "generation.samples_per_prompt": 5, "generation.temperature": 0.8, "generation.top_p": 0.95,
        "generation.max_new_tokens": 2048,
        "scorer.components.0.type": "judge", "scorer.components.0.args.model": "models/Llama-3-OffsetBias-8B",
        "scorer.components.0.args.top_logprobs": 4,
        "algorithm.name": "comal", "algorithm.loss": "inpo", "algorithm.pairs": "top1_top2",
        "algorithm.reference": "anchor", "algorithm.anchor_every": 12, "algorithm.history": 1,
        "algorithm.history_includes_base": True, "algorithm.select_best": True, "algorithm.logp_norm": "sum",
        "algorithm.params.eta": 0.002,
        "training.learning_rate": 5e-7, "training.epochs": 3, "training.batch_size": 1, "training.grad_accum": 4,
        "training.max_length": 2048,
        "compute.dtype": "bf16_on_gpu", "compute.checkpoint_dtype": "bfloat16",
    },
    "dpo_70b": {
        "base_model.path": "models/Meta-Llama-3-70B-Instruct", "iterations": 3,
        "algorithm.name": "dpo", "algorithm.beta": 0.1, "algorithm.reference": "base",
        "training.learning_rate": 5e-7, "training.warmup_ratio": 0.1, "training.distributed": "zero3",
        "compute.dtype": "bf16_on_gpu", "compute.attn_implementation": "flash_attention_2",
        "compute.checkpoint_dtype": "bfloat16",
    },
}


def job_counts(stdout: str) -> dict[str, int]:
    counts, in_stats = {}, False
    for line in stdout.splitlines():
        if line.startswith("Job stats:"):
            in_stats = True
            continue
        m = JOB_LINE.match(line.strip())
        if in_stats and m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def job_outputs(stdout: str, rule: str) -> list[str]:
    outs, cur = [], None
    for line in stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            cur = line.split()[1].rstrip(":")
        elif cur == rule and line.strip().startswith("output: "):
            outs.extend(line.strip()[len("output: "):].split(", "))
    return outs


def get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[int(part)] if isinstance(cfg, list) else cfg[part]
    return cfg


def effective(example: dict) -> dict:
    """The validated config as the workflow sees it: the embedded default extended by the example."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return validate_config(deep_update(default, example), SCHEMA)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """The datasets cache that stage() fills, for the Snakemake runs of the test."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def _is_hub_id(path: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not path.startswith("data/")


def _write_source(workdir: Path, section: dict, rows: list[dict]) -> None:
    """A prompt or preference source stub: a file under workdir, or a hub id's dataset in workdir/hf_cache."""
    if _is_hub_id(section["path"]):
        cache_hub_dataset(workdir / "hf_cache", section["path"], {section.get("split") or "train": rows},
                          config=section.get("name") or "default")
    else:
        _write_rows(workdir / section["path"], rows)


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", lines=path.suffix == ".jsonl", force_ascii=False)


def stage(workdir: Path, name: str, text: str | None = None) -> tuple[Path, dict]:
    """Lay out workdir like the repository root with the example and stubs of its inputs."""
    (workdir / "config" / "examples").mkdir(parents=True)
    shutil.copy(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    text = text if text is not None else (EXAMPLES / f"{name}.yaml").read_text()
    path = workdir / "config" / "examples" / f"{name}.yaml"
    path.write_text(text)
    cfg = yaml.safe_load(text)
    model = workdir / cfg["base_model"]["path"]
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    p, init = cfg["prompts"], cfg.get("initial_data") or {}
    rows = [{p.get("column", "prompt"): f"Prompt number {i}: explain something."} for i in range(p["eval_size"] + 300)]
    offline = {"all_generated_responses": [f"answer {k}" for k in range(5)], "all_rm_scores": [float(k) for k in range(5)]}
    if init.get("path") == p["path"]:  # MNPO: one dataset holds the prompts and the offline responses
        rows = [{**r, **offline} for r in rows]
    elif init.get("path"):
        _write_source(workdir, init, [{init.get("prompt_column", "prompt"): f"Offline prompt {i}", **offline}
                                      for i in range(40)])
    _write_source(workdir, p, rows)
    return path, cfg


def test_every_example_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(PAPER)
    assert (EXAMPLES / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_example_is_paper_scale_and_complete(name):
    example = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    cfg = effective(example)
    for key, want in PAPER[name].items():
        got = get(cfg, key)
        assert (got == pytest.approx(want)) if isinstance(want, float) else (got == want), (key, got, want)
    # Every key of the embedded default is set by the example: running it from the repository
    # root (where config/config.yaml is loaded first) gives the same config as the example alone.
    assert cfg == validate_config(example, SCHEMA)
    # Local model folders, and prompts from a local file or a hub id read from the datasets cache
    # (the workflow downloads nothing).
    assert cfg["base_model"]["path"].startswith("models/")
    assert cfg["prompts"]["path"].startswith("data/") or _is_hub_id(cfg["prompts"]["path"])
    for comp in cfg["scorer"]["components"]:
        assert comp["args"].get("model", "base").startswith(("models/", "base")), comp


def example_gpus(name: str) -> dict[str, int]:
    """The GPUs per job the example's header states ("# GPUs per job ...: generate 4, score 1, ...")."""
    line = GPU_LINE.search((EXAMPLES / f"{name}.yaml").read_text())
    assert line, f"{name}.yaml states no GPUs per job"
    return {rule: int(n) for rule, n in (item.split() for item in line.group(1).split(", "))}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_example_gpus_hold_its_models(name, monkeypatch):
    """With the stated GPUs per job (80 GB each), every job's models fit by the placement rule:
    bf16 weights within 1 - memory_headroom of the job's GPUs, and training's model state (16 bytes
    per parameter, sharded as training.distributed says) within the same share of each GPU."""
    import torch

    from nashflow.placement import BYTES, GIB, plan, training_bytes_per_gpu
    from nashflow.precision import resolve, stage_setting

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # an 80 GB H100/A100
    cfg = effective(yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text()))
    gpus, (policy, scorer), h100 = example_gpus(name), PARAMS[name], 80 * GIB
    headroom = cfg["compute"]["memory_headroom"]
    dtype = lambda stage: BYTES[resolve(stage_setting(cfg["compute"], stage), "cuda")]  # noqa: E731
    for rule, stage, params in (("generate", "sampling", policy), ("logps", "logps", policy),
                                ("eval_generate", "sampling", policy), ("score", "scoring", scorer)):
        plan(int(params * dtype(stage)), [h100] * gpus[rule], headroom, what=f"{name} {rule}")  # raises if not
    distributed = cfg["training"]["distributed"]
    assert training_bytes_per_gpu(policy, gpus["train"], distributed) <= (1 - headroom) * h100, distributed
    if name == "dpo_70b":  # split across the job's GPUs, and more than DDP or one GPU could hold
        assert plan(int(policy * 2), [h100] * gpus["logps"], headroom).device_map == "balanced"
        assert training_bytes_per_gpu(policy, gpus["train"], "ddp") > h100


@pytest.mark.parametrize("name", sorted(PAPER))
def test_example_dry_run(tmp_path, name):
    path, cfg = stage(tmp_path, name)
    gpus = example_gpus(name)
    out = snakemake(tmp_path, "-n", "--set-resources", *(f"{r}:gpu={n}" for r, n in gpus.items()), config=path).stdout
    for rule, n in gpus.items():  # the plan holds the stated GPUs per job
        assert re.search(rf"^rule {rule}:\n(?:    .*\n)*?    resources: .*\bgpu={n}\b", out, re.M), rule
    n, shards = cfg["iterations"], cfg["shards"]
    counts = job_counts(out)
    assert counts["train"] == n and counts["build_pairs"] == n
    assert counts["generate"] == n * shards and counts["score"] == n * shards
    assert counts["eval_generate"] == n + 1 and counts["prepare_model"] == 1
    logps: dict[int, dict[str, set[int]]] = {}
    for o in job_outputs(out, "logps"):
        m = LOGPS.match(o)
        assert m, o
        logps.setdefault(int(m.group(1)), {}).setdefault(m.group(2), set()).add(int(m.group(3)))
    assert {t: set(ck) for t, ck in logps.items()} == EXPECTED_LOGPS[name]
    assert all(s == set(range(shards)) for ck in logps.values() for s in ck.values())
    assert counts["logps"] == shards * sum(len(v) for v in EXPECTED_LOGPS[name].values())
    assert not (tmp_path / "results").exists()


def test_mnpo_offline_first_iteration(tmp_path):
    """The commented-out initial_data block of mnpo.yaml, uncommented: iteration 1 imports, 2-3 sample."""
    lines = (EXAMPLES / "mnpo.yaml").read_text().splitlines()
    start = lines.index("# initial_data:")
    end = start + 1
    while end < len(lines) and lines[end].startswith("#   "):
        end += 1
    text = "\n".join(lines[:start] + [ln[2:] for ln in lines[start:end]] + lines[end:]) + "\n"
    path, cfg = stage(tmp_path, "mnpo", text)
    assert cfg["initial_data"]["path"]
    out = snakemake(tmp_path, "-n", config=path).stdout
    counts = job_counts(out)
    assert counts["import_initial"] == 8 and counts["generate"] == 16 and counts["score"] == 16
    assert counts["train"] == 3 and counts["logps"] == 8 * 6
    assert all("iter1/" not in o for o in job_outputs(out, "generate"))
    # the offline rows are the seed's: the prompts' own dataset, MNPO's columns recognised by name
    init = cfg["initial_data"]
    assert init["path"] == cfg["prompts"]["path"] and init["split"] == "train" and "responses_column" not in init
