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
    with pytest.raises(ConfigError, match="unknown type"):
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
