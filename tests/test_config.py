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


def _schema_keys(node, path=""):
    """(dotted key, subschema) of every property at every depth: nested ``properties``, the items
    of arrays (``scorer.components.type``) and ``additionalProperties`` (``runs.*.seed``)."""
    for key, sub in node.get("properties", {}).items():
        yield f"{path}{key}", sub
        yield from _schema_keys(sub, f"{path}{key}.")
    if isinstance(node.get("items"), dict):
        yield from _schema_keys(node["items"], path)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_keys(node["additionalProperties"], f"{path}*.")


#: keys that legitimately have no ``default``
NO_DEFAULT = {
    # required in each component (`required: [type]`): there is no sensible scorer to assume
    "scorer.components.type",
    # a run's overrides: an omitted key falls back to the top-level key (which has the default),
    # so a default here would be wrong (and validate_config never fills additionalProperties)
    *(f"runs.*.{k}" for k in ("seed", "iterations", "generation", "scorer", "algorithm", "conditioning",
                              "logps", "training")),
}


def test_schema_documents_every_key():
    keys = dict(_schema_keys(yaml.safe_load(SCHEMA.read_text())))
    assert "scorer.components.type" in keys and "runs.*.seed" in keys  # the walk reaches items and runs
    undescribed = [k for k, sub in keys.items() if not str(sub.get("description") or "").strip()]
    assert not undescribed, f"keys without a description in {SCHEMA.name}: {undescribed}"
    no_default = [k for k, sub in keys.items() if "default" not in sub and k not in NO_DEFAULT]
    assert not no_default, f"keys without a default in {SCHEMA.name}: {no_default}"
    stale = sorted(NO_DEFAULT - keys.keys())
    assert not stale, f"NO_DEFAULT names keys the schema no longer has: {stale}"


def test_schema_enums_match_the_registries():
    """Each enum in the schema equals the registry the code dispatches on, so a method, loss, pair
    builder or scorer added (or renamed) in one place only fails here. If a registry moves or is
    renamed, update the import below; the schema path on the left stays."""
    from nashflow import losses, methods, pairs, scorers

    props = yaml.safe_load(SCHEMA.read_text())["properties"]
    algo = props["algorithm"]["properties"]

    def enum(sub, nullable=False):
        values = list(sub["enum"])
        assert (None in values) == nullable, sub["enum"]
        assert len(values) == len(set(values)), f"duplicate enum values: {values}"
        return {v for v in values if v is not None}

    pairs_of = {  # schema enum: the code's registry
        "algorithm.name -> nashflow.methods.METHODS": (enum(algo["name"]), set(methods.METHODS)),
        "algorithm.loss -> nashflow.losses.LOSSES": (enum(algo["loss"], nullable=True), set(losses.LOSSES)),
        "algorithm.pairs -> nashflow.pairs.PAIR_BUILDERS": (enum(algo["pairs"], nullable=True),
                                                           set(pairs.PAIR_BUILDERS)),
        "scorer.components[*].type -> nashflow.scorers.SCORERS": (
            enum(props["scorer"]["properties"]["components"]["items"]["properties"]["type"]),
            set(scorers.SCORERS)),
    }
    for what, (schema_values, code_values) in pairs_of.items():
        assert schema_values == code_values, (
            f"{what}: only in the schema {sorted(schema_values - code_values)}, "
            f"only in the code {sorted(code_values - schema_values)}")

    # algorithm.reference: the schema's values are methods.REFERENCES, each resolves to a checkpoint,
    # every preset's value is one of them, and the code refuses any other.
    references = enum(algo["reference"], nullable=True)
    assert references == set(methods.REFERENCES)
    for ref in references:
        algo_cfg = methods.resolve_algorithm({"name": "dpo", "reference": ref})
        assert isinstance(methods.iteration_roles(2, algo_cfg)["reference"], int)
    assert {preset.get("reference", methods.DEFAULTS["reference"]) for preset in methods.METHODS.values()} <= references
    with pytest.raises(ValueError, match="algorithm.reference"):
        methods.resolve_algorithm({"name": "dpo", "reference": "not_a_reference"})


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
