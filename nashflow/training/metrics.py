"""Training metrics: the statistics of each micro-batch, their mean over an optimizer step and the
processes, and where the rows go (the CSV always; TensorBoard and wandb as configured)."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
import torch

from nashflow.io import atomic_path


def step_stats(kw: dict[str, torch.Tensor], beta: float, loss: torch.Tensor, gnorm) -> dict[str, float]:
    """The statistics of one micro-batch: its loss, the implicit rewards β·(log π − log π_ref) of the
    chosen and rejected responses, the policy log-probs, the KL estimate on the chosen responses and
    the gradient norm (NaN where this micro-batch did not step the optimizer)."""
    with torch.no_grad():
        rw_c = beta * (kw["policy_chosen_logps"] - kw["ref_chosen_logps"])
        rw_r = beta * (kw["policy_rejected_logps"] - kw["ref_rejected_logps"])
        return {
            "loss": float(loss), "rewards_chosen": float(rw_c.mean()),
            "rewards_rejected": float(rw_r.mean()), "rewards_margin": float((rw_c - rw_r).mean()),
            "rewards_accuracy": float((rw_c > rw_r).float().mean()),
            "logps_chosen": float(kw["policy_chosen_logps"].mean()),
            "logps_rejected": float(kw["policy_rejected_logps"].mean()),
            "kl_chosen": float((kw["policy_chosen_logps"] - kw["ref_chosen_logps"]).mean()),
            "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
        }


def reduce_stats(acc, micro: list[dict[str, float]]) -> dict[str, float]:
    """The statistics of an optimizer step: the mean over its micro-batches (NaN ignored), then over
    the processes (collective: every rank calls it)."""
    stats = {k: float(np.nanmean([s[k] for s in micro])) for k in micro[0]}
    return {k: float(acc.reduce(torch.tensor(v, device=acc.device), "mean")) for k, v in stats.items()}


def write_metrics_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """One row per optimizer step; the columns are every key of any row, in order of appearance."""
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class MetricWriters:
    """Per-step metrics to TensorBoard (event files under ``log_dir``) and optionally wandb, besides the
    CSV that the trainer always writes. wandb is imported only when asked for, offline unless
    ``WANDB_MODE`` says otherwise."""

    def __init__(self, report_to, log_dir: str | None, name: str, config: dict[str, Any]):
        self.tb = self.wandb = None
        if "tensorboard" in report_to and log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=log_dir)
        if "wandb" in report_to:
            import os

            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("training.report_to has wandb but the package is missing: "
                                   "pip install 'nashflow[wandb]' or drop it from report_to") from err
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "nashflow"), name=name, config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"), dir=log_dir, reinit=True)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        scalars = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
