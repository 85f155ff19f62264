"""Report plots from synthetic metrics (the end-to-end tests cover them on real runs)."""

import json

import pandas as pd

from nashflow import report as R
from nashflow.evaluate import base_metrics, iteration_metrics


def _responses(rewards, lengths):
    return pd.DataFrame({"prompt_id": [f"p{i}" for i in range(len(rewards))], "sample_index": 0,
                         "reward": rewards, "reward_sentiment": rewards, "token_count": lengths,
                         "finish_reason": ["stop", "length", "stop", "stop"][: len(rewards)]})


def test_metrics_and_every_plot(tmp_path):
    base = _responses([0.1, 0.2, 0.3, 0.4], [10, 12, 14, 16])
    it1 = _responses([0.2, 0.2, 0.5, 0.1], [11, 12, 15, 20])
    m0, m1 = base_metrics(base), iteration_metrics(1, it1, base, base)
    assert m1["win_rate_vs_base"] == (1 + 0.5 + 1 + 0) / 4 and m1["mean_length"] == 14.5
    paths = []
    for i, m in enumerate((m0, m1)):
        (tmp_path / f"m{i}.json").write_text(json.dumps(m))
        paths.append(str(tmp_path / f"m{i}.json"))
    df = R.summary_table(paths)
    assert df.iteration.tolist() == [0, 1] and "win_rate_vs_base_ci_low" in df
    pd.DataFrame({"step": [1, 2], "loss": [0.7, 0.5], "rewards_margin": [0.0, 0.3],
                  "rewards_accuracy": [0.5, 1.0]}).to_csv(tmp_path / "t.csv", index=False)
    base.to_parquet(tmp_path / "r0.parquet")
    it1.to_parquet(tmp_path / "r1.parquet")
    R.plot_reward(df, str(tmp_path / "reward.png"), "t")
    R.plot_win_rates(df, str(tmp_path / "win.png"), "t")
    R.plot_length(df, str(tmp_path / "length.png"), "t")
    R.plot_training([str(tmp_path / "t.csv")], str(tmp_path / "training.png"), "t")
    R.plot_objectives([str(tmp_path / "r0.parquet"), str(tmp_path / "r1.parquet")], ["sentiment"],
                      str(tmp_path / "objectives.png"), "t")
    for name in ("reward", "win", "length", "training", "objectives"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
