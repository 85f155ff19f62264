"""Bad input, part 2 (part 1: test_data.py, test_dag.py, test_config.py, test_scorers_pairs.py,
test_scorer_backends.py): each case gives one message naming the file, row or key, exits
non-zero, and leaves no partial output; nothing finished earlier is removed."""

import errno
import json
import shutil

import pandas as pd
import pytest
from conftest import REPO, snakemake, tiny_config, write_config

from nashflow.config import validate_config
from nashflow.errors import ConfigError, DataError
from nashflow.generation.generate import SamplingConfig, generate_samples
from nashflow.io import read_table, write_table
from nashflow.models import BaseModelConfig, prepare_base_model

SCHEMA = REPO / "config" / "schema.yaml"


def test_prompt_longer_than_the_context_names_the_prompt(tiny_model):
    model, tok = tiny_model  # max_position_embeddings = 512
    prompts = pd.DataFrame({"prompt_id": ["short", "long"],
                            "messages": [[{"role": "user", "content": "hi"}],
                                         [{"role": "user", "content": "word " * 600}]]})
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=8, max_prompt_length=4096)
    with pytest.raises(DataError, match=r"prompt long has \d+ tokens.*context of 512.*max_prompt_length"):
        generate_samples(model, tok, prompts, cfg, seed=0, generator="x", progress=False)
    # the documented remedy works: prompts are cut from the left to max_prompt_length
    cfg = SamplingConfig(samples_per_prompt=2, max_new_tokens=8, max_prompt_length=256)
    assert len(generate_samples(model, tok, prompts, cfg, seed=0, generator="x", progress=False)) == 4


def test_base_model_folder_that_is_not_a_model(tmp_path):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "README.md").write_text("weights elsewhere")
    with pytest.raises(DataError, match="not_a_model is not a model folder: config.json is missing"):
        prepare_base_model(BaseModelConfig(path=str(folder)), tmp_path / "out")
    (folder / "config.json").write_text('{"model_type": "llama"}')  # a config but no weights
    with pytest.raises((DataError, OSError), match="not_a_model"):
        prepare_base_model(BaseModelConfig(path=str(folder)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_policy_tokenizer_without_chat_template(tmp_path, tiny_model_dir):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    for f in plain.glob("chat_template*"):
        f.unlink()
    cfg_path = plain / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="plain has no chat template"):
        prepare_base_model(BaseModelConfig(path=str(plain)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_history_longer_than_the_iterations():
    cfg = {"iterations": 2, "algorithm": {"name": "mnpo", "history": 3}}
    with pytest.raises(ConfigError, match="'algorithm.history': 3 history players but only 2 iteration"):
        validate_config(cfg, SCHEMA)
    assert validate_config({"iterations": 3, "algorithm": {"name": "mnpo", "history": 3}}, SCHEMA)


@pytest.mark.parametrize("cfg,match", [
    ({"algorithm": {"name": "dpo", "beta": -1}}, "algorithm.beta"),
    ({"generation": {"samples_per_prompt": 1}}, "generation.samples_per_prompt"),
    ({"iterations": 0}, "'iterations'"),
    ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
    ({"scorer": {"components": [{"type": "length", "weight": 1, "args": {"scale": 10, "bogus": 1}}]}}, "bogus"),
])
def test_config_values_out_of_range_or_unknown(cfg, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg, SCHEMA)


def test_disk_full_while_writing_a_table_keeps_the_old_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    out = tmp_path / "scores.parquet"
    write_table(pd.DataFrame({"a": [1]}), out)
    before = out.read_bytes()

    def full(table, where, **kw):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half a table")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(DataError, match=r"could not write table .*scores.parquet: No space left on device; check free"):
        write_table(pd.DataFrame({"a": [2]}), out)
    assert out.read_bytes() == before  # the finished file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # no temporary left behind
    assert read_table(out).a.tolist() == [1]


POISON = '''
import math
from pathlib import Path


def reward(messages, response):
    if Path("poison").exists():
        return math.nan
    return float(len(response))
'''


@pytest.mark.slow
def test_a_failing_job_mid_run_keeps_what_finished(tmp_path, tiny_model_dir, monkeypatch):
    """A reward that turns NaN in iteration 2: exit non-zero, the row named, no score file of that
    shard, and iteration 1's outputs untouched; the fixed run then finishes from there."""
    (tmp_path / "userreward.py").write_text(POISON)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cfg = tiny_config(tiny_model_dir, shards=1,
                      scorer={"components": [{"type": "python", "args": {"function": "userreward:reward"}}]})
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "--cores", "2", "results/tiny/iter1/model", "results/tiny/iter1/eval/metrics.json")
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*") if p.is_file()}
    (tmp_path / "poison").write_text("")
    res = snakemake(tmp_path, "--cores", "2", check=False)
    assert res.returncode != 0, res.stdout[-2000:]
    log = (tmp_path / "logs" / "tiny" / "iter2" / "score" / "shard0.log").read_text()
    assert "non-finite reward" in log or "must be finite" in log
    assert "prompt_id=" in log and "Traceback" not in log
    assert not (tmp_path / "results" / "tiny" / "iter2" / "scores").exists() or \
        not list((tmp_path / "results" / "tiny" / "iter2" / "scores").glob("*.parquet"))
    assert all(p.stat().st_mtime_ns == m for p, m in done.items()), "finished outputs were touched"
    (tmp_path / "poison").unlink()
    res = snakemake(tmp_path, "--cores", "2")
    assert all(p.stat().st_mtime_ns == m for p, m in done.items()), "finished outputs were recomputed"
    assert (tmp_path / "results" / "tiny" / "report" / "summary.csv").exists()
