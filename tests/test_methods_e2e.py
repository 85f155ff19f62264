"""Every seed method end to end on the tiny model: one DAG per method in one shared working
directory (the base model is converted once), one iteration each; two for the methods whose
later iterations differ (MNPO's history queue, COMAL's anchor update)."""

import json

import pandas as pd
import pytest
from conftest import snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

MOODPO_SCORER = {"components": [{"type": "length", "name": "verbose", "args": {"scale": 10}},
                                {"type": "python", "name": "short", "args": {"function": "test_methods_e2e:brevity"}}]}


def brevity(messages, response):
    return -len(response) / 50.0


CASES = {
    "ipo": ({"name": "ipo", "params": {"eta": 0.5}}, 1, {}),
    "sppo": ({"name": "sppo", "beta": 0.01}, 1, {}),
    "gpo": ({"name": "gpo", "beta": 0.01}, 1, {}),
    "mnpo": ({"name": "mnpo", "params": {"eta": 0.5, "ratio": 0.5}}, 2, {}),
    "inpo": ({"name": "inpo", "params": {"eta": 0.5, "ratio": 0.5}}, 1, {}),
    "comal": ({"name": "comal", "anchor_every": 1, "val_fraction": 0.3, "params": {"eta": 0.5, "ratio": 0.5}}, 2, {}),
    "nash_md": ({"name": "nash_md"}, 1, {}),
    "moodpo": ({"name": "moodpo"}, 1, {"scorer": MOODPO_SCORER, "generation": {"samples_per_prompt": 2}}),
    "mle": ({"name": "mle"}, 1, {}),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("methods")


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_runs_end_to_end(workdir, tiny_model_dir, method, monkeypatch):
    algo, iterations, extra = CASES[method]
    if method == "mnpo":  # MNPO's first iteration trains on an existing (offline) preference dataset
        data = workdir / "offline.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}.", "responses": ["short", "a longer answer",
                                                                                              "the longest answer of all"],
                                            "scores": [0.1, 0.5, 0.9]}) + "\n" for i in range(8)))
        extra = {**extra, "initial_data": {"path": str(data)}}
    cfg = tiny_config(tiny_model_dir, run=method, iterations=iterations, shards=1, algorithm=algo, **extra)
    config = write_config(workdir / "configs" / method, cfg)
    monkeypatch.setenv("PYTHONPATH", str(__import__("pathlib").Path(__file__).parent))
    snakemake(workdir, "--cores", "2", config=config)
    res = workdir / "results" / method
    last = res / f"iter{iterations}"
    prov = json.loads((last / "model" / "provenance.json").read_text())
    assert prov["config"]["loss"]["name"] == {"comal": "inpo", "moodpo": "dpo"}.get(method, method)
    m = json.loads((last / "eval" / "metrics.json").read_text())
    assert 0 <= m["win_rate_vs_base"] <= 1
    pairs = pd.read_parquet(last / "pairs.parquet")
    assert len(pairs) > 0
    if method == "mnpo":
        assert prov["parents"]["history"] == [f"{method}/iter1"] and prov["parents"]["reference"] == "base_model"
        assert (last / "logps" / "iter1" / "shard0.parquet").exists()
        first = pd.read_parquet(res / "iter1" / "pairs.parquet")
        assert set(first.chosen) == {"the longest answer of all"} and first.generator.str.startswith("offline").all()
    if method == "comal":
        # anchor moved to π_1 after iteration 1; π_t = π_1 is also the history player
        assert prov["parents"]["reference"] == "comal/iter1" and prov["parents"]["history"] == ["comal/iter1"]
        assert "best_step" in prov
    if method in ("sppo", "gpo"):
        assert prov["parents"]["reference"] == "base_model"  # π_0 is the previous iterate in iteration 1
        assert (pairs.chosen_target != pairs.chosen_reward).any()
    if method == "nash_md":
        samples = pd.read_parquet(last / "samples" / "shard0.parquet")
        assert sorted(samples.sampler.unique()) == ["mixture", "policy"]
        logps = pd.read_parquet(last / "logps" / "base" / "shard0.parquet")
        assert all(len(t) == n for t, n in zip(logps.chosen_token_logps, logps.chosen_tokens))
    if method == "moodpo":
        samples = pd.read_parquet(last / "samples" / "shard0.parquet")
        assert all(abs(sum(w) - 1) < 1e-9 for w in samples.weights)
        assert samples.messages.iloc[0][0]["content"].startswith("[Begin System Instruction]")
        assert samples.raw_messages.iloc[0][0]["role"] == "user"
        ev = pd.read_parquet(last / "eval" / "responses.parquet")
        assert sorted(ev.sample_index.unique()) == [0, 1, 2]  # eval grid step 0.5 for two objectives
        assert (res / "report" / "objectives.png").stat().st_size > 5000
