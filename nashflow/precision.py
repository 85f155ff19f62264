"""Which dtype and attention implementation each job's models use: the ``compute`` config section.

One rule for every job (sampling, scoring, log-probs, training), so that the reference log-probs
and the trainer's policy log-probs come from the same dtype and the same code path:

- ``bf16_on_gpu`` (default): bfloat16 on a CUDA GPU that supports it, float32 anywhere else. A
  CPU run is float32 on every host (its last bits follow the host's matmul kernels, see
  ``compute.cpu_linear`` and :mod:`nashflow.onednn`).
- ``auto``: as ``bf16_on_gpu`` on GPUs; on a CPU bfloat16 only where a bf16 matmul measured in
  the job (:func:`cpu_bf16_speedup`) runs at least ``FAST_BF16`` times the float32 one the job
  would use (``compute.cpu_linear``; hosts with AVX512-BF16 or AMX). Results then differ from the
  float32 default, and may differ between hosts.
- ``float32``, ``bfloat16``, ``float16``: that dtype everywhere.

Forward-only jobs load the weights in the resolved dtype. Training keeps float32 weights and runs
under accelerate's mixed precision of the resolved dtype (``bf16``/``fp16``/``no``); under
DeepSpeed the engine keeps bf16 weights and float32 master weights in the optimizer. Trained
checkpoints are stored in ``checkpoint_dtype``.

This module imports torch only inside the functions that need it (the Snakefile imports it).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
POLICIES = ("bf16_on_gpu", "auto")
STAGES = ("sampling", "scoring", "logps", "training")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
#: bf16 counts as fast on a CPU when its matmul runs at least this many times float32's
FAST_BF16 = 1.5
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
#: the schema's defaults, for library callers without a workflow config
DEFAULT_COMPUTE = {"dtype": "bf16_on_gpu", "attn_implementation": "sdpa", "cpu_linear": "onednn", "memory_headroom": 0.25}


def stage_setting(compute: dict, stage: str) -> str:
    """The configured dtype (or policy) of one stage: ``compute.<stage>_dtype``, else ``compute.dtype``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return compute.get(f"{stage}_dtype") or compute["dtype"]


def stage_compute(cfg: dict, stage: str) -> dict:
    """Everything about ``compute`` that a job of ``stage`` reads: its re-run trigger and its settings."""
    c = cfg["compute"]
    # training shards with ZeRO/FSDP, not by the headroom rule; only it stores checkpoints
    extra = "checkpoint_dtype" if stage == "training" else "memory_headroom"
    return {"dtype": stage_setting(c, stage), "attn_implementation": c["attn_implementation"],
            "cpu_linear": c["cpu_linear"], extra: c[extra]}


@lru_cache(maxsize=None)
def cpu_bf16_speedup(n: int = 256, seconds: float = 0.05, onednn: bool = False) -> float:
    """Measured throughput of an n x n bf16 matmul over the float32 one on this CPU (about 0.1 s);
    with ``onednn`` the float32 one is oneDNN's (``compute.cpu_linear: onednn``), else ``torch.mm``.

    Measured, not read from CPU flags: a host without AVX512-BF16 ran bf16 matmuls at ~1 GFLOP/s
    against ~200 in float32; one with it at ~800 against ~200 through MKL and ~450 through oneDNN
    (2 threads)."""
    import torch

    def rate(dtype, mm) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        mm(a, b)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            mm(a, b)
            reps += 1
        return reps / (time.perf_counter() - t0)

    if onednn:
        from nashflow.onednn import matmul as fp32_mm
    else:
        fp32_mm = torch.mm
    return rate(torch.bfloat16, torch.mm) / rate(torch.float32, fp32_mm)


def resolve(setting: str, device: str, cpu_linear: str = "aten") -> str:
    """The dtype name (float32, bfloat16, float16) that ``setting`` means on ``device``; ``auto`` on
    a CPU compares bf16 with the float32 path ``cpu_linear`` (``compute.cpu_linear``) would take."""
    if setting in DTYPES:
        return setting
    if setting not in POLICIES:
        raise ValueError(f"unknown dtype setting {setting!r}; use one of {', '.join(POLICIES + DTYPES)}")
    if str(device).startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if setting == "auto":
        via_onednn = cpu_linear == "onednn" and _onednn_available()
        speedup = cpu_bf16_speedup(onednn=via_onednn)
        chosen = "bfloat16" if speedup >= FAST_BF16 else "float32"
        log.info("compute dtype auto on this CPU: bf16 matmul at %.2fx float32 (%s) -> %s", speedup,
                 "oneDNN" if via_onednn else "torch.mm", chosen)
        return chosen
    return "float32"


def _onednn_available() -> bool:
    from nashflow import onednn

    return onednn.available()


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def attention_for(requested: str, device: str) -> str:
    """The attention implementation to load with: flash-attention only runs on CUDA, so a CPU job of
    a config made for GPUs falls back to sdpa (logged; results agree within the dtype's precision)."""
    if requested.startswith("flash") and not str(device).startswith("cuda"):
        log.warning("compute.attn_implementation %s needs a CUDA GPU; this job runs on %s with sdpa",
                    requested, device)
        return "sdpa"
    return requested
