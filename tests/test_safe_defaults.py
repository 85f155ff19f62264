"""Safe defaults: no remote code unless named in the config, safetensors only, no hub pushes,
offline by default, user code only from the config."""

import inspect
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO

from nashflow.config import validate_config
from nashflow.errors import DataError
from nashflow.io import read_provenance, read_table, write_table
from nashflow.models import load_model
from nashflow.scorers import SCORERS


def test_remote_code_is_off_unless_the_config_names_a_model():
    cfg = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), REPO / "config" / "schema.yaml")
    assert cfg["base_model"]["trust_remote_code"] is False
    for name, cls in SCORERS.items():
        params = inspect.signature(cls.__init__).parameters
        if "trust_remote_code" in params:
            assert params["trust_remote_code"].default is False, name
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_pickled_weights_are_never_loaded(tmp_path, tiny_model):
    model, tok = tiny_model
    folder = tmp_path / "pickled"
    import torch

    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle: could run code when loaded
    with pytest.raises(DataError, match="no \\*.safetensors weights; nashflow never loads pickled"):
        load_model(folder)


def test_no_hub_pushes_or_uploads_in_the_code():
    sources = list((REPO / "nashflow").rglob("*.py")) + list((REPO / "workflow").rglob("*.py"))
    for needle in ("push_to_hub", "upload_folder", "upload_file", "create_repo"):
        hits = [str(p) for p in sources if needle in p.read_text()]
        assert not hits, f"{needle} in {hits}"


def test_jobs_run_offline_unless_the_user_says_otherwise():
    code = ("import os; from nashflow.logutil import job_logging\n"
            "with job_logging(None): print(os.environ['HF_HUB_OFFLINE'])")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "0"


def _score_stage(cfg: dict, samples_path, out) -> None:
    """The score stage as a workflow job runs it, with the settings the plan derives from the validated
    ``cfg`` (the one call to adapt if the stage's signature changes)."""
    from nashflow import stages
    from nashflow.plan import job_settings

    stages.score(job_settings("score", cfg), samples_path=str(samples_path), out=str(out))


def _scorer_config(*components: dict) -> dict:
    return validate_config({"scorer": {"components": list(components)}}, REPO / "config" / "schema.yaml")


def test_user_code_comes_only_from_the_config(tmp_path, monkeypatch):
    """The score stage builds its scorer from the config's `scorer` section alone; a samples table
    that names a Python scorer function (as data or in its provenance) is never imported."""
    module, marker = "nashflow_test_untrusted_scorer", tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n\n\n"
        "def boom(messages, response):\n    return 1.0e9\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, were anything to import it
    named = {"components": [{"type": "python", "args": {"function": f"{module}:boom"}, "weight": 1.0}]}
    responses = ["one", "two words", "now three words", ""]
    samples = pd.DataFrame({
        "prompt_id": ["a", "a", "b", "b"], "messages": [[{"role": "user", "content": "Hi"}]] * 4,
        "sample_index": [0, 1, 0, 1], "response": responses, "token_count": [1, 2, 3, 0],
        "finish_reason": "stop", "seed": 0, "generator": "base",
        "scorer": json.dumps(named), "function": f"{module}:boom"})  # named in the rows and the provenance
    write_table(samples, tmp_path / "samples.parquet", {"scorer": named, "config": {"scorer": named}})
    length = _scorer_config({"type": "length", "args": {"scale": 10}})
    _score_stage(length, tmp_path / "samples.parquet", tmp_path / "scores.parquet")
    assert not marker.exists() and module not in sys.modules
    scores = read_table(tmp_path / "scores.parquet")
    assert scores.reward.tolist() == pytest.approx([len(r.split()) / 10 for r in responses])  # the length scorer's
    recorded = json.dumps(read_provenance(tmp_path / "scores.parquet")["config"])
    assert '"length"' in recorded and module not in recorded and '"python"' not in recorded
    # The control: named in the config, the same function is imported and scores.
    try:
        _score_stage(_scorer_config(*named["components"]), tmp_path / "samples.parquet", tmp_path / "control.parquet")
        assert marker.exists() and module in sys.modules
    finally:
        sys.modules.pop(module, None)
    assert read_table(tmp_path / "control.parquet").reward.tolist() == [1.0e9] * len(responses)
