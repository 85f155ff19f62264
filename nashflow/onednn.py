"""float32 linear layers through oneDNN on x86-64 CPUs (``compute.cpu_linear``).

PyTorch runs a float32 ``nn.Linear`` on a CPU through its BLAS, Intel MKL in the PyPI wheels.
MKL picks its kernels by CPU vendor: on AMD hosts it takes an AVX2 path whatever the CPU
supports. On this project's 2-core AMD EPYC (AVX-512) a float32 matmul ran at ~200 GFLOP/s
through MKL and ~500 through oneDNN, the library PyTorch ships for its bf16 CPU matmuls and
that inductor uses for packed linears. Measured on SmolLM2-135M: the linear layers of one
decoding step with 64 rows ran 1.8x faster, and a linear layer's forward and backward at 1,200
tokens 1.8x faster (``benchmarks/perf.py`` keeps the comparison).

:func:`use_onednn` turns a model's ``nn.Linear`` layers into :class:`OneDNNLinear` (the same
module, parameters and state dict; only ``forward`` differs). Its forward and both halves of its
backward are oneDNN matmuls (``torch.ops.mkldnn._linear_pointwise``, the op inductor calls). The
results are float32 matmuls with another summation order: they agree with MKL's to float32
rounding, not bit for bit. A run is still reproducible on one host: same shapes and threads, same
numbers. A call that is not float32 on a CPU (autocast to bf16, a GPU) takes ``F.linear``.

The op is private to PyTorch, so :func:`available` checks it once per process against
``F.linear`` on random inputs. Where it is missing, wrong, or the CPU is not x86-64, layers stay
PyTorch's own (logged once).
"""

from __future__ import annotations

import logging
import platform
from functools import lru_cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SETTINGS = ("onednn", "aten")
#: a call goes to oneDNN from this many multiply-adds (rows x in x out): below it oneDNN's fixed cost
#: per call (~12 us against MKL's ~2 us here) outweighs its kernel (a 256x256 layer: faster from 64
#: rows, slower at 1 and 16). The choice depends on shapes only, so a run stays reproducible.
MIN_MACS = 1 << 22
_X86 = ("x86_64", "amd64", "i686", "x86")


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weightᵀ (+ bias) by oneDNN; x [..., K], weight [N, K]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether oneDNN linears run here and agree with ``F.linear`` (forward and backward) on random
    inputs, to float32 rounding."""
    if platform.machine().lower() not in _X86 or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(3, 5, 40, generator=gen, requires_grad=True)
        w = torch.randn(24, 40, generator=gen, requires_grad=True)
        b = torch.randn(24, generator=gen, requires_grad=True)
        g = torch.randn(3, 5, 24, generator=gen)
        y_ours, y_want = _OneDNNLinearFn.apply(x, w, b), F.linear(x, w, b)
        ours = (y_ours, *torch.autograd.grad(y_ours, (x, w, b), g))
        want = (y_want, *torch.autograd.grad(y_want, (x, w, b), g))
    except (RuntimeError, AttributeError) as err:  # op missing or unsupported on this build
        log.info("oneDNN linear unavailable here (%s): layers stay PyTorch's", str(err).splitlines()[0])
        return False
    return all(torch.allclose(p, q, rtol=1e-4, atol=1e-4) for p, q in zip(ours, want))


class _OneDNNLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b; ∂x = g W, ∂W = gᵀ x, ∂b = Σ g, each matmul by oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return matmul(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the op has no derivative: double backward raises
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = matmul(grad, weight.t().contiguous()) if need_x else None
        gw = matmul(g2.t(), x.reshape(-1, x.shape[-1]).t()) if need_w else None
        gb = g2.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` by oneDNN where x and weight are float32 CPU tensors and the call has at least
    :data:`MIN_MACS` multiply-adds, else ``F.linear``."""
    if (x.dtype is torch.float32 and weight.dtype is torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.numel() * weight.shape[0] >= max(MIN_MACS, 1)
            and type(weight) in (torch.Tensor, torch.nn.Parameter)):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _OneDNNLinearFn.apply(x, weight, bias)
        return matmul(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear` (made by :func:`use_onednn`, undone by
    :func:`use_aten`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def applies(setting: str, device, dtype) -> bool:
    """Whether ``compute.cpu_linear`` = ``setting`` routes a model on ``device`` in ``dtype`` through
    oneDNN: float32 weights on a CPU where :func:`available`."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown compute.cpu_linear {setting!r}; use one of {', '.join(SETTINGS)}")
    if setting != "onednn" or torch.device(device).type != "cpu" or dtype != torch.float32:
        return False
    if not available():
        log.info("compute.cpu_linear onednn: oneDNN linears do not run on this host; using PyTorch's")
        return False
    return True


def use_onednn(model: torch.nn.Module) -> int:
    """Every plain ``nn.Linear`` of ``model`` becomes a :class:`OneDNNLinear` in place (parameters,
    hooks and state dict untouched); returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n


def use_aten(model: torch.nn.Module) -> int:
    """Undo :func:`use_onednn`; returns how many layers were changed back."""
    n = 0
    for m in model.modules():
        if type(m) is OneDNNLinear:
            m.__class__ = torch.nn.Linear
            n += 1
    return n
