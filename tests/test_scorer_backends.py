"""Model-backed scorers on tiny random models built here: sequence-classification reward model,
causal-LM judge, general preference model, PairRM (with a stand-in llm_blender), regex checks."""

import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BRACKETS, CHATML, build_tiny_gpm, build_tiny_judge, build_tiny_reward_model

from nashflow.errors import ConfigError, DataError
from nashflow.evaluate import iteration_metrics
from nashflow.pairs import build_pairs, judge_matrix, mean_win_prob
from nashflow.scorers import CompositeScorer, ScorerConfig
from nashflow.scorers.gpm import GPMScorer, gpm_table
from nashflow.scorers.judge import JudgeScorer, label_probability
from nashflow.scorers.reward_model import RewardModelScorer

RESPONSES = ["Sure.", "Here is a longer answer with several words in it.", "No!", "A medium length reply here.",
             "ok", "Thank you so much, I am happy to help with this wonderful question today."]
MESSAGES = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question number {i}?"}]
            for i in range(len(RESPONSES))]


def samples_table(k=3, prompts=2):
    rows = []
    for p in range(prompts):
        for i in range(k):
            rows.append({"prompt_id": f"p{p}", "sample_index": i, "messages": MESSAGES[p],
                         "response": RESPONSES[(p + i) % len(RESPONSES)], "finish_reason": "stop",
                         "token_count": 5, "generator": "base"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", num_labels=3)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture(scope="module")
def gpm_dir(tmp_path_factory):
    return build_tiny_gpm(tmp_path_factory.mktemp("gpm") / "gpm")


# --- sequence-classification reward model ---------------------------------------------------

def test_reward_model_applies_its_own_template(rm_dir):
    rm = RewardModelScorer(str(rm_dir), head=1)
    ids = rm.encode(MESSAGES[:1], RESPONSES[:1])[0]
    text = rm.tok.decode(ids)
    assert text.startswith("[SYSTEM] Be brief.\n[USER] Question number 0?\n[ASSISTANT] Sure.")
    assert "<|im_start|>" not in text  # not the policy's ChatML
    # The score is the model's output on exactly that text.
    with torch.no_grad():
        manual = rm.model(input_ids=torch.tensor([ids])).logits[0, 1].item()
    assert rm.score(MESSAGES[:1], RESPONSES[:1])[0] == pytest.approx(manual, abs=1e-5)


def test_reward_model_batching_invariance(rm_dir):
    one = RewardModelScorer(str(rm_dir), batch_size=1).score(MESSAGES, RESPONSES)
    many = RewardModelScorer(str(rm_dir), batch_size=16).score(MESSAGES, RESPONSES)
    np.testing.assert_allclose(one, many, atol=1e-5)
    assert len(set(np.round(one, 6))) > 1  # scores differ between responses


def test_reward_model_heads_are_objectives_with_weights_and_normalisation(rm_dir):
    comp = {"type": "reward_model", "name": "armo", "weight": [1.0, 0.0, 2.0],
            "normalize": {"mean": [0.0, 0.0, 1.0], "std": [1.0, 1.0, 2.0]},
            "args": {"model": str(rm_dir), "heads": ["helpful", "safe", "funny"]}}
    cfg = ScorerConfig.from_dict({"components": [comp, {"type": "regex", "args": {"pattern": "!"}}]})
    assert cfg.objective_names() == ["helpful", "safe", "funny", "regex"]
    df = samples_table()
    out = CompositeScorer(cfg).score_table(df)
    raw = RewardModelScorer(str(rm_dir)).raw_scores(RewardModelScorer(str(rm_dir)).encode(
        [list(m) for m in df.messages], list(df.response)))
    np.testing.assert_allclose(out.reward_helpful, raw[:, 0], atol=1e-5)
    np.testing.assert_allclose(out.reward_funny, (raw[:, 2] - 1.0) / 2.0, atol=1e-5)
    expected = out.reward_helpful + 2.0 * out.reward_funny + out.reward_regex
    np.testing.assert_allclose(out.reward, expected, atol=1e-9)


def test_reward_model_without_template_fails_at_start_up(tmp_path):
    d = build_tiny_reward_model(tmp_path / "plain", template=None)
    with pytest.raises(DataError, match="no chat template.*input_format"):
        RewardModelScorer(str(d))
    pair = RewardModelScorer(str(d), input_format="pair")  # MOODPO's gpt2 reward models
    assert np.isfinite(pair.score(MESSAGES[:2], RESPONSES[:2])).all()


def test_reward_model_config_errors(rm_dir):
    with pytest.raises(ConfigError, match="input_format"):
        ScorerConfig.from_dict({"components": [{"type": "reward_model", "args": {"model": "x", "input_format": "?"}}]})
    with pytest.raises(ConfigError, match="missing a required argument: 'model'"):
        ScorerConfig.from_dict({"components": [{"type": "reward_model"}]})
    with pytest.raises(DataError, match="hub ids are not downloaded"):
        RewardModelScorer("RLHFlow/ArmoRM-Llama3-8B-v0.1")
    with pytest.raises(DataError, match="head 5"):
        RewardModelScorer(str(rm_dir), head=5)


# --- LLM judge ------------------------------------------------------------------------------

def test_label_probability_follows_comal():
    p, case = label_probability(-0.1, -2.4, True, True)
    assert p == pytest.approx(np.exp(-0.1) / (np.exp(-0.1) + np.exp(-2.4))) and case == "both"
    assert label_probability(-0.1, -9.0, True, False) == (1.0, "only_a")
    assert label_probability(-9.0, -0.1, False, True) == (0.0, "only_b")
    assert label_probability(-9.0, -9.0, False, False) == (0.5, "neither")
    # docs/algorithms.md, Worked numbers: COMAL: candidate scores 0.696216 / 0.502492 / 0.301292.
    lps = {(0, 1): (-0.1, -2.4), (1, 0): (-1.5, -0.25), (0, 2): (-0.7, -0.7), (2, 0): (-0.9, -0.5),
           (1, 2): (-0.2, -1.8), (2, 1): (-2.0, -0.15)}
    P = judge_matrix({k: label_probability(a, b, True, True)[0] for k, (a, b) in lps.items()}, 3)
    np.testing.assert_allclose(mean_win_prob(P), [0.696216, 0.502492, 0.301292], atol=1e-6)


def test_judge_matrix_properties_and_template(judge_dir):
    judge = JudgeScorer(str(judge_dir), top_logprobs=None)  # a random judge rarely ranks a label in its top 4
    ctx, a, b = judge.encode_query("Say hi.", "first answer", "second answer")
    text = judge.tok.decode(ctx)
    assert text.startswith("[USER] You are judging two responses") and text.endswith("[ASSISTANT] Output (")
    assert "# Output (a):\nfirst answer" in text and a != b
    [res] = judge.preferences([(MESSAGES[0], RESPONSES[:4])])
    P = res.P
    np.testing.assert_allclose(P + P.T, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(P), 0.5)
    assert np.ptp(P) > 0  # a random judge still has preferences
    assert sum(judge.fallbacks.values()) == 12  # every ordered pair judged once


def test_judge_batching_invariance_and_top_logprobs(judge_dir):
    groups = [(MESSAGES[i], RESPONSES[i:i + 3]) for i in range(3)]
    one = JudgeScorer(str(judge_dir), batch_size=1, top_logprobs=None).preferences(groups)
    many = JudgeScorer(str(judge_dir), batch_size=16, top_logprobs=None).preferences(groups)
    plain = JudgeScorer(str(judge_dir), batch_size=16, top_logprobs=None, prefix_cache=False).preferences(groups)
    for x, y, z in zip(one, many, plain):
        np.testing.assert_allclose(x.P, y.P, atol=1e-6)
        np.testing.assert_allclose(x.P, z.P, atol=1e-5)  # the shared-prefix KV cache changes nothing
        assert np.ptp(x.P) > 0
    # With top_logprobs=1 at most one label can be in the top set: P entries are 0, ½ or 1.
    strict = JudgeScorer(str(judge_dir), top_logprobs=1)
    strict.preferences(groups[:1])
    assert strict.fallbacks["both"] == 0


def test_judge_template_errors(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("Compare {output_a} with {output_b}.")
    with pytest.raises(ConfigError, match=r"lacks the placeholder\(s\) \{instruction\}"):
        ScorerConfig.from_dict({"components": [{"type": "judge", "args": {"template": str(bad)}}]})
    with pytest.raises(ConfigError, match="does not exist"):
        ScorerConfig.from_dict({"components": [{"type": "judge", "args": {"template": str(tmp_path / "no.txt")}}]})
    with pytest.raises(ConfigError, match="only component"):
        ScorerConfig.from_dict({"components": [{"type": "judge"}, {"type": "length"}]})
    with pytest.raises(ConfigError, match="missing_eos_penalty"):
        ScorerConfig.from_dict({"components": [{"type": "judge"}], "missing_eos_penalty": 1.0})


def test_judge_score_table_feeds_pair_builders(judge_dir):
    judge = {"type": "judge", "args": {"model": str(judge_dir), "top_logprobs": None}}
    cfg = ScorerConfig.from_dict({"components": [judge]})
    df = samples_table(k=3, prompts=2)
    scores = CompositeScorer(cfg).score_table(df)
    assert {"reward", "preference"} <= set(scores.columns) and len(scores) == 6
    for pid, g in scores.groupby("prompt_id"):
        P = np.array([list(r) for r in g.preference.iloc[0]])
        np.testing.assert_allclose(g.sort_values("sample_index").reward, mean_win_prob(P))
    pairs = build_pairs(df, scores, "top1_top2")
    assert len(pairs) == 2 and (pairs.chosen_target >= pairs.rejected_target).all()


# --- general preference model ---------------------------------------------------------------

def test_gpm_table_formula_and_exact_skew_symmetry():
    # k = 1, v_i = (cos θ_i, sin θ_i): s(i, j) = (v_i[1]·v_j[2] − v_i[2]·v_j[1]) / τ = sin(θ_j − θ_i) / τ.
    theta = torch.tensor([0.1, 0.9, 2.0, -1.3], dtype=torch.float64)
    v = torch.stack([theta.cos(), theta.sin()], dim=1)
    T = gpm_table(v, 0.1)
    np.testing.assert_allclose(T.numpy(), torch.sin(theta[None, :] - theta[:, None]).numpy() / 0.1, atol=1e-12)
    v2 = torch.nn.functional.normalize(torch.randn(5, 6, dtype=torch.float64), dim=-1)
    T2 = gpm_table(v2, 0.1, torch.softmax(torch.randn(3, dtype=torch.float64), 0))
    assert torch.equal(T2, -T2.T)  # bit-exact


def test_gpm_scorer_properties(gpm_dir):
    gpm = GPMScorer(str(gpm_dir))
    groups = [(MESSAGES[i], RESPONSES[i:i + 4]) for i in range(2)]
    res = gpm.preferences(groups)
    for r in res:
        assert np.array_equal(r.table, -r.table.T)
        np.testing.assert_allclose(r.P + r.P.T, 1.0, atol=1e-12)
        np.testing.assert_allclose(r.P, 1 / (1 + np.exp(-2 * r.table)), atol=1e-12)
        assert np.abs(r.table).max() > 0
    one = GPMScorer(str(gpm_dir), batch_size=1).preferences(groups)
    for x, y in zip(res, one):
        np.testing.assert_allclose(x.table, y.table, atol=1e-5)
    # The GPM renders with its own (bracket) template.
    ids = gpm._encode(MESSAGES[0], "hello")
    assert gpm.tok.decode(ids).startswith("[SYSTEM] Be brief.")


def test_gpm_score_table_gives_gpo_targets(gpm_dir):
    cfg = ScorerConfig.from_dict({"components": [{"type": "gpm", "args": {"model": str(gpm_dir), "tau": 0.1}}]})
    df = samples_table(k=4, prompts=2)
    scores = CompositeScorer(cfg).score_table(df)
    pairs = build_pairs(df, scores, "gpo")
    g = scores[scores.prompt_id == pairs.prompt_id.iloc[0]].sort_values("sample_index")
    T = np.array([list(r) for r in g.score_table.iloc[0]])
    s = (T - T.T).mean(1)
    assert pairs.chosen_target.iloc[0] == pytest.approx(s.max())
    assert pairs.rejected_target.iloc[0] == pytest.approx(s.min())


# --- PairRM (llm-blender stand-in: the real package downloads PairRM from the hub) -----------

class FakeBlender:
    calls: list = []

    def loadranker(self, name, device=None):
        self.name = name

    def rank(self, prompts, candidates, return_scores=False, batch_size=1):
        FakeBlender.calls.append(prompts)
        return [np.array([len(c) / 10.0 for c in cands]) for cands in candidates]


def test_pairrm_scores_and_preferences(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "llm_blender", types.SimpleNamespace(Blender=FakeBlender))
    cfg = ScorerConfig.from_dict({"components": [{"type": "pairrm", "args": {"prompt_format": "chat"}}]})
    df = samples_table(k=3, prompts=1)
    out = CompositeScorer(cfg, base_model_dir=str(tiny_model_dir)).score_table(df)
    s = np.array([len(r) / 10.0 for r in df.response])
    np.testing.assert_allclose(out.reward, s)
    P = np.array([list(r) for r in out.preference.iloc[0]])
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-(s[:, None] - s[None, :]))))
    assert FakeBlender.calls[-1][0].startswith("<|im_start|>system")  # the chat-templated prompt, as SPPO
    assert CHATML and BRACKETS


def test_pairrm_without_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_blender", None)
    with pytest.raises(DataError, match=r"nashflow\[pairrm\]"):
        CompositeScorer(ScorerConfig.from_dict({"components": [{"type": "pairrm"}]}))


# --- programmatic and evaluation ------------------------------------------------------------

def test_regex_scorer_modes():
    from nashflow.scorers.programmatic import RegexScorer

    texts = ["- a\n- b\n- c", "Answer: 42", "answer: 7"]
    assert list(RegexScorer(r"^- ", flags=["MULTILINE"], count=True).score(None, texts)) == [3, 0, 0]
    assert list(RegexScorer(r"Answer: \d+", mode="fullmatch", miss=-1).score(None, texts)) == [-1, 1, -1]
    assert list(RegexScorer(r"answer", flags=["IGNORECASE"]).score(None, texts)) == [0, 1, 1]
    with pytest.raises(ConfigError, match="invalid pattern"):
        RegexScorer("(")


def test_evaluation_with_a_preference_scorer_uses_its_probabilities():
    def table(responses):
        return pd.DataFrame({"prompt_id": ["a", "b"], "sample_index": 0, "messages": [MESSAGES[0]] * 2,
                             "response": responses, "reward": np.nan, "token_count": 3, "finish_reason": "stop"})

    cur, base = table(["long answer", "yes"]), table(["no", "a much longer one"])
    compare = lambda m, a, b: np.array([0.9 if len(x) > len(y) else 0.2 for x, y in zip(a, b)])
    m = iteration_metrics(1, cur, base, base, compare=compare)
    assert m["win_rate_vs_base"] == pytest.approx(0.55) and m["mean_reward"] is None
