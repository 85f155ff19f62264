"""Every seed method end to end on the tiny model: one DAG per method in one shared working
directory (the base model is converted once), one iteration each; two for the methods whose
later iterations differ (MNPO's history queue, COMAL's anchor update).

The same runs drive every model-backed scorer through a full DAG, each with the method it serves
in the seeds: Iter-IPO with a multi-head reward model plus a regex check, SPPO with PairRM's code
path (a stand-in `llm_blender` module: the real one downloads PairRM), GPO with a general
preference model, COMAL with the LLM judge (the workflow's own base model, `model: base`)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_gpm, build_tiny_reward_model, snakemake, tiny_config, write_config

from nashflow.io import read_provenance

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


FAKE_BLENDER = '''
import numpy as np

class Blender:
    def loadranker(self, name, device=None):
        pass

    def rank(self, prompts, candidates, return_scores=False, batch_size=1):
        return [np.array([len(set(c.split())) / 5.0 for c in cands]) for cands in candidates]
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    (d / "fake" / "llm_blender").mkdir(parents=True)
    (d / "fake" / "llm_blender" / "__init__.py").write_text(FAKE_BLENDER)
    return d


def scorer_for(method: str, workdir) -> dict:
    """The model-backed scorer a method's run uses (the others keep the tiny config's length reward)."""
    if method == "ipo":
        rm = build_tiny_reward_model(workdir / "models" / "rm", num_labels=2)
        return {"components": [{"type": "reward_model", "weight": [1.0, 0.5],
                                "args": {"model": str(rm), "heads": ["helpful", "harmless"]}},
                               {"type": "regex", "name": "no_digits", "args": {"pattern": r"^\D*$"}}]}
    if method == "gpo":
        return {"components": [{"type": "gpm", "args": {"model": str(build_tiny_gpm(workdir / "models" / "gpm"))}}]}
    if method == "sppo":
        return {"components": [{"type": "pairrm"}]}
    if method == "comal":
        return {"components": [{"type": "judge", "args": {"top_logprobs": None, "max_output_tokens": 32}}]}
    return {}


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_runs_end_to_end(workdir, tiny_model_dir, method, monkeypatch):
    algo, iterations, extra = CASES[method]
    if method == "mnpo":  # MNPO's first iteration trains on an existing (offline) preference dataset
        data = workdir / "offline.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}.", "responses": ["short", "a longer answer",
                                                                                              "the longest answer of all"],
                                            "scores": [0.1, 0.5, 0.9]}) + "\n" for i in range(8)))
        extra = {**extra, "initial_data": {"path": str(data)}}
    scorer = scorer_for(method, workdir)
    if scorer:
        extra = {**extra, "scorer": scorer}
    cfg = tiny_config(tiny_model_dir, run=method, iterations=iterations, shards=1, algorithm=algo, **extra)
    config = write_config(workdir / "configs" / method, cfg)
    here = __import__("pathlib").Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", f"{here}:{workdir / 'fake'}")
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
    scores = pd.read_parquet(last / "scores" / "shard0.parquet")
    if method == "ipo":
        assert {"reward_helpful", "reward_harmless", "reward_no_digits"} <= set(scores.columns)
        np.testing.assert_allclose(scores.reward, scores.reward_helpful + 0.5 * scores.reward_harmless
                                   + scores.reward_no_digits)
    if method in ("sppo", "gpo", "comal"):
        P = np.array([list(r) for r in scores.preference.iloc[0]])
        np.testing.assert_allclose(P + P.T, 1.0, atol=1e-9)
        assert m["mean_reward"] is None  # preference scorers give win rates only
    if method == "gpo":
        assert "score_table" in scores.columns and (pairs.chosen_target > pairs.rejected_target).all()
    if method == "sppo":
        assert ((pairs.chosen_target > 0) & (pairs.chosen_target < 1)).all()  # win-rate targets
    if method == "comal":
        # The judge read the converted base model, an input of the score and eval_metrics jobs.
        assert read_provenance(last / "scores" / "shard0.parquet")["parents"]["scorer_base_model"] == \
            "results/base_model"
        log = (workdir / "logs" / method / "iter2" / "eval" / "metrics.log").read_text()
        assert "judge label cases" in log
