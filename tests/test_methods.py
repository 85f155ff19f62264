"""Method presets and iteration roles (who generates, reference, history queue, anchor)."""

import pytest

from nashflow.methods import METHODS, anchor_of, checkpoints_needed, iteration_roles, resolve_algorithm


def test_every_preset_resolves():
    for name in METHODS:
        algo = resolve_algorithm({"name": name})
        assert algo["loss"] and algo["pairs"] and algo["reference"] in ("base", "previous", "anchor")


def test_user_keys_override_the_preset():
    algo = resolve_algorithm({"name": "mnpo", "history": 4, "params": {"eta": 0.005}})
    assert algo["history"] == 4 and algo["params"] == {"eta": 0.005, "ratio": 0.3333}
    assert algo["logp_norm"] == "mean"


def test_mnpo_history_queue_newest_first_without_base():
    algo = resolve_algorithm({"name": "mnpo"})
    assert iteration_roles(1, algo) == {"generator": 0, "reference": 0, "history": []}
    assert iteration_roles(2, algo) == {"generator": 1, "reference": 0, "history": [1]}
    assert iteration_roles(3, algo) == {"generator": 2, "reference": 0, "history": [2, 1]}
    assert iteration_roles(5, algo)["history"] == [4, 3]
    assert checkpoints_needed(3, algo) == [0, 1, 2]


def test_sppo_reference_is_previous_iterate():
    algo = resolve_algorithm({"name": "sppo"})
    assert iteration_roles(3, algo) == {"generator": 2, "reference": 2, "history": []}
    assert checkpoints_needed(3, algo) == [2]


def test_inpo_and_comal_anchor():
    inpo = resolve_algorithm({"name": "inpo"})
    assert [iteration_roles(t, inpo)["reference"] for t in (1, 2, 30)] == [0, 0, 0]
    assert iteration_roles(1, inpo)["history"] == [0]  # π_t at iteration 1 is the SFT model
    assert iteration_roles(4, inpo)["history"] == [3]
    comal = resolve_algorithm({"name": "comal"})
    # μ = π_0 for iterations 1..12, π_12 for 13..24 (COMAL moves the anchor after every 12th)
    assert [anchor_of(t, 12) for t in (1, 12, 13, 24, 25)] == [0, 0, 12, 12, 24]
    assert iteration_roles(13, comal) == {"generator": 12, "reference": 12, "history": [12]}
    assert checkpoints_needed(13, comal) == [12]
    assert checkpoints_needed(14, comal) == [12, 13]
    assert comal["select_best"] is True


@pytest.mark.parametrize("bad,match", [
    ({"name": "nope"}, "unknown algorithm.name"),
    ({"name": "inpo", "history": 0}, "history >= 1"),
    ({"name": "mnpo", "history_weights": [1.0]}, "history_weights has 1 entries"),
])
def test_bad_algorithm_settings(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        resolve_algorithm(bad)


def test_moodpo_grid_instruction_and_conditioning():
    from math import comb

    from nashflow.moodpo import condition, instruction, sample_weights, simplex_grid

    assert len(simplex_grid(2, 0.2)) == 6 and len(simplex_grid(3, 0.2)) == comb(5 + 3 - 1, 3 - 1) == 21
    assert all(abs(sum(w) - 1) < 1e-9 for w in simplex_grid(3, 0.2))
    draws = {sample_weights(2, 0.2, 1, "p", i) for i in range(200)}
    assert draws == set(simplex_grid(2, 0.2))  # uniform over the grid: every point appears
    text = instruction((0.6, 0.4), ["quality", "faithful"], "summary")
    assert "60% on producing" in text and "40% on staying faithful" in text
    text = instruction((0.6, 0.2, 0.2), ["helpful", "safe", "funny"])
    assert "60.0% helpful and 20.0% safe and 20.0% funny" in text
    msgs = condition([{"role": "user", "content": "hi"}], (0.5, 0.5), ["a", "b"])
    assert msgs[0]["role"] == "system" and msgs[1] == {"role": "user", "content": "hi"}
    merged = condition([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], (1.0, 0.0),
                       ["a", "b"])
    assert len(merged) == 2 and merged[0]["content"].endswith("Be brief.")
