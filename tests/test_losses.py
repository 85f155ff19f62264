"""Losses: each "Worked numbers" section of docs/algorithms.md to 1e-5 relative, finiteness, gradient signs."""

import math

import pytest
import torch

from nashflow.losses import LOSSES

t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
REL = 1e-5


def test_registry_names_and_docstrings():
    assert set(LOSSES) == {"dpo", "ipo", "sppo", "sppo_single", "sppo_hard", "gpo", "inpo", "mnpo", "mnpo_dpo",
                           "nash_md", "mle"}
    for fn in LOSSES.values():
        assert "loss" in (fn.__doc__ or "") and "=" in fn.__doc__


# MNPO §1(b): mean log-probs, ρ = 0.3333, η = 0.0075 (target 66.667)
MNPO = dict(policy_chosen_logps=t(-1.10), policy_rejected_logps=t(-1.50), ref_chosen_logps=t(-1.20),
            ref_rejected_logps=t(-1.40), history_chosen_logps=t([-1.15, -1.25]),
            history_rejected_logps=t([-1.45, -1.35]), ratio=0.3333, eta=0.0075)


def test_mnpo_worked_examples():
    assert LOSSES["mnpo"](**MNPO).item() == pytest.approx(4417.817778, rel=REL)
    assert LOSSES["mnpo"](**MNPO, history_weights=[0.25, 0.75]).item() == pytest.approx(4413.387556, rel=REL)
    assert LOSSES["mnpo"](**MNPO, history_weights=[0.0, 0.0]).item() == pytest.approx(4417.817778, rel=REL)
    no_hist = {k: v for k, v in MNPO.items() if not k.startswith("history")}
    assert LOSSES["mnpo"](**no_hist).item() == pytest.approx(4400.110227, rel=REL)
    empty = dict(no_hist, history_chosen_logps=torch.zeros(1, 0, dtype=torch.float64),
                 history_rejected_logps=torch.zeros(1, 0, dtype=torch.float64))
    assert LOSSES["mnpo"](**empty).item() == pytest.approx(4400.110227, rel=REL)
    # max_history truncates to the newest players: with T' = 1 only history0 counts
    one = LOSSES["mnpo"](**MNPO, max_history=1).item()
    z = 0.4 - 0.3333 * 0.2 - (1 - 0.3333) * 0.3
    assert one == pytest.approx((z - 1 / (2 * 0.0075)) ** 2, rel=REL)


def test_mnpo_dpo_variant_worked_example():
    out = LOSSES["mnpo_dpo"](**MNPO, beta=3.0, het_loss_weight=0.1)
    assert out.item() == pytest.approx(0.441488, rel=REL)


# SPPO §2(b): S_θ = (−120, −150), S_πt = (−121, −149.5), β = 0.001
SPPO = dict(policy_chosen_logps=t(-120.0), policy_rejected_logps=t(-150.0), ref_chosen_logps=t(-121.0),
            ref_rejected_logps=t(-149.5), beta=0.001)


def test_sppo_worked_examples():
    assert LOSSES["sppo"](**SPPO, chosen_target=t(0.711084), rejected_target=t(0.266661)).item() == \
        pytest.approx(49174.598369, rel=REL)
    assert LOSSES["sppo_single"](**SPPO, pref_prob=t(0.900250)).item() == pytest.approx(159599.921694, rel=REL)
    assert LOSSES["sppo_hard"](**SPPO).item() == pytest.approx(498501.25, rel=REL)


def test_gpo_presumed_form_and_clamp():
    # With scores in place of P − ½: ½[(a − η ŝ_w)² + (b − η ŝ_l)²]; GPM worked targets 9.2 / −8.4.
    out = LOSSES["gpo"](**SPPO, chosen_target=t(9.2), rejected_target=t(-8.4)).item()
    assert out == pytest.approx(0.5 * ((1 - 9200) ** 2 + (-0.5 + 8400) ** 2), rel=REL)
    clamped = LOSSES["gpo"](**SPPO, chosen_target=t(5000.0), rejected_target=t(-8.4), clamp=1000.0).item()
    assert clamped == pytest.approx(0.5 * ((1 - 1e6) ** 2 + (-0.5 + 8400) ** 2), rel=REL)


# COMAL §5(b): summed log-probs π_θ (−210, −260), μ (−212, −255), π_t (−211, −258), η = 0.002, ρ = 1/3
COMAL = dict(policy_chosen_logps=t(-210.0), policy_rejected_logps=t(-260.0))


def test_inpo_ipo_dpo_worked_examples():
    inpo = LOSSES["inpo"](**COMAL, ref_chosen_logps=t(-212.0), ref_rejected_logps=t(-255.0),
                          history_chosen_logps=t([-211.0]), history_rejected_logps=t([-258.0]), eta=0.002,
                          ratio=1 / 3)
    assert inpo.item() == pytest.approx(60352.111111, rel=REL)
    ref_t = dict(ref_chosen_logps=t(-211.0), ref_rejected_logps=t(-258.0))
    assert LOSSES["ipo"](**COMAL, **ref_t, eta=0.002, beta=0.1).item() == pytest.approx(61009.0, rel=REL)
    assert LOSSES["dpo"](**COMAL, **ref_t, beta=0.1).item() == pytest.approx(0.554355, rel=REL)


def test_inpo_equals_mnpo_with_one_history_player_on_the_same_logps():
    kw = dict(**COMAL, ref_chosen_logps=t(-212.0), ref_rejected_logps=t(-255.0),
              history_chosen_logps=t([-211.0]), history_rejected_logps=t([-258.0]), eta=0.002, ratio=1 / 3)
    assert LOSSES["inpo"](**kw).item() == pytest.approx(LOSSES["mnpo"](**kw).item(), rel=1e-12)


def test_moodpo_online_dpo_worked_examples():
    # MOODPO §4(b): y2 chosen (−40 / −42.5), y1 rejected (−45 / −46), β = 0.1 → logits 1.5
    kw = dict(policy_chosen_logps=t(-40.0), policy_rejected_logps=t(-45.0), ref_chosen_logps=t(-42.5),
              ref_rejected_logps=t(-46.0), beta=0.1)
    assert LOSSES["dpo"](**kw).item() == pytest.approx(0.620957, rel=REL)
    assert LOSSES["ipo"](**kw).item() == pytest.approx(12.25, rel=REL)


def test_mle_worked_example_is_token_mean():
    out = LOSSES["mle"](policy_chosen_logps=t(-0.3 - 1.2 - 0.05 - 2.0), chosen_tokens=t(4.0))
    assert out.mean().item() == pytest.approx(0.8875, rel=REL)
    # batch level: the mean over examples is the mean over all response tokens
    out = LOSSES["mle"](policy_chosen_logps=t(-1.5, -2.05), chosen_tokens=t(2.0, 2.0))
    assert out.mean().item() == pytest.approx(0.8875, rel=REL)


def test_nash_md_worked_example_and_gradient():
    ell = torch.tensor([[-0.5, -1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-0.7, -0.9, -0.4]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    p = torch.sigmoid(t(1.3 - 0.45))
    assert p.item() == pytest.approx(0.700567, rel=REL)
    loss = LOSSES["nash_md"](policy_token_logps=ell, ref_token_logps=ref, mask=mask, pref_prob=p, beta=0.1)
    assert loss.item() == pytest.approx(0.336964, rel=REL)
    loss.sum().backward()
    assert ell.grad[0].tolist() == pytest.approx([-0.180567, -0.210567, -0.180567], rel=REL)
    judge = LOSSES["nash_md"](policy_token_logps=ell.detach(), ref_token_logps=ref, mask=mask, pref_prob=t(0.7),
                              beta=0.1)
    assert judge.item() == pytest.approx(0.336, rel=REL)
    # padding positions contribute nothing
    padded = LOSSES["nash_md"](policy_token_logps=torch.cat([ell.detach(), torch.tensor([[-5.0]], dtype=torch.float64)], 1),
                               ref_token_logps=torch.cat([ref, torch.tensor([[-1.0]], dtype=torch.float64)], 1),
                               mask=torch.tensor([[1, 1, 1, 0]], dtype=torch.bool), pref_prob=p, beta=0.1)
    assert padded.item() == pytest.approx(0.336964, rel=REL)


def _pair_kwargs(requires_grad=True):
    pc = torch.tensor([-10.0, -12.0, -8.0], requires_grad=requires_grad)
    pr = torch.tensor([-11.0, -11.5, -9.0], requires_grad=requires_grad)
    return pc, pr, dict(
        ref_chosen_logps=torch.tensor([-10.5] * 3), ref_rejected_logps=torch.tensor([-10.5] * 3),
        history_chosen_logps=torch.full((3, 2), -10.4), history_rejected_logps=torch.full((3, 2), -10.6),
        chosen_target=torch.tensor([0.7, 0.8, 0.6]), rejected_target=torch.tensor([0.3, 0.2, 0.4]),
        pref_prob=torch.tensor([0.9, 0.8, 0.7]), chosen_tokens=torch.tensor([5.0, 6.0, 4.0]),
        beta=0.1, eta=0.1, ratio=0.5, het_loss_weight=0.01,
    )


@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"nash_md"}))
def test_pair_loss_shape_finite_and_gradient_sign(name):
    pc, pr, kw = _pair_kwargs()
    if name in ("sppo", "sppo_single", "gpo"):
        kw["beta"] = 0.01  # targets η(p − ½) far above the current log-ratios
    if name == "gpo":
        kw["rejected_target"] = -kw["rejected_target"]  # GPO targets are scores, negative for losers
    out = LOSSES[name](policy_chosen_logps=pc, policy_rejected_logps=pr, **kw)
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()
    assert (pc.grad < 0).all(), "raising the chosen log-prob must lower the loss"
    if name == "mle":
        assert pr.grad is None or (pr.grad == 0).all()
    else:
        assert (pr.grad > 0).all(), "raising the rejected log-prob must raise the loss"


def test_nash_md_gradient_sign_follows_preference():
    ell = torch.full((2, 4), -1.0, requires_grad=True)
    out = LOSSES["nash_md"](policy_token_logps=ell, ref_token_logps=ell.detach(), mask=torch.ones(2, 4),
                            pref_prob=torch.tensor([0.9, 0.1]), beta=0.1)
    assert out.shape == (2,) and torch.isfinite(out).all()
    out.sum().backward()
    assert (ell.grad[0] < 0).all() and (ell.grad[1] > 0).all()  # preferred sample up, dispreferred down


def test_dpo_is_log2_at_zero_margin():
    z = torch.zeros(2)
    assert LOSSES["dpo"](policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
                         ref_rejected_logps=z, beta=0.1).allclose(torch.full((2,), math.log(2)))


def test_every_loss_declares_its_needs():
    """The torch-free specs (nashflow.methods.LOSS_SPECS, read at config time) describe the loss
    functions: the same names, hyperparameters that are keyword parameters of the function, β a
    parameter exactly where the spec says it enters the loss, per-token losses take token tensors."""
    import inspect

    from nashflow.methods import LOSS_SPECS

    assert set(LOSS_SPECS) == set(LOSSES)
    for name, spec in LOSS_SPECS.items():
        params = inspect.signature(LOSSES[name]).parameters
        assert set(spec.params) <= set(params), name
        assert ("beta" in params) == (spec.uses_beta or name == "ipo"), name  # ipo: β is η's fallback
        assert ("policy_token_logps" in params) == spec.per_token, name
        assert ("policy_rejected_logps" in params) == spec.uses_rejected, name
        tensors = {p for p in params if p.endswith(("_logps", "_target", "_prob", "_tokens")) or p == "mask"}
        assert not (set(spec.params) & tensors), name


def test_unknown_loss_hyperparameters_are_config_errors():
    from conftest import REPO

    from nashflow.config import validate_config
    from nashflow.errors import ConfigError

    schema = REPO / "config" / "schema.yaml"
    with pytest.raises(ConfigError, match=r"config key 'algorithm.params.etta': not a hyperparameter of the mnpo "
                                          r"loss \(its hyperparameters: eta, ratio, history_weights, max_history\)"):
        validate_config({"algorithm": {"name": "mnpo", "params": {"etta": 0.5}}, "iterations": 3}, schema)
    with pytest.raises(ConfigError, match="algorithm.params.eta': not a hyperparameter of the dpo loss"):
        validate_config({"algorithm": {"name": "dpo", "params": {"eta": 0.5}}}, schema)
    ok = validate_config({"algorithm": {"name": "inpo", "params": {"eta": 0.5}}, "iterations": 2}, schema)
    assert ok["algorithm"]["params"] == {"eta": 0.5, "ratio": 0.3333333333}
