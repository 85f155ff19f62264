"""Config validation: defaults, unknown keys, wrong types, ranges."""


import pytest
import yaml
from conftest import REPO

from nashflow.config import validate_config
from nashflow.errors import ConfigError

SCHEMA = REPO / "config" / "schema.yaml"


def test_default_config_is_valid_and_complete():
    cfg = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA)
    assert cfg["iterations"] == 2 and cfg["generation"]["samples_per_prompt"] == 4
    assert cfg["base_model"]["trust_remote_code"] is False


def test_schema_documents_every_key():
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            yield f"{path}{key}", sub
            yield from walk(sub, f"{path}{key}.")
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = [k for k, sub in walk(schema, "") if "default" not in sub and k != "scorer.components.type"]
    assert not missing


@pytest.mark.parametrize("cfg,match", [
    ({"iterations": "two"}, "config key 'iterations': 'two' is not of type 'integer'"),
    ({"iterations": 0}, "config key 'iterations'"),
    ({"algorithm": {"beta": -0.1}}, "config key 'algorithm.beta'"),
    ({"generation": {"samples_per_prompt": 1}}, "config key 'generation.samples_per_prompt'"),
    ({"generation": {"temprature": 0.7}}, "unknown config key 'generation.temprature'"),
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"training": {"max_length": 64, "max_prompt_length": 80}}, "max_prompt_length"),
    ({"algorithm": {"name": "nope"}}, "config key 'algorithm.name'"),
])
def test_bad_configs_name_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        validate_config(cfg, SCHEMA)
