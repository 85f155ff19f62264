# Config validation, path helpers and input functions (get_*). No rule lives here.
import sys
from pathlib import Path

from nashflow.config import validate_config
from nashflow.data import load_prompts
from nashflow.config import prompts_config
from nashflow.errors import NashflowError


def _validated(cfg):
    """Validate before any job runs; a problem is one line naming the key or file."""
    try:
        checked = validate_config(cfg, Path(workflow.basedir) / "config" / "schema.yaml")
        load_prompts(prompts_config(checked))
        base = checked["base_model"]["path"]
        if base and not (Path(base) / "config.json").exists():
            raise NashflowError(f"base model path {base} is not a model folder (config key base_model.path)")
    except NashflowError as err:
        print(f"nashflow: error: {err}", file=sys.stderr)
        sys.exit(1)
    return checked


_checked = _validated(config)
config.clear()
config.update(_checked)

RUN = config["run"]
ITERATIONS = list(range(1, config["iterations"] + 1))
SHARDS = list(range(config["shards"]))
BASE_MODEL = "results/base_model"


wildcard_constraints:
    run=RUN,
    iter=r"\d+",
    shard=r"\d+",


def model_dir(run, t):
    """Checkpoint of iteration t (0 = the base model)."""
    return BASE_MODEL if int(t) == 0 else f"results/{run}/iter{int(t)}/model"


def get_generator(wildcards):
    return model_dir(wildcards.run, int(wildcards.iter) - 1)


def get_reference(wildcards):
    if config["algorithm"]["reference"] == "previous":
        return get_generator(wildcards)
    return BASE_MODEL


def get_samples(wildcards):
    return expand("results/{run}/iter{iter}/samples/shard{shard}.parquet",
                  run=wildcards.run, iter=wildcards.iter, shard=SHARDS)


def get_scores(wildcards):
    return expand("results/{run}/iter{iter}/scores/shard{shard}.parquet",
                  run=wildcards.run, iter=wildcards.iter, shard=SHARDS)


def get_ref_logps(wildcards):
    return expand("results/{run}/iter{iter}/logps/ref/shard{shard}.parquet",
                  run=wildcards.run, iter=wildcards.iter, shard=SHARDS)


def get_eval_model(wildcards):
    return model_dir(wildcards.run, wildcards.iter)


def get_eval_inputs(wildcards):
    t = int(wildcards.iter)
    inputs = {"current": f"results/{wildcards.run}/iter{t}/eval/responses.parquet"}
    if t > 0:
        inputs["base"] = f"results/{wildcards.run}/iter0/eval/responses.parquet"
        inputs["previous"] = f"results/{wildcards.run}/iter{t - 1}/eval/responses.parquet"
    return inputs


def get_all_eval_metrics(wildcards):
    return expand("results/{run}/iter{iter}/eval/metrics.json", run=wildcards.run, iter=[0] + ITERATIONS)


def get_all_train_metrics(wildcards):
    return expand("results/{run}/iter{iter}/train_metrics.csv", run=wildcards.run, iter=ITERATIONS)


def get_final_targets():
    """The report plus every iterate, so that a deleted checkpoint is rebuilt (with its dependents)."""
    return expand("results/{run}/report/summary.csv", run=RUN) + [model_dir(RUN, t) for t in ITERATIONS]
