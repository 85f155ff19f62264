"""Small torch helpers: inference mode entered at call time, the model inside wrappers, its input device."""

from __future__ import annotations

import functools
import os
import sys


def set_threads(n: int | None) -> None:
    """torch's intra-op threads for this job: set at once where torch is loaded, else through
    ``OMP_NUM_THREADS``, which torch reads when it loads (a job that needs no model never imports it)."""
    if n and n > 0:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(n))
        else:
            os.environ["OMP_NUM_THREADS"] = str(int(n))


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
