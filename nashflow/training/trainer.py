"""The preference trainer: one concatenated forward for chosen and rejected, pluggable losses.

Reference, history and anchor log-probs are table columns computed by the log-prob stage; the
trainer reads them and never recomputes them. Policy log-probs use the same encoding and
log-prob code path (nashflow.logps) as that stage. :func:`train` lists the steps; the other
modules of nashflow.training hold the data, the resumable state, the metrics and DeepSpeed/FSDP.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nashflow.batching import length_batches
from nashflow.errors import DataError
from nashflow.io import atomic_dir, provenance, write_json
from nashflow.losses import get_loss
from nashflow.precision import attention_for, torch_dtype
from nashflow.seeding import seed_everything
from nashflow.settings import LossConfig, TrainConfig
from nashflow.training.batches import BatchPlan, PairBatches, load_training_table, plan_batches, split_validation
from nashflow.training.distributed import (
    full_state_dict,
    initial_weights,
    is_deepspeed,
    make_accelerator,
    onednn_linears,
    plain_data_parallel,
    prepare_for_processes,
    shards_parameters,
)
from nashflow.training.metrics import MetricWriters, reduce_stats, step_stats, write_metrics_csv
from nashflow.training.state import Progress, TrainState, fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """The arguments of :func:`train`, ``compute`` with its defaults filled in."""

    policy_path: str
    pairs_path: str
    logps: dict[str, Any]
    output_dir: str
    metrics_path: str
    train_cfg: TrainConfig
    loss_cfg: LossConfig
    parents: dict[str, Any] | None
    progress: bool
    tensorboard_dir: str | None
    state_dir: str | None
    compute: dict[str, str]


@dataclass
class Run:
    """What the optimisation loop works with."""

    job: Job
    acc: Any
    model: Any
    opt: Any
    sched: Any
    data: PairBatches
    val: PairBatches | None
    plan: BatchPlan
    attn: str  # the attention implementation the policy was loaded with
    loss_fn: Any = field(init=False)
    deepspeed: bool = field(init=False)

    def __post_init__(self):
        self.loss_fn = get_loss(self.job.loss_cfg.name)
        self.deepspeed = is_deepspeed(self.acc)


@dataclass
class Sinks:
    """Where every optimizer step goes besides the weights."""

    saver: TrainState
    writers: MetricWriters
    bar: Any

    def close(self) -> None:
        self.bar.close()
        self.writers.close()


def train(*, policy_path: str, pairs_path: str, logps: dict[str, Any], output_dir: str, metrics_path: str,
          train_cfg: TrainConfig, loss_cfg: LossConfig, parents: dict[str, Any] | None = None,
          progress: bool = True, tensorboard_dir: str | None = None, state_dir: str | None = None,
          compute: dict[str, str] | None = None) -> None:
    """Train the policy initialised from ``policy_path`` on the pairs; save a safetensors folder.

    Metrics per optimizer step go to ``metrics_path`` (CSV) and, per ``train_cfg.report_to``, to
    TensorBoard event files in ``tensorboard_dir`` and to wandb. With ``state_dir`` a killed job
    resumes from its last saved state (see :class:`TrainState`) instead of restarting. Under
    DeepSpeed ZeRO-2/3 and FSDP (chosen by the launcher) weights are gathered collectively for the
    best-validation copy and the saved model, and saved by the main process. ``compute`` (see
    :mod:`nashflow.precision`): the attention implementation to load with and the dtype of the
    saved weights; the mixed precision itself is the launcher's (accelerate's ``--mixed_precision``)."""
    from nashflow.models import load_tokenizer

    job = Job(policy_path, pairs_path, logps, output_dir, metrics_path, train_cfg, loss_cfg, parents, progress,
              tensorboard_dir, state_dir,
              {"attn_implementation": "sdpa", "checkpoint_dtype": "float32", "cpu_linear": "onednn",
               **(compute or {})})
    acc = make_accelerator(train_cfg)
    if train_cfg.lora and shards_parameters(acc):
        raise DataError("training.lora needs the full weights on every process: use training.distributed "
                        "ddp or zero2 (not zero3 or fsdp) with LoRA")
    seed_everything(train_cfg.seed)
    df, val_df = split_validation(load_training_table(pairs_path, logps), loss_cfg)
    tok = load_tokenizer(policy_path)
    attn = attention_for(job.compute["attn_implementation"], acc.device.type)
    model = prepare_policy(policy_path, train_cfg, attn)
    job = replace(job, compute={**job.compute, "cpu_linear": onednn_linears(acc, model, job.compute["cpu_linear"])})
    n_history = len(logps.get("history", []))
    data = PairBatches(df, tok, train_cfg, loss_cfg, n_history)
    val = PairBatches(val_df, tok, train_cfg, loss_cfg, n_history) if val_df is not None else None
    plan = plan_batches(data.lengths(), train_cfg, acc.num_processes)
    opt, sched = make_optimizer(acc, model, train_cfg, plan.total_steps)
    model, opt = prepare_for_processes(acc, model, opt, sched)
    if not loss_cfg.spec.uses_beta and acc.is_main_process:
        log.info("the %s loss does not use beta: algorithm.beta = %g only scales the logged rewards "
                 "beta * (log pi - log pi_ref)", loss_cfg.name, loss_cfg.beta)
    run = Run(job, acc, model, opt, sched, data, val, plan, attn)

    prog = Progress()
    saver = TrainState(acc, state_dir, fingerprint(
        policy_path=policy_path, pairs_path=pairs_path, logps=logps, train_cfg=train_cfg, loss_cfg=loss_cfg,
        processes=acc.num_processes, distributed=str(acc.distributed_type)))
    skip = start_or_resume(run, prog, saver)
    bar = tqdm(total=plan.total_steps, initial=prog.step, desc="train", unit="step",
               disable=not (progress and acc.is_main_process))
    writers = MetricWriters(train_cfg.report_to if acc.is_main_process else (), tensorboard_dir,
                            name=str((parents or {}).get("generator", output_dir)),
                            config={"train": asdict(train_cfg), "loss": asdict(loss_cfg)})
    sinks = Sinks(saver, writers, bar)
    for epoch in range(train_cfg.epochs):
        skip = run_epoch(run, prog, epoch, skip, sinks)
    sinks.close()
    save_iterate(run, prog, saver, tok)


def prepare_policy(policy_path: str, train_cfg: TrainConfig, attn: str):
    """The policy to train: its weights (with fresh LoRA adapters if asked), no KV cache, gradient
    checkpointing as configured, training mode with the model's dropout off (as TRL's
    disable_dropout does; LoRA's own ``training.lora.dropout`` stays as configured)."""
    from nashflow.models import load_model

    # float32 weights on every rank (ZeRO-3 init partitions them collectively); the forward runs
    # under accelerate's mixed precision
    model = load_model(policy_path, eval_mode=False, attn_implementation=attn)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if train_cfg.lora:
        model = add_lora(model, train_cfg.lora)
    model.config.use_cache = False
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def add_lora(model, spec: dict[str, Any]):
    """Wrap the policy with fresh LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=int(spec.get("r", 16)), lora_alpha=int(spec.get("alpha", 32)),
                     lora_dropout=float(spec.get("dropout", 0.0)),
                     target_modules=spec.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d: %d of %d parameters train (%.2f%%)", cfg.r, trainable, total, 100 * trainable / total)
    return model


def _lr_lambda(kind: str, total: int, warmup: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return f


def make_optimizer(acc, model, train_cfg: TrainConfig, total_steps: int):
    """(optimizer over the trainable parameters, learning-rate scheduler with warm-up)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    else:
        # fused: one kernel over all parameters (on a CPU the default is a loop per tensor: 8% of a
        # SmolLM2 step); sharded engines (DeepSpeed, FSDP) keep their defaults
        opt = torch.optim.AdamW(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay,
                                fused=plain_data_parallel(acc) or None)
    warmup = int(round(train_cfg.warmup_ratio * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(train_cfg.lr_scheduler, total_steps, warmup))
    return opt, sched


def validation_loss(run: Run) -> float:
    """Mean loss over the validation pairs; every rank computes it (sharded forwards are collective)."""
    model, acc, val, batch = run.model, run.acc, run.val, run.job.train_cfg.batch_size
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        vl = val.lengths()
        for idx in length_batches(vl, batch * max(vl), max_batch=batch):
            losses, _, _ = val.loss(model, idx, run.loss_fn, acc.device)
            total, n = total + float(losses.sum()), n + len(idx)
    model.train()
    return float(acc.reduce(torch.tensor(total / max(n, 1), device=acc.device), "mean"))


def start_or_resume(run: Run, prog: Progress, saver: TrainState) -> int:
    """Restore the saved training state if there is one, else take the initial validation loss (the
    best so far: step 0). Returns the micro-batches already done, to skip."""
    resumed = saver.load()
    if resumed is not None:
        prog.restore(resumed)
        log.info("resumed from the training state at optimizer step %d of %d (%s)", prog.step,
                 run.plan.total_steps, saver.folder)
    elif run.val is not None:
        prog.best_val_loss = validation_loss(run)
    return prog.step * run.job.train_cfg.grad_accum  # the batch order is a function of the seed


def run_epoch(run: Run, prog: Progress, epoch: int, skip: int, sinks: Sinks) -> int:
    """This process's micro-batches of ``epoch``, the first ``skip`` of them passed over (done before a
    resume); returns how many are still to pass over."""
    cfg, acc = run.job.train_cfg, run.acc
    micro: list[dict[str, float]] = []
    for idx in run.plan.mine(epoch, cfg.seed, acc.process_index, acc.num_processes, cfg.grad_accum):
        if skip > 0:
            skip -= 1
            continue
        stats, n_tok = micro_step(run, idx)
        prog.tokens += n_tok
        micro.append(stats)
        if acc.sync_gradients:
            end_step(run, prog, epoch, micro, sinks)
            micro = []
    return skip


def micro_step(run: Run, idx: list[int]) -> tuple[dict[str, float], int]:
    """Forward and backward of one micro-batch, and the optimizer and scheduler step where it ends an
    accumulation; returns its statistics and its token count."""
    acc, model, cfg = run.acc, run.model, run.job.train_cfg
    with acc.accumulate(model):
        losses, kw, n_tok = run.data.loss(model, idx, run.loss_fn, acc.device)
        loss = losses.mean()
        acc.backward(loss)  # under DeepSpeed the engine also clips and steps here
        gnorm = None
        if acc.sync_gradients and cfg.max_grad_norm and not run.deepspeed:
            gnorm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        run.opt.step()
        if acc.sync_gradients:
            run.sched.step()
            if run.deepspeed:
                gnorm = model.get_global_grad_norm()
        run.opt.zero_grad()
        return step_stats(kw, run.job.loss_cfg.beta, loss, gnorm), n_tok


def end_step(run: Run, prog: Progress, epoch: int, micro: list[dict[str, float]], sinks: Sinks) -> None:
    """After an optimizer step: its metric row (with the validation loss at the end of an epoch, the
    best weights kept), the writers, the resumable state every ``checkpoint_every`` steps, the bar."""
    acc, world = run.acc, run.acc.num_processes
    prog.step += 1
    stats = reduce_stats(acc, micro)
    elapsed = time.time() - prog.t0
    row = {"step": prog.step, "epoch": epoch + 1, "lr": run.sched.get_last_lr()[0], **stats,
           "tokens": prog.tokens * world, "elapsed_s": elapsed,
           "tokens_per_s": prog.tokens * world / max(elapsed, 1e-9)}
    if run.val is not None and prog.step % run.plan.steps_per_epoch == 0:
        row["val_loss"] = validation_loss(run)
        if row["val_loss"] < prog.best_val_loss:
            prog.best_state = full_state_dict(acc, run.model)
            prog.best_val_loss, prog.best_step = row["val_loss"], prog.step
    prog.rows.append(row)
    sinks.writers.write(row)
    every = run.job.train_cfg.checkpoint_every
    if every and prog.step % every == 0 and prog.step < run.plan.total_steps:
        sinks.saver.save(prog.meta())
    sinks.bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['rewards_accuracy']:.2f}")
    sinks.bar.update(1)


def final_weights(run: Run, prog: Progress, keep_initial: bool) -> dict[str, torch.Tensor] | None:
    """The full weights to save (on the main process; others may get {}); None with LoRA."""
    # COMAL keeps the best validation checkpoint (step 0 = the initial policy; with LoRA the adapters
    # are dropped below instead of merged). Gathering the weights is collective: every rank.
    if run.job.train_cfg.lora:
        return None  # full weights on every rank: the main process merges and saves the module itself
    if keep_initial:
        return initial_weights(run.job.policy_path) if run.acc.is_main_process else {}
    if run.val is not None:
        return prog.best_state
    return full_state_dict(run.acc, run.model)


def save_iterate(run: Run, prog: Progress, saver: TrainState, tok) -> None:
    """Write the metrics CSV and the trained policy (weights, tokenizer, provenance) and drop the
    resumable state. Collective: every rank calls it; the main process writes."""
    acc, job = run.acc, run.job
    keep_initial = run.val is not None and prog.best_state is None
    if keep_initial:
        log.warning("no epoch improved the validation loss (%.6g at step 0): the saved model is the initial "
                    "policy; with few validation pairs consider a larger val_fraction or select_best: false",
                    prog.best_val_loss)
    final = final_weights(run, prog, keep_initial)
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_metrics_csv(job.metrics_path, prog.rows)
        unwrapped = acc.unwrap_model(run.model)
        unwrapped.config.use_cache = True
        ckpt_dtype = torch_dtype(job.compute["checkpoint_dtype"])
        extra = {"best_step": prog.best_step, "best_val_loss": prog.best_val_loss} if run.val is not None else {}
        with atomic_dir(job.output_dir) as tmp:
            if job.train_cfg.lora:
                _save_lora(unwrapped, prog.best_state, keep_initial, tmp, ckpt_dtype)
                extra["lora"] = dict(job.train_cfg.lora)
            else:
                unwrapped.config.dtype = ckpt_dtype
                unwrapped.save_pretrained(tmp, state_dict={k: v.to(ckpt_dtype) for k, v in final.items()},
                                          safe_serialization=True)
            tok.save_pretrained(tmp)
            write_json(provenance(parents=job.parents or {"policy_init": job.policy_path, "pairs": job.pairs_path},
                                  config={"train": asdict(job.train_cfg), "loss": asdict(job.loss_cfg),
                                          "compute": {**job.compute, "attn_implementation": run.attn,
                                                      "mixed_precision": acc.mixed_precision}},
                                  seed=job.train_cfg.seed, role="policy", n_pairs=len(run.data.df), steps=prog.step,
                                  processes=acc.num_processes, distributed=str(acc.distributed_type.value), **extra),
                       tmp / "provenance.json")
        saver.clear()
    acc.wait_for_everyone()


def _save_lora(model, best_state, keep_initial: bool, folder: Path, dtype: torch.dtype) -> None:
    """The adapters of the best state, and the merged weights (the initial ones when no epoch helped)."""
    if best_state is not None:
        model.load_state_dict(best_state)
    # the adapter (the iterate's delta over π_{t-1}) is kept; sampling and log-prob jobs
    # read the merged weights beside it
    model.save_pretrained(folder / "adapter", safe_serialization=True)
    model = model.unload() if keep_initial else model.merge_and_unload()
    model.to(dtype).save_pretrained(folder, safe_serialization=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``accelerate launch -m nashflow.training --spec spec.json``."""
    import argparse

    from nashflow.logutil import job_logging

    ap = argparse.ArgumentParser(prog="python -m nashflow.training", description=__doc__)
    ap.add_argument("--spec", required=True, help="JSON file with the train() arguments")
    args = ap.parse_args(argv)
    from nashflow.launch import die_with_parent

    die_with_parent()  # accelerate's launcher is our parent; it dies with the job (see launch.py)
    with job_logging(None):
        try:
            run_spec(args.spec)
        finally:
            # join the collective backend's threads before the interpreter exits: left to process
            # teardown, a rank of a 2-process DeepSpeed run on CPU aborted after saving
            # ("terminate called without an active exception", once in a CI run)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def run_spec(spec_path: str) -> None:
    """``train()`` with the arguments of a spec file (written by ``nashflow.stages.train``)."""
    import json

    from nashflow.torchutil import set_threads

    spec = json.loads(Path(spec_path).read_text())
    set_threads(spec.pop("threads", None))
    train(train_cfg=TrainConfig(**spec.pop("train")), loss_cfg=LossConfig(**spec.pop("loss")), **spec)
