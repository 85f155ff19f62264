"""Where a forward-only job (sampling, scoring, log-probs) puts a model: one GPU, or one copy split
across the job's GPUs.

The rule (:func:`plan`): a GPU may fill ``1 - compute.memory_headroom`` of its memory with
weights (the rest is for activations and the KV cache). A model whose weights, in the job's dtype,
fit that on one GPU runs on that GPU (the other GPUs of a job serve vLLM's tensor parallelism or
stay idle: give such jobs one GPU and more shards). A larger model is split layer by layer across
all the job's GPUs with accelerate's ``device_map="balanced"`` (pipeline-style: one GPU computes at
a time), each GPU capped at its share. A model that does not fit the job's GPUs together is an
error naming the GPUs it needs. Training shards with ZeRO-3/FSDP instead (``training.distributed``).

Weights are counted from the safetensors headers (no tensor is read): 70B parameters are 141 GB
in bf16, so with the default headroom of 0.25 they need three 80 GB GPUs (give the job four).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nashflow.errors import DataError

GIB = 1 << 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def parameter_count(model_dir: str | Path) -> int:
    """Number of weight values in a safetensors folder, from the file headers alone."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                total += math.prod(st.get_slice(key).get_shape())
    return total


def gpus_needed(weight_bytes: int, gpu_bytes: int, headroom: float) -> int:
    """GPUs of ``gpu_bytes`` each that hold ``weight_bytes`` of weights, leaving ``headroom`` free."""
    return max(1, math.ceil(weight_bytes / ((1.0 - headroom) * gpu_bytes)))


@dataclass(frozen=True)
class Placement:
    device: str  # where inputs go: "cpu", "cuda:0"
    device_map: str | None = None  # "balanced" when split across GPUs
    max_memory: dict | None = None  # per GPU index, bytes

    def load_kwargs(self) -> dict:
        return {"device_map": self.device_map, "max_memory": self.max_memory} if self.device_map else {}


def plan(weight_bytes: int, gpu_bytes: list[int], headroom: float, *, what: str = "the model") -> Placement:
    """One GPU when the weights fit it, else all of ``gpu_bytes`` (the job's GPUs) split evenly."""
    if not gpu_bytes:
        return Placement("cpu")
    if weight_bytes <= (1.0 - headroom) * gpu_bytes[0]:
        return Placement("cuda:0")
    usable = {i: int((1.0 - headroom) * b) for i, b in enumerate(gpu_bytes)}
    if weight_bytes > sum(usable.values()):
        need = gpus_needed(weight_bytes, min(gpu_bytes), headroom)
        raise DataError(
            f"{what} has {weight_bytes / GIB:.1f} GiB of weights: the job's {len(gpu_bytes)} GPU(s) of "
            f"{min(gpu_bytes) / GIB:.0f} GiB hold {sum(usable.values()) / GIB:.1f} GiB at compute.memory_headroom "
            f"{headroom}; give this rule at least {need} GPUs (profile set-resources: gpu) or a smaller dtype")
    return Placement("cuda:0", "balanced", usable)


def placement_for(model_dir: str | Path, dtype: str, headroom: float) -> Placement:
    """:func:`plan` for a safetensors folder on the GPUs this process sees (the job's own)."""
    import torch

    if not torch.cuda.is_available():
        return Placement("cpu")
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return plan(parameter_count(model_dir) * BYTES[dtype], gpus, headroom, what=f"model {model_dir}")


def training_bytes_per_gpu(n_params: int, n_gpus: int, distributed: str) -> float:
    """Model state per GPU of a mixed-precision Adam run (activations not counted): 16 bytes per
    parameter (bf16 weights and gradients, float32 master weights and two Adam moments), all of it on
    every GPU under DDP, all but the 2-byte weights sharded under ZeRO-2, all of it under ZeRO-3/FSDP."""
    n = max(1, n_gpus)
    if distributed in ("zero3", "fsdp"):
        return 16 * n_params / n
    if distributed == "zero2":
        return 2 * n_params + 14 * n_params / n
    return 16 * n_params
