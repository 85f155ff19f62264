# Config validation, path helpers and input functions (get_*). No rule lives here.
import json
import os
import re
import sys
from pathlib import Path

from nashflow.torchutil import lazy_torch

lazy_torch()  # building the DAG never runs a model: torch (1.5-2 s to import) loads only if used
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as in every job: hub datasets come from the local cache

from nashflow.config import run_config, run_ids, validate_config
from nashflow.data import load_prompts
from nashflow.config import initial_data_config, prompts_config, scorer_config
from nashflow.offline import check_initial
from nashflow.sources import local_inputs
from nashflow.errors import NashflowError
from nashflow.methods import checkpoints_needed, iteration_roles
from nashflow.precision import stage_compute


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

TOP = config["run"]
RUNS = run_ids(config)  # "<run>", or "<run>/<name>" per entry of `runs`
RUN_CFG = {r: run_config(config, r) for r in RUNS}
EVAL_CFG = {r: run_config(config, r, evaluation=True) for r in RUNS}  # top-level scorer judges every run
SHARDS = list(range(config["shards"]))
BASE_MODEL = "results/base_model"
PROMPTS = f"results/{TOP}/prompts"


def iterations(run):
    return list(range(1, RUN_CFG[run]["iterations"] + 1))


def _settings(cfg, ecfg):
    """The config each rule's output depends on, passed as params: a change re-runs exactly the
    affected jobs and their dependents (Snakemake's params rerun trigger); other edits re-run nothing."""
    pick = lambda section, *keys: {k: cfg[section][k] for k in keys}
    return {
        "generate": {"generation": cfg["generation"], "seed": cfg["seed"], "shards": cfg["shards"],
                     "algorithm": pick("algorithm", "sampler", "mixture_coef", "conditioning"),
                     "conditioning": cfg["conditioning"], "compute": stage_compute(cfg, "sampling")},
        "score": {"scorer": cfg["scorer"], "compute": stage_compute(cfg, "scoring")},
        "build_pairs": {"pairs": cfg["algorithm"]["pairs"]},
        "logps": {"training": pick("training", "max_length", "max_prompt_length"), "logps": cfg["logps"],
                  "shards": cfg["shards"], "loss": cfg["algorithm"]["loss"], "compute": stage_compute(cfg, "logps")},
        # where metrics go, how often the state is saved and how GPUs are used do not change the model
        "train": {"training": {k: v for k, v in cfg["training"].items()
                               if k not in ("report_to", "checkpoint_every", "distributed")},
                  "algorithm": cfg["algorithm"], "seed": cfg["seed"], "compute": stage_compute(cfg, "training")},
        "eval_generate": {"evaluation": ecfg["evaluation"], "scorer": ecfg["scorer"],
                          "conditioning": ecfg["conditioning"] if ecfg["algorithm"]["conditioning"] else None,
                          "compute": [stage_compute(ecfg, "sampling"), stage_compute(ecfg, "scoring")]},
        "eval_metrics": {"scorer": ecfg["scorer"], "compute": stage_compute(ecfg, "scoring")},
    }


SETTINGS = {r: _settings(RUN_CFG[r], EVAL_CFG[r]) for r in RUNS}
SETTINGS_TOP = {"prepare_model": {"base_model": config["base_model"]},
                "split_prompts": {"prompts": config["prompts"], "seed": config["seed"]}}


def settings(stage):
    """params function: the settings of one stage for the job's run."""
    return lambda wildcards: SETTINGS[wildcards.run][stage]


def _owners(key):
    """Each run's owner: the first run (in config order) whose `key` is equal. Jobs whose settings
    coincide run once, in the owner's folder, and every run with that owner reads them there."""
    first, out = {}, {}
    for r in RUNS:
        out[r] = first.setdefault(json.dumps(key(r), sort_keys=True, default=str), r)
    return out


# Iteration 1 generates from the base model: runs with the same sampling settings share its samples,
# and with the same scorer too its scores; runs evaluated alike share the base model's held-out responses.
SAMPLES_OWNER = _owners(lambda r: [SETTINGS[r]["generate"], RUN_CFG[r]["initial_data"]])
SCORES_OWNER = _owners(lambda r: [SETTINGS[r]["generate"], RUN_CFG[r]["initial_data"], SETTINGS[r]["score"]])
EVAL_OWNER = _owners(lambda r: SETTINGS[r]["eval_generate"])


def samples_run(run, t):
    return SAMPLES_OWNER[run] if int(t) == 1 else run


def scores_run(run, t):
    return SCORES_OWNER[run] if int(t) == 1 else run


def eval_run(run, t):
    return EVAL_OWNER[run] if int(t) == 0 else run


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
    t, algo = int(wildcards.iter), RUN_CFG[wildcards.run]["algorithm"]
    inputs = {"model": get_generator(wildcards), "pool": f"{PROMPTS}/pool.parquet"}
    if algo["sampler"] == "mixture":
        inputs["reference"] = model_dir(wildcards.run, iteration_roles(t, algo)["reference"])
    return inputs


def get_logps_model(wildcards):
    return BASE_MODEL if wildcards.ckpt == "base" else model_dir(wildcards.run, wildcards.ckpt[len("iter"):])


def _logps_files(run, t, k):
    return expand("results/{run}/iter{iter}/logps/{ckpt}/shard{shard}.parquet",
                  run=run, iter=t, ckpt=ckpt_key(k), shard=SHARDS)


def get_train_logps(wildcards):
    """Every log-prob shard iteration t's roles (reference, history, anchor) need."""
    t = int(wildcards.iter)
    algo = RUN_CFG[wildcards.run]["algorithm"]
    return [f for k in checkpoints_needed(t, algo) for f in _logps_files(wildcards.run, t, k)]


def get_logps_by_role(wildcards):
    t = int(wildcards.iter)
    roles = iteration_roles(t, RUN_CFG[wildcards.run]["algorithm"])
    return {"reference": _logps_files(wildcards.run, t, roles["reference"]),
            "history": [_logps_files(wildcards.run, t, k) for k in roles["history"]]}


def get_roles(wildcards):
    """Checkpoint names per role, recorded in the trained model's provenance."""
    roles = iteration_roles(int(wildcards.iter), RUN_CFG[wildcards.run]["algorithm"])
    name = lambda k: "base_model" if k == 0 else f"{wildcards.run}/iter{k}"
    return {"generator": name(roles["generator"]), "reference": name(roles["reference"]),
            "history": [name(k) for k in roles["history"]]}


def _scorer_model(inputs, scorer):
    if scorer.uses_base_model():
        inputs["scorer_model"] = BASE_MODEL
    return inputs


def get_score_inputs(wildcards):
    run = samples_run(wildcards.run, wildcards.iter)
    return _scorer_model({"samples": f"results/{run}/iter{wildcards.iter}/samples/shard{wildcards.shard}.parquet"},
                         SCORER[wildcards.run])


def get_samples(wildcards):
    return expand("results/{run}/iter{iter}/samples/shard{shard}.parquet",
                  run=samples_run(wildcards.run, wildcards.iter), iter=wildcards.iter, shard=SHARDS)


def get_scores(wildcards):
    return expand("results/{run}/iter{iter}/scores/shard{shard}.parquet",
                  run=scores_run(wildcards.run, wildcards.iter), iter=wildcards.iter, shard=SHARDS)


def eval_responses(run, t):
    return f"results/{eval_run(run, t)}/iter{int(t)}/eval/responses.parquet"


def get_eval_generate_inputs(wildcards):
    """The iterate, the held-out prompts, and a reward model that reads the base model."""
    inputs = {"model": model_dir(wildcards.run, wildcards.iter), "prompts": f"{PROMPTS}/eval.parquet"}
    return inputs if EVAL_SCORER.kind == "preference" else _scorer_model(inputs, EVAL_SCORER)


def get_eval_inputs(wildcards):
    t = int(wildcards.iter)
    inputs = {"current": eval_responses(wildcards.run, t)}
    if t > 0:
        inputs["base"] = eval_responses(wildcards.run, 0)
        inputs["previous"] = eval_responses(wildcards.run, t - 1)
        if EVAL_SCORER.kind == "preference":  # the judge compares the responses here
            _scorer_model(inputs, EVAL_SCORER)
    return inputs


def eval_metrics_file(run, t):
    return f"results/{eval_run(run, t)}/iter{int(t)}/eval/metrics.json"


def get_all_eval_metrics(wildcards):
    return [eval_metrics_file(wildcards.run, t) for t in [0] + iterations(wildcards.run)]


def get_all_eval_responses(wildcards):
    return [eval_responses(wildcards.run, t) for t in [0] + iterations(wildcards.run)]


def get_all_train_metrics(wildcards):
    return expand("results/{run}/iter{iter}/train_metrics.csv", run=wildcards.run, iter=iterations(wildcards.run))


def get_export_inputs(wildcards):
    return {"responses": eval_responses(wildcards.run, wildcards.iter)}


def get_compare_inputs(wildcards):
    """Every run's held-out responses and metrics per iteration, training metrics and iterates."""
    inputs = {key: [f for files in get_compare_files().values() for f in files[key]]
              for key in ("responses", "metrics", "train_metrics", "models")}
    if EVAL_SCORER.kind == "preference":
        _scorer_model(inputs, EVAL_SCORER)
    return inputs


def get_final_targets():
    """Each run's report, exports (answers, TRL pairs) and iterates (so that a deleted checkpoint is
    rebuilt with its dependents), and with several runs the comparison."""
    targets = []
    held_out = config["evaluation"]["responses"]  # false: no sampled held-out evaluation (game testbeds)
    for r in RUNS:
        targets += [model_dir(r, t) for t in iterations(r)]
        targets += [f"results/{r}/iter{t}/pairs_trl.parquet" for t in iterations(r)]
        if held_out:
            targets += [f"results/{r}/report/summary.csv"]
            targets += [f"results/{eval_run(r, t)}/iter{t}/eval/alpaca_eval.json" for t in [0] + iterations(r)]
    if config["runs"] and held_out:
        targets.append(f"results/{TOP}/compare/summary.csv")
    if IS_GAME:  # rules/game.smk
        targets += [f"results/{r}/report/game.csv" for r in RUNS]
        targets += [f"results/{TOP}/compare/game.csv"] if config["runs"] else []
    return targets


def get_compare_files():
    """The compare job's inputs per run, as params (the script needs to know which file is whose)."""
    return {r: {"responses": [eval_responses(r, t) for t in [0] + iterations(r)],
                "metrics": [eval_metrics_file(r, t) for t in [0] + iterations(r)],
                "train_metrics": [f"results/{r}/iter{t}/train_metrics.csv" for t in iterations(r)],
                "models": [model_dir(r, t) for t in iterations(r)]}
            for r in RUNS}


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
    return {"models": [model_dir(wildcards.run, t) for t in [0] + iterations(wildcards.run)],
            "prompts": f"{PROMPTS}/eval.parquet", "base": BASE_MODEL}
