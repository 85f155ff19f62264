"""Preference losses as small pure functions, collected in ``LOSSES`` by name.

Every loss takes keyword tensors and returns the per-example loss, shape [B]; the trainer
takes the batch mean. Log-probs arrive already summed (``S``) or length-normalised
(``A = S/|y|``), as the method's ``logp_norm`` says; that is done once, in the shared
log-prob code path. Unused keywords are accepted and ignored, so the trainer can pass every
tensor it has.

Keyword tensors ([B] unless noted): ``policy_chosen_logps``, ``policy_rejected_logps``,
``ref_chosen_logps``, ``ref_rejected_logps``, ``history_chosen_logps`` /
``history_rejected_logps`` ([B, H], newest first), ``chosen_target`` / ``rejected_target``
(SPPO p_win / p_lose, or GPO scores), ``pref_prob`` (P(chosen ≻ rejected)), ``chosen_tokens``
(response token counts); for ``nash_md`` the per-token ``policy_token_logps``,
``ref_token_logps`` and ``mask`` ([B, T]). For COMAL/INPO the anchor μ enters as ``ref_*`` and
π_t as the single history player.

Notation: h_M = L_M(y_w) − L_M(y_l) for a model M; σ the logistic sigmoid; sg stop-gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:
    from torch import Tensor


def _h(chosen: Tensor, rejected: Tensor) -> Tensor:
    return chosen - rejected


def _history_mix(history_chosen_logps: Tensor | None, history_rejected_logps: Tensor | None,
                 history_weights: Sequence[float] | Tensor | None, max_history: int | None) -> Tensor | None:
    """Σ_j λ_j·h_{π_j} over the first T' = min(H, max_history) players; None without history.

    λ_j = w_j / Σ_{k<T'} w_k, uniform 1/T' when no weights are given or they sum to 0.
    """
    if history_chosen_logps is None or history_chosen_logps.numel() == 0 or history_chosen_logps.shape[-1] == 0:
        return None
    h = history_chosen_logps - history_rejected_logps  # [B, H]
    t = h.shape[-1] if max_history is None else min(h.shape[-1], int(max_history))
    h = h[..., :t]
    if history_weights is None:
        w = torch.ones(t, dtype=h.dtype, device=h.device)
    else:
        w = torch.as_tensor(history_weights, dtype=h.dtype, device=h.device)[:t]
        if w.shape[0] < t:
            raise ValueError(f"history_weights has {w.shape[0]} entries for {t} history players")
    lam = w / w.sum() if float(w.sum()) != 0 else torch.full_like(w, 1.0 / t)
    return (h * lam).sum(-1)


def dpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, beta: float, **_) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): ``loss = −log σ(β·(h_θ − h_ref))``."""
    logits = _h(policy_chosen_logps, policy_rejected_logps) - _h(ref_chosen_logps, ref_rejected_logps)
    return -torch.nn.functional.logsigmoid(beta * logits)


def ipo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, beta: float, eta: float | None = None, **_) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17) / Iter-IPO with ref = π_t: ``loss = (h_θ − h_ref − 1/(2η))²``.

    ``η`` defaults to ``β`` (TRL's naming, target ``1/(2β)``).
    """
    step = eta if eta is not None else beta
    logits = _h(policy_chosen_logps, policy_rejected_logps) - _h(ref_chosen_logps, ref_rejected_logps)
    return (logits - 1.0 / (2.0 * step)) ** 2


def sppo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, chosen_target: Tensor, rejected_target: Tensor, beta: float,
         **_) -> Tensor:
    """SPPO (Wu et al. 2024, eq. 3.6), η = 1/β, a = S_θ(y_w) − S_ref(y_w), b likewise for y_l:

    ``loss = ½[(a − η(p_win − ½))² + (b − η(p_lose − ½))²]`` with p_win / p_lose the targets
    (mean win rates of chosen / rejected against all K samples, self term included).
    """
    eta = 1.0 / beta
    a = policy_chosen_logps - ref_chosen_logps
    b = policy_rejected_logps - ref_rejected_logps
    return 0.5 * ((a - eta * (chosen_target - 0.5)) ** 2 + (b - eta * (rejected_target - 0.5)) ** 2)


def sppo_single(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, pref_prob: Tensor, beta: float, **_) -> Tensor:
    """SPPO single-pair form: ``loss = ½[(a − η(p − ½))² + (b + η(p − ½))²]``, p = P(y_w ≻ y_l), η = 1/β."""
    eta = 1.0 / beta
    a = policy_chosen_logps - ref_chosen_logps
    b = policy_rejected_logps - ref_rejected_logps
    return 0.5 * ((a - eta * (pref_prob - 0.5)) ** 2 + (b + eta * (pref_prob - 0.5)) ** 2)


def sppo_hard(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, beta: float, **_) -> Tensor:
    """TRL's ``sppo_hard`` (hard P = 1/0, no leading ½): ``loss = (a − η/2)² + (b + η/2)²``, η = 1/β."""
    eta = 1.0 / beta
    a = policy_chosen_logps - ref_chosen_logps
    b = policy_rejected_logps - ref_rejected_logps
    return (a - 0.5 * eta) ** 2 + (b + 0.5 * eta) ** 2


def gpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, chosen_target: Tensor, rejected_target: Tensor, beta: float,
        clamp: float = 1000.0, **_) -> Tensor:
    """GPO with GPM scores. PRESUMED form: the published ``sppo_score`` loss is not public.

    The SPPO regression with the mean GPM score ŝ in place of P − ½ (π_t against itself
    scores 0), clamped at ±``clamp`` (the seed's CLAMP_THRES), η = 1/β:
    ``loss = ½[(a − η·clip(ŝ_w))² + (b − η·clip(ŝ_l))²]``.
    """
    eta = 1.0 / beta
    a = policy_chosen_logps - ref_chosen_logps
    b = policy_rejected_logps - ref_rejected_logps
    sw = chosen_target.clamp(-clamp, clamp)
    sl = rejected_target.clamp(-clamp, clamp)
    return 0.5 * ((a - eta * sw) ** 2 + (b - eta * sl) ** 2)


def mnpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, history_chosen_logps: Tensor | None = None,
         history_rejected_logps: Tensor | None = None, eta: float = 0.0075, ratio: float = 0.3333,
         history_weights: Sequence[float] | None = None, max_history: int | None = None, **_) -> Tensor:
    """MNPO (multiplayer Nash preference optimization), with λ_j = w_j / Σ w (uniform if Σ w = 0):

    ``z = h_θ − ρ·h_ref − (1 − ρ)·Σ_{j<T'} λ_j·h_{π_j}``, ``loss = (z − 1/(2η))²``.
    Without history players the last term is 0 (its mass is not given to π_ref). The seed
    uses length-normalised log-probs (``logp_norm: mean``).
    """
    z = _h(policy_chosen_logps, policy_rejected_logps) - ratio * _h(ref_chosen_logps, ref_rejected_logps)
    mix = _history_mix(history_chosen_logps, history_rejected_logps, history_weights, max_history)
    if mix is not None:
        z = z - (1.0 - ratio) * mix
    return (z - 1.0 / (2.0 * eta)) ** 2


def mnpo_dpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, history_chosen_logps: Tensor | None = None,
             history_rejected_logps: Tensor | None = None, beta: float, het_loss_weight: float = 0.0,
             history_weights: Sequence[float] | None = None, max_history: int | None = None, **_) -> Tensor:
    """MNPO's DPO variant: ``loss = −log σ(β(h_θ − h_ref)) + c_het·(h_θ − Σ_j λ_j·h_{π_j})²``."""
    h_pol = _h(policy_chosen_logps, policy_rejected_logps)
    loss = -torch.nn.functional.logsigmoid(beta * (h_pol - _h(ref_chosen_logps, ref_rejected_logps)))
    mix = _history_mix(history_chosen_logps, history_rejected_logps, history_weights, max_history)
    if mix is not None and het_loss_weight:
        loss = loss + het_loss_weight * (h_pol - mix) ** 2
    return loss


def inpo(*, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, history_chosen_logps: Tensor, history_rejected_logps: Tensor,
         eta: float = 0.002, ratio: float = 1.0 / 3.0, **_) -> Tensor:
    """INPO / COMAL prox step (summed log-probs), anchor μ as ``ref_*``, π_t as history player 0:

    ``z = h_θ − ρ·h_μ − (1 − ρ)·h_{π_t}`` with ρ = τ/η, ``loss = (z − 1/(2η))²``.
    """
    h_t = history_chosen_logps[..., 0] - history_rejected_logps[..., 0]
    z = _h(policy_chosen_logps, policy_rejected_logps) - ratio * _h(ref_chosen_logps, ref_rejected_logps) \
        - (1.0 - ratio) * h_t
    return (z - 1.0 / (2.0 * eta)) ** 2


def nash_md(*, policy_token_logps: Tensor, ref_token_logps: Tensor, mask: Tensor, pref_prob: Tensor,
            beta: float, **_) -> Tensor:
    """Nash-MD (Munos et al. 2024; TRL NashMDTrainer), on the policy sample y with p = P(y ≻ y'):

    ``score = (p − ½)·Σ_t ℓ_t``, ``kl = Σ_t sg(ℓ_t − ℓ^ref_t)·ℓ_t``, ``loss = β·kl − score``,
    with ℓ_t = log π_θ(y_t | ·) on response tokens (``mask``). The mixture sample y' is only
    the opponent and gets no loss.
    """
    m = mask.to(policy_token_logps.dtype)
    lp = policy_token_logps * m
    delta = ((policy_token_logps - ref_token_logps) * m).detach()
    score = (pref_prob - 0.5) * lp.sum(-1)
    kl = (delta * lp).sum(-1)
    return beta * kl - score


def mle(*, policy_chosen_logps: Tensor, chosen_tokens: Tensor, **_) -> Tensor:
    """MLE / SFT on the chosen response: the batch mean of the result is the token-level NLL

    ``loss = −Σ_t m_t·log π_θ(y_t) / Σ_t m_t`` over all response tokens of the batch; per example
    ``−S_θ(y_w)·B / Σ_j |y_j|``. Needs summed log-probs (``logp_norm: sum``).
    """
    n = chosen_tokens.to(policy_chosen_logps.dtype)
    return -policy_chosen_logps * n.shape[0] / n.sum().clamp(min=1)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "dpo": dpo,
    "ipo": ipo,
    "sppo": sppo,
    "sppo_single": sppo_single,
    "sppo_hard": sppo_hard,
    "gpo": gpo,
    "inpo": inpo,
    "mnpo": mnpo,
    "mnpo_dpo": mnpo_dpo,
    "nash_md": nash_md,
    "mle": mle,
}


def get_loss(name: str) -> Callable[..., Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSSES))}") from None
