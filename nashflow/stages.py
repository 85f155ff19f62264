"""One function per workflow stage: the job's settings and paths in, files out.

Called by workflow/scripts/*.py, and runnable without Snakemake. A stage that produces what
later jobs read takes the job's settings (``s``, from :func:`nashflow.plan.job_settings`: the
rule's re-run trigger) and reads nothing else; its outputs record them as provenance. The
summaries (report, comparison) take the whole run config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from nashflow.data import iteration_prompts, prompt_table, shard_rows, split_prompts
from nashflow.evaluate import base_metrics, iteration_metrics
from nashflow.io import checkpoint_name, provenance, read_table, write_json, write_table
from nashflow.seeding import derive_seed
from nashflow.settings import (
    base_model_config,
    eval_sampling_config,
    initial_data_config,
    prompts_config,
    sampling_config,
    scorer_config,
)

log = logging.getLogger(__name__)


def prepare_model(s: dict, out_dir: str) -> None:
    from nashflow.models import prepare_base_model

    prepare_base_model(base_model_config(s), out_dir, seed=s["seed"])


def split(s: dict, eval_out: str, pool_out: str) -> None:
    """The held-out prompts and the training pool; the provenance records the source and the rows used."""
    pcfg = prompts_config(s)
    df, source = prompt_table(pcfg)
    eval_df, pool = split_prompts(df, pcfg)
    prov = provenance(parents={"prompts": pcfg.path}, config=s, seed=s["seed"], source=source)
    write_table(eval_df, eval_out, prov)
    write_table(pool, pool_out, prov)
    log.info("%d prompts: %d held out, %d in the training pool (%d per iteration)", len(df), len(eval_df),
             len(pool), pcfg.prompts_per_iteration)


def import_initial(s: dict, *, shard: int, samples_out: str, scores_out: str) -> None:
    """Iteration 1's samples and scores of one shard from ``initial_data`` (no sampling)."""
    from nashflow.offline import initial_shard, load_initial

    samples, scores, source = load_initial(initial_data_config(s), s["system_prompt"])
    samples, scores = initial_shard(samples, scores, shard, s["shards"])
    prov = provenance(parents={"initial_data": s["initial_data"]["path"]}, config=s, source=source)
    write_table(samples, samples_out, prov)
    write_table(scores, scores_out, prov)


def generate(s: dict, *, iteration: int, shard: int, model_dir: str, pool_path: str, out: str,
             reference_dir: str | None = None, threads: int | None = None, gpus: int = 0) -> None:
    """Sample K responses per prompt of (iteration, shard) from the generator checkpoint.

    Nash-MD (``mixture_coef`` set): one policy sample and one sample of the geometric mixture with
    the reference per prompt. MOODPO (``moodpo`` set): prompts conditioned on sampled weights.
    """
    from nashflow.generation.generate import generate_table, policy_and_mixture
    from nashflow.models import load_for_stage, load_tokenizer
    from nashflow.moodpo import condition_table, sample_weights, with_prompt_columns
    from nashflow.torchutil import set_threads

    set_threads(threads)
    prompts = iteration_prompts(read_table(pool_path), iteration, shard, s["shards"], s["prompts_per_iteration"])
    moodpo = s["moodpo"]
    if moodpo and len(prompts):
        k = len(moodpo["objectives"])
        prompts = condition_table(prompts, [sample_weights(k, moodpo["grid_step"], s["seed"], iteration, pid)
                                            for pid in prompts.prompt_id], moodpo)
    scfg = sampling_config(s)
    seed = derive_seed(s["seed"], "generate", iteration, shard)
    parents, placed = {"generator": model_dir, "prompts": pool_path}, s["compute"]
    if scfg.backend == "vllm":  # config validation keeps the mixture sampler off this path
        from nashflow.generation.vllm_backend import vllm_tables

        df = vllm_tables(model_dir, [prompts], scfg, seed=seed, gpus=gpus, compute=s["compute"])[0]
    else:
        model, placed = load_for_stage(model_dir, s["compute"])
        tok, name = load_tokenizer(model_dir), checkpoint_name(model_dir)
        if s["mixture_coef"] is None:
            df = generate_table(model, tok, prompts, scfg, seed=seed, generator=name)
        else:
            parents["mixture_reference"] = reference_dir
            df = policy_and_mixture(model, tok, prompts, scfg, seed=seed, generator=name,
                                    reference=load_for_stage(reference_dir, s["compute"])[0] if len(prompts) else None,
                                    reference_name=checkpoint_name(reference_dir), coef=s["mixture_coef"])
    write_table(with_prompt_columns(df, prompts), out, provenance(parents=parents, config={**s, "compute": placed},
                                                                  seed=seed, iteration=iteration, shard=shard))


def score(s: dict, *, samples_path: str, out: str, base_model_dir: str | None = None,
          threads: int | None = None) -> None:
    """Rewards (or a preference matrix per prompt) for every sample of one shard.

    The scorer is built from the job's settings alone (never from a table) and loads first, so a
    scorer that cannot work (missing model, no chat template, unusable labels) fails at start-up,
    before any sample is scored.
    """
    from nashflow.scorers import CompositeScorer
    from nashflow.torchutil import set_threads

    set_threads(threads)
    samples = read_table(samples_path)
    scorer = CompositeScorer(scorer_config(s), base_model_dir=base_model_dir, compute=s["compute"])
    scores = scorer.score_table(samples) if len(samples) else pd.DataFrame(
        {"prompt_id": pd.Series(dtype=str), "sample_index": pd.Series(dtype="int64"),
         "reward": pd.Series(dtype="float64")})
    log.info("scored %d samples of %d prompts (%s scorer)", len(samples), samples.prompt_id.nunique() if len(samples)
             else 0, scorer.kind)
    parents = {"samples": samples_path, **({"scorer_base_model": base_model_dir} if base_model_dir else {})}
    write_table(scores, out, provenance(parents=parents, config=s))


def pairs(s: dict, *, samples_paths: list[str], scores_paths: list[str], out: str) -> None:
    from nashflow.pairs import build_pairs

    samples = pd.concat([read_table(p) for p in samples_paths], ignore_index=True)
    scores = pd.concat([read_table(p) for p in scores_paths], ignore_index=True)
    df = build_pairs(samples, scores, s["pairs"])
    log.info("%d pairs from %d prompts", len(df), samples.prompt_id.nunique())
    write_table(df, out, provenance(parents={"samples": samples_paths, "scores": scores_paths}, config=s))


def logps(s: dict, *, pairs_path: str, shard: int, model_dir: str, out: str, threads: int | None = None) -> None:
    """Summed response log-probs and token counts of chosen/rejected under one checkpoint;
    with ``per_token`` (Nash-MD) also the per-token log-probs of the chosen (policy) response."""
    from nashflow.logps import encode_pairs, sequence_logps
    from nashflow.models import load_for_stage, load_tokenizer
    from nashflow.torchutil import set_threads

    set_threads(threads)
    pairs_df = shard_rows(read_table(pairs_path), shard, s["shards"])
    tok = load_tokenizer(model_dir)
    model, placed = load_for_stage(model_dir, s["compute"])
    enc = encode_pairs(tok, pairs_df, max_length=s["max_length"], max_prompt_length=s["max_prompt_length"])
    n = len(pairs_df)
    out_df = pd.DataFrame({"pair_id": pairs_df.pair_id.to_numpy(), "model": checkpoint_name(model_dir)})
    sums, counts = np.zeros(0), np.zeros(0, dtype=np.int64)
    if enc:
        res = sequence_logps(model, enc, tok.pad_token_id, max_tokens=s["max_tokens_per_batch"],
                             per_token=s["per_token"])
        sums, counts = res[0], res[1]
        if s["per_token"]:
            out_df["chosen_token_logps"] = res[2][:n]
    out_df["chosen_logp"], out_df["chosen_tokens"] = sums[:n], counts[:n]
    out_df["rejected_logp"], out_df["rejected_tokens"] = sums[n:], counts[n:]
    write_table(out_df, out, provenance(parents={"pairs": pairs_path, "model": model_dir},
                                        config={**s, "compute": placed}))


def train(s: dict, *, extras: dict, policy_dir: str, pairs_path: str, logps: dict, roles: dict, out_dir: str,
          metrics_path: str, n_gpus: int, threads: int | None, log_path: str | None,
          accelerate_config: str | None = None) -> None:
    """Launch the trainer; ``logps`` maps roles to log-prob shard files, ``roles`` names checkpoints.
    ``extras``: the training settings that cannot change the model (nashflow.plan.TRAIN_EXTRAS)."""
    from nashflow.launch import launch_training
    from nashflow.precision import MIXED_PRECISION, resolve

    compute = dict(s["compute"], dtype=resolve(s["compute"]["dtype"], "cuda" if n_gpus > 0 else "cpu",
                                               s["compute"]["cpu_linear"]))
    spec = {
        "policy_path": policy_dir, "pairs_path": pairs_path, "logps": logps,
        "output_dir": out_dir, "metrics_path": metrics_path, "threads": threads,
        "train": {**s["training"], **extras, "seed": s["seed"]},
        "loss": s["loss"],
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


def eval_generate(s: dict, *, model_dir: str, eval_prompts: str, out: str, threads: int | None = None,
                  base_model_dir: str | None = None, gpus: int = 0) -> None:
    """One scored response per held-out prompt (MOODPO: per prompt and weight vector of the eval grid).

    With a preference scorer the responses get no reward (``reward`` is NaN); ``eval_metrics``
    judges them against the base model's and the previous iterate's.
    """
    from nashflow.generation.generate import generate_table
    from nashflow.models import load_for_stage, load_tokenizer
    from nashflow.moodpo import condition_table, simplex_grid, with_prompt_columns
    from nashflow.scorers import CompositeScorer
    from nashflow.torchutil import set_threads

    set_threads(threads)
    prompts = read_table(eval_prompts)
    scfg = eval_sampling_config(s)
    seed = derive_seed(s["evaluation"]["seed"], "evaluate")
    moodpo, compute = s["moodpo"], s["compute"]
    sets = [prompts] if not moodpo else [condition_table(prompts, [w] * len(prompts), moodpo)
                                         for w in simplex_grid(len(moodpo["objectives"]), moodpo["eval_grid_step"])]
    if scfg.backend == "vllm":  # one engine for every weight vector
        from nashflow.generation.vllm_backend import vllm_tables

        tables = vllm_tables(model_dir, sets, scfg, seed=seed, gpus=gpus, compute=compute["sampling"])
    else:
        (model, _), tok = load_for_stage(model_dir, compute["sampling"]), load_tokenizer(model_dir)
        tables = [generate_table(model, tok, p, scfg, seed=seed, generator=checkpoint_name(model_dir)) for p in sets]
    if moodpo:
        tables = [with_prompt_columns(part.assign(sample_index=g), cond) for g, (part, cond) in
                  enumerate(zip(tables, sets))]
    df = pd.concat(tables, ignore_index=True) if moodpo else tables[0]
    sc = scorer_config(s)
    if sc.kind == "preference":
        df["reward"] = np.nan
    else:
        scored = CompositeScorer(sc, base_model_dir=base_model_dir, compute=compute["scoring"]).score_table(df)
        df = df.merge(scored, on=["prompt_id", "sample_index"], validate="one_to_one")
    write_table(df, out, provenance(parents={"model": model_dir, "prompts": eval_prompts}, config=s, seed=seed))


def eval_metrics(s: dict, *, iteration: int, current: str, base: str, previous: str, out: str,
                 base_model_dir: str | None = None, threads: int | None = None) -> None:
    """Held-out metrics of iterate t; a preference scorer judges current vs base and vs previous here."""
    from nashflow.torchutil import set_threads
    cur = read_table(current)
    if iteration == 0:
        m = base_metrics(cur)
    else:
        scfg = scorer_config(s)
        compare = None
        if scfg.kind == "preference":
            from nashflow.scorers import CompositeScorer

            set_threads(threads)
            compare = CompositeScorer(scfg, base_model_dir=base_model_dir, compute=s["compute"]).compare
        base_df = read_table(base)
        prev_df = base_df if Path(previous) == Path(base) else read_table(previous)
        m = iteration_metrics(iteration, cur, base_df, prev_df, compare=compare)
    m["checkpoint"] = cur["generator"].iloc[0] if len(cur) else None
    write_json(m, out)


__all__ = ["prepare_model", "split", "import_initial", "generate", "score", "pairs", "logps", "train",
           "eval_generate", "eval_metrics"]
