"""Prompt loading, validation and the per-iteration split."""

import json

import pandas as pd
import pytest
from conftest import PROMPTS

from nashflow.data import PromptsConfig, iteration_prompts, load_prompts, split_prompts
from nashflow.errors import DataError


def test_shipped_prompts_are_many_and_unique():
    df = load_prompts(PromptsConfig(path=str(PROMPTS), id_column="id"))
    assert len(df) >= 300
    assert df.prompt_id.is_unique and df.prompt.str.lower().is_unique


def test_split_is_disjoint_and_stable():
    cfg = PromptsConfig(path=str(PROMPTS), id_column="id", eval_size=40, prompts_per_iteration=50)
    eval_df, pool = split_prompts(load_prompts(cfg), cfg)
    assert len(eval_df) == 40
    assert not set(eval_df.prompt_id) & set(pool.prompt_id)
    parts = [set(iteration_prompts(pool, t, 0, 1, 50).prompt_id) for t in (1, 2, 3)]
    assert all(len(p) == 50 for p in parts)
    assert not (parts[0] & parts[1]) and not (parts[1] & parts[2])
    # shards of one iteration partition it
    shards = [set(iteration_prompts(pool, 1, s, 3, 50).prompt_id) for s in range(3)]
    assert set().union(*shards) == parts[0] and sum(map(len, shards)) == 50
    # same seed → same split
    eval2, pool2 = split_prompts(load_prompts(cfg), cfg)
    assert eval2.prompt_id.tolist() == eval_df.prompt_id.tolist()
    # iterations beyond the available parts wrap around
    n_parts = int(pool.part.max()) + 1
    assert set(iteration_prompts(pool, n_parts + 1, 0, 1, 50).prompt_id) == parts[0]


def test_messages_carry_system_prompt():
    cfg = PromptsConfig(path=str(PROMPTS), id_column="id", eval_size=5, system_prompt="Be kind.")
    eval_df, _ = split_prompts(load_prompts(cfg), cfg)
    msgs = list(eval_df.messages[0])
    assert msgs[0] == {"role": "system", "content": "Be kind."} and msgs[1]["role"] == "user"


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(PromptsConfig(path=str(tmp_path / "nope.jsonl")))


def test_missing_column(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"text": "hello there"}) + "\n")
    with pytest.raises(DataError, match="no column 'prompt'.*text"):
        load_prompts(PromptsConfig(path=str(p)))


def test_empty_file_and_empty_table(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_prompts(PromptsConfig(path=str(p)))
    c = tmp_path / "p.csv"
    c.write_text("prompt\n")
    with pytest.raises(DataError, match="no rows"):
        load_prompts(PromptsConfig(path=str(c)))


def test_duplicate_ids_and_blank_rows(tmp_path):
    p = tmp_path / "p.csv"
    pd.DataFrame({"id": ["a", "a"], "prompt": ["x y", "z w"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="row 2: duplicate prompt id 'a'"):
        load_prompts(PromptsConfig(path=str(p), id_column="id"))
    pd.DataFrame({"id": ["a", "b"], "prompt": ["x y", " "]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="row 2"):
        load_prompts(PromptsConfig(path=str(p)))


def test_non_utf8(tmp_path):
    p = tmp_path / "p.csv"
    p.write_bytes(b"prompt\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_prompts(PromptsConfig(path=str(p)))


def test_offline_initial_data_both_layouts(tmp_path):
    from nashflow.offline import InitialDataConfig, initial_shard, load_initial
    from nashflow.pairs import build_pairs

    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"prompt": "q1", "responses": ["x", "y", "z"], "scores": [0.1, 0.9, -0.3]}) + "\n"
                 + json.dumps({"prompt": "q2", "responses": ["u", "v"], "scores": [1.0, 2.0]}) + "\n")
    samples, scores, _ = load_initial(InitialDataConfig(path=str(p)))
    pairs = build_pairs(samples.drop(columns="position"), scores, "max_min")
    assert sorted(zip(pairs.chosen, pairs.rejected)) == [("v", "u"), ("y", "z")]
    s0, sc0 = initial_shard(samples, scores, 0, 2)
    s1, _ = initial_shard(samples, scores, 1, 2)
    assert set(s0.prompt_id).isdisjoint(s1.prompt_id) and len(s0) + len(s1) == 5 and len(sc0) == len(s0)
    c = tmp_path / "b.csv"
    pd.DataFrame({"prompt": ["q"], "chosen": ["good"], "rejected": ["bad"]}).to_csv(c, index=False)
    samples, scores, _ = load_initial(InitialDataConfig(path=str(c)))
    assert samples.response.tolist() == ["good", "bad"] and scores.reward.tolist() == [1.0, 0.0]
    bad = tmp_path / "c.csv"
    pd.DataFrame({"prompt": ["q"], "text": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="needs columns responses\\+scores or chosen\\+rejected"):
        load_initial(InitialDataConfig(path=str(bad)))
