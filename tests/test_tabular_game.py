"""A tabular preference game with a cycle (no Condorcet winner), solved by iterating the `inpo` loss.

Softmax policy over K = 3 responses; each round minimises the INPO loss exactly (L-BFGS) over the
population of ordered pairs drawn from π_t × π_t, the winner drawn from P. The exact minimiser is
log π_{t+1} = ρ·log μ + (1−ρ)·log π_t + P(· ≻ π_t)/η + const: the step on the payoff is 1/η,
so η must be large enough for the iteration to be stable (here η = 0.5, step 2).

* COMAL (anchor μ ← π every U rounds, prox-point) drives the last iterate to the game's Nash
  equilibrium, computed by linear programming: total variation < 0.01 after 200 rounds
  (measured: 0.0035).
* INPO without anchor updates converges instead to the KL-regularised equilibrium
  π ∝ μ·exp(P(· ≻ π)/τ), τ = ρ·η: TV < 1e-3 to it, and TV ≈ 0.10 (> 0.05) to the Nash equilibrium.
"""

import numpy as np
import pytest
import torch

from nashflow.game import nash_equilibrium, regularised_equilibrium, tv
from nashflow.losses import LOSSES

P = np.array([[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]])  # 0 ≻ 1 ≻ 2 ≻ 0
K = 3
ETA, RHO, U, ROUNDS = 0.5, 0.5, 10, 200


W, L = zip(*[(i, j) for i in range(K) for j in range(K) if i != j])  # winner i, loser j
W, L = torch.tensor(W), torch.tensor(L)
PREF = torch.tensor(P, dtype=torch.float64)


def inpo_round(theta_t: torch.Tensor, mu_logp: torch.Tensor) -> torch.Tensor:
    """Minimise the expected INPO loss over pairs from π_t × π_t, winners drawn from P."""
    logp_t = torch.log_softmax(theta_t, -1)
    pi_t = logp_t.exp()
    weight = pi_t[W] * pi_t[L] * PREF[W, L]  # P(draw (i, j)) · P(i ≻ j)
    theta = theta_t.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, -1)
        loss = LOSSES["inpo"](policy_chosen_logps=logp[W], policy_rejected_logps=logp[L],
                              ref_chosen_logps=mu_logp[W], ref_rejected_logps=mu_logp[L],
                              history_chosen_logps=logp_t[W].unsqueeze(-1),
                              history_rejected_logps=logp_t[L].unsqueeze(-1), eta=ETA, ratio=RHO)
        total = (weight * loss).sum()
        total.backward()
        return total

    opt.step(closure)
    return theta.detach()


def play(anchor_every: int | None) -> np.ndarray:
    theta = torch.zeros(K, dtype=torch.float64)
    mu = torch.log_softmax(theta, -1)
    for t in range(ROUNDS):
        theta = inpo_round(theta, mu)
        if anchor_every and (t + 1) % anchor_every == 0:
            mu = torch.log_softmax(theta, -1)
    return torch.softmax(theta, -1).numpy()


def test_one_round_matches_the_closed_form_mirror_step():
    theta = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    mu = torch.log_softmax(torch.zeros(K, dtype=torch.float64), -1)
    got = torch.softmax(inpo_round(theta, mu), -1).numpy()
    pi_t = torch.softmax(theta, -1).numpy()
    logits = RHO * mu.numpy() + (1 - RHO) * np.log(pi_t) + P @ pi_t / ETA
    want = np.exp(logits - logits.max())
    np.testing.assert_allclose(got, want / want.sum(), atol=1e-6)


def test_comal_reaches_nash_and_inpo_the_regularised_equilibrium():
    ne = nash_equilibrium(P)
    assert ne == pytest.approx([2 / 9, 1 / 3, 4 / 9], abs=1e-6)  # interior: no Condorcet winner
    comal = play(anchor_every=U)
    inpo = play(anchor_every=None)
    reg = regularised_equilibrium(P, np.full(K, 1 / K), tau=RHO * ETA)
    assert tv(comal, ne) < 0.01, (comal, ne)
    assert tv(inpo, reg) < 1e-3, (inpo, reg)
    assert tv(inpo, ne) > 0.05, (inpo, ne)
