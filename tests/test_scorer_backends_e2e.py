"""Each scorer backend drives a full DAG iteration on the tiny model (one shared working
directory, one run per backend): a multi-head reward model plus a regex check, the LLM judge
(the workflow's own base model, `model: base`), a general preference model with GPO, and PairRM's
code path with SPPO (a stand-in `llm_blender` module; the real one downloads PairRM)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_gpm, build_tiny_reward_model, snakemake, tiny_config, write_config

from nashflow.io import read_provenance

pytestmark = pytest.mark.slow

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
    return tmp_path_factory.mktemp("scorers")


def cases(workdir):
    rm = build_tiny_reward_model(workdir / "models" / "rm", num_labels=2)
    gpm = build_tiny_gpm(workdir / "models" / "gpm")
    return {
        "reward_model": ({"name": "dpo", "beta": 0.1},
                         {"components": [{"type": "reward_model", "weight": [1.0, 0.5],
                                          "args": {"model": str(rm), "heads": ["helpful", "harmless"]}},
                                         {"type": "regex", "name": "no_digits", "args": {"pattern": r"^\D*$"}}]}),
        "judge": ({"name": "comal", "params": {"eta": 0.5, "ratio": 0.5}},
                  {"components": [{"type": "judge", "args": {"top_logprobs": None, "max_output_tokens": 32}}]}),
        "gpm": ({"name": "gpo", "beta": 0.01}, {"components": [{"type": "gpm", "args": {"model": str(gpm)}}]}),
        "pairrm": ({"name": "sppo", "beta": 0.01}, {"components": [{"type": "pairrm"}]}),
    }


@pytest.mark.parametrize("backend", ["reward_model", "judge", "gpm", "pairrm"])
def test_backend_drives_a_dag_iteration(workdir, tiny_model_dir, backend, monkeypatch):
    fake = workdir / "fake" / "llm_blender"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text(FAKE_BLENDER)
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    algo, scorer = cases(workdir)[backend]
    cfg = tiny_config(tiny_model_dir, run=backend, iterations=1, shards=1, algorithm=algo, scorer=scorer)
    snakemake(workdir, "--cores", "2", config=write_config(workdir / "configs" / backend, cfg))
    it = workdir / "results" / backend / "iter1"
    scores = pd.read_parquet(it / "scores" / "shard0.parquet")
    pairs = pd.read_parquet(it / "pairs.parquet")
    metrics = json.loads((it / "eval" / "metrics.json").read_text())
    assert len(pairs) > 0 and 0 <= metrics["win_rate_vs_base"] <= 1
    if backend == "reward_model":
        assert {"reward_helpful", "reward_harmless", "reward_no_digits"} <= set(scores.columns)
        np.testing.assert_allclose(scores.reward, scores.reward_helpful + 0.5 * scores.reward_harmless
                                   + scores.reward_no_digits)
        assert metrics["mean_reward"] is not None
    else:
        P = np.array([list(r) for r in scores.preference.iloc[0]])
        np.testing.assert_allclose(P + P.T, 1.0, atol=1e-9)
    if backend == "judge":
        # The judge read the converted base model, an input of the score and eval_metrics jobs.
        assert read_provenance(it / "scores" / "shard0.parquet")["parents"]["scorer_base_model"] == "results/base_model"
        assert metrics["mean_reward"] is None  # a judge gives win rates only
        log = (workdir / "logs" / backend / "iter1" / "eval" / "metrics.log").read_text()
        assert "judge label cases" in log
    if backend == "gpm":
        assert "score_table" in scores.columns
        assert (pairs.chosen_target > pairs.rejected_target).all()  # GPO score targets
    if backend == "pairrm":
        assert ((pairs.chosen_target > 0) & (pairs.chosen_target < 1)).all()  # SPPO win-rate targets
