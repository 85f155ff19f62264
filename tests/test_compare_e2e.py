"""Two algorithms in one DAG on the tiny model: shared jobs run once, the comparison and its report."""

import json

import pandas as pd
import pytest
import yaml
from conftest import snakemake, tiny_config, write_config
from test_dag import job_counts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir):
    wd = tmp_path_factory.mktemp("compare")
    cfg = tiny_config(tiny_model_dir, shards=1)
    cfg["run"] = "cmp"
    cfg["runs"] = {"dpo": {"algorithm": {"name": "dpo", "beta": 0.1}},
                   "sppo": {"algorithm": {"name": "sppo"},
                            "training": {"learning_rate": 5.0e-3, "lora": {"r": 4, "alpha": 8}}}}
    write_config(wd, cfg)
    proc = snakemake(wd, "--cores", "2")
    return wd, proc.stdout + proc.stderr


def test_shared_jobs_ran_once(compared):
    wd, out = compared
    counts = job_counts(out)
    # iteration 1's sampling and scoring and the base model's evaluation: once for both runs
    assert counts["generate"] == 1 + 2 and counts["score"] == 1 + 2
    assert counts["eval_generate"] == 1 + 2 * 2 and counts["prepare_model"] == 1 and counts["split_prompts"] == 1
    logs = wd / "logs" / "cmp"
    assert (logs / "dpo" / "iter1" / "generate" / "shard0.log").exists()
    assert not (logs / "sppo" / "iter1" / "generate").exists()
    assert not (logs / "sppo" / "iter0").exists()
    res = wd / "results" / "cmp"
    assert not (res / "sppo" / "iter1" / "samples").exists()
    # sppo trained on the shared iteration-1 samples, dpo's folder, and says so
    pairs = pd.read_parquet(res / "sppo" / "iter1" / "pairs.parquet")
    shared = pd.read_parquet(res / "dpo" / "iter1" / "samples" / "shard0.parquet")
    assert set(pairs.chosen) <= set(shared.response)
    prov = json.loads((res / "sppo" / "iter2" / "model" / "provenance.json").read_text())
    assert prov["parents"]["policy_init"] == "cmp/sppo/iter1"
    assert "Nothing to be done" in snakemake(wd, "-n").stdout


def test_lora_run_saves_adapters_and_merged_iterates(compared):
    wd, _ = compared
    res = wd / "results" / "cmp"
    for t in (1, 2):
        assert (res / "sppo" / f"iter{t}" / "model" / "adapter" / "adapter_model.safetensors").exists()
        assert not (res / "dpo" / f"iter{t}" / "model" / "adapter").exists()
    prov = json.loads((res / "sppo" / "iter2" / "model" / "provenance.json").read_text())
    assert prov["lora"]["r"] == 4


def test_comparison_outputs(compared):
    wd, _ = compared
    cmp = wd / "results" / "cmp" / "compare"
    summary = pd.read_csv(cmp / "summary.csv")
    assert sorted(set(summary.run)) == ["dpo", "sppo"] and sorted(set(summary.iteration)) == [0, 1, 2]
    base_rows = summary[summary.iteration == 0]
    assert base_rows.mean_reward.nunique() == 1  # the same base evaluation for both runs
    rr = pd.read_parquet(cmp / "roundrobin.parquet")
    assert list(rr.player_a) == ["base", "base", "dpo (iter 2)"]
    assert list(rr.player_b) == ["dpo (iter 2)", "sppo (iter 2)", "sppo (iter 2)"]
    assert ((rr.ci_low <= rr.win_rate) & (rr.win_rate <= rr.ci_high)).all() and (rr.n_prompts == 8).all()
    # base vs dpo in the round-robin is 1 − dpo's own win rate vs base at iteration 2
    dpo2 = summary[(summary.run == "dpo") & (summary.iteration == 2)].win_rate_vs_base.iloc[0]
    assert rr.win_rate.iloc[0] == pytest.approx(1 - dpo2, abs=1e-4)
    for png in ("roundrobin", "reward", "win_rate", "length", "training"):
        assert (cmp / f"{png}.png").stat().st_size > 5000
    html = (cmp / "examples.html").read_text()
    assert html.count("<tr>") == 1 + 8 and "sppo iter 2" in html and "dpo iter 1" in html
    runs = yaml.safe_load((cmp / "runs.yaml").read_text())
    assert runs["runs"]["sppo"]["config"]["algorithm"]["loss"] == "sppo"
    assert runs["runs"]["dpo"]["checkpoints"]["cmp/dpo/iter2"]["parents"]["reference"] == "base_model"


def test_exports_and_tensorboard(compared):
    wd, _ = compared
    res = wd / "results" / "cmp"
    alpaca = json.loads((res / "dpo" / "iter2" / "eval" / "alpaca_eval.json").read_text())
    assert len(alpaca) == 8 and set(alpaca[0]) == {"instruction", "output", "generator", "dataset"}
    assert alpaca[0]["generator"] == "cmp/dpo/iter2"
    lines = (res / "sppo" / "iter1" / "eval" / "mt_bench_answers.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(lines) == 8 and rec["choices"][0]["turns"][0] and rec["model_id"] == "cmp/sppo/iter1"
    assert (res / "dpo" / "iter0" / "eval" / "alpaca_eval.json").exists()  # the shared base, once
    events = list((wd / "logs" / "cmp" / "sppo" / "iter2" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 200


def test_report_has_both_runs_and_the_comparison(compared):
    wd, _ = compared
    snakemake(wd, "--report", "report.html")
    html = (wd / "report.html").read_text(errors="ignore")
    for needle in ("roundrobin.png", "examples.html", "runs.html", "run.html", "cmp/sppo", "cmp/dpo", "Comparison"):
        assert needle in html, needle
