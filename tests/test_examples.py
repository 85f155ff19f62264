"""Dry runs of the paper-scale example configs in config/examples/ (no job runs, no model loads).

Each example is planned in a temporary directory laid out like the repository root: the embedded
default config/config.yaml (which the Snakefile loads first, so the example extends it exactly as
`snakemake --configfile config/examples/<name>.yaml` does from the repository root), the example
itself unchanged, and stub inputs at the relative paths it names (a base-model folder with a
config.json and a prompt file with a few hundred rows in the configured column).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake

from nashflow.config import deep_update, validate_config

EXAMPLES = REPO / "config" / "examples"
SCHEMA = REPO / "config" / "schema.yaml"
JOB_LINE = re.compile(r"^(\w+)\s+(\d+)$")
LOGPS = re.compile(r"^results/[^/]+/iter(\d+)/logps/(base|iter\d+)/shard(\d+)\.parquet$")


def _comal_checkpoints(t: int) -> set[str]:
    """comal.sh: OLD_CKPT = previous iterate; REF_CKPT = π_0, moved to π_12 after the 12th iteration."""
    name = lambda k: "base" if k == 0 else f"iter{k}"
    return {name(0 if t <= 12 else 12), name(t - 1)}


# Checkpoints whose log-probs iteration t reads, per method (written out from ALGORITHMS.md, not
# computed with nashflow.methods): MNPO = SFT reference + up to 2 history players starting at π_1;
# SPPO/GPO = π_{t-1} as reference; Nash-MD and MOODPO = the SFT model; COMAL = anchor + π_{t-1}.
EXPECTED_LOGPS = {
    "mnpo": {1: {"base"}, 2: {"base", "iter1"}, 3: {"base", "iter1", "iter2"}},
    "sppo": {1: {"base"}, 2: {"iter1"}, 3: {"iter2"}},
    "gpo": {1: {"base"}, 2: {"iter1"}, 3: {"iter2"}},
    "nash_md": {1: {"base"}, 2: {"base"}, 3: {"base"}},
    "moodpo": {1: {"base"}, 2: {"base"}},
    "comal": {t: _comal_checkpoints(t) for t in range(1, 25)},
}

# The values that make each example "paper scale" (ALGORITHMS.md), checked on the effective config.
PAPER = {
    "mnpo": {
        "base_model.path": "models/gemma-2-9b-it", "iterations": 3, "shards": 8,
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
        "training.max_prompt_length": 1000, "training.mixed_precision": "bf16",
    },
    "sppo": {
        "base_model.path": "models/Meta-Llama-3-8B-Instruct", "iterations": 3,
        "generation.samples_per_prompt": 5, "generation.temperature": 0.7, "generation.top_p": 0.9,
        "generation.max_new_tokens": 2048,
        "scorer.components.0.type": "pairrm", "scorer.components.0.args.prompt_format": "chat",
        "algorithm.name": "sppo", "algorithm.loss": "sppo", "algorithm.pairs": "sppo",
        "algorithm.reference": "previous", "algorithm.beta": 0.001, "algorithm.logp_norm": "sum",
        "training.learning_rate": 5e-7, "training.optimizer": "rmsprop", "training.batch_size": 8,
        "training.max_length": 1024, "training.max_prompt_length": 512, "training.mixed_precision": "bf16",
    },
    "gpo": {
        "base_model.path": "models/Meta-Llama-3-8B-Instruct", "iterations": 3,
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
        "generation.samples_per_prompt": 5, "generation.temperature": 0.8, "generation.top_p": 0.95,
        "generation.max_new_tokens": 2048,
        "scorer.components.0.type": "judge", "scorer.components.0.args.model": "models/Llama-3-OffsetBias-8B",
        "scorer.components.0.args.top_logprobs": 4,
        "algorithm.name": "comal", "algorithm.loss": "inpo", "algorithm.pairs": "top1_top2",
        "algorithm.reference": "anchor", "algorithm.anchor_every": 12, "algorithm.history": 1,
        "algorithm.history_includes_base": True, "algorithm.select_best": True, "algorithm.logp_norm": "sum",
        "algorithm.params.eta": 0.002,
        "training.learning_rate": 5e-7, "training.epochs": 3, "training.batch_size": 1, "training.grad_accum": 4,
        "training.max_length": 2048, "training.mixed_precision": "bf16",
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
    p = cfg["prompts"]
    rows = [{p.get("column", "prompt"): f"Prompt number {i}: explain something."} for i in range(p["eval_size"] + 300)]
    _write_rows(workdir / p["path"], rows)
    init = (cfg.get("initial_data") or {}).get("path")
    if init:
        col = cfg["initial_data"].get("prompt_column", "prompt")
        _write_rows(workdir / init, [{col: f"Offline prompt {i}", "responses": [f"answer {k}" for k in range(5)],
                                      "scores": [float(k) for k in range(5)]} for i in range(40)])
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
    # Local folders and files only (the workflow downloads nothing).
    assert cfg["base_model"]["path"].startswith("models/") and cfg["prompts"]["path"].startswith("data/")
    for comp in cfg["scorer"]["components"]:
        assert comp["args"].get("model", "base").startswith(("models/", "base")), comp


@pytest.mark.parametrize("name", sorted(PAPER))
def test_example_dry_run(tmp_path, name):
    path, cfg = stage(tmp_path, name)
    out = snakemake(tmp_path, "-n", config=path).stdout
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
    # the offline rows are the ones the workflow would read
    data = tmp_path / cfg["initial_data"]["path"]
    assert json.loads(data.read_text().splitlines()[0])["responses"][0] == "answer 0"
