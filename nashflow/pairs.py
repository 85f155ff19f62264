"""Pair and target builders: from scored samples to (chosen, rejected) pairs with targets.

``PAIR_BUILDERS`` maps a name to a function ``(group) -> Pick | None`` where ``group`` holds one
prompt's samples (sorted by sample index) with a ``reward`` column. A builder picks the chosen
and rejected rows and may set regression targets and P(chosen ≻ rejected).

Preferences between the K samples of a prompt form a K×K matrix P with P + Pᵀ = 1. Scalar
rewards give P[i][j] = σ(r_i − r_j) (as SPPO does with PairRM's aggregated scores); a pairwise
scorer may store its own matrix in a ``preference`` column (one row-major K×K list per prompt,
repeated on every sample row). GPO uses raw skew-symmetric scores W[i][j] (= r_i − r_j for
scalar rewards, or a ``score_table`` column T with W = T − Tᵀ).

The gather step joins samples and scores by (prompt_id, sample_index), never by row order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from nashflow.errors import DataError


@dataclass
class Pick:
    chosen: int  # positions in the group
    rejected: int
    chosen_target: float | None = None
    rejected_target: float | None = None
    pref_prob: float | None = None


def sigmoid(x):
    """The logistic function σ(x) = 1 / (1 + e^(−x)), elementwise, in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def bradley_terry_matrix(rewards) -> np.ndarray:
    """The Bradley-Terry preference matrix of scalar rewards r (length K):

        P[i][j] = σ(r_i − r_j) = 1 / (1 + exp(−(r_i − r_j)))

    so P + Pᵀ = 1 and P[i][i] = ½. Used wherever scalar scores become preferences: reward
    scorers, PairRM's aggregated scores (SPPO's ``compute_prob.py``), the pair builders.
    """
    r = np.asarray(rewards, dtype=np.float64)
    return sigmoid(r[:, None] - r[None, :])


def preference_matrix(group: pd.DataFrame) -> np.ndarray:
    """P[i][j] = P(sample i ≻ sample j): the scorer's matrix if present, else σ(r_i − r_j)."""
    if "preference" in group.columns and group["preference"].iloc[0] is not None:
        return np.array([list(row) for row in group["preference"].iloc[0]], dtype=np.float64)
    return bradley_terry_matrix(group["reward"].to_numpy(dtype=np.float64))


def score_matrix(group: pd.DataFrame) -> np.ndarray:
    """Raw skew-symmetric scores W[i][j] (GPO): T − Tᵀ of a ``score_table``, else r_i − r_j."""
    if "score_table" in group.columns and group["score_table"].iloc[0] is not None:
        t = np.array([list(row) for row in group["score_table"].iloc[0]], dtype=np.float64)
        return t - t.T
    r = group["reward"].to_numpy(dtype=np.float64)
    return r[:, None] - r[None, :]


def judge_matrix(label_probs: dict[tuple[int, int], float], k: int) -> np.ndarray:
    """P from a judge that saw every ordered pair (i, j) with i as "Output (a)".

    ``label_probs[(i, j)]`` = probability that the first output wins. Both positions are
    averaged, which cancels position bias: P[i][j] = ½(p(i, j) + 1 − p(j, i)).
    """
    P = np.full((k, k), 0.5)
    for i in range(k):
        for j in range(k):
            if i != j:
                P[i, j] = 0.5 * (label_probs[(i, j)] + 1.0 - label_probs[(j, i)])
    return P


def mean_win_prob(P: np.ndarray) -> np.ndarray:
    """Each candidate's mean win probability against the others (COMAL's candidate score)."""
    k = P.shape[0]
    return (P.sum(1) - np.diag(P)) / max(1, k - 1)


def _distinct_positions(group: pd.DataFrame) -> np.ndarray:
    """Positions of the first occurrence of each distinct response (identical texts merged)."""
    return np.flatnonzero(~group["response"].duplicated(keep="first").to_numpy())


def _best_worst(values: np.ndarray, candidates: np.ndarray) -> tuple[int, int] | None:
    v = values[candidates]
    if len(candidates) < 2 or v.max() == v.min():
        return None
    return int(candidates[int(np.argmax(v))]), int(candidates[int(np.argmin(v))])


def max_min(group: pd.DataFrame) -> Pick | None:
    """chosen = highest reward, rejected = lowest (MNPO, DPO); ties → lowest sample index."""
    bw = _best_worst(group["reward"].to_numpy(dtype=np.float64), _distinct_positions(group))
    if bw is None:
        return None
    P = preference_matrix(group)
    return Pick(bw[0], bw[1], pref_prob=float(P[bw[0], bw[1]]))


def top1_top2(group: pd.DataFrame) -> Pick | None:
    """chosen = highest mean win probability, rejected = second highest (COMAL)."""
    P = preference_matrix(group)
    score = mean_win_prob(P)
    cand = _distinct_positions(group)
    if len(cand) < 2:
        return None
    order = cand[np.argsort(-score[cand], kind="stable")]
    if score[order[0]] == score[order[1]]:
        return None
    return Pick(int(order[0]), int(order[1]), chosen_target=float(score[order[0]]),
                rejected_target=float(score[order[1]]), pref_prob=float(P[order[0], order[1]]))


def sppo(group: pd.DataFrame) -> Pick | None:
    """SPPO: chosen = argmax, rejected = argmin of the score; targets are mean win rates against
    all K samples, self term ½ included: p_win = (1/K)·Σ_j P[w][j], p_lose = (1/K)·Σ_j P[l][j]."""
    P = preference_matrix(group)
    scores = group["reward"].to_numpy(dtype=np.float64) if "preference" not in group.columns \
        else mean_win_prob(P)
    bw = _best_worst(scores, _distinct_positions(group))
    if bw is None:
        return None
    w, lo = bw
    return Pick(w, lo, chosen_target=float(P[w].mean()), rejected_target=float(P[lo].mean()),
                pref_prob=float(P[w, lo]))


def gpo(group: pd.DataFrame) -> Pick | None:
    """GPO: as SPPO, with raw score targets ŝ_w = (1/K)·Σ_j W[w][j], ŝ_l = (1/K)·Σ_j W[l][j]."""
    W = score_matrix(group)
    s = W.mean(1)
    bw = _best_worst(s, _distinct_positions(group))
    if bw is None:
        return None
    w, lo = bw
    return Pick(w, lo, chosen_target=float(s[w]), rejected_target=float(s[lo]),
                pref_prob=float(sigmoid(W[w, lo])))


def better_of_two(group: pd.DataFrame) -> Pick | None:
    """MOODPO: of two samples, chosen = the one with the higher (weighted) reward; ties → the first."""
    if len(group) < 2:
        return None
    r = group["reward"].to_numpy(dtype=np.float64)
    if group["response"].iloc[0] == group["response"].iloc[1]:
        return None
    c, rj = (0, 1) if r[0] >= r[1] else (1, 0)
    return Pick(c, rj, pref_prob=float(sigmoid(r[c] - r[rj])))


def policy_vs_mixture(group: pd.DataFrame) -> Pick | None:
    """Nash-MD: the policy sample (``sampler == 'policy'``) against the mixture sample, with
    p = P(y ≻ y') = σ(r(y) − r(y')); "chosen" is always the policy sample, the one trained on."""
    if "sampler" not in group.columns:
        raise DataError("the nash_md pair builder needs samples from the mixture sampler (column 'sampler')")
    pol = np.flatnonzero(group["sampler"].to_numpy() == "policy")
    mix = np.flatnonzero(group["sampler"].to_numpy() == "mixture")
    if len(pol) == 0 or len(mix) == 0:
        return None
    p, m = int(pol[0]), int(mix[0])
    P = preference_matrix(group)
    return Pick(p, m, pref_prob=float(P[p, m]))


PAIR_BUILDERS: dict[str, Callable[[pd.DataFrame], Pick | None]] = {
    "max_min": max_min,
    "top1_top2": top1_top2,
    "sppo": sppo,
    "gpo": gpo,
    "better_of_two": better_of_two,
    "policy_vs_mixture": policy_vs_mixture,
}


def build_pairs(samples: pd.DataFrame, scores: pd.DataFrame, builder: str = "max_min") -> pd.DataFrame:
    """Join samples and scores by (prompt_id, sample_index) and build at most one pair per prompt."""
    if builder not in PAIR_BUILDERS:
        raise DataError(f"unknown pair builder '{builder}'; known: {', '.join(PAIR_BUILDERS)}")
    key = ["prompt_id", "sample_index"]
    if samples.duplicated(key).any() or scores.duplicated(key).any():
        raise DataError("samples or scores hold duplicate (prompt_id, sample_index) rows; were shards mixed up?")
    merged = samples.merge(scores, on=key, how="inner", validate="one_to_one")
    if len(merged) != len(samples):
        missing = len(samples) - len(merged)
        raise DataError(f"{missing} samples have no score; re-run the score stage for every shard")
    fn = PAIR_BUILDERS[builder]
    rows = []
    for pid, group in merged.sort_values(key).groupby("prompt_id", sort=True):
        group = group.reset_index(drop=True)
        pick = fn(group)
        if pick is None:
            continue
        c, r = group.iloc[pick.chosen], group.iloc[pick.rejected]
        pref = pick.pref_prob if pick.pref_prob is not None else float(sigmoid(c.reward - r.reward))
        row = {
            "pair_id": f"{pid}:{int(c.sample_index)}-{int(r.sample_index)}",
            "prompt_id": pid,
            "messages": list(c.messages),
            "chosen": c.response, "rejected": r.response,
            "chosen_sample": int(c.sample_index), "rejected_sample": int(r.sample_index),
            "chosen_finish": c.finish_reason, "rejected_finish": r.finish_reason,
            "chosen_reward": float(c.reward), "rejected_reward": float(r.reward),
            "chosen_target": float(pick.chosen_target if pick.chosen_target is not None else c.reward),
            "rejected_target": float(pick.rejected_target if pick.rejected_target is not None else r.reward),
            "pref_prob": float(pref),
            "generator": c.generator,
        }
        for extra in ("raw_messages", "weights"):
            if extra in group.columns:
                row[extra] = c[extra] if not isinstance(c[extra], np.ndarray) else list(c[extra])
        rows.append(row)
    if not rows:
        raise DataError(
            f"no pairs could be built from {merged.prompt_id.nunique()} prompts: every prompt has fewer than "
            "2 distinct responses with different rewards; raise generation.temperature or change the scorer"
        )
    return pd.DataFrame(rows)
