# Config validation, path helpers and input functions (get_*). No rule lives here.
import sys
from pathlib import Path

from nashflow.config import validate_config
from nashflow.data import load_prompts
from nashflow.config import prompts_config, scorer_config
from nashflow.errors import NashflowError
from nashflow.methods import checkpoints_needed, iteration_roles


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


def _pick(section, *keys):
    return {k: config[section][k] for k in keys}


# The config each rule's output depends on, passed as params: a change re-runs exactly the
# affected jobs and their dependents (Snakemake's params rerun trigger); other edits re-run nothing.
SETTINGS = {
    "prepare_model": {"base_model": config["base_model"]},
    "split_prompts": {"prompts": config["prompts"], "seed": config["seed"]},
    "generate": {"generation": config["generation"], "seed": config["seed"], "shards": config["shards"],
                 "algorithm": _pick("algorithm", "sampler", "mixture_coef", "conditioning"),
                 "conditioning": config["conditioning"]},
    "score": {"scorer": config["scorer"]},
    "build_pairs": {"pairs": config["algorithm"]["pairs"]},
    "logps": {"training": _pick("training", "max_length", "max_prompt_length"), "logps": config["logps"],
              "shards": config["shards"], "loss": config["algorithm"]["loss"]},
    "train": {"training": config["training"], "algorithm": config["algorithm"], "seed": config["seed"]},
    "eval_generate": {"evaluation": config["evaluation"], "scorer": config["scorer"],
                      "conditioning": config["conditioning"] if config["algorithm"]["conditioning"] else None},
    "eval_metrics": {"scorer": config["scorer"]},
}

# Model-backed scorers (judge, reward model, GPM) get more threads and memory; one that reads the
# converted base model (`model: base`) has it as an input.
SCORER = scorer_config(config)
SCORER_MODEL = any(c.type in ("judge", "gpm", "reward_model", "pairrm") for c in SCORER.components)
SCORER_THREADS = 2 if SCORER_MODEL else 1
SCORER_MEM_MB = 16000 if SCORER_MODEL else 4000


wildcard_constraints:
    run=RUN,
    iter=r"\d+",
    shard=r"\d+",
    ckpt=r"base|iter\d+",


def model_dir(run, t):
    """Checkpoint of iteration t (0 = the base model)."""
    return BASE_MODEL if int(t) == 0 else f"results/{run}/iter{int(t)}/model"


def ckpt_key(k):
    """Folder name of checkpoint k under logps/: base or iter<k>."""
    return "base" if int(k) == 0 else f"iter{int(k)}"


def get_generator(wildcards):
    return model_dir(wildcards.run, int(wildcards.iter) - 1)


def get_generate_inputs(wildcards):
    """The generator π_{t-1}, the prompt pool, and for Nash-MD's mixture sampler the reference."""
    t = int(wildcards.iter)
    inputs = {"model": get_generator(wildcards), "pool": f"results/{wildcards.run}/prompts/pool.parquet"}
    if config["algorithm"]["sampler"] == "mixture":
        inputs["reference"] = model_dir(wildcards.run, iteration_roles(t, config["algorithm"])["reference"])
    return inputs


def get_logps_model(wildcards):
    return BASE_MODEL if wildcards.ckpt == "base" else model_dir(wildcards.run, wildcards.ckpt[len("iter"):])


def _logps_files(run, t, k):
    return expand("results/{run}/iter{iter}/logps/{ckpt}/shard{shard}.parquet",
                  run=run, iter=t, ckpt=ckpt_key(k), shard=SHARDS)


def get_train_logps(wildcards):
    """Every log-prob shard iteration t's roles (reference, history, anchor) need."""
    t = int(wildcards.iter)
    return [f for k in checkpoints_needed(t, config["algorithm"]) for f in _logps_files(wildcards.run, t, k)]


def get_logps_by_role(wildcards):
    t = int(wildcards.iter)
    roles = iteration_roles(t, config["algorithm"])
    return {"reference": _logps_files(wildcards.run, t, roles["reference"]),
            "history": [_logps_files(wildcards.run, t, k) for k in roles["history"]]}


def get_roles(wildcards):
    """Checkpoint names per role, recorded in the trained model's provenance."""
    roles = iteration_roles(int(wildcards.iter), config["algorithm"])
    name = lambda k: "base_model" if k == 0 else f"{wildcards.run}/iter{k}"
    return {"generator": name(roles["generator"]), "reference": name(roles["reference"]),
            "history": [name(k) for k in roles["history"]]}


def _scorer_model(inputs):
    if SCORER.uses_base_model():
        inputs["scorer_model"] = BASE_MODEL
    return inputs


def get_score_inputs(wildcards):
    return _scorer_model({"samples": f"results/{wildcards.run}/iter{wildcards.iter}/samples/shard{wildcards.shard}.parquet"})


def get_samples(wildcards):
    return expand("results/{run}/iter{iter}/samples/shard{shard}.parquet",
                  run=wildcards.run, iter=wildcards.iter, shard=SHARDS)


def get_scores(wildcards):
    return expand("results/{run}/iter{iter}/scores/shard{shard}.parquet",
                  run=wildcards.run, iter=wildcards.iter, shard=SHARDS)


def get_eval_generate_inputs(wildcards):
    """The iterate, the held-out prompts, and a reward model that reads the base model."""
    inputs = {"model": model_dir(wildcards.run, wildcards.iter),
              "prompts": f"results/{wildcards.run}/prompts/eval.parquet"}
    return inputs if SCORER.kind == "preference" else _scorer_model(inputs)


def get_eval_inputs(wildcards):
    t = int(wildcards.iter)
    inputs = {"current": f"results/{wildcards.run}/iter{t}/eval/responses.parquet"}
    if t > 0:
        inputs["base"] = f"results/{wildcards.run}/iter0/eval/responses.parquet"
        inputs["previous"] = f"results/{wildcards.run}/iter{t - 1}/eval/responses.parquet"
        if SCORER.kind == "preference":  # the judge compares the responses here
            _scorer_model(inputs)
    return inputs


def get_all_eval_metrics(wildcards):
    return expand("results/{run}/iter{iter}/eval/metrics.json", run=wildcards.run, iter=[0] + ITERATIONS)


def get_all_eval_responses(wildcards):
    return expand("results/{run}/iter{iter}/eval/responses.parquet", run=wildcards.run, iter=[0] + ITERATIONS)


def get_all_train_metrics(wildcards):
    return expand("results/{run}/iter{iter}/train_metrics.csv", run=wildcards.run, iter=ITERATIONS)


def get_final_targets():
    """The report plus every iterate, so that a deleted checkpoint is rebuilt (with its dependents)."""
    return expand("results/{run}/report/summary.csv", run=RUN) + [model_dir(RUN, t) for t in ITERATIONS]
