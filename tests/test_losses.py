"""Losses: worked numbers from ALGORITHMS.md, finiteness, gradient signs."""

import math

import pytest
import torch

from nashflow.losses import LOSSES, dpo, ipo

t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_registry_names():
    assert {"dpo", "ipo"} <= set(LOSSES)
    for fn in LOSSES.values():
        assert "loss" in (fn.__doc__ or "")


def test_dpo_worked_example_comal():
    # COMAL §5: π_θ (−210, −260), ref π_t (−211, −258), β = 0.1 → 0.554355
    out = dpo(policy_chosen_logps=t(-210.0), policy_rejected_logps=t(-260.0), ref_chosen_logps=t(-211.0),
              ref_rejected_logps=t(-258.0), beta=0.1)
    assert out.item() == pytest.approx(0.554355, rel=1e-5)


def test_dpo_worked_example_moodpo():
    # MOODPO §4: chosen y2 (−40 / −42.5), rejected y1 (−45 / −46), logits 1.5, β = 0.1 → 0.620957
    out = dpo(policy_chosen_logps=t(-40.0), policy_rejected_logps=t(-45.0), ref_chosen_logps=t(-42.5),
              ref_rejected_logps=t(-46.0), beta=0.1)
    assert out.item() == pytest.approx(0.620957, rel=1e-5)


def test_ipo_worked_examples():
    # COMAL Iter-IPO (ref π_t), η = 0.002 → 61009.0
    out = ipo(policy_chosen_logps=t(-210.0), policy_rejected_logps=t(-260.0), ref_chosen_logps=t(-211.0),
              ref_rejected_logps=t(-258.0), eta=0.002)
    assert out.item() == pytest.approx(61009.0, rel=1e-5)
    # MOODPO ipo with β = 0.1: (1.5 − 5)² = 12.25
    out = ipo(policy_chosen_logps=t(-40.0), policy_rejected_logps=t(-45.0), ref_chosen_logps=t(-42.5),
              ref_rejected_logps=t(-46.0), beta=0.1)
    assert out.item() == pytest.approx(12.25, rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_shape_finite_and_gradient_sign(name):
    pc = torch.tensor([-10.0, -12.0, -8.0], requires_grad=True)
    pr = torch.tensor([-11.0, -11.5, -9.0], requires_grad=True)
    out = LOSSES[name](policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=torch.tensor([-10.5] * 3),
                       ref_rejected_logps=torch.tensor([-10.5] * 3), beta=0.1)
    assert out.shape == (3,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    # Raising the chosen log-prob lowers the loss; raising the rejected one raises it.
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_dpo_is_log2_at_zero_margin():
    z = torch.zeros(2)
    assert dpo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
               ref_rejected_logps=z).allclose(torch.full((2,), math.log(2)))
