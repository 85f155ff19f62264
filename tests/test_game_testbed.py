"""The matrix-game testbed: the game's equilibrium and metrics, the matrix_game scorer and its action
rule, the tiny policy, bad input, and two iterations of config/testbeds/cyclic_game.yaml for two
methods through the whole DAG (the exact action distribution against sampled responses)."""


import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake, write_config

from nashflow.config import validate_config
from nashflow.errors import ConfigError
from nashflow.game import (
    check_preference_matrix,
    exploitability,
    nash_equilibrium,
    regularised_equilibrium,
    regularised_exploitability,
    tv,
    with_no_action,
)

SCHEMA = REPO / "config" / "schema.yaml"
TESTBED = REPO / "config" / "testbeds" / "cyclic_game.yaml"
COMAL_GAME = [[0.5, 0.1, 0.8], [0.9, 0.5, 0.1], [0.2, 0.9, 0.5]]
# tiny jobs: one thread each, so that two run at once on two cores
ONE_THREAD = ["--set-threads"] + [f"{r}=1" for r in ("prepare_model", "generate", "logps", "train", "eval_generate")]


def test_nash_equilibrium_and_exploitability_of_comals_game():
    P = check_preference_matrix(COMAL_GAME)
    ne = nash_equilibrium(P)
    np.testing.assert_allclose(ne, [4 / 11, 3 / 11, 4 / 11], atol=1e-7)
    assert exploitability(ne, P) == pytest.approx(0.0, abs=1e-9)
    assert exploitability(np.ones(3) / 3, P) == pytest.approx(1 / 30)  # (0.9 + 0.5 + 0.1)/3 − ½
    assert exploitability([1, 0, 0], P) == pytest.approx(0.4)  # action 1 beats action 0 w.p. 0.9
    assert tv([0.8, 0.1, 0.1], ne) == pytest.approx(0.8 - 4 / 11)
    # "no action" loses to every action: the extended game's equilibrium is the same
    np.testing.assert_allclose(nash_equilibrium(with_no_action(P)), np.append(ne, 0.0), atol=1e-7)


def test_regularised_gap_is_zero_at_the_regularised_equilibrium_only():
    P, mu, tau = np.array(COMAL_GAME), np.array([0.8, 0.1, 0.1]), 0.2
    reg = regularised_equilibrium(P, mu, tau)
    assert regularised_exploitability(reg, P, mu, tau) == pytest.approx(0.0, abs=1e-6)
    ne = nash_equilibrium(P)
    assert regularised_exploitability(ne, P, mu, tau) > 0.01  # the bias of a fixed reference
    assert tv(reg, ne) > 0.1
    for pi in ([0.5, 0.3, 0.2], [0.1, 0.1, 0.8]):
        assert regularised_exploitability(pi, P, mu, tau) > 0


@pytest.mark.parametrize("matrix, match", [
    ([[0.5, 0.9], [0.2, 0.5]], r"P \+ Pᵀ must be 1, got P\[0\]\[1\] \+ P\[1\]\[0\] = 0.9 \+ 0.2"),
    ([[0.4, 0.5], [0.5, 0.6]], r"the diagonal must be ½.*P\[0\]\[0\] = 0.4"),
    ([[0.5, 1.2], [-0.2, 0.5]], r"entries are probabilities.*must lie in \[0, 1\]"),
    ([[0.5, 0.5, 0.5]], r"must be a square matrix"),
])
def test_bad_matrix_names_the_key(matrix, match):
    cfg = yaml.safe_load(TESTBED.read_text())
    cfg["prompts"]["path"] = str(REPO / cfg["prompts"]["path"])
    cfg["scorer"]["components"][0]["args"]["matrix"] = matrix
    with pytest.raises(ConfigError, match=r"config key 'scorer.components\[0\].args.matrix': " + match):
        validate_config(cfg, SCHEMA)


def test_action_rule_that_maps_no_token_names_the_key():
    cfg = yaml.safe_load(TESTBED.read_text())
    cfg["prompts"]["path"] = str(REPO / cfg["prompts"]["path"])
    cfg["scorer"]["components"][0]["args"]["tokens"] = "^[ab]$"  # two tokens for three actions
    with pytest.raises(ConfigError, match=r"config key 'scorer.components\[0\].args.tokens': '\^\[ab\]\$' maps no "
                                          r"token of the tiny policy's vocabulary .* to action\(s\) 2"):
        validate_config(cfg, SCHEMA)
    cfg["scorer"]["components"][0]["args"]["tokens"] = "^[abc]$"
    cfg["base_model"]["tiny"]["first_token"]["tokens"] = "^zz$"
    with pytest.raises(ConfigError, match=r"base_model.tiny.first_token.tokens: '\^zz\$' selects no token"):
        validate_config(cfg, SCHEMA)


def test_bad_matrix_stops_the_dag_with_one_line(tmp_path):
    cfg = yaml.safe_load(TESTBED.read_text())
    cfg["prompts"]["path"] = str(REPO / cfg["prompts"]["path"])
    cfg["scorer"]["components"][0]["args"]["matrix"] = [[0.5, 0.9, 0.8], [0.1, 0.5, 0.3], [0.2, 0.9, 0.5]]
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == ["nashflow: error: config key 'scorer.components[0].args.matrix': P + Pᵀ must be 1, got "
                     "P[1][2] + P[2][1] = 0.3 + 0.9"], proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from nashflow.tiny_policy import build_tiny_policy

    out = tmp_path_factory.mktemp("game") / "base"
    build_tiny_policy({"seed": 0, "first_token": {"tokens": "^[abc]$", "probs": [0.8, 0.1, 0.1]}}, out)
    return out


def _scorer(model_dir, **args):
    from nashflow.scorers.matrix_game import MatrixGameScorer

    return MatrixGameScorer(matrix=COMAL_GAME, tokens="^[abc]$", base_model_dir=str(model_dir), **args)


def test_matrix_game_scorer_reads_the_first_token(tiny_policy):
    sc = _scorer(tiny_policy)
    assert list(sc.action_of(["a", "b", "c", "cab", "", "z", "é"])) == [0, 1, 2, 2, 3, 3, 3]
    msgs = [{"role": "user", "content": "Round 1: your move?"}]
    (res,) = sc.preferences([(msgs, ["a", "b", "z", "a"])])
    np.testing.assert_allclose(res.P, [[0.5, 0.1, 1.0, 0.5], [0.9, 0.5, 1.0, 0.9], [0.0, 0.0, 0.5, 0.0],
                                       [0.5, 0.1, 1.0, 0.5]])
    # sampled labels: binary between different actions, ½ for equal ones, P + Pᵀ = 1, reproducible
    sampled = _scorer(tiny_policy, outcome="sample", seed=3)
    (one,), (two,) = sampled.preferences([(msgs, ["a", "b", "c", "a"])]), sampled.preferences([(msgs, ["a", "b", "c", "a"])])
    np.testing.assert_array_equal(one.P, two.P)
    np.testing.assert_allclose(one.P + one.P.T, 1.0)
    assert one.P[0, 3] == 0.5 and set(np.unique(one.P[[0, 0, 1], [1, 2, 2]])) <= {0.0, 1.0}
    # over many prompts the labels' frequency is P(b ≻ a) = 0.9; evaluation uses the probability
    wins = np.mean([sampled.preferences([([{"role": "user", "content": str(i)}], ["b", "a"])])[0].P[0, 1]
                    for i in range(400)])
    assert wins == pytest.approx(0.9, abs=0.05)
    np.testing.assert_allclose(sampled.compare([msgs] * 2, ["b", "c"], ["a", "a"]), [0.9, 0.2])


def test_tiny_policy_starts_where_the_config_says(tiny_policy):
    from nashflow.game_eval import action_distribution
    from nashflow.models import load_model, load_tokenizer

    prompts = pd.read_json(REPO / "resources" / "prompts" / "default.jsonl", lines=True).head(40)
    prompts = pd.DataFrame({"prompt_id": prompts["id"], "messages": [[{"role": "user", "content": p}]
                                                                    for p in prompts["prompt"]]})
    sc = _scorer(tiny_policy)
    p = action_distribution(load_model(tiny_policy), load_tokenizer(tiny_policy), prompts, sc.actions, 3,
                            max_prompt_length=128)
    np.testing.assert_allclose(p, [0.8, 0.1, 0.1, 0.0], atol=0.02)  # prompts it never saw in the fit
    assert tv(p, np.append(nash_equilibrium(np.array(COMAL_GAME)), 0)) >= 0.2


def test_testbed_two_iterations_two_methods(tmp_path):
    """The README's testbed for 2 iterations with INPO and SPPO: every stage runs, game.csv is
    written per run and gathered, and the exact action distribution of π_0 and π_1 on the prompts
    that iterations 1 and 2 sampled from them agrees with those samples within 4 standard errors."""
    from nashflow.game_eval import action_distribution
    from nashflow.models import load_model, load_tokenizer

    cfg = yaml.safe_load(TESTBED.read_text())
    cfg["prompts"]["path"] = str(REPO / cfg["prompts"]["path"])
    cfg["iterations"] = 2
    cfg["runs"] = {k: cfg["runs"][k] for k in ("inpo", "sppo")}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "--cores", "2", *ONE_THREAD)
    res = tmp_path / "results" / "cyclic_game"
    sc = _scorer(tmp_path / "results" / "base_model")
    ne = np.append(nash_equilibrium(np.array(COMAL_GAME)), 0)
    gathered = pd.read_csv(res / "compare" / "game.csv")
    assert list(gathered.run.unique()) == ["inpo", "sppo"] and (res / "compare" / "game.png").stat().st_size > 0
    for run in ("inpo", "sppo"):
        game = pd.read_csv(res / run / "report" / "game.csv")
        assert {"iteration", "tv_to_nash", "exploitability", "p_0", "p_1", "p_2"} <= set(game.columns)
        assert list(game.iteration) == [0, 1, 2] and (res / run / "report" / "game.png").exists()
        pd.testing.assert_frame_equal(game, gathered[gathered.run == run].drop(columns="run").reset_index(drop=True))
        p = game[["p_0", "p_1", "p_2", "p_none"]].to_numpy()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)  # written with 6 significant digits
        np.testing.assert_allclose(game.tv_to_nash, [tv(x, ne) for x in p], atol=1e-5)
        assert game.tv_to_nash.iloc[0] >= 0.2  # the base starts far from the equilibrium
        assert game.exploitability_regularised.notna().all() == (run == "inpo")  # τ = ρ·η around the anchor
        assert (np.diff(game.p_1) > 0).all()  # towards action 1, which beats the base
        for t in (1, 2):  # iteration t sampled from π_{t-1}
            owner = "inpo" if t == 1 else run  # iteration 1's samples are shared
            samples = pd.read_parquet(res / owner / f"iter{t}" / "samples" / "shard0.parquet")
            model_dir = game.checkpoint.iloc[t - 1]
            model_dir = tmp_path / "results" / ("base_model" if t == 1 else f"{model_dir}/model")
            assert (samples.generator == game.checkpoint.iloc[t - 1]).all() and samples.token_count.max() <= 1
            prompts = samples.drop_duplicates("prompt_id")[["prompt_id", "messages"]]
            exact = action_distribution(load_model(model_dir), load_tokenizer(model_dir), prompts, sc.actions, 3,
                                        max_prompt_length=cfg["generation"]["max_prompt_length"])
            freq = np.bincount(sc.action_of(list(samples.response)), minlength=4) / len(samples)
            se = np.sqrt(exact * (1 - exact) / len(samples))
            assert (np.abs(freq - exact) <= 4 * se + 1e-3).all(), (run, t, freq, exact)
            np.testing.assert_allclose(exact, p[t - 1], atol=0.01)  # held-out prompts: about the same policy
    assert (res / "inpo" / "iter2" / "logps" / "base" / "shard0.parquet").exists()  # anchor and π_1: two roles
    assert (res / "inpo" / "iter2" / "logps" / "iter1" / "shard0.parquet").exists()
    assert not (res / "inpo" / "iter1" / "eval").exists()  # evaluation.responses: false
