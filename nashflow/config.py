"""Configuration: JSON-Schema validation with one-line errors, runs, and the cross-field checks.

``validate_config`` fills defaults from the schema, rejects unknown keys, wrong types and
out-of-range values with a message that names the key, resolves the method preset and builds the
config model (:mod:`nashflow.settings`) once, so that every rule the dataclasses check holds
before any job runs. Imports no torch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from nashflow.errors import ConfigError
from nashflow.generation.vllm_backend import check_reserved as check_vllm_reserved
from nashflow.generation.vllm_backend import check_settings as check_vllm_settings
from nashflow.methods import resolve_algorithm
from nashflow.settings import Settings, settings


def _fill_defaults(schema: dict, value: Any) -> Any:
    if schema.get("type") == "object" and isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _fill_defaults(sub, value[key])
    elif schema.get("type") == "array" and isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_fill_defaults(schema["items"], v) for v in value]
    return value


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _message(err) -> str:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = _key(err.absolute_path)
        known = ", ".join(sorted(err.schema.get("properties", {})))
        return f"unknown config key '{(where + '.') if err.absolute_path else ''}{extra[0]}' (known keys here: {known})"
    return f"config key '{_key(err.absolute_path)}': {err.message}"


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Return a validated copy of ``config`` with defaults filled in, or raise ConfigError.

    With ``runs``, each run's config (the top level with the run's overrides) is validated too and
    stored fully resolved under ``runs.<name>``, its ``run`` set to ``<top run>/<name>``.
    """
    raw = copy.deepcopy(dict(config))
    runs = raw.get("runs") or {}
    reserved = sorted(set(runs) & {"compare", "prompts", "report"}) if isinstance(runs, dict) else []
    if reserved:
        raise ConfigError(f"config key 'runs.{reserved[0]}': the run name '{reserved[0]}' is reserved for the "
                          "comparison's own outputs; choose another name")
    cfg = _validate_one(raw, schema_path)
    if not isinstance(runs, dict):
        return cfg
    top = {k: v for k, v in raw.items() if k != "runs"}
    resolved = {}
    for name, overrides in runs.items():
        merged = run_overrides(top, overrides or {})
        try:
            one = _validate_one(merged, schema_path)
        except ConfigError as err:
            raise ConfigError(str(err).replace("config key '", f"config key 'runs.{name}.", 1)
                              .replace("config: ", f"config: run '{name}': ", 1)) from err
        one["run"] = f"{cfg['run']}/{name}"
        resolved[name] = one
    cfg["runs"] = resolved
    return cfg


def run_overrides(top: dict, overrides: dict) -> dict:
    """The top-level config with one run's overrides: ``algorithm`` replaced whole, the rest merged."""
    merged = deep_update({k: v for k, v in top.items() if k != "algorithm"},
                         {k: v for k, v in overrides.items() if k != "algorithm"})
    merged["algorithm"] = copy.deepcopy(overrides.get("algorithm", top.get("algorithm", {})))
    merged.pop("runs", None)
    return merged


def run_ids(cfg: dict) -> list[str]:
    """Output folder names under results/: ``<run>`` alone, or ``<run>/<name>`` per entry of ``runs``."""
    return [r["run"] for r in cfg["runs"].values()] if cfg.get("runs") else [cfg["run"]]


def run_config(cfg: dict, run_id: str, *, evaluation: bool = False) -> dict:
    """The resolved config of one run. ``evaluation``: with the top-level scorer, which judges every
    run's held-out responses so that runs are compared by the same judge."""
    if not cfg.get("runs"):
        if run_id != cfg["run"]:
            raise ConfigError(f"no run '{run_id}' in this config (run: {cfg['run']})")
        return cfg
    for one in cfg["runs"].values():
        if one["run"] == run_id:
            return dict(one, scorer=cfg["scorer"]) if evaluation else one
    raise ConfigError(f"no run '{run_id}' in this config (runs: {', '.join(run_ids(cfg))})")


#: keys that moved, and where to
MOVED = {("training", "mixed_precision"): "compute.training_dtype (float32, bfloat16 or float16; "
                                          "null follows compute.dtype)"}


def _validate_one(config: dict, schema_path: str | Path) -> dict:
    import jsonschema

    schema = load_schema(schema_path)
    cfg = copy.deepcopy(dict(config))
    for (section, key), new in MOVED.items():
        if isinstance(cfg.get(section), dict) and key in cfg[section]:
            raise ConfigError(f"config key '{section}.{key}' has moved: use {new}")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        raise ConfigError(_message(errors[0]))
    cfg = _fill_defaults(schema, cfg)
    try:
        cfg["algorithm"] = resolve_algorithm(cfg["algorithm"])
    except (ValueError, KeyError) as err:
        raise ConfigError(_plain(err)) from err
    if cfg["generation"].get("backend") == "vllm" and cfg["algorithm"]["sampler"] == "mixture":
        raise ConfigError("config key 'generation.backend': Nash-MD's mixture sampler (algorithm.sampler: mixture) "
                          "runs on the transformers backend only")
    # The history queue fills as iterations go (MNPO: T' = min(players available, H)); more players
    # than iterations can never be filled and is a mistake.
    algo = cfg["algorithm"]
    if algo["history"] > cfg["iterations"]:
        most = cfg["iterations"] - 1 + (1 if algo["history_includes_base"] else 0)
        raise ConfigError(
            f"config key 'algorithm.history': {algo['history']} history players but only {cfg['iterations']} "
            f"iteration(s): the last one has {most} earlier checkpoint(s) to use; lower algorithm.history "
            "or raise iterations")
    check_distributed(cfg["training"], Path(schema_path).parent / "accelerate")
    check_matrix_game(cfg)
    check_compute(cfg["compute"])
    try:  # the cross-field rules that JSON Schema does not express, checked by the dataclasses
        model = settings(cfg)
    except (ValueError, KeyError) as err:
        raise ConfigError(_plain(err)) from err
    check_vllm(cfg, model)
    return cfg


def _plain(err: Exception) -> str:
    msg = str(err).strip("'")
    return msg if msg.startswith(("config key", "unknown config key")) else f"config: {msg}"


def check_vllm(cfg: dict, model: Settings) -> None:
    """vLLM refuses unknown engine arguments and some sampling values only when a job starts."""
    gen = cfg["generation"]
    try:
        if gen["backend"] == "vllm":
            check_vllm_settings(gen["vllm"], {"generation": model.sampling, "evaluation": model.eval_sampling})
        else:
            check_vllm_reserved(gen["vllm"])
    except ValueError as err:
        raise ConfigError(str(err)) from err


def load_config(path: str | Path, schema_path: str | Path, overrides: dict | None = None) -> dict:
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    if overrides:
        cfg = deep_update(cfg, overrides)
    return validate_config(cfg, schema_path)


def deep_update(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def job_config(smk, *, evaluation: bool = False) -> dict:
    """The config of a Snakemake job's run (its ``run`` wildcard), for workflow/scripts."""
    run = dict(smk.wildcards.items()).get("run")
    return run_config(smk.config, run, evaluation=evaluation) if run else smk.config


def check_matrix_game(cfg: dict) -> None:
    """A matrix_game scorer's matrix (P + Pᵀ = 1, diagonal ½) and action rule (every action gets a
    token), with the key named. The rule is checked where the vocabulary is known before any job
    runs: the tiny policy's, or a folder's tokenizer.json; otherwise when the score job starts."""
    from nashflow.scorers.matrix_game import DEFAULT_TOKENS, action_map, check_args, fast_tokenizer, missing_actions

    for n, comp in enumerate(cfg["scorer"]["components"]):
        if comp.get("type") != "matrix_game":
            continue
        key, args = f"scorer.components[{n}].args", comp.get("args") or {}
        tokens = args.get("tokens", DEFAULT_TOKENS)
        try:
            P = check_args(args.get("matrix"), tokens, args.get("outcome", "probability"))
        except ValueError as err:
            name, msg = str(err).split(": ", 1)
            raise ConfigError(f"config key '{key}.{name}': {msg}") from None
        model = args.get("model", "base")
        if model == "base" and cfg["base_model"].get("tiny") is not None:
            from nashflow.tiny_policy import build_tokenizer

            vocab, where = build_tokenizer(), "the tiny policy's vocabulary (base_model.tiny)"
        else:
            folder = cfg["base_model"]["path"] if model == "base" else model
            if not folder or not (Path(folder) / "tokenizer.json").exists():
                continue
            vocab, where = fast_tokenizer(str(folder)), f"the vocabulary of {folder}"
        missing = missing_actions(action_map(vocab, tokens, P.shape[0]), P.shape[0])
        if missing:
            raise ConfigError(f"config key '{key}.tokens': {tokens!r} maps no token of {where} to action(s) "
                              f"{', '.join(map(str, missing))} (the k-th matching token plays action k mod "
                              f"{P.shape[0]})")


SHARDED_HINT = "use training.distributed ddp or zero2 with LoRA (ZeRO-3 and FSDP keep only a shard per process)"


def check_compute(compute: dict) -> None:
    """flash-attention kernels run in bf16/fp16 only: no stage may be set to float32 with them."""
    from nashflow.precision import STAGES, stage_setting

    if compute["attn_implementation"].startswith("flash"):
        bad = [s for s in STAGES if stage_setting(compute, s) == "float32"]
        if bad:
            raise ConfigError(f"config key 'compute.attn_implementation': {compute['attn_implementation']} runs in "
                              f"bfloat16 or float16 only, but the {bad[0]} stage is set to float32 "
                              f"(compute.{bad[0]}_dtype or compute.dtype)")


def check_distributed(training: dict, shipped: Path) -> None:
    """``training.distributed``: auto, a shipped accelerate config (``shipped/<name>.yaml``) or an accelerate
    config file that parses and names its ``distributed_type``; LoRA merges need unsharded weights."""
    name = training["distributed"]
    if name == "auto":
        return
    path = shipped / f"{name}.yaml"
    if not path.is_file():
        path = Path(name)
    if not path.is_file():
        raise ConfigError(f"config key 'training.distributed': {name!r} is neither auto, a shipped accelerate config "
                          f"({', '.join(sorted(p.stem for p in shipped.glob('*.yaml')))}) nor an existing file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config key 'training.distributed': {path} is not valid YAML: "
                          f"{str(err).splitlines()[0]}") from err
    kind = doc.get("distributed_type") if isinstance(doc, dict) else None
    if kind not in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP"):
        raise ConfigError(f"config key 'training.distributed': {path} is not an accelerate config: distributed_type "
                          f"is {kind!r}, not one of NO, MULTI_GPU, DEEPSPEED, FSDP")
    stage = (doc.get("deepspeed_config") or {}).get("zero_stage")
    if training.get("lora") and (kind == "FSDP" or (kind == "DEEPSPEED" and stage == 3)):
        raise ConfigError(f"config key 'training.lora': LoRA cannot be merged from sharded weights ({path.name}); "
                          + SHARDED_HINT)
