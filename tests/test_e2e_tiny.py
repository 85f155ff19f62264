"""End-to-end runs of the whole DAG on the tiny model: complete run, re-run, targeted re-run,
and resume after the Snakemake process tree is killed mid-DAG."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import snakemake, tiny_config, write_config
from test_dag import job_counts

pytestmark = pytest.mark.slow


def tables(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "results").rglob("*.parquet"))}


def test_full_dag_outputs(full_run):
    res = full_run / "results" / "tiny"
    for t in (1, 2):
        assert (res / f"iter{t}" / "model" / "model.safetensors").exists()
        prov = json.loads((res / f"iter{t}" / "model" / "provenance.json").read_text())
        assert prov["parents"]["policy_init"] == ("base_model" if t == 1 else "tiny/iter1")
        assert prov["parents"]["reference"] == "base_model" and prov["parents"]["history"] == []
        samples = pd.concat([pd.read_parquet(p) for p in (res / f"iter{t}" / "samples").glob("*.parquet")])
        assert len(samples) == 8 * 3 and samples.prompt_id.nunique() == 8
        assert set(samples.generator) == {"base_model" if t == 1 else "tiny/iter1"}
        pairs = pd.read_parquet(res / f"iter{t}" / "pairs.parquet")
        logps = pd.concat([pd.read_parquet(p) for p in (res / f"iter{t}" / "logps" / "base").glob("*.parquet")])
        assert sorted(logps.pair_id) == sorted(pairs.pair_id) and set(logps.model) == {"base_model"}
        assert (logps.chosen_logp < 0).all() and (logps.chosen_tokens > 0).all()
        m = json.loads((res / f"iter{t}" / "eval" / "metrics.json").read_text())
        assert 0 <= m["win_rate_vs_base"] <= 1 and m["n_prompts"] == 8
    summary = pd.read_csv(res / "report" / "summary.csv")
    assert summary.iteration.tolist() == [0, 1, 2]
    for png in ("reward", "win_rate", "length", "training", "objectives"):
        assert (res / "report" / f"{png}.png").stat().st_size > 5000
    for rule_log in (full_run / "logs").rglob("*.log"):
        assert "Traceback" not in rule_log.read_text(), rule_log
    assert list((full_run / "logs").rglob("*.benchmark.tsv"))


def test_rerun_does_nothing_and_deleting_a_model_redoes_only_dependents(full_run, tiny_model_dir):
    out = snakemake(full_run, "-n").stdout
    assert "Nothing to be done" in out
    # A changed setting re-runs exactly the jobs that depend on it (params rerun trigger).
    changed = write_config(full_run / "changed", tiny_config(tiny_model_dir, evaluation={"temperature": 0.3}))
    counts = job_counts(snakemake(full_run, "-n", config=changed).stdout)
    assert counts == {"eval_generate": 3, "eval_metrics": 3, "export_answers": 3, "report": 1, "all": 1,
                      "total": 11}
    changed = write_config(full_run / "changed", tiny_config(tiny_model_dir, algorithm={"name": "dpo", "beta": 0.2}))
    counts = job_counts(snakemake(full_run, "-n", config=changed).stdout)
    assert counts["train"] == 2 and counts["generate"] == 2 and "split_prompts" not in counts
    model = full_run / "results" / "tiny" / "iter2" / "model"
    model.rename(model.with_name("model.away"))  # the run is shared by other tests: put it back after
    try:
        counts = job_counts(snakemake(full_run, "-n").stdout)
    finally:
        model.with_name("model.away").rename(model)
    assert counts == {"train": 1, "eval_generate": 1, "eval_metrics": 1, "export_answers": 1, "report": 1,
                      "all": 1, "total": 6}


def test_report_html(full_run):
    snakemake(full_run, "--report", "report.html")
    html = (full_run / "report.html").read_text(errors="ignore")
    assert "win_rate.png" in html and len(html) > 10000

