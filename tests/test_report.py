"""Report plots from synthetic metrics (the end-to-end tests cover them on real runs)."""

import json

import pandas as pd
import pytest

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


def _table(prompts, rewards, responses=None):
    return pd.DataFrame({"prompt_id": prompts, "sample_index": 0, "reward": rewards,
                         "response": responses or [f"r{r}" for r in rewards],
                         "messages": [[{"role": "user", "content": f"question {p}"}] for p in prompts],
                         "token_count": 5, "finish_reason": "stop", "generator": "x/iter1"})


def test_round_robin_is_consistent_with_pairwise_win_rates():
    from nashflow.evaluate import round_robin, win_matrix

    p = ["p1", "p2", "p3", "p4"]
    players = {"base": _table(p, [0.1, 0.5, 0.3, 0.3]), "a": _table(p, [0.2, 0.5, 0.1, 0.9]),
               "b": _table(p, [0.9, 0.9, 0.9, 0.0])}
    t = round_robin(players)
    assert list(zip(t.player_a, t.player_b)) == [("base", "a"), ("base", "b"), ("a", "b")]
    assert t.win_rate.tolist() == [(0 + 0.5 + 1 + 0) / 4, (0 + 0 + 0 + 1) / 4, (0 + 0 + 0 + 1) / 4]
    m = win_matrix(t, list(players))
    assert m.loc["a", "base"] == 1 - m.loc["base", "a"] and m.loc["b", "b"] == 0.5
    # a preference scorer: P(a ≻ b) from the compare function, here by response length
    judge = lambda msgs, ra, rb: [0.9 if len(x) > len(y) else 0.1 if len(x) < len(y) else 0.5 for x, y in zip(ra, rb)]
    players = {"short": _table(p[:2], [0, 0], ["a", "bb"]), "long": _table(p[:2], [0, 0], ["aaaa", "b"])}
    t = round_robin(players, compare=judge)
    assert t.win_rate.iloc[0] == pytest.approx((0.1 + 0.9) / 2)


def test_exports_in_alpaca_eval_and_mt_bench_formats(tmp_path):
    from nashflow.export import write_alpaca_eval, write_mt_bench

    df = _table(["p2", "p1"], [0.1, 0.2], ["second", "first"])
    write_alpaca_eval(df, "run/iter1", tmp_path / "a.json")
    rows = json.loads((tmp_path / "a.json").read_text())
    assert rows == [{"instruction": "question p1", "output": "first", "generator": "run/iter1",
                     "dataset": "nashflow-heldout"},
                    {"instruction": "question p2", "output": "second", "generator": "run/iter1",
                     "dataset": "nashflow-heldout"}]
    write_mt_bench(df, "run/iter1", tmp_path / "m.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["question_id"] for x in lines] == ["p1", "p2"]
    assert lines[0]["choices"] == [{"index": 0, "turns": ["first"]}] and lines[0]["model_id"] == "run/iter1"
    write_mt_bench(df, "run/iter1", tmp_path / "m2.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == (tmp_path / "m2.jsonl").read_bytes()


def test_examples_table_escapes_and_lines_up(tmp_path):
    a = _table(["p1", "p2"], [0.1, 0.2], ["<b>x</b>", "y"])
    b = _table(["p2", "p1"], [0.3, 0.4], ["later y", "later x"])
    a.to_parquet(tmp_path / "a.parquet")
    b.to_parquet(tmp_path / "b.parquet")
    R.examples_html({"base": str(tmp_path / "a.parquet"), "iteration 1": str(tmp_path / "b.parquet")},
                    str(tmp_path / "e.html"))
    html = (tmp_path / "e.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x" not in html
    row1 = html.split("<tr>")[2]
    assert "question p1" in row1 and "later x" in row1 and "reward 0.400" in row1
