"""Dry-run tests of the DAG and of the start-up checks (no job runs)."""

import re

import pytest
from conftest import snakemake, tiny_config, write_config

JOB_LINE = re.compile(r"^(\w+)\s+(\d+)$")


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


@pytest.fixture()
def fake_model(tmp_path):
    d = tmp_path / "fake_model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_dry_run_three_iterations_two_shards(tmp_path, fake_model):
    write_config(tmp_path, tiny_config(fake_model, iterations=3, shards=2))
    out = snakemake(tmp_path, "-n", "--forceall").stdout
    assert job_counts(out) == {
        "prepare_model": 1, "split_prompts": 1, "generate": 6, "score": 6, "build_pairs": 3,
        "logps": 6, "train": 3, "eval_generate": 4, "eval_metrics": 4, "export_answers": 4, "export_pairs": 3,
        "report": 1, "all": 1, "total": 43,
    }
    assert not (tmp_path / "results").exists()


def dry_run_jobs(stdout: str) -> list[dict[str, str]]:
    """Job blocks of a dry run: {'rule': ..., 'input': ..., 'output': ..., 'wildcards': ...}."""
    jobs, cur = [], None
    for line in stdout.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            cur = {"rule": line.split()[1].rstrip(":")}
            jobs.append(cur)
        elif cur is not None and line.startswith("    ") and ":" in line:
            key, _, val = line.strip().partition(": ")
            cur[key] = val
    return jobs


def test_generate_of_iteration_t_reads_model_of_t_minus_1(tmp_path, fake_model):
    write_config(tmp_path, tiny_config(fake_model, iterations=3, shards=2))
    jobs = dry_run_jobs(snakemake(tmp_path, "-n", "--forceall").stdout)
    gens = [j for j in jobs if j["rule"] == "generate"]
    assert len(gens) == 6
    for j in gens:
        t = int(j["wildcards"].split("iter=")[1].split(",")[0])
        inputs = j["input"].split(", ")
        expected = "results/base_model" if t == 1 else f"results/tiny/iter{t - 1}/model"
        assert expected in inputs, j
    trains = {j["output"].split(", ")[0]: j["input"].split(", ") for j in jobs if j["rule"] == "train"}
    assert "results/tiny/iter2/pairs.parquet" in trains["results/tiny/iter2/model"]
    assert "results/tiny/iter1/model" in trains["results/tiny/iter2/model"]


def test_target_of_one_iteration_builds_only_what_it_needs(tmp_path, fake_model):
    write_config(tmp_path, tiny_config(fake_model, iterations=3, shards=2))
    out = snakemake(tmp_path, "-n", "results/tiny/iter1/pairs.parquet").stdout
    assert job_counts(out) == {"prepare_model": 1, "split_prompts": 1, "generate": 2, "score": 2,
                               "build_pairs": 1, "total": 7}


def _fails_cleanly(tmp_path, cfg, match):
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nashflow: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_missing_prompts_file(tmp_path, fake_model):
    cfg = tiny_config(fake_model)
    cfg["prompts"]["path"] = str(tmp_path / "missing.jsonl")
    _fails_cleanly(tmp_path, cfg, r"prompts file .*missing\.jsonl does not exist \(config key prompts\.path\)")


def test_missing_prompt_column(tmp_path, fake_model):
    p = tmp_path / "p.csv"
    p.write_text("question\nhello there\n")
    cfg = tiny_config(fake_model)
    cfg["prompts"] = {"path": str(p)}
    _fails_cleanly(tmp_path, cfg, r"p\.csv has no column 'prompt' \(config key prompts\.column\)")


def test_empty_prompt_set(tmp_path, fake_model):
    p = tmp_path / "p.jsonl"
    p.write_text("")
    cfg = tiny_config(fake_model)
    cfg["prompts"] = {"path": str(p)}
    _fails_cleanly(tmp_path, cfg, r"p\.jsonl is empty")


def test_wrong_type_in_config(tmp_path, fake_model):
    _fails_cleanly(tmp_path, tiny_config(fake_model, iterations="3"), r"config key 'iterations'.*not of type 'integer'")


def test_vllm_engine_argument_refused_before_any_job(tmp_path, fake_model):
    cfg = tiny_config(fake_model, generation={"backend": "vllm", "vllm": {"seed": 1}})
    _fails_cleanly(tmp_path, cfg, r"config key 'generation\.vllm\.seed': set by nashflow")


def test_bad_distributed_config_refused_before_any_job(tmp_path, fake_model):
    cfg = tiny_config(fake_model, training={"distributed": "my-zero.yaml"})
    _fails_cleanly(tmp_path, cfg, r"config key 'training\.distributed': 'my-zero\.yaml' is neither auto")


def test_missing_base_model(tmp_path):
    _fails_cleanly(tmp_path, tiny_config(tmp_path / "nowhere"), r"base model path .*nowhere is not a model folder")


def test_mnpo_logps_jobs_follow_the_history_queue(tmp_path, fake_model):
    write_config(tmp_path, tiny_config(fake_model, iterations=3, shards=2, algorithm={"name": "mnpo"}))
    jobs = dry_run_jobs(snakemake(tmp_path, "-n", "--forceall").stdout)
    logps = sorted(j["output"] for j in jobs if j["rule"] == "logps")
    want = sorted(f"results/tiny/iter{t}/logps/{ckpt}/shard{s}.parquet"
                  for t, ckpts in ((1, ["base"]), (2, ["base", "iter1"]), (3, ["base", "iter1", "iter2"]))
                  for ckpt in ckpts for s in (0, 1))
    assert logps == want
    train3 = next(j for j in jobs if j["rule"] == "train" and "iter3" in j["output"])
    assert "results/tiny/iter3/logps/iter2/shard0.parquet" in train3["input"]


def test_comal_logps_jobs_follow_the_anchor(tmp_path, fake_model):
    cfg = tiny_config(fake_model, iterations=3, shards=1, algorithm={"name": "comal", "anchor_every": 2})
    write_config(tmp_path, cfg)
    jobs = dry_run_jobs(snakemake(tmp_path, "-n", "--forceall").stdout)
    logps = sorted(j["output"] for j in jobs if j["rule"] == "logps")
    # iteration 1: μ = π_0, π_t = π_0; iteration 2: μ = π_0, π_t = π_1; iteration 3: μ = π_2 = π_t
    assert logps == ["results/tiny/iter1/logps/base/shard0.parquet", "results/tiny/iter2/logps/base/shard0.parquet",
                     "results/tiny/iter2/logps/iter1/shard0.parquet", "results/tiny/iter3/logps/iter2/shard0.parquet"]


def test_iteration_one_from_an_existing_preference_dataset(tmp_path, fake_model):
    import json

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "chosen": "good", "rejected": "bad"}) + "\n"
                            for i in range(6)))
    cfg = tiny_config(fake_model, iterations=2, shards=2, algorithm={"name": "mnpo"},
                      initial_data={"path": str(data)})
    write_config(tmp_path, cfg)
    jobs = dry_run_jobs(snakemake(tmp_path, "-n", "--forceall").stdout)
    gens = [j for j in jobs if j["rule"] == "generate"]
    assert all("iter=2" in j["wildcards"] for j in gens) and len(gens) == 2
    imports = [j for j in jobs if j["rule"] == "import_initial"]
    assert len(imports) == 2 and not [j for j in jobs if j["rule"] == "score" and "iter=1" in j["wildcards"]]


def test_runs_share_iteration_one_and_the_base_evaluation(tmp_path, fake_model):
    """Three runs in one DAG: what their settings have in common is one job, in the first run's folder."""
    cfg = tiny_config(fake_model, iterations=2, shards=2)
    cfg["run"] = "cmp"
    cfg["runs"] = {"dpo": {"algorithm": {"name": "dpo"}}, "sppo": {"algorithm": {"name": "sppo"}},
                   "hot": {"algorithm": {"name": "dpo"}, "generation": {"temperature": 1.2}}}
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", "--forceall").stdout
    counts = job_counts(out)
    # iteration 1: dpo and sppo share samples and scores; hot samples its own. Base eval: one job.
    assert counts["generate"] == 2 * 2 + 3 * 2  # iteration 1: two sample sets; iteration 2: three
    assert counts["score"] == counts["generate"]
    assert counts["eval_generate"] == 1 + 3 * 2 and counts["compare"] == 1 and counts["report"] == 3
    jobs = dry_run_jobs(out)
    gen1 = sorted(j["output"] for j in jobs if j["rule"] == "generate" and "/iter1/" in j["output"])
    assert gen1 == [f"results/cmp/{r}/iter1/samples/shard{s}.parquet" for r in ("dpo", "hot") for s in (0, 1)]
    sppo_pairs = next(j for j in jobs
                      if j["rule"] == "build_pairs" and j["output"] == "results/cmp/sppo/iter1/pairs.parquet")
    assert "results/cmp/dpo/iter1/scores/shard0.parquet" in sppo_pairs["input"]
    compare = next(j for j in jobs if j["rule"] == "compare")
    assert "results/cmp/dpo/iter0/eval/responses.parquet" in compare["input"]
    assert "results/cmp/sppo/iter0/eval" not in compare["input"]


def test_rerun_one_iteration_of_one_run_builds_nothing_else(tmp_path, fake_model):
    cfg = tiny_config(fake_model, iterations=2, shards=1)
    cfg["run"] = "cmp"
    cfg["runs"] = {"a": {}, "b": {"training": {"learning_rate": 1.0e-4}}}
    write_config(tmp_path, cfg)
    out = snakemake(tmp_path, "-n", "--forceall", "results/cmp/b/iter1/model").stdout
    jobs = dry_run_jobs(out)
    trains = [j["output"] for j in jobs if j["rule"] == "train"]
    assert trains == ["results/cmp/b/iter1/model, results/cmp/b/iter1/train_metrics.csv"]
    assert not any("/cmp/b/iter2" in j.get("output", "") for j in jobs)


def test_run_overrides_rejected_with_the_key(tmp_path, fake_model):
    cfg = tiny_config(fake_model)
    cfg["runs"] = {"a": {"prompts": {"eval_size": 3}}}
    write_config(tmp_path, cfg)
    res = snakemake(tmp_path, "-n", check=False)
    assert res.returncode != 0 and "runs.a.prompts" in res.stderr


def test_lint_passes_every_rule_has_log_benchmark_resources_and_conda():
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    n_rules = text.count("\nrule ") + text.startswith("rule ") + text.count("    rule ")
    for directive in ("log:", "benchmark:", "conda:", "resources:", "threads:"):
        assert text.count(directive) >= n_rules, directive
    for field in ("gpu=", "mem_mb=", "runtime="):
        assert text.count(field) >= n_rules, field


def test_building_the_dag_imports_no_torch(tmp_path, fake_model):
    """Validating the config and building the DAG (every method family: pairs, history, anchor,
    mixture sampler, MOODPO conditioning; model and preference scorers) never imports torch, which
    would cost every `snakemake` call and every job-less step ~1 s."""
    import subprocess
    import sys

    from conftest import REPO, _no_slurm_probe_path

    runs = {"dpo": {"algorithm": {"name": "dpo"}}, "mnpo": {"algorithm": {"name": "mnpo"}},
            "comal": {"algorithm": {"name": "comal", "anchor_every": 1}},
            "nash_md": {"algorithm": {"name": "nash_md"}},
            "moodpo": {"algorithm": {"name": "moodpo"},
                       "scorer": {"components": [{"type": "length", "name": "long"},
                                                 {"type": "sentiment", "name": "happy"}]}}}
    write_config(tmp_path, tiny_config(fake_model, runs=runs))
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "-n", "--forceall"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PATH": _no_slurm_probe_path()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # iteration 1: dpo, mnpo and comal share their samples (same sampling settings), 3 owners x 2 shards;
    # iteration 2: 5 runs x 2 shards
    assert job_counts(proc.stdout)["generate"] == 3 * 2 + 5 * 2 and job_counts(proc.stdout)["train"] == 10
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "nashflow.plan" in imported  # the measurement sees the workflow's own imports
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers", "accelerate", "peft"))
    assert not heavy, heavy[:5]
