"""Keeping ``import torch`` off the workflow's DAG-building path.

Snakemake imports nashflow's config dataclasses to validate the config and build the DAG, and
those modules import torch, which takes 1.5-2 s to load and is never used there. The Snakefile
installs a lazy torch module (:func:`lazy_torch`) before importing nashflow: torch loads on first
use only. Modules keep module-level torch attribute access out of import time for that to hold
(``@inference_mode`` below instead of ``@torch.inference_mode()``); jobs import torch as usual.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import types


class _LazyTorch(types.ModuleType):
    """Stands in for ``torch`` until an attribute is read; then imports torch and forwards to it."""

    def __getattr__(self, name: str):
        return getattr(_load_torch(), name)


class _TorchSubmoduleFinder(importlib.abc.MetaPathFinder):
    """Loads the real torch before any ``torch.*`` submodule is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("torch."):
            _load_torch()
        return None  # the regular finders do the import


_REAL: list = []


def _load_torch():
    if not _REAL:
        if isinstance(sys.modules.get("torch"), _LazyTorch):
            del sys.modules["torch"]
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchSubmoduleFinder)]
        _REAL.append(importlib.import_module("torch"))
    return _REAL[0]


def lazy_torch() -> None:
    """Put a stand-in ``torch`` into ``sys.modules`` (unless torch is already imported) that imports
    the real one on first use: reading any attribute or importing a submodule."""
    if "torch" in sys.modules:
        return
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return
    proxy = _LazyTorch("torch", "torch, imported on first use (nashflow.torchutil)")
    proxy.__spec__ = spec  # the import system reads it when `import torch` finds the module
    sys.modules["torch"] = proxy
    sys.meta_path.insert(0, _TorchSubmoduleFinder())


def inference_mode(fn):
    """``torch.inference_mode()`` around ``fn``, entered at call time (decorating imports nothing)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper


def unwrap(model):
    """The model inside DDP / DeepSpeed engine wrappers (FSDP2 and peft models are their own modules).

    What accelerate's ``extract_model_from_parallel`` does for these wrappers, without importing
    DeepSpeed into every log-prob job that calls this once per batch."""
    import torch

    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def input_device(model):
    """Where a model's inputs go: its input embeddings' device (the first GPU of a model split with a
    device map, whose other layers sit on other devices)."""
    inner = unwrap(model)
    emb = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    return next(p.device for p in model.parameters() if p.device.type != "meta")
