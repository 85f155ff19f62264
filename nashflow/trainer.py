"""The preference trainer: one concatenated forward for chosen and rejected, pluggable losses.

Reference (and later history/anchor) log-probs are table columns computed by the log-prob
stage; the trainer reads them and never recomputes them. Policy log-probs use the same
encoding and ``token_logps`` code path as that stage.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from nashflow.errors import DataError
from nashflow.io import atomic_dir, atomic_path, provenance, read_table, write_json
from nashflow.logps import Encoded, collate, encode_pair_side, length_batches, token_logps
from nashflow.losses import get_loss
from nashflow.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    learning_rate: float = 5e-6
    epochs: int = 1
    batch_size: int = 4  # pairs per micro-batch and process
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError("training.learning_rate must be > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("training.epochs, batch_size and grad_accum must be >= 1")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise ValueError("training.lr_scheduler must be linear, cosine or constant")
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError("training.optimizer must be adamw or rmsprop")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("training.max_prompt_length must be < training.max_length")


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its hyperparameters; ``logp_norm`` = sum (S) or mean (A = S/|y|)."""

    name: str = "dpo"
    beta: float = 0.1
    logp_norm: str = "sum"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        get_loss(self.name)
        if self.beta <= 0:
            raise ValueError("algorithm.beta must be > 0")
        if self.logp_norm not in ("sum", "mean"):
            raise ValueError("algorithm.logp_norm must be 'sum' or 'mean'")


def normalise(sums: torch.Tensor, counts: torch.Tensor, how: str) -> torch.Tensor:
    return sums / counts.clamp(min=1) if how == "mean" else sums


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


def load_training_table(pairs_path: str, ref_logps_paths: list[str]) -> pd.DataFrame:
    pairs = read_table(pairs_path)
    ref = pd.concat([read_table(p) for p in ref_logps_paths], ignore_index=True)
    cols = ["pair_id", "chosen_logp", "chosen_tokens", "rejected_logp", "rejected_tokens", "model"]
    ref = ref[cols].rename(columns={c: f"ref_{c}" for c in cols[1:]})
    df = pairs.merge(ref, on="pair_id", how="left", validate="one_to_one")
    if df["ref_chosen_logp"].isna().any():
        missing = df.loc[df["ref_chosen_logp"].isna(), "pair_id"].iloc[0]
        raise DataError(f"pair {missing} has no reference log-probs in {ref_logps_paths}")
    return df


def train(*, policy_path: str, pairs_path: str, ref_logps_paths: list[str], output_dir: str, metrics_path: str,
          train_cfg: TrainConfig, loss_cfg: LossConfig, parents: dict[str, str] | None = None,
          progress: bool = True) -> None:
    """Train the policy initialised from ``policy_path`` on the pairs; save a safetensors folder."""
    from accelerate import Accelerator

    from nashflow.models import load_model, load_tokenizer

    acc = Accelerator(gradient_accumulation_steps=train_cfg.grad_accum)
    seed_everything(train_cfg.seed)
    df = load_training_table(pairs_path, ref_logps_paths)
    tok = load_tokenizer(policy_path)
    model = load_model(policy_path, eval_mode=False)
    model.config.use_cache = False
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    for m in model.modules():  # dropout off, as TRL's disable_dropout does
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0

    enc = lambda msgs, text, fin: encode_pair_side(  # noqa: E731
        tok, list(msgs), text, finished=fin == "stop", max_length=train_cfg.max_length,
        max_prompt_length=train_cfg.max_prompt_length)
    chosen = [enc(m, t, f) for m, t, f in zip(df.messages, df.chosen, df.chosen_finish)]
    rejected = [enc(m, t, f) for m, t, f in zip(df.messages, df.rejected, df.rejected_finish)]
    ref_c = torch.tensor(df.ref_chosen_logp.to_numpy(), dtype=torch.float32)
    ref_r = torch.tensor(df.ref_rejected_logp.to_numpy(), dtype=torch.float32)
    ref_cn = torch.tensor(df.ref_chosen_tokens.to_numpy(), dtype=torch.float32)
    ref_rn = torch.tensor(df.ref_rejected_tokens.to_numpy(), dtype=torch.float32)
    lengths = [max(len(c.input_ids), len(r.input_ids)) for c, r in zip(chosen, rejected)]

    # Length-grouped micro-batches (a token budget keeps padding low), shuffled per epoch.
    budget = train_cfg.batch_size * max(lengths)
    base_batches = length_batches(lengths, budget, max_batch=train_cfg.batch_size)
    world, rank = acc.num_processes, acc.process_index
    per_proc = len(base_batches) // world
    if per_proc == 0:
        raise DataError(f"{len(df)} pairs are too few for {world} processes x batch {train_cfg.batch_size}")
    steps_per_epoch = max(1, per_proc // train_cfg.grad_accum)
    total_steps = steps_per_epoch * train_cfg.epochs

    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    warmup = int(round(train_cfg.warmup_ratio * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(train_cfg.lr_scheduler, total_steps, warmup))
    # The scheduler is stepped by hand once per optimizer step (batches are sharded by hand).
    model, opt = acc.prepare(model, opt)
    loss_fn = get_loss(loss_cfg.name)
    pad = tok.pad_token_id

    rows: list[dict[str, Any]] = []
    step, t0, tokens = 0, time.time(), 0
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not (progress and acc.is_main_process))
    for epoch in range(train_cfg.epochs):
        order = np.random.default_rng(derive_seed(train_cfg.seed, epoch)).permutation(len(base_batches))
        mine = [base_batches[i] for i in order[: per_proc * world]][rank::world]
        mine = mine[: steps_per_epoch * train_cfg.grad_accum]
        acc_stats: list[dict[str, float]] = []
        for idx in mine:
            with acc.accumulate(model):
                seqs: list[Encoded] = [chosen[i] for i in idx] + [rejected[i] for i in idx]
                ids, attn, resp = collate(seqs, pad, acc.device)
                lp = token_logps(model, ids, attn, resp)
                sums, counts = lp.sum(-1), resp[:, 1:].sum(-1).float()
                n = len(idx)
                pol = normalise(sums, counts, loss_cfg.logp_norm)
                i_t = torch.tensor(idx)
                rc = normalise(ref_c[i_t], ref_cn[i_t], loss_cfg.logp_norm).to(acc.device)
                rr = normalise(ref_r[i_t], ref_rn[i_t], loss_cfg.logp_norm).to(acc.device)
                losses = loss_fn(policy_chosen_logps=pol[:n], policy_rejected_logps=pol[n:],
                                 ref_chosen_logps=rc, ref_rejected_logps=rr,
                                 beta=loss_cfg.beta, **loss_cfg.params)
                loss = losses.mean()
                acc.backward(loss)
                gnorm = None
                if acc.sync_gradients and train_cfg.max_grad_norm:
                    gnorm = acc.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
                opt.step()
                if acc.sync_gradients:
                    sched.step()
                opt.zero_grad()
                tokens += int(attn.sum())
                with torch.no_grad():
                    rw_c = loss_cfg.beta * (pol[:n] - rc)
                    rw_r = loss_cfg.beta * (pol[n:] - rr)
                    acc_stats.append({
                        "loss": float(loss), "rewards_chosen": float(rw_c.mean()),
                        "rewards_rejected": float(rw_r.mean()), "rewards_margin": float((rw_c - rw_r).mean()),
                        "rewards_accuracy": float((rw_c > rw_r).float().mean()),
                        "logps_chosen": float(pol[:n].mean()), "logps_rejected": float(pol[n:].mean()),
                        "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
                    })
            if acc.sync_gradients:
                step += 1
                stats = {k: float(np.nanmean([s[k] for s in acc_stats])) for k in acc_stats[0]}
                stats = {k: float(acc.reduce(torch.tensor(v, device=acc.device), "mean")) for k, v in stats.items()}
                acc_stats = []
                elapsed = time.time() - t0
                rows.append({"step": step, "epoch": epoch + 1, "lr": sched.get_last_lr()[0], **stats,
                             "tokens_per_s": tokens * world / max(elapsed, 1e-9)})
                bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['rewards_accuracy']:.2f}")
                bar.update(1)
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        with atomic_path(metrics_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)
        unwrapped = acc.unwrap_model(model)
        unwrapped.config.use_cache = True
        with atomic_dir(output_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            write_json(provenance(parents=parents or {"policy_init": policy_path, "pairs": pairs_path},
                                  config={"train": asdict(train_cfg), "loss": asdict(loss_cfg)},
                                  seed=train_cfg.seed, role="policy", n_pairs=len(df), steps=step,
                                  processes=world), tmp / "provenance.json")
    acc.wait_for_everyone()


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``accelerate launch -m nashflow.trainer --spec spec.json``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="JSON file with the train() arguments")
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if spec.get("threads"):
        torch.set_num_threads(int(spec.pop("threads")))
    spec.pop("threads", None)
    train(train_cfg=TrainConfig(**spec.pop("train")), loss_cfg=LossConfig(**spec.pop("loss")), **spec)


if __name__ == "__main__":
    main()
