"""A symmetric two-player preference game: its Nash equilibrium and how far a policy is from it.

P is an A×A matrix of P(a ≻ b) with P + Pᵀ = 1 (diagonal ½). A policy π is a distribution over
the A actions; P(a ≻ π) = (Pπ)_a. The game is zero-sum around ½: π·Pπ = ½ for every π, and a
Nash equilibrium π* satisfies (Pπ*)_a ≤ ½ for every a.

Nothing here reads a model; ``nashflow.game_eval`` computes a checkpoint's action distribution.
"""

from __future__ import annotations

import numpy as np


def check_preference_matrix(P, *, atol: float = 1e-6) -> np.ndarray:
    """P as a float array, or ValueError naming what is wrong (square, in [0, 1], P + Pᵀ = 1, diagonal ½)."""
    try:
        M = np.asarray(P, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("must be a square list of lists of numbers") from None
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 2:
        raise ValueError(f"must be a square matrix with at least 2 actions, got shape {M.shape}")
    if not np.isfinite(M).all() or (M < 0).any() or (M > 1).any():
        raise ValueError("entries are probabilities P(row ≻ column) and must lie in [0, 1]")
    diag = np.flatnonzero(np.abs(np.diag(M) - 0.5) > atol)
    if len(diag):
        i = int(diag[0])
        raise ValueError(f"the diagonal must be ½ (an action ties with itself), got P[{i}][{i}] = {M[i, i]:g}")
    bad = np.argwhere(np.abs(M + M.T - 1.0) > atol)
    if len(bad):
        i, j = map(int, bad[0])
        raise ValueError(f"P + Pᵀ must be 1, got P[{i}][{j}] + P[{j}][{i}] = {M[i, j]:g} + {M[j, i]:g}")
    return M


def nash_equilibrium(P, *, tol: float = 1e-9) -> np.ndarray:
    """A Nash equilibrium of the symmetric game, by support enumeration (exact; no LP solver needed).

    With A = P − ½ (skew-symmetric, value 0), x is an equilibrium iff x ≥ 0, Σ x = 1 and Ax ≤ 0;
    on its support S every action earns the value: A_SS·x_S = 0. Supports are tried from the
    smallest up, solving ``[A_SS; 1ᵀ]·x_S = [0; 1]``; the first solution that is a distribution
    with Ax ≤ 0 is returned (2^A supports: fine for the few actions of a testbed).
    """
    from itertools import combinations

    A = np.asarray(P, dtype=np.float64) - 0.5
    k = A.shape[0]
    if k > 16:
        raise ValueError(f"{k} actions: support enumeration is meant for small games (at most 16 actions)")
    for size in range(1, k + 1):
        for support in combinations(range(k), size):
            S = list(support)
            M = np.vstack([A[np.ix_(S, S)], np.ones((1, size))])
            xs, *_ = np.linalg.lstsq(M, np.append(np.zeros(size), 1.0), rcond=None)
            if np.abs(M @ xs - np.append(np.zeros(size), 1.0)).max() > 1e-7 or xs.min() < -tol:
                continue
            x = np.zeros(k)
            x[S] = np.clip(xs, 0.0, None)
            x /= x.sum()
            if (A @ x).max() <= 1e-7:
                return x
    raise RuntimeError("no equilibrium found (is P a preference matrix?)")


def tv(p, q) -> float:
    """Total variation distance ½·Σ_a |p_a − q_a|."""
    return 0.5 * float(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


def exploitability(pi, P) -> float:
    """``max_a (Pπ)_a − ½``: what the best response gains against π (0 exactly at a Nash
    equilibrium). The symmetric duality gap is twice this."""
    return float(np.max(np.asarray(P) @ np.asarray(pi, dtype=np.float64)) - 0.5)


def kl(p, q) -> float:
    """KL(p ‖ q) = Σ_a p_a·log(p_a / q_a) (terms with p_a = 0 are 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = p > 0
    return float(np.sum(p[m] * (np.log(p[m]) - np.log(np.maximum(q[m], 1e-300)))))


def regularised_exploitability(pi, P, mu, tau: float) -> float:
    """Exploitability in the KL-regularised game around μ with strength τ (Munos et al. 2024), where
    a player earns P(π ≻ π') − τ·KL(π ‖ μ) + τ·KL(π' ‖ μ):

    ``max_π' [π'·Pπ − τ·KL(π' ‖ μ)] + τ·KL(π ‖ μ) − ½ = τ·log Σ_a μ_a·exp((Pπ)_a / τ) + τ·KL(π ‖ μ) − ½``,

    0 exactly at the regularised equilibrium π*_τ ∝ μ·exp(Pπ*_τ / τ).
    """
    pi, mu = np.asarray(pi, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    z = (np.asarray(P) @ pi)[mu > 0] / tau
    log_partition = z.max() + np.log(np.sum(mu[mu > 0] * np.exp(z - z.max())))
    return float(tau * log_partition + tau * kl(pi, mu) - 0.5)


def regularised_equilibrium(P, mu, tau: float, *, iters: int = 20000, damping: float = 0.01) -> np.ndarray:
    """π*_τ ∝ μ·exp(Pπ*_τ / τ), by damped fixed-point iteration from μ."""
    P, mu = np.asarray(P, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    pi = mu.copy()
    for _ in range(iters):
        logits = np.log(np.maximum(mu, 1e-300)) + P @ pi / tau
        new = np.exp(logits - logits.max())
        pi = (1 - damping) * pi + damping * new / new.sum()
    return pi


def with_no_action(P) -> np.ndarray:
    """P extended by a last "no action" outcome (a response the action rule maps to no action),
    which loses to every action and ties with itself."""
    P = np.asarray(P, dtype=np.float64)
    k = P.shape[0]
    out = np.full((k + 1, k + 1), 0.5)
    out[:k, :k] = P
    out[:k, k], out[k, :k] = 1.0, 0.0
    return out


__all__ = ["check_preference_matrix", "nash_equilibrium", "tv", "exploitability", "kl", "regularised_exploitability",
           "regularised_equilibrium", "with_no_action"]
