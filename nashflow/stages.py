"""One function per workflow stage: paths in, files out. Called by workflow/scripts/*.py.

Each function takes the validated config mapping and plain paths, so stages can be run and
tested without Snakemake.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nashflow import config as C
from nashflow.data import iteration_prompts, prompt_table, shard_rows, split_prompts
from nashflow.evaluate import base_metrics, iteration_metrics
from nashflow.io import atomic_path, provenance, read_provenance, read_table, write_json, write_table
from nashflow.logps import encode_pair_side, sequence_logps
from nashflow.models import load_for_stage, load_tokenizer, prepare_base_model, set_threads
from nashflow.pairs import build_pairs
from nashflow.precision import stage_compute
from nashflow.scorers import CompositeScorer
from nashflow.seeding import derive_seed

log = logging.getLogger(__name__)


def checkpoint_name(model_dir: str) -> str:
    """A readable checkpoint id: ``base_model`` or ``<run>/iter<t>`` (``<run>`` may hold a slash:
    ``<comparison>/<name>``), the path under ``results/`` without ``/model``."""
    p = Path(model_dir)
    if p.name != "model":
        return p.name
    parts = p.parent.parts
    if "results" in parts:
        i = len(parts) - 1 - parts[::-1].index("results")
        return "/".join(parts[i + 1:])
    return f"{p.parent.parent.name}/{p.parent.name}"


def prepare_model(cfg: dict, out_dir: str) -> None:
    prepare_base_model(C.base_model_config(cfg), out_dir, seed=cfg["seed"])


def split(cfg: dict, eval_out: str, pool_out: str) -> None:
    """The held-out prompts and the training pool; the provenance records the source and the rows used."""
    pcfg = C.prompts_config(cfg)
    df, source = prompt_table(pcfg)
    eval_df, pool = split_prompts(df, pcfg)
    prov = provenance(parents={"prompts": pcfg.path}, config=cfg["prompts"], seed=cfg["seed"], source=source)
    write_table(eval_df, eval_out, prov)
    write_table(pool, pool_out, prov)
    log.info("%d prompts: %d held out, %d in the training pool (%d per iteration)", len(df), len(eval_df),
             len(pool), pcfg.prompts_per_iteration)


def objective_names(cfg: dict) -> list[str]:
    return C.scorer_config(cfg).objective_names()


def condition_prompts(cfg: dict, prompts: pd.DataFrame, weights: list) -> pd.DataFrame:
    """MOODPO: keep the plain prompt in ``raw_messages``, add the weight instruction to ``messages``."""
    from nashflow.moodpo import condition

    out = prompts.copy()
    names, template = objective_names(cfg), cfg["conditioning"]["template"]
    out["raw_messages"] = [list(m) for m in prompts["messages"]]
    out["weights"] = [list(w) for w in weights]
    out["messages"] = [condition(list(m), w, names, template) for m, w in zip(prompts["messages"], weights)]
    return out


def _with_prompt_columns(df: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    extra = [c for c in ("raw_messages", "weights") if c in prompts.columns]
    if not extra or not len(df):
        return df
    return df.merge(prompts[["prompt_id"] + extra], on="prompt_id", how="left", validate="many_to_one")


def _vllm_tables(model_dir: str, prompt_sets: list[pd.DataFrame], scfg, *, seed: int, gpus: int,
                 compute: dict) -> list[pd.DataFrame]:
    """One samples table per prompt set, all from one vLLM engine (none without prompts); the engine's
    dtype is the sampling stage's unless ``generation.vllm.dtype`` is set."""
    from nashflow.precision import resolve
    from nashflow.vllm_backend import generate_vllm_sets

    if not any(len(p) for p in prompt_sets):
        return [generate_table(None, None, p, scfg, seed=seed, generator="") for p in prompt_sets]
    return generate_vllm_sets(model_dir, load_tokenizer(model_dir), prompt_sets, scfg, seed=seed,
                              generator=checkpoint_name(model_dir), tensor_parallel=gpus,
                              engine_args={"dtype": resolve(compute["dtype"], "cuda" if gpus > 0 else "cpu"),
                                           **scfg.vllm})


def generate(cfg: dict, *, iteration: int, shard: int, model_dir: str, pool_path: str, out: str,
             reference_dir: str | None = None, threads: int | None = None, gpus: int = 0) -> None:
    """Sample K responses per prompt of (iteration, shard) from the generator checkpoint.

    Nash-MD (``algorithm.sampler: mixture``): one policy sample and one sample of the geometric
    mixture with the reference per prompt. MOODPO: prompts conditioned on sampled weights.
    """
    from dataclasses import replace

    from nashflow.moodpo import sample_weights

    set_threads(threads)
    algo = cfg["algorithm"]
    prompts = iteration_prompts(read_table(pool_path), iteration, shard, cfg["shards"],
                                cfg["prompts"]["prompts_per_iteration"])
    if algo["conditioning"] == "moodpo" and len(prompts):
        k, step = len(objective_names(cfg)), cfg["conditioning"]["grid_step"]
        prompts = condition_prompts(cfg, prompts, [sample_weights(k, step, cfg["seed"], iteration, pid)
                                                   for pid in prompts.prompt_id])
    scfg = C.sampling_config(cfg)
    seed = derive_seed(cfg["seed"], "generate", iteration, shard)
    if scfg.backend == "vllm":  # config validation keeps the mixture sampler off this path
        df = _with_prompt_columns(_vllm_tables(model_dir, [prompts], scfg, seed=seed, gpus=gpus,
                                                              compute=stage_compute(cfg, "sampling"))[0], prompts)
        write_table(df, out, provenance(parents={"generator": model_dir, "prompts": pool_path},
                                        config={"generation": cfg["generation"], "algorithm": algo},
                                        seed=seed, iteration=iteration, shard=shard))
        return
    model, placed = load_for_stage(model_dir, stage_compute(cfg, "sampling"))
    tok = load_tokenizer(model_dir)
    name = checkpoint_name(model_dir)
    parents = {"generator": model_dir, "prompts": pool_path}
    mixture = algo["sampler"] == "mixture"
    df = generate_table(model, tok, prompts, replace(scfg, samples_per_prompt=1) if mixture else scfg, seed=seed,
                        generator=name)
    if mixture:
        parents["mixture_reference"] = reference_dir
        if len(prompts):
            mix = generate_table(model, tok, prompts, replace(scfg, samples_per_prompt=1),
                                 seed=derive_seed(seed, "mixture"),
                                 generator=f"mixture({name},{checkpoint_name(reference_dir)},{algo['mixture_coef']})",
                                 mixture_ref=load_for_stage(reference_dir, stage_compute(cfg, "sampling"))[0],
                                 mixture_coef=algo["mixture_coef"], sample_offset=1)
            df = pd.concat([df, mix]).sort_values(["prompt_id", "sample_index"]).reset_index(drop=True)
    df = _with_prompt_columns(df, prompts)
    write_table(df, out, provenance(parents=parents, config={"generation": cfg["generation"], "algorithm": algo,
                                                             "compute": placed},
                                    seed=seed, iteration=iteration, shard=shard))


def import_initial(cfg: dict, *, shard: int, samples_out: str, scores_out: str) -> None:
    """Iteration 1's samples and scores of one shard from ``initial_data`` (no sampling)."""
    from nashflow.offline import initial_shard, load_initial

    init = cfg["initial_data"]
    samples, scores, source = load_initial(C.initial_data_config(cfg), cfg["prompts"]["system_prompt"])
    s, sc = initial_shard(samples, scores, shard, cfg["shards"])
    prov = provenance(parents={"initial_data": init["path"]}, config=init, source=source)
    write_table(s, samples_out, prov)
    write_table(sc, scores_out, prov)


def generate_table(model, tok, prompts: pd.DataFrame, scfg, *, seed: int, generator: str, **kwargs) -> pd.DataFrame:
    """``generate_samples`` (keyword arguments passed on), or an empty samples table for no prompts."""
    from nashflow.generate import generate_samples

    if len(prompts) == 0:
        cols = ["prompt_id", "messages", "sample_index", "response", "token_count", "prompt_tokens",
                "finish_reason", "seed", "generator", "sampler"]
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return generate_samples(model, tok, prompts, scfg, seed=seed, generator=generator, progress=True, **kwargs)


def score(cfg: dict, *, samples_path: str, out: str, base_model_dir: str | None = None,
          threads: int | None = None) -> None:
    """Rewards (or a preference matrix per prompt) for every sample of one shard.

    The scorer loads first, so a scorer that cannot work (missing model, no chat template,
    unusable labels) fails at start-up, before any sample is scored.
    """
    set_threads(threads)
    samples = read_table(samples_path)
    scorer = CompositeScorer(C.scorer_config(cfg), base_model_dir=base_model_dir,
                             compute=stage_compute(cfg, "scoring"))
    scores = scorer.score_table(samples) if len(samples) else pd.DataFrame(
        {"prompt_id": pd.Series(dtype=str), "sample_index": pd.Series(dtype="int64"),
         "reward": pd.Series(dtype="float64")})
    log.info("scored %d samples of %d prompts (%s scorer)", len(samples), samples.prompt_id.nunique() if len(samples)
             else 0, scorer.kind)
    parents = {"samples": samples_path, **({"scorer_base_model": base_model_dir} if base_model_dir else {})}
    write_table(scores, out, provenance(parents=parents, config=cfg["scorer"]))


def pairs(cfg: dict, *, samples_paths: list[str], scores_paths: list[str], out: str) -> None:
    samples = pd.concat([read_table(p) for p in samples_paths], ignore_index=True)
    scores = pd.concat([read_table(p) for p in scores_paths], ignore_index=True)
    df = build_pairs(samples, scores, cfg["algorithm"]["pairs"])
    log.info("%d pairs from %d prompts", len(df), samples.prompt_id.nunique())
    write_table(df, out, provenance(parents={"samples": samples_paths, "scores": scores_paths},
                                    config=cfg["algorithm"]))


def logps(cfg: dict, *, pairs_path: str, shard: int, model_dir: str, out: str, threads: int | None = None) -> None:
    """Summed response log-probs and token counts of chosen/rejected under one checkpoint.

    For Nash-MD also the per-token log-probs of the chosen (policy) response.
    """
    set_threads(threads)
    pairs_df = shard_rows(read_table(pairs_path), shard, cfg["shards"])
    tcfg = C.train_config(cfg)
    per_token = cfg["algorithm"]["loss"] == "nash_md"
    tok = load_tokenizer(model_dir)
    model, placed = load_for_stage(model_dir, stage_compute(cfg, "logps"))
    enc = []
    for side in ("chosen", "rejected"):
        for msgs, text, fin in zip(pairs_df.messages, pairs_df[side], pairs_df[f"{side}_finish"]):
            enc.append(encode_pair_side(tok, list(msgs), text, finished=fin == "stop",
                                        max_length=tcfg.max_length, max_prompt_length=tcfg.max_prompt_length))
    n = len(pairs_df)
    out_df = pd.DataFrame({"pair_id": pairs_df.pair_id.to_numpy(), "model": checkpoint_name(model_dir)})
    if enc:
        res = sequence_logps(model, enc, tok.pad_token_id, max_tokens=cfg["logps"]["max_tokens_per_batch"],
                             per_token=per_token)
        sums, counts = res[0], res[1]
        if per_token:
            out_df["chosen_token_logps"] = res[2][:n]
    else:
        sums, counts = np.zeros(0), np.zeros(0, dtype=np.int64)
    out_df["chosen_logp"], out_df["chosen_tokens"] = sums[:n], counts[:n]
    out_df["rejected_logp"], out_df["rejected_tokens"] = sums[n:], counts[n:]
    lengths = {k: cfg["training"][k] for k in ("max_length", "max_prompt_length")}
    write_table(out_df, out, provenance(parents={"pairs": pairs_path, "model": model_dir},
                                        config={"training": lengths, "logps": cfg["logps"], "compute": placed}))


def train(cfg: dict, *, policy_dir: str, pairs_path: str, logps: dict, roles: dict, out_dir: str,
          metrics_path: str, n_gpus: int, threads: int | None, log_path: str | None,
          accelerate_config: str | None = None) -> None:
    """Launch the trainer; ``logps`` maps roles to log-prob shard files, ``roles`` names checkpoints."""
    from dataclasses import asdict

    from nashflow.launch import launch_training
    from nashflow.precision import MIXED_PRECISION, resolve

    compute = stage_compute(cfg, "training")
    compute["dtype"] = resolve(compute["dtype"], "cuda" if n_gpus > 0 else "cpu")
    spec = {
        "policy_path": policy_dir, "pairs_path": pairs_path, "logps": logps,
        "output_dir": out_dir, "metrics_path": metrics_path, "threads": threads,
        "train": asdict(C.train_config(cfg)),
        "loss": asdict(C.loss_config(cfg)),
        "parents": {"policy_init": checkpoint_name(policy_dir), "pairs": pairs_path, **roles},
        "progress": True,
        # TensorBoard event files beside the job's log (logs/ is never deleted by Snakemake):
        # `tensorboard --logdir logs` shows every run and iteration.
        "tensorboard_dir": str(Path(log_path).parent / "tensorboard") if log_path else None,
        # resumable state beside the declared outputs, which Snakemake removes when a job fails
        "state_dir": str(Path(out_dir).parent / "train_state"),
        "compute": compute,
    }
    launch_training(spec, n_gpus=n_gpus, log_path=log_path, mixed_precision=MIXED_PRECISION[compute["dtype"]],
                    accelerate_config=accelerate_config if n_gpus > 0 else None)


def eval_generate(cfg: dict, *, model_dir: str, eval_prompts: str, out: str, threads: int | None = None,
                  base_model_dir: str | None = None, gpus: int = 0) -> None:
    """One scored response per held-out prompt (MOODPO: per prompt and weight vector of the eval grid).

    With a preference scorer the responses get no reward (``reward`` is NaN); ``eval_metrics``
    judges them against the base model's and the previous iterate's.
    """
    from nashflow.moodpo import simplex_grid

    set_threads(threads)
    prompts = read_table(eval_prompts)
    scfg = C.eval_sampling_config(cfg)
    seed = derive_seed(cfg["evaluation"]["seed"], "evaluate")
    moodpo = cfg["algorithm"]["conditioning"] == "moodpo"
    if moodpo:
        grid = simplex_grid(len(objective_names(cfg)), cfg["conditioning"]["eval_grid_step"])
        sets = [condition_prompts(cfg, prompts, [w] * len(prompts)) for w in grid]
    else:
        sets = [prompts]
    if scfg.backend == "vllm":  # one engine for every weight vector
        tables = _vllm_tables(model_dir, sets, scfg, seed=seed, gpus=gpus, compute=stage_compute(cfg, "sampling"))
    else:
        (model, _), tok = load_for_stage(model_dir, stage_compute(cfg, "sampling")), load_tokenizer(model_dir)
        tables = [generate_table(model, tok, p, scfg, seed=seed, generator=checkpoint_name(model_dir)) for p in sets]
    if moodpo:
        for g, (part, cond) in enumerate(zip(tables, sets)):
            part["sample_index"] = g
            tables[g] = _with_prompt_columns(part, cond)
        df = pd.concat(tables, ignore_index=True)
    else:
        df = tables[0]
    sc = C.scorer_config(cfg)
    if sc.kind == "preference":
        df["reward"] = np.nan
    else:
        scored = CompositeScorer(sc, base_model_dir=base_model_dir,
                                 compute=stage_compute(cfg, "scoring")).score_table(df)
        df = df.merge(scored, on=["prompt_id", "sample_index"], validate="one_to_one")
    write_table(df, out, provenance(parents={"model": model_dir, "prompts": eval_prompts},
                                    config={"evaluation": cfg["evaluation"], "scorer": cfg["scorer"]}, seed=seed))


def eval_metrics(cfg: dict, *, iteration: int, current: str, base: str, previous: str, out: str,
                 base_model_dir: str | None = None, threads: int | None = None) -> None:
    """Held-out metrics of iterate t; a preference scorer judges current vs base and vs previous here."""
    cur = read_table(current)
    if iteration == 0:
        m = base_metrics(cur)
    else:
        scfg = C.scorer_config(cfg)
        compare = None
        if scfg.kind == "preference":
            set_threads(threads)
            compare = CompositeScorer(scfg, base_model_dir=base_model_dir,
                                      compute=stage_compute(cfg, "scoring")).compare
        base_df = read_table(base)
        prev_df = base_df if Path(previous) == Path(base) else read_table(previous)
        m = iteration_metrics(iteration, cur, base_df, prev_df, compare=compare)
    m["checkpoint"] = cur["generator"].iloc[0] if len(cur) else None
    write_json(m, out)


def report(cfg: dict, *, metrics: list[str], train_metrics: list[str], responses: list[str], models: list[str],
           out: dict[str, str]) -> None:
    """One run's report: summary table, plots, example responses side by side, config and provenance."""
    from nashflow import report as R

    df = R.summary_table(metrics)
    title = f"run '{cfg['run']}': {cfg['algorithm']['name']}"
    R.plot_objectives(responses, objective_names(cfg), out["objectives"], title)
    R.plot_reward(df, out["reward"], title)
    R.plot_win_rates(df, out["winrate"], title)
    R.plot_length(df, out["length"], title)
    R.plot_training(train_metrics, out["training"], title)
    R.examples_html({"base" if t == 0 else f"iteration {t}": p for t, p in enumerate(responses)}, out["examples"],
                    title=f"Held-out prompts: base model and every iterate of run '{cfg['run']}'")
    write_yaml(run_record(cfg, models), out["config"], html=out["config_html"])
    with atomic_path(out["table"]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def run_record(cfg: dict, models: list[str]) -> dict:
    """A run's resolved config and each trained iterate's provenance (parents, roles, steps, versions)."""
    prov = {}
    for m in models:
        p = read_provenance(m)
        prov[checkpoint_name(m)] = {k: v for k, v in p.items() if k != "config"}
    return {"run": cfg["run"], "config": {k: v for k, v in cfg.items() if k != "runs"}, "checkpoints": prov}


def write_yaml(obj, path: str, html: str | None = None) -> None:
    """YAML at ``path``; with ``html`` also a page showing it (the report displays HTML, not YAML)."""
    import html as H

    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if html:
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{H.escape(Path(path).name)}</title></head>"
                f"<body style='font-family:monospace;font-size:12px'><pre>{H.escape(text)}</pre></body></html>\n")
        with atomic_path(html) as tmp:
            tmp.write_text(page, encoding="utf-8")


def export_answers(cfg: dict, *, responses: str, out_alpaca: str, out_mt_bench: str) -> None:
    """Held-out responses in AlpacaEval's and MT-Bench's answer formats."""
    from nashflow.export import write_alpaca_eval, write_mt_bench

    df = read_table(responses)
    model_id = df["generator"].iloc[0] if len(df) else "unknown"
    write_alpaca_eval(df, model_id, out_alpaca)
    write_mt_bench(df, model_id, out_mt_bench)


def compare(cfg: dict, *, files: dict[str, dict[str, list[str]]], out: dict[str, str],
            base_model_dir: str | None = None, threads: int | None = None) -> None:
    """Cross-run comparison with the top-level scorer: per-iteration metrics of every run, a round-robin
    of the base model and every run's final iterate, plots, examples side by side, configs.

    ``files``: run → {"metrics", "responses" (iteration 0 first), "train_metrics", "models"}.
    Runs evaluated on a MOODPO weight grid are in the plots but not in the round-robin (their
    held-out rows are per weight vector).
    """
    from nashflow import report as R
    from nashflow.evaluate import round_robin, win_matrix

    short = {run: run.split("/")[-1] for run in files}
    df = R.comparison_table({short[r]: f["metrics"] for r, f in files.items()})
    conditioned = {r for r in files if C.run_config(cfg, r)["algorithm"]["conditioning"]}
    first = next((f for r, f in files.items() if r not in conditioned), next(iter(files.values())))
    players = {"base": read_table(first["responses"][0])}
    skipped = []
    for run, f in files.items():
        if run in conditioned:
            skipped.append(short[run])
            continue
        players[f"{short[run]} (iter {len(f['responses']) - 1})"] = read_table(f["responses"][-1])
    scfg = C.scorer_config(cfg)
    comp = None
    if scfg.kind == "preference":
        set_threads(threads)
        comp = CompositeScorer(scfg, base_model_dir=base_model_dir, compute=stage_compute(cfg, "scoring")).compare
    table = round_robin(players, compare=comp, seed=cfg["evaluation"]["seed"])
    if skipped:
        log.info("not in the round-robin (evaluated per weight vector): %s", ", ".join(skipped))
    write_table(table, out["roundrobin"], provenance(parents={n: str(n) for n in players}, config=cfg["scorer"],
                                                      skipped=skipped))
    names = list(players)
    title = f"comparison '{cfg['run']}'"
    R.plot_win_matrix(win_matrix(table, names), table, out["roundrobin_plot"], title)
    R.plot_runs(df, "mean_reward", out["reward"], ylabel="mean held-out reward", title=title)
    R.plot_runs(df, "win_rate_vs_base", out["winrate"], ylabel="held-out win rate vs base", title=title,
                parity=True)
    R.plot_runs(df, "mean_length", out["length"], ylabel="mean response tokens", title=title)
    R.plot_runs_training({short[r]: f["train_metrics"] for r, f in files.items()}, out["training"], title)
    columns = {"base": first["responses"][0]}
    for run, f in files.items():
        columns.update({f"{short[run]} iter {t}": p for t, p in enumerate(f["responses"]) if t > 0})
    R.examples_html(columns, out["examples"], title=f"Held-out prompts: base and every iterate of every run ({title})")
    write_yaml({"comparison": cfg["run"], "judge": cfg["scorer"],
                "runs": {short[r]: run_record(C.run_config(cfg, r), f["models"]) for r, f in files.items()}},
               out["config"], html=out["config_html"])
    with atomic_path(out["table"]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


__all__ = ["prepare_model", "split", "generate", "score", "pairs", "logps", "train", "eval_generate",
           "eval_metrics", "report", "export_answers", "compare", "read_provenance"]
