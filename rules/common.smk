# Config validation and input functions (get_*): paths and settings come from nashflow.plan.
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as in every job: hub datasets come from the local cache

from nashflow.config import validate_config
from nashflow.data import load_prompts
from nashflow.errors import NashflowError
from nashflow.offline import check_initial
from nashflow.plan import BASE_MODEL, Plan, job_settings, model_dir
from nashflow.settings import initial_data_config, prompts_config, scorer_config
from nashflow.sources import local_inputs


def _validated(cfg):
    """Validate before any job runs; a problem is one line naming the key or file."""
    try:
        checked = validate_config(cfg, Path(workflow.basedir) / "config" / "schema.yaml")
        load_prompts(prompts_config(checked))
        if checked["initial_data"]["path"]:
            check_initial(initial_data_config(checked), checked["prompts"]["system_prompt"])
        base = checked["base_model"]["path"]
        if base and not (Path(base) / "config.json").exists():
            raise NashflowError(f"base model path {base} is not a model folder (config key base_model.path)")
    except NashflowError as err:
        print(f"nashflow: error: {err}", file=sys.stderr)
        sys.exit(1)
    return checked


# Jobs import the nashflow library from this checkout, in any environment (conda envs included).
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (workflow.basedir, os.getenv("PYTHONPATH")) if p))

_checked = _validated(config)
config.clear()
config.update(_checked)

PLAN = Plan(config)
TOP = PLAN.top
RUNS = PLAN.runs  # "<run>", or "<run>/<name>" per entry of `runs`
RUN_CFG = PLAN.cfg
SHARDS = list(range(config["shards"]))
PROMPTS = PLAN.prompts
SETTINGS_TOP = {stage: job_settings(stage, config) for stage in ("prepare_model", "split_prompts")}


def settings(stage):
    """params function: what a job of ``stage`` reads (nashflow.plan.job_settings), its re-run trigger."""
    return lambda wildcards: PLAN.settings[wildcards.run][stage]


# Model-backed scorers (judge, reward model, GPM) get more threads and memory; one that reads the
# converted base model (`model: base`) has it as an input.
def _is_model_scorer(sc):
    return any(c.type in ("judge", "gpm", "reward_model", "pairrm") for c in sc.components)


SCORER = {r: scorer_config(RUN_CFG[r]) for r in RUNS}
EVAL_SCORER = scorer_config(config)
SCORER_THREADS = lambda wildcards: 2 if _is_model_scorer(SCORER[wildcards.run]) else 1
SCORER_MEM_MB = lambda wildcards: 16000 if _is_model_scorer(SCORER[wildcards.run]) else 4000
EVAL_THREADS = 2 if _is_model_scorer(EVAL_SCORER) else 1
EVAL_MEM_MB = 16000 if _is_model_scorer(EVAL_SCORER) else 4000
IS_GAME = EVAL_SCORER.components[0].type == "matrix_game"  # exact evaluation: rules/game.smk


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),
    iter=r"\d+",
    shard=r"\d+",
    ckpt=r"base|iter\d+",


def get_generator(wildcards):
    return model_dir(wildcards.run, int(wildcards.iter) - 1)


def get_generate_inputs(wildcards):
    """The generator π_{t-1}, the prompt pool, and for Nash-MD's mixture sampler the reference."""
    inputs = {"model": get_generator(wildcards), "pool": f"{PROMPTS}/pool.parquet"}
    if RUN_CFG[wildcards.run]["algorithm"]["sampler"] == "mixture":
        inputs["reference"] = model_dir(wildcards.run, PLAN.roles(wildcards.run, wildcards.iter)["reference"])
    return inputs


def get_logps_model(wildcards):
    return BASE_MODEL if wildcards.ckpt == "base" else model_dir(wildcards.run, wildcards.ckpt[len("iter"):])


def get_train_logps(wildcards):
    return PLAN.train_logps(wildcards.run, wildcards.iter)


def get_logps_by_role(wildcards):
    return PLAN.logps_by_role(wildcards.run, wildcards.iter)


def get_roles(wildcards):
    return PLAN.role_names(wildcards.run, wildcards.iter)


def _scorer_model(inputs, scorer):
    if scorer.uses_base_model():
        inputs["scorer_model"] = BASE_MODEL
    return inputs


def get_score_inputs(wildcards):
    return _scorer_model({"samples": PLAN.samples(wildcards.run, wildcards.iter, wildcards.shard)},
                         SCORER[wildcards.run])


def get_samples(wildcards):
    return [PLAN.samples(wildcards.run, wildcards.iter, s) for s in SHARDS]


def get_scores(wildcards):
    return [PLAN.scores(wildcards.run, wildcards.iter, s) for s in SHARDS]


def get_eval_generate_inputs(wildcards):
    """The iterate, the held-out prompts, and a reward model that reads the base model."""
    inputs = {"model": model_dir(wildcards.run, wildcards.iter), "prompts": f"{PROMPTS}/eval.parquet"}
    return inputs if EVAL_SCORER.kind == "preference" else _scorer_model(inputs, EVAL_SCORER)


def get_eval_inputs(wildcards):
    t = int(wildcards.iter)
    inputs = {"current": PLAN.eval_responses(wildcards.run, t)}
    if t > 0:
        inputs["base"] = PLAN.eval_responses(wildcards.run, 0)
        inputs["previous"] = PLAN.eval_responses(wildcards.run, t - 1)
        if EVAL_SCORER.kind == "preference":  # the judge compares the responses here
            _scorer_model(inputs, EVAL_SCORER)
    return inputs


def get_all_eval_metrics(wildcards):
    return PLAN.run_files(wildcards.run)["metrics"]


def get_all_eval_responses(wildcards):
    return PLAN.run_files(wildcards.run)["responses"]


def get_all_train_metrics(wildcards):
    return PLAN.run_files(wildcards.run)["train_metrics"]


def get_all_models(wildcards):
    return PLAN.run_files(wildcards.run)["models"]


def get_export_inputs(wildcards):
    return {"responses": PLAN.eval_responses(wildcards.run, wildcards.iter)}


def get_compare_files():
    """The compare job's inputs per run, as params (the script needs to know which file is whose)."""
    return PLAN.compare_files()


def get_compare_inputs(wildcards):
    """Every run's held-out responses and metrics per iteration, training metrics and iterates."""
    inputs = {key: [f for files in PLAN.compare_files().values() for f in files[key]]
              for key in ("responses", "metrics", "train_metrics", "models")}
    if EVAL_SCORER.kind == "preference":
        _scorer_model(inputs, EVAL_SCORER)
    return inputs


def get_final_targets():
    return PLAN.final_targets(game=IS_GAME)


def get_accelerate_config(wildcards):
    """training.distributed: a shipped accelerate config (config/accelerate/<name>.yaml) or a path."""
    name = RUN_CFG[wildcards.run]["training"]["distributed"]
    if name == "auto":
        return None
    shipped = Path(workflow.basedir) / "config" / "accelerate" / f"{name}.yaml"
    return str(shipped if shipped.exists() else Path(name).resolve())


def get_game_inputs(wildcards):
    """Every checkpoint of a run (base first), the held-out prompts, and the base model's tokenizer
    (the matrix_game scorer's action rule)."""
    return {"models": [model_dir(wildcards.run, t) for t in [0] + PLAN.iterations(wildcards.run)],
            "prompts": f"{PROMPTS}/eval.parquet", "base": BASE_MODEL}
