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


def _default():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_runs_resolve_each_preset_and_merge_the_rest():
    from nashflow.config import run_config, run_ids

    cfg = _default()
    cfg["run"] = "cmp"
    cfg["algorithm"] = {"name": "dpo", "beta": 0.3}
    cfg["runs"] = {"a": {}, "b": {"algorithm": {"name": "sppo"}, "training": {"learning_rate": 1.0e-6}},
                   "c": {"scorer": {"components": [{"type": "length"}]}}}
    v = validate_config(cfg, SCHEMA)
    assert run_ids(v) == ["cmp/a", "cmp/b", "cmp/c"]
    a, b = run_config(v, "cmp/a"), run_config(v, "cmp/b")
    assert a["algorithm"]["beta"] == 0.3 and a["algorithm"]["loss"] == "dpo"
    # b's algorithm section replaces the top-level one: SPPO's preset, not DPO's beta
    assert b["algorithm"]["loss"] == "sppo" and b["algorithm"]["beta"] != 0.3
    assert b["training"]["learning_rate"] == 1.0e-6 and b["training"]["epochs"] == v["training"]["epochs"]
    # evaluation uses the top-level scorer for every run
    c = run_config(v, "cmp/c")
    assert c["scorer"]["components"][0]["type"] == "length"
    assert run_config(v, "cmp/c", evaluation=True)["scorer"] == v["scorer"]
    with pytest.raises(ConfigError, match="no run 'cmp/x'"):
        run_config(v, "cmp/x")
    assert run_ids(validate_config(_default(), SCHEMA)) == ["default"]


@pytest.mark.parametrize("runs,match", [
    ({"compare": {}}, "runs.compare.*reserved"),
    ({"a": {"base_model": {"path": "x"}}}, "unknown config key 'runs.a.base_model'"),
    ({"a": {"training": {"learning_rate": -1}}}, "runs.a.training.learning_rate"),
    ({"a": {"algorithm": {"name": "nope"}}}, "runs.a.algorithm.name"),
    ({"a": {"algorithm": {"name": "ipo", "history": -1}}}, "runs.a.algorithm.history"),
    ({"a b": {}}, "runs"),
])
def test_bad_runs_name_the_key(runs, match):
    cfg = _default()
    cfg["runs"] = runs
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg, SCHEMA)
