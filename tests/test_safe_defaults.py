"""Safe defaults: no remote code unless named in the config, safetensors only, no hub pushes,
offline by default, user code only from the config."""

import inspect
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from nashflow.config import validate_config
from nashflow.errors import DataError
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


def test_user_code_comes_only_from_the_config():
    """The score stage builds its scorer from the config's `scorer` section alone; a table that
    names a function (as data or provenance) is never imported."""
    from nashflow import stages

    src = inspect.getsource(stages.score)
    assert "C.scorer_config(cfg)" in src and "read_provenance" not in src
