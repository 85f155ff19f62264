"""The workflow's plan: what each job reads, which run owns shared jobs, where every file goes.

``rules/common.smk`` builds one :class:`Plan` from the validated config and its input functions
ask it for paths. :func:`job_settings` is the single source of what a job depends on: a rule
passes it as ``params.settings`` (Snakemake re-runs a job whose params changed) and the job's
script hands exactly that mapping to its stage function, which reads nothing else, so the re-run
trigger and what the job reads cannot drift apart. Imports no torch.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from nashflow.config import run_config, run_ids
from nashflow.methods import checkpoints_needed, iteration_roles, loss_spec
from nashflow.precision import stage_compute
from nashflow.settings import scorer_config

BASE_MODEL = "results/base_model"
#: training keys that cannot change the trained model: where metrics go and how often a resumable
#: state is saved (``training.distributed`` picks the launcher, see rules/common.smk)
TRAIN_EXTRAS = ("report_to", "checkpoint_every")


def _moodpo(cfg: dict) -> dict | None:
    """MOODPO's prompt conditioning: the template, the weight grids and the objectives they weigh."""
    if cfg["algorithm"]["conditioning"] != "moodpo":
        return None
    return {**cfg["conditioning"], "objectives": scorer_config(cfg).objective_names()}


def _prepare_model(cfg: dict) -> dict:
    return {"base_model": cfg["base_model"], "seed": cfg["seed"]}


def _split_prompts(cfg: dict) -> dict:
    return {"prompts": cfg["prompts"], "seed": cfg["seed"]}


def _import_initial(cfg: dict) -> dict:
    return {"initial_data": cfg["initial_data"], "seed": cfg["seed"], "shards": cfg["shards"],
            "system_prompt": cfg["prompts"]["system_prompt"]}


def _generate(cfg: dict) -> dict:
    algo = cfg["algorithm"]
    return {"generation": cfg["generation"], "seed": cfg["seed"], "shards": cfg["shards"],
            "prompts_per_iteration": cfg["prompts"]["prompts_per_iteration"],
            "mixture_coef": algo["mixture_coef"] if algo["sampler"] == "mixture" else None,
            "moodpo": _moodpo(cfg), "compute": stage_compute(cfg, "sampling")}


def _score(cfg: dict) -> dict:
    return {"scorer": cfg["scorer"], "compute": stage_compute(cfg, "scoring")}


def _build_pairs(cfg: dict) -> dict:
    return {"pairs": cfg["algorithm"]["pairs"]}


def _logps(cfg: dict) -> dict:
    t = cfg["training"]
    return {"max_length": t["max_length"], "max_prompt_length": t["max_prompt_length"],
            "max_tokens_per_batch": cfg["logps"]["max_tokens_per_batch"], "shards": cfg["shards"],
            "per_token": loss_spec(cfg["algorithm"]["loss"]).per_token, "compute": stage_compute(cfg, "logps")}


def _train(cfg: dict) -> dict:
    from dataclasses import asdict

    from nashflow.settings import loss_config

    training = {k: v for k, v in cfg["training"].items() if k not in (*TRAIN_EXTRAS, "distributed")}
    return {"training": training, "loss": asdict(loss_config(cfg)), "seed": cfg["seed"],
            "compute": stage_compute(cfg, "training")}


def _held_out_generation(cfg: dict) -> dict:
    """What held-out sampling takes from ``generation`` (the rest is ``evaluation``'s)."""
    return {k: cfg["generation"][k] for k in ("max_prompt_length", "backend", "vllm")}


def _eval_generate(cfg: dict) -> dict:
    return {"evaluation": cfg["evaluation"], "scorer": cfg["scorer"], "moodpo": _moodpo(cfg),
            "generation": _held_out_generation(cfg),
            "compute": {"sampling": stage_compute(cfg, "sampling"), "scoring": stage_compute(cfg, "scoring")}}


def _eval_metrics(cfg: dict) -> dict:
    return {"scorer": cfg["scorer"], "compute": stage_compute(cfg, "scoring")}


def _game_eval(cfg: dict) -> dict:
    """The matrix game (the scorer), the roles and regularisation of the method (``algorithm``), the
    held-out prompt length, and the run's name for the plot."""
    return {"scorer": cfg["scorer"], "algorithm": cfg["algorithm"], "evaluation": cfg["evaluation"],
            "generation": _held_out_generation(cfg), "run": cfg["run"]}


JOBS: dict[str, Callable[[dict], dict]] = {
    "prepare_model": _prepare_model, "split_prompts": _split_prompts, "import_initial": _import_initial,
    "generate": _generate, "score": _score, "build_pairs": _build_pairs, "logps": _logps, "train": _train,
    "eval_generate": _eval_generate, "eval_metrics": _eval_metrics, "game_eval": _game_eval,
}
#: jobs that judge held-out responses: they read the run's config with the top-level scorer
EVALUATION = ("eval_generate", "eval_metrics", "game_eval")


def job_settings(stage: str, cfg: dict) -> dict:
    """Everything a job of ``stage`` reads from the (run's) config, as JSON-able data."""
    return json.loads(json.dumps(JOBS[stage](cfg)))


def owners(runs: list[str], key: Callable[[str], Any]) -> dict[str, str]:
    """Each run's owner: the first run (in config order) with an equal ``key``. Jobs whose settings
    coincide run once, in the owner's folder, and every run with that owner reads them there."""
    first: dict[str, str] = {}
    return {r: first.setdefault(json.dumps(key(r), sort_keys=True, default=str), r) for r in runs}


def model_dir(run: str, t: int | str) -> str:
    """Checkpoint of iteration t (0 = the base model)."""
    return BASE_MODEL if int(t) == 0 else f"results/{run}/iter{int(t)}/model"


def ckpt_key(k: int | str) -> str:
    """Folder name of checkpoint k under logps/: base or iter<k>."""
    return "base" if int(k) == 0 else f"iter{int(k)}"


class Plan:
    """Runs, their settings per job, and the owners of the jobs they share (see :func:`owners`).

    Iteration 1 samples from the base model: runs with the same sampling settings share its
    samples, with the same scorer too its scores; runs evaluated alike share the base model's
    held-out responses (the top-level scorer judges every run)."""

    def __init__(self, config: dict):
        self.config = config
        self.top = config["run"]
        self.runs = run_ids(config)
        self.cfg = {r: run_config(config, r) for r in self.runs}
        self.eval_cfg = {r: run_config(config, r, evaluation=True) for r in self.runs}
        self.settings = {r: {stage: job_settings(stage, (self.eval_cfg if stage in EVALUATION else self.cfg)[r])
                             for stage in JOBS} for r in self.runs}
        first = self.settings
        self.samples_owner = owners(self.runs, lambda r: [first[r]["generate"], first[r]["import_initial"]])
        self.scores_owner = owners(self.runs, lambda r: [first[r]["generate"], first[r]["import_initial"],
                                                         first[r]["score"]])
        self.eval_owner = owners(self.runs, lambda r: first[r]["eval_generate"])
        self.prompts = f"results/{self.top}/prompts"

    def iterations(self, run: str) -> list[int]:
        return list(range(1, self.cfg[run]["iterations"] + 1))

    def samples_run(self, run: str, t: int | str) -> str:
        return self.samples_owner[run] if int(t) == 1 else run

    def scores_run(self, run: str, t: int | str) -> str:
        return self.scores_owner[run] if int(t) == 1 else run

    def eval_run(self, run: str, t: int | str) -> str:
        return self.eval_owner[run] if int(t) == 0 else run

    def samples(self, run: str, t: int | str, shard: int | str) -> str:
        return f"results/{self.samples_run(run, t)}/iter{int(t)}/samples/shard{shard}.parquet"

    def scores(self, run: str, t: int | str, shard: int | str) -> str:
        return f"results/{self.scores_run(run, t)}/iter{int(t)}/scores/shard{shard}.parquet"

    def eval_responses(self, run: str, t: int | str) -> str:
        return f"results/{self.eval_run(run, t)}/iter{int(t)}/eval/responses.parquet"

    def eval_metrics(self, run: str, t: int | str) -> str:
        return f"results/{self.eval_run(run, t)}/iter{int(t)}/eval/metrics.json"

    def logps_files(self, run: str, t: int | str, k: int) -> list[str]:
        return [f"results/{run}/iter{int(t)}/logps/{ckpt_key(k)}/shard{s}.parquet"
                for s in range(self.cfg[run]["shards"])]

    def roles(self, run: str, t: int | str) -> dict[str, Any]:
        return iteration_roles(int(t), self.cfg[run]["algorithm"])

    def train_logps(self, run: str, t: int | str) -> list[str]:
        """Every log-prob shard iteration t's roles (reference, history, anchor) need."""
        return [f for k in checkpoints_needed(int(t), self.cfg[run]["algorithm"]) for f in self.logps_files(run, t, k)]

    def logps_by_role(self, run: str, t: int | str) -> dict[str, Any]:
        roles = self.roles(run, t)
        return {"reference": self.logps_files(run, t, roles["reference"]),
                "history": [self.logps_files(run, t, k) for k in roles["history"]]}

    def role_names(self, run: str, t: int | str) -> dict[str, Any]:
        """Checkpoint names per role, recorded in the trained model's provenance."""
        roles = self.roles(run, t)
        name = lambda k: "base_model" if k == 0 else f"{run}/iter{k}"  # noqa: E731
        return {"generator": name(roles["generator"]), "reference": name(roles["reference"]),
                "history": [name(k) for k in roles["history"]]}

    def run_files(self, run: str) -> dict[str, list[str]]:
        """What a run's report reads: held-out responses and metrics (iteration 0 first), training
        metrics and iterates."""
        its = self.iterations(run)
        return {"responses": [self.eval_responses(run, t) for t in [0] + its],
                "metrics": [self.eval_metrics(run, t) for t in [0] + its],
                "train_metrics": [f"results/{run}/iter{t}/train_metrics.csv" for t in its],
                "models": [model_dir(run, t) for t in its]}

    def compare_files(self) -> dict[str, dict[str, list[str]]]:
        """:meth:`run_files` of every run (the comparison reads them all)."""
        return {r: self.run_files(r) for r in self.runs}

    def final_targets(self, *, game: bool) -> list[str]:
        """Each run's report, exports (answers, TRL pairs) and iterates (so that a deleted checkpoint
        is rebuilt with its dependents), with several runs the comparison; ``game``: the exact
        evaluation of a matrix-game testbed."""
        targets = []
        held_out = self.config["evaluation"]["responses"]  # false: no sampled held-out evaluation (testbeds)
        for r in self.runs:
            targets += [model_dir(r, t) for t in self.iterations(r)]
            targets += [f"results/{r}/iter{t}/pairs_trl.parquet" for t in self.iterations(r)]
            if held_out:
                targets += [f"results/{r}/report/summary.csv"]
                targets += [f"results/{self.eval_run(r, t)}/iter{t}/eval/alpaca_eval.json"
                            for t in [0] + self.iterations(r)]
        several = bool(self.config["runs"])
        if several and held_out:
            targets.append(f"results/{self.top}/compare/summary.csv")
        if game:
            targets += [f"results/{r}/report/game.csv" for r in self.runs]
            targets += [f"results/{self.top}/compare/game.csv"] if several else []
        return targets


def train_extras(cfg: dict) -> dict:
    """The training settings a train job reads besides its re-run trigger: they cannot change the model."""
    return {k: cfg["training"][k] for k in TRAIN_EXTRAS}
