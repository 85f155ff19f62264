"""Scorers and pair builders."""

import numpy as np
import pandas as pd
import pytest

from nashflow.errors import ConfigError, DataError
from nashflow.pairs import build_pairs
from nashflow.scorers import CompositeScorer, ScorerConfig

MSG = [{"role": "user", "content": "hi"}]


def bad_reward(messages, response):
    return float("nan")


def exclaim_reward(messages, response):
    return response.count("!")


def samples(responses, pid="p1", finish="stop"):
    return pd.DataFrame({"prompt_id": pid, "messages": [MSG] * len(responses), "sample_index": range(len(responses)),
                         "response": responses, "finish_reason": finish, "generator": "base",
                         "token_count": [len(r.split()) for r in responses]})


def test_sentiment_orders_texts():
    s = CompositeScorer(ScorerConfig.from_dict({"components": [{"type": "sentiment"}]}))
    out = s.score_table(samples(["I love it, wonderful!", "It is a table.", "Awful, I hate this."]))
    r = out.reward.to_numpy()
    assert r[0] > r[1] > r[2]
    assert "reward_sentiment" in out


def test_weighted_components_and_eos_penalty():
    cfg = ScorerConfig.from_dict({"components": [{"type": "length", "weight": 2.0, "args": {"scale": 1}},
                                                 {"type": "python", "args": {"function": f"{__name__}:exclaim_reward"}}],
                                  "missing_eos_penalty": 5.0})
    df = samples(["a b c!", "a!!"])
    df.loc[1, "finish_reason"] = "length"
    out = CompositeScorer(cfg).score_table(df)
    np.testing.assert_allclose(out.reward, [2 * 3 + 1, 2 * 1 + 2 - 5])


def test_nan_reward_names_the_row():
    cfg = ScorerConfig.from_dict({"components": [{"type": "python", "args": {"function": f"{__name__}:bad_reward"}}]})
    with pytest.raises(DataError, match="prompt_id=p1 sample_index=0"):
        CompositeScorer(cfg).score_table(samples(["x", "y"]))


def test_unknown_scorer_and_bad_function():
    with pytest.raises(ConfigError, match="unknown scorer"):
        ScorerConfig.from_dict({"components": [{"type": "nope"}]})
    with pytest.raises(ConfigError, match="module:function"):
        CompositeScorer(ScorerConfig.from_dict({"components": [{"type": "python", "args": {"function": "x"}}]}))


def _scores(df, rewards):
    return pd.DataFrame({"prompt_id": df.prompt_id, "sample_index": df.sample_index, "reward": rewards})


def test_max_min_pairs_join_by_id_and_skip_degenerate():
    a = samples(["good", "bad", "ok"], pid="a")
    b = samples(["same", "same", "same"], pid="b")  # identical responses: no pair
    c = samples(["x", "y"], pid="c")  # equal rewards: no pair
    s = pd.concat([a, b, c], ignore_index=True)
    sc = _scores(s, [1.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.5, 0.5])
    pairs = build_pairs(s.sample(frac=1, random_state=0), sc.sample(frac=1, random_state=1))  # row order irrelevant
    assert pairs.prompt_id.tolist() == ["a"]
    row = pairs.iloc[0]
    assert (row.chosen, row.rejected, row.chosen_sample, row.rejected_sample) == ("good", "bad", 0, 1)
    assert row.pref_prob == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_top1_top2():
    s = samples(["a", "b", "c"])
    pairs = build_pairs(s, _scores(s, [0.2, 0.9, 0.5]), "top1_top2")
    assert (pairs.chosen[0], pairs.rejected[0]) == ("b", "c")


def test_no_pairs_at_all_is_a_clear_error():
    s = samples(["same", "same"])
    with pytest.raises(DataError, match="no pairs could be built"):
        build_pairs(s, _scores(s, [1.0, 1.0]))


def test_missing_scores_detected():
    s = samples(["a", "b"])
    with pytest.raises(DataError, match="no score"):
        build_pairs(s, _scores(s, [1.0, 0.0]).iloc[:1])


def test_sppo_targets_worked_example():
    # docs/algorithms.md, Worked numbers: SPPO.
    # PairRM scores s → w = 0, l = 4, chosen_probs 0.900250, p_win 0.711084, p_lose 0.266661
    s = samples([f"r{i}" for i in range(5)])
    pairs = build_pairs(s, _scores(s, [1.2, 0.3, -0.5, 0.8, -1.0]), "sppo")
    row = pairs.iloc[0]
    assert (row.chosen_sample, row.rejected_sample) == (0, 4)
    assert row.pref_prob == pytest.approx(0.900250, rel=1e-5)
    assert row.chosen_target == pytest.approx(0.711084, rel=1e-5)
    assert row.rejected_target == pytest.approx(0.266661, rel=1e-5)


def test_gpo_targets_from_a_score_table():
    from nashflow.pairs import gpo, score_matrix

    # skew-symmetric raw table T (s(i, j) = −s(j, i)): W = T − Tᵀ = 2T, targets = row means of W
    T = np.array([[0, 6.0, -1.0], [-6.0, 0, 2.0], [1.0, -2.0, 0]])
    s = samples(["a", "b", "c"])
    s["reward"] = 0.0
    s["score_table"] = [T.tolist()] * 3
    W = score_matrix(s)
    np.testing.assert_allclose(W, -W.T)
    pick = gpo(s)
    assert (pick.chosen, pick.rejected) == (0, 1)
    assert pick.chosen_target == pytest.approx((12.0 - 2.0) / 3)
    assert pick.rejected_target == pytest.approx((-12.0 + 4.0) / 3)
    # scalar rewards: W[i][j] = r_i − r_j, so targets are r_w − mean(r) and r_l − mean(r)
    s2 = samples(["a", "b", "c"])
    pairs = build_pairs(s2, _scores(s2, [1.0, 0.0, 2.0]), "gpo")
    assert pairs.chosen_target[0] == pytest.approx(1.0) and pairs.rejected_target[0] == pytest.approx(-1.0)


def test_comal_judge_matrix_worked_example():
    from nashflow.pairs import judge_matrix, mean_win_prob, top1_top2

    lp = {(0, 1): (-0.1, -2.4), (1, 0): (-1.5, -0.25), (0, 2): (-0.7, -0.7), (2, 0): (-0.9, -0.5),
          (1, 2): (-0.2, -1.8), (2, 1): (-2.0, -0.15)}
    probs = {k: np.exp(a) / (np.exp(a) + np.exp(b)) for k, (a, b) in lp.items()}
    P = judge_matrix(probs, 3)
    np.testing.assert_allclose(P + P.T, np.ones((3, 3)))
    assert mean_win_prob(P) == pytest.approx([0.696216, 0.502492, 0.301292], rel=1e-5)
    s = samples(["x", "y", "z"])
    s["reward"] = 0.0
    s["preference"] = [P.tolist()] * 3
    pick = top1_top2(s)
    assert (pick.chosen, pick.rejected) == (0, 1)


def test_moodpo_better_of_two_worked_example():
    # w = (0.6, 0.4); y1 rewards (1.2, −0.3), y2 (0.5, 0.9) → R = 0.60 vs 0.66 → y2 chosen
    w = np.array([0.6, 0.4])
    R = [float(w @ [1.2, -0.3]), float(w @ [0.5, 0.9])]
    assert R == pytest.approx([0.60, 0.66])
    s = samples(["y1", "y2"])
    pairs = build_pairs(s, _scores(s, R), "better_of_two")
    assert (pairs.chosen[0], pairs.rejected[0]) == ("y2", "y1")


def test_nash_md_pair_is_policy_vs_mixture():
    s = samples(["policy says hi", "mixture says hi"])
    s["sampler"] = ["policy", "mixture"]
    pairs = build_pairs(s, _scores(s, [1.3, 0.45]), "policy_vs_mixture")
    assert pairs.chosen[0] == "policy says hi"
    assert pairs.pref_prob[0] == pytest.approx(0.700567, rel=1e-5)
    # a worse policy sample is still the trained one, with p < ½
    pairs = build_pairs(s, _scores(s, [0.45, 1.3]), "policy_vs_mixture")
    assert pairs.chosen[0] == "policy says hi" and pairs.pref_prob[0] < 0.5
