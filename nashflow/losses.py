"""Preference losses as small pure functions, collected in ``LOSSES`` by name.

Every loss takes keyword tensors and returns the per-example loss, shape [B]; the trainer
takes the batch mean. Log-probs arrive already summed (``S``) or length-normalised (``A``),
as the method's ``logp_norm`` says; that is done once, in the log-prob stage and the trainer's
shared code path. Unused keywords are accepted and ignored, so the trainer can pass every
tensor it has.

Notation (docs/algorithms.md): h_M = L_M(y_w) - L_M(y_l) for a model M, σ the logistic sigmoid.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def dpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, beta: float = 0.1, **_) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): ``loss = -log σ(β·(h_θ - h_ref))``."""
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * logits)


def ipo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, beta: float = 0.1, eta: float | None = None, **_) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): ``loss = (h_θ - h_ref - 1/(2η))²``.

    ``η`` defaults to ``β`` when not given (TRL's naming: ``1/(2β)``).
    """
    step = eta if eta is not None else beta
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return (logits - 1.0 / (2.0 * step)) ** 2


LOSSES: dict[str, Callable[..., Tensor]] = {
    "dpo": dpo,
    "ipo": ipo,
}


def get_loss(name: str) -> Callable[..., Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSSES))}") from None
