"""The workflow's plan (nashflow.plan): which settings each job reads, and which run owns shared jobs."""

import copy

import pandas as pd
import pytest
from conftest import REPO, tiny_config

from nashflow.config import validate_config
from nashflow.io import read_table, write_table
from nashflow.plan import JOBS, Plan, job_settings

SCHEMA = REPO / "config" / "schema.yaml"


@pytest.fixture()
def fake_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def _plan(fake_model, runs):
    return Plan(validate_config(tiny_config(fake_model, runs=runs), SCHEMA))


def test_runs_share_iteration_one_where_their_settings_agree(fake_model):
    """Iteration 1 samples from the base model: runs with equal sampling settings share the samples
    (the first such run in config order owns them), with an equal scorer the scores too; runs
    evaluated alike share the base model's held-out responses. Later iterations never share."""
    plan = _plan(fake_model, {
        "a": {"algorithm": {"name": "dpo"}},
        "b": {"algorithm": {"name": "ipo"}},  # other loss and pairs: samples and scores shared
        "c": {"algorithm": {"name": "dpo"}, "scorer": {"components": [{"type": "sentiment"}]}},
        "d": {"algorithm": {"name": "dpo"}, "generation": {"temperature": 0.5}},
        "e": {"algorithm": {"name": "nash_md"}},  # the mixture sampler samples differently
        "f": {"algorithm": {"name": "dpo"}, "generation": {"max_prompt_length": 100}},  # held-out prompts too
    })
    runs = {r.split("/")[-1]: r for r in plan.runs}
    owner = lambda table, name: table[runs[name]].split("/")[-1]  # noqa: E731
    assert [owner(plan.samples_owner, n) for n in "abcdef"] == ["a", "a", "a", "d", "e", "f"]
    assert [owner(plan.scores_owner, n) for n in "abcdef"] == ["a", "a", "c", "d", "e", "f"]
    assert [owner(plan.eval_owner, n) for n in "abcdef"] == ["a", "a", "a", "a", "a", "f"]  # one judge: the top-level scorer
    assert plan.samples(runs["b"], 1, 0) == f"results/{runs['a']}/iter1/samples/shard0.parquet"
    assert plan.samples(runs["b"], 2, 0) == f"results/{runs['b']}/iter2/samples/shard0.parquet"
    assert plan.scores(runs["c"], 1, 1) == f"results/{runs['c']}/iter1/scores/shard1.parquet"
    assert plan.eval_responses(runs["f"], 0) == f"results/{runs['f']}/iter0/eval/responses.parquet"
    assert plan.eval_responses(runs["c"], 0) == f"results/{runs['a']}/iter0/eval/responses.parquet"
    assert plan.eval_responses(runs["b"], 1) == f"results/{runs['b']}/iter1/eval/responses.parquet"


def test_roles_name_the_log_prob_files_each_iteration_reads(fake_model):
    plan = _plan(fake_model, {"m": {"algorithm": {"name": "mnpo", "history": 1}, "iterations": 3}})
    run = plan.runs[0]
    by_role = plan.logps_by_role(run, 3)
    assert by_role["reference"] == [f"results/{run}/iter3/logps/base/shard{s}.parquet" for s in (0, 1)]
    assert by_role["history"] == [[f"results/{run}/iter3/logps/iter2/shard{s}.parquet" for s in (0, 1)]]
    assert sorted(plan.train_logps(run, 3)) == sorted(by_role["reference"] + by_role["history"][0])
    assert plan.role_names(run, 3) == {"generator": f"{run}/iter2", "reference": "base_model",
                                       "history": [f"{run}/iter2"]}


def _settings(cfg, **changes):
    cfg = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    checked = validate_config(cfg, SCHEMA)
    return {stage: job_settings(stage, checked) for stage in JOBS}


@pytest.mark.parametrize("change,rerun", [
    # key changed → the jobs whose settings change (and only those)
    ({"training__report_to": []}, set()),
    ({"training__checkpoint_every": 7}, set()),
    ({"training__distributed": "ddp"}, set()),
    ({"training__learning_rate": 0.5}, {"train"}),
    ({"training__max_length": 80}, {"train", "logps"}),
    # the game's exact evaluation reads the method's roles and regularisation: any algorithm key
    ({"algorithm": {"name": "dpo", "beta": 0.3}}, {"train", "game_eval"}),
    ({"algorithm": {"name": "dpo", "pairs": "top1_top2"}}, {"build_pairs", "game_eval"}),
    ({"algorithm": {"name": "nash_md"}}, {"generate", "build_pairs", "logps", "train", "game_eval"}),
    ({"prompts__prompts_per_iteration": 4}, {"generate", "split_prompts"}),
    ({"generation__temperature": 0.5}, {"generate"}),
    ({"evaluation__temperature": 0.5}, {"eval_generate", "game_eval"}),
    ({"scorer": {"components": [{"type": "sentiment"}]}}, {"score", "eval_generate", "eval_metrics", "game_eval"}),
    ({"compute__logps_dtype": "bfloat16"}, {"logps"}),
    ({"compute__cpu_linear": "aten"}, {"generate", "score", "logps", "train", "eval_generate", "eval_metrics"}),
    ({"seed": 3}, {"prepare_model", "split_prompts", "import_initial", "generate", "train"}),
    ({"shards": 1}, {"import_initial", "generate", "logps"}),
])
def test_a_config_edit_reruns_exactly_the_jobs_that_read_the_key(fake_model, change, rerun):
    cfg = tiny_config(fake_model)
    before, after = _settings(cfg), _settings(cfg, **change)
    assert {stage for stage in JOBS if before[stage] != after[stage]} == rerun


class Recording(dict):
    """A job's settings that remember which keys the stage read."""

    def __init__(self, data, seen=None, prefix=""):
        super().__init__(data)
        self.seen, self.prefix = set() if seen is None else seen, prefix

    def __getitem__(self, key):
        self.seen.add(self.prefix + key)
        value = super().__getitem__(key)
        return Recording(value, self.seen, f"{self.prefix}{key}.") if isinstance(value, dict) else value

    def get(self, key, default=None):
        return self[key] if key in self else default


def _write_samples(folder) -> str:
    """A samples table of 4 prompts x 3 responses (``samples.parquet`` in ``folder``); its path."""
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"say {i}"}], "sample_index": k,
             "response": "word " * (i + k + 1), "token_count": i + k + 1, "prompt_tokens": 5,
             "finish_reason": "stop", "seed": 0, "generator": "base_model", "sampler": "policy"}
            for i in range(4) for k in range(3)]
    write_table(pd.DataFrame(rows), folder / "samples.parquet", {})
    return str(folder / "samples.parquet")


def test_jobs_read_every_setting_they_rerun_on(tmp_path, tiny_model_dir):
    """The score, pairs and log-prob stages read each top-level key of their settings (a key they
    did not read would re-run them for nothing), and nothing else (a plain dict raises KeyError)."""
    from nashflow import stages

    cfg = validate_config(tiny_config(tiny_model_dir, shards=1), SCHEMA)
    samples = _write_samples(tmp_path)
    s = Recording(job_settings("score", cfg))
    stages.score(s, samples_path=samples, out=str(tmp_path / "scores.parquet"))
    assert {k.split(".")[0] for k in s.seen} == set(job_settings("score", cfg))
    s = Recording(job_settings("build_pairs", cfg))
    stages.pairs(s, samples_paths=[samples], scores_paths=[str(tmp_path / "scores.parquet")],
                 out=str(tmp_path / "pairs.parquet"))
    assert {k.split(".")[0] for k in s.seen} == set(job_settings("build_pairs", cfg))
    s = Recording(job_settings("logps", cfg))
    stages.logps(s, pairs_path=str(tmp_path / "pairs.parquet"), shard=0, model_dir=str(tiny_model_dir),
                 out=str(tmp_path / "logps.parquet"))
    assert {k.split(".")[0] for k in s.seen} == set(job_settings("logps", cfg))


def test_jobs_without_a_model_never_import_torch(tmp_path):
    """The prompt split, pair building, programmatic scoring and base metrics start without torch
    (~0.8 s of every such job on a CPU machine)."""
    import json
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    cfg = validate_config(tiny_config(tmp_path), SCHEMA)
    settings = {stage: job_settings(stage, cfg) for stage in ("split_prompts", "score", "build_pairs", "eval_metrics")}
    samples = _write_samples(tmp_path)
    write_table(read_table(samples).assign(reward=1.0), tmp_path / "responses.parquet", {})
    # as the jobs' scripts run: their settings (params) and paths in
    code = f"""
import json, sys
from nashflow import stages
from nashflow.logutil import job_logging
s, out = json.loads({json.dumps(settings)!r}), {str(tmp_path)!r}
with job_logging(None):
    stages.split(s["split_prompts"], out + "/eval.parquet", out + "/pool.parquet")
    stages.score(s["score"], samples_path={samples!r}, out=out + "/scores.parquet", threads=1)
    stages.pairs(s["build_pairs"], samples_paths=[{samples!r}], scores_paths=[out + "/scores.parquet"],
                 out=out + "/pairs.parquet")
    stages.eval_metrics(s["eval_metrics"], iteration=0, current=out + "/responses.parquet", base=None,
                        previous=None, out=out + "/metrics.json")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "pairs.parquet").exists() and (tmp_path / "metrics.json").exists()
