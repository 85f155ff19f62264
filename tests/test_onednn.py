"""float32 linear layers through oneDNN (nashflow.onednn, ``compute.cpu_linear``): the op agrees
with ``F.linear`` forward and backward, the module swap leaves the model's parameters alone, and the
log-prob loader and the trainer pick it by the setting."""

from __future__ import annotations

import copy
import platform

import pytest
import torch
import torch.nn.functional as F

from nashflow import onednn

X86_LINUX = platform.system() == "Linux" and platform.machine().lower() in ("x86_64", "amd64")
needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason="oneDNN linears do not run on this host (not x86-64, no mkldnn, or the op "
                                         "disagrees with F.linear)")

SETTINGS = {"dtype": "float32", "attn_implementation": "sdpa", "memory_headroom": 0.25}
DEFAULT_MIN_MACS = onednn.MIN_MACS


@pytest.fixture(autouse=True)
def _every_call_through_onednn(monkeypatch):
    """The tests' layers are far below onednn.MIN_MACS, where calls take F.linear: here every
    float32 CPU call takes oneDNN (test_the_size_threshold checks the threshold itself)."""
    monkeypatch.setattr(onednn, "MIN_MACS", 0)


def _count_onednn_calls(monkeypatch) -> list:
    """The oneDNN matmuls that run from now on (one per forward, per ∂x and per ∂W)."""
    onednn.available()  # probed before the count starts
    calls = []
    real = onednn.matmul
    monkeypatch.setattr(onednn, "matmul", lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    return calls


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Agreement to float32 rounding of a sum: the error scaled by the largest value of ``want``."""
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= rtol * scale + atol, f"max error {err:.3g} for values up to {scale:.3g}"


# ---------------------------------------------------------------------------------------------------
# 1. availability


@pytest.mark.skipif(not (X86_LINUX and torch.backends.mkldnn.is_available()),
                    reason="oneDNN linears are expected only on x86-64 Linux with PyTorch's mkldnn")
def test_available_on_x86_linux_with_mkldnn():
    assert onednn.available() is True


# ---------------------------------------------------------------------------------------------------
# 2-3. linear() against F.linear


def _leaf(t: torch.Tensor | None, grad: bool) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(grad)


def _compare(x, w, b, *, grad_x=True, grad_w=True, grad_b=True, view=lambda t: t):
    """onednn.linear vs F.linear on copies of (x, w, b): the output and the grads of a random
    projection of it. ``view`` makes the input handed to the op from the leaf x (e.g. a transpose)."""
    outs, grads = [], []
    for fn in (onednn.linear, F.linear):
        xl, wl, bl = _leaf(x, grad_x), _leaf(w, grad_w), _leaf(b, grad_b)
        y = fn(view(xl), wl, bl)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
        (y * g).sum().backward()
        outs.append(y)
        grads.append([None if t is None else t.grad for t in (xl, wl, bl)])
    _close(outs[0], outs[1])
    for ours, want, name in zip(*grads, ("x", "weight", "bias")):
        if want is None:
            assert ours is None, f"{name} has a grad where F.linear gives none"
        else:
            assert ours is not None, f"no grad for {name}"
            _close(ours, want)
    return outs[0], grads[0]


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 40), (3, 5, 40)], ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_forward_and_backward_agree_with_f_linear(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=gen), torch.randn(24, 40, generator=gen)
    b = torch.randn(24, generator=gen) if bias else None
    y, (gx, gw, gb) = _compare(x, w, b)
    assert y.shape == (*shape[:-1], 24) and gx.shape == x.shape and gw.shape == w.shape
    assert (gb is not None) == bias


@needs_onednn
def test_linear_takes_its_own_path_for_float32_on_cpu(monkeypatch):
    """The float32 CPU call goes through the oneDNN op (forward and backward), not F.linear."""
    calls = _count_onednn_calls(monkeypatch)
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    y = onednn.linear(x, w)
    assert type(y.grad_fn).__name__ == "_OneDNNLinearFnBackward"
    y.sum().backward()
    assert len(calls) == 3  # forward, ∂x, ∂W
    with torch.no_grad():
        onednn.linear(x, w)
    assert len(calls) == 4


@needs_onednn
def test_the_size_threshold(monkeypatch):
    """From onednn.MIN_MACS multiply-adds (rows x in x out) a call takes oneDNN, below it F.linear
    (bit for bit); the choice is by shape alone, with or without autograd."""
    monkeypatch.setattr(onednn, "MIN_MACS", DEFAULT_MIN_MACS)
    calls = _count_onednn_calls(monkeypatch)
    gen = torch.Generator().manual_seed(8)
    k = n = 64
    rows = -(-DEFAULT_MIN_MACS // (k * n))  # the fewest rows that reach the threshold
    w, b = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    big, small = torch.randn(rows, k, generator=gen), torch.randn(rows - 1, k, generator=gen)
    for grad in (False, True):
        wl = w.clone().requires_grad_(grad)
        y = onednn.linear(small, wl, b)
        assert not calls and torch.equal(y, F.linear(small, wl, b))
        y = onednn.linear(big, wl, b)
        assert len(calls) == 1
        _close(y, F.linear(big, wl, b))
        assert (type(y.grad_fn).__name__ == "_OneDNNLinearFnBackward") == grad
        calls.clear()
    # 3-D: rows are all but the last dim
    onednn.linear(small[: (rows - 1) // 2 * 2].reshape(2, -1, k), w, b)
    assert not calls


@needs_onednn
@pytest.mark.parametrize("dims", [2, 3])
def test_linear_with_a_non_contiguous_input(dims):
    gen = torch.Generator().manual_seed(1)
    if dims == 2:  # [K, M] seen as [M, K]
        x, view = torch.randn(40, 7, generator=gen), lambda t: t.t()
    else:  # [B, K, T] seen as [B, T, K]
        x, view = torch.randn(2, 40, 5, generator=gen), lambda t: t.transpose(1, 2)
    assert not view(x).is_contiguous()
    w, b = torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    _compare(x, w, b, view=view)


@needs_onednn
@pytest.mark.parametrize("bias_trains", [False, True])
def test_linear_with_a_frozen_weight(bias_trains):
    """LoRA-like: the base weight (and its bias) are frozen; x still gets its gradient."""
    gen = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 5, 40, generator=gen), torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    _, (gx, gw, gb) = _compare(x, w, b, grad_w=False, grad_b=bias_trains)
    assert gx is not None and gw is None and (gb is not None) == bias_trains


@needs_onednn
def test_linear_when_only_the_weight_needs_a_grad():
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(6, 40, generator=gen), torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    _, (gx, gw, gb) = _compare(x, w, b, grad_x=False)
    assert gx is None and gw is not None and gb is not None


@needs_onednn
def test_linear_backward_of_a_plain_sum():
    """y.sum() hands backward an expanded (stride 0) gradient."""
    gen = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(3, 5, 40, generator=gen), torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    got, want = [], []
    for fn, out in ((onednn.linear, got), (F.linear, want)):
        xl, wl, bl = _leaf(x, True), _leaf(w, True), _leaf(b, True)
        fn(xl, wl, bl).sum().backward()
        out.extend([xl.grad, wl.grad, bl.grad])
    for p, q in zip(got, want):
        _close(p, q)


@needs_onednn
def test_linear_under_inference_mode_and_no_grad():
    gen = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(3, 5, 40, generator=gen), torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    w.requires_grad_(True)
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            y = onednn.linear(x, w, b)
            _close(y, F.linear(x, w, b))
            _close(onednn.linear(x.transpose(0, 1), w, b), F.linear(x.transpose(0, 1), w, b))
        assert y.grad_fn is None and not y.requires_grad


@needs_onednn
def test_linear_falls_back_for_bf16():
    gen = torch.Generator().manual_seed(7)
    x, w, b = (torch.randn(s, generator=gen).bfloat16() for s in ((3, 5, 40), (24, 40), (24,)))
    y = onednn.linear(x, w, b)
    assert y.dtype is torch.bfloat16
    assert torch.equal(y, F.linear(x, w, b))
    # a float32 input with bf16 weights (not our case) is F.linear's too, error included
    with pytest.raises(RuntimeError):
        F.linear(x.float(), w, b)
    with pytest.raises(RuntimeError):
        onednn.linear(x.float(), w, b)


@needs_onednn
@pytest.mark.parametrize("shape", [(0, 40), (2, 0, 40)])
def test_linear_falls_back_for_an_empty_input(shape):
    x = torch.randn(shape, requires_grad=True)
    w, b = torch.randn(24, 40, requires_grad=True), torch.randn(24, requires_grad=True)
    y = onednn.linear(x, w, b)
    assert y.shape == (*shape[:-1], 24)
    assert torch.equal(y, F.linear(x, w, b))
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros(24))


# ---------------------------------------------------------------------------------------------------
# 4-5. the module swap on a tiny Llama


def _ids(vocab: int, shape=(2, 12), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _linears(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


@needs_onednn
def test_use_onednn_swaps_every_linear_and_keeps_the_parameters(tiny_model, monkeypatch):
    model, _ = tiny_model
    ids = _ids(model.config.vocab_size)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    before = model.state_dict(keep_vars=True)
    values = {k: v.detach().clone() for k, v in before.items()}
    logits = _logits(model, ids)

    assert onednn.use_onednn(model) == n_linear > 0
    assert all(type(m) is onednn.OneDNNLinear for m in _linears(model))
    assert onednn.use_onednn(model) == 0  # already swapped
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    assert all(after[k] is before[k] and torch.equal(after[k], values[k]) for k in before)
    calls = _count_onednn_calls(monkeypatch)
    _close(_logits(model, ids), logits)
    assert len(calls) == n_linear  # one forward: every layer once, through oneDNN

    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight

    assert onednn.use_aten(model) == n_linear
    assert all(type(m) is torch.nn.Linear for m in _linears(model))
    assert onednn.use_aten(model) == 0
    assert torch.equal(_logits(model, ids), logits)  # PyTorch's own path again, bit for bit


@needs_onednn
def test_a_deep_copy_keeps_the_class_and_uses_its_own_weights(tiny_model):
    model, _ = tiny_model
    ids = _ids(model.config.vocab_size, seed=1)
    onednn.use_onednn(model)
    logits = _logits(model, ids)
    twin = copy.deepcopy(model)
    assert all(type(m) is onednn.OneDNNLinear for m in _linears(twin))
    if twin.config.tie_word_embeddings:
        assert twin.lm_head.weight is twin.model.embed_tokens.weight
    assert twin.lm_head.weight is not model.lm_head.weight
    assert torch.equal(_logits(twin, ids), logits)
    with torch.no_grad():
        twin.model.layers[0].mlp.down_proj.weight.add_(0.5)
        twin.lm_head.weight.mul_(2.0)
    changed = _logits(twin, ids)
    assert not torch.allclose(changed, logits, rtol=1e-3, atol=1e-3)
    assert torch.equal(_logits(model, ids), logits)  # the original is untouched
    # the copy's output is what PyTorch's layers give with the copy's weights
    onednn.use_aten(twin)
    _close(changed, _logits(twin, ids))


def _loss(model, ids):
    logp = model(input_ids=ids).logits.log_softmax(-1)
    pos = torch.tensor([1, 4, 7, 10])
    return logp[:, pos[:-1], ids[0, pos[1:]]].sum()


@needs_onednn
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad-checkpointing"])
def test_model_gradients_agree_with_pytorchs_layers(tiny_model_dir, checkpointing):
    from nashflow.models import load_model

    grads = []
    for swap in (False, True):
        model = load_model(tiny_model_dir, eval_mode=False)
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        if swap:
            assert onednn.use_onednn(model) > 0
        ids = _ids(model.config.vocab_size, seed=2)
        _loss(model, ids).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    aten, ours = grads
    assert aten.keys() == ours.keys()
    for name in aten:
        assert ours[name] is not None, name
        _close(ours[name], aten[name], rtol=1e-3, atol=1e-6)
    linear = [n for n in aten if "proj" in n]
    assert linear and all(aten[n].abs().max() > 0 for n in linear)


# ---------------------------------------------------------------------------------------------------
# 6. the setting


@needs_onednn
def test_applies():
    cpu = torch.device("cpu")
    assert onednn.applies("onednn", "cpu", torch.float32) is True
    assert onednn.applies("onednn", cpu, torch.float32) is True
    assert onednn.applies("aten", cpu, torch.float32) is False
    assert onednn.applies("onednn", cpu, torch.bfloat16) is False
    assert onednn.applies("onednn", cpu, torch.float16) is False
    for device in ("cuda", "cuda:0", torch.device("cuda"), "meta"):
        assert onednn.applies("onednn", device, torch.float32) is False
    for bad in ("mkl", "", "OneDNN"):
        with pytest.raises(ValueError, match="cpu_linear"):
            onednn.applies(bad, cpu, torch.float32)


# ---------------------------------------------------------------------------------------------------
# 7. the forward-only loader


@needs_onednn
@pytest.mark.parametrize("setting", ["onednn", "aten"])
def test_load_for_stage_follows_the_setting(tiny_model_dir, setting):
    from nashflow.models import load_for_stage, load_model

    model, chosen = load_for_stage(tiny_model_dir, {**SETTINGS, "cpu_linear": setting}, device="cpu")
    assert chosen["cpu_linear"] == setting and chosen["dtype"] == "float32"
    kinds = {type(m) for m in _linears(model)}
    assert kinds == ({onednn.OneDNNLinear} if setting == "onednn" else {torch.nn.Linear})
    plain = load_model(tiny_model_dir)
    ids = _ids(model.config.vocab_size, seed=3)
    _close(_logits(model, ids), _logits(plain, ids))


@needs_onednn
def test_load_for_stage_in_bf16_stays_aten(tiny_model_dir):
    from nashflow.models import load_for_stage

    model, chosen = load_for_stage(tiny_model_dir, {**SETTINGS, "dtype": "bfloat16", "cpu_linear": "onednn"},
                                   device="cpu")
    assert chosen["cpu_linear"] == "aten"
    assert all(type(m) is torch.nn.Linear for m in _linears(model))


# ---------------------------------------------------------------------------------------------------
# 8. the trainer


@pytest.fixture()
def pairs_dir(tmp_path, tiny_model):
    from test_model_units import _pairs_table

    model, tok = tiny_model
    _pairs_table(tmp_path, tok, model)
    return tmp_path


def _train(folder, model_dir, setting: str, out: str, monkeypatch) -> tuple[dict, int]:
    """Two optimizer steps of DPO with ``compute.cpu_linear`` = ``setting``: the saved weights and
    how many oneDNN matmuls ran."""
    from safetensors.torch import load_file

    from nashflow.io import read_provenance
    from nashflow.settings import LossConfig, TrainConfig
    from nashflow.training import train

    real = onednn.matmul
    calls = _count_onednn_calls(monkeypatch)
    try:
        train(policy_path=str(model_dir), pairs_path=str(folder / "pairs.parquet"),
              logps={"reference": [str(folder / "ref.parquet")]},
              output_dir=str(folder / out), metrics_path=str(folder / f"{out}.csv"),
              train_cfg=TrainConfig(learning_rate=1e-4, lr_scheduler="constant", batch_size=3, epochs=1,
                                    max_length=96, max_prompt_length=64, warmup_ratio=0.0, seed=0, report_to=(),
                                    checkpoint_every=0),
              loss_cfg=LossConfig(name="dpo", beta=0.1),
              progress=False, compute={"cpu_linear": setting})
    finally:
        monkeypatch.setattr(onednn, "matmul", real)
    assert read_provenance(folder / out)["config"]["compute"]["cpu_linear"] == setting
    return load_file(folder / out / "model.safetensors"), len(calls)


@needs_onednn
def test_the_trainer_follows_the_setting_and_is_reproducible(pairs_dir, tiny_model_dir, monkeypatch):
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    ours, n_ours = _train(pairs_dir, tiny_model_dir, "onednn", "onednn", monkeypatch)
    aten, n_aten = _train(pairs_dir, tiny_model_dir, "aten", "aten", monkeypatch)
    again, _ = _train(pairs_dir, tiny_model_dir, "onednn", "onednn2", monkeypatch)
    assert n_ours > 0 and n_aten == 0
    assert ours.keys() == aten.keys() == again.keys()
    moved = 0.0
    for k in aten:
        assert torch.equal(ours[k], again[k]), f"{k}: two oneDNN runs with one seed differ"
        # Adam's first steps move every weight by about the learning rate (2 steps at 1e-4): the
        # two runs differ by float32 rounding of the grads, far less than a step
        _close(ours[k], aten[k], rtol=0, atol=2e-5)
        moved = max(moved, (aten[k] - base[k]).abs().max().item())
    assert moved > 1e-4


@needs_onednn
def test_a_second_derivative_raises_instead_of_being_wrong():
    """The oneDNN op has no derivative of its own: differentiating the backward must fail loudly."""
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    (g,) = torch.autograd.grad(onednn.linear(x, w).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiable"):
        g.pow(2).sum().backward()


def test_where_onednn_linears_do_not_run_layers_stay_pytorchs(tiny_model_dir, monkeypatch):
    """A host where the check fails (not x86-64, no mkldnn, or the op disagrees): the default
    setting loads plain nn.Linear layers and says so in the provenance."""
    from nashflow.models import load_for_stage

    monkeypatch.setattr(onednn, "available", lambda: False)
    assert onednn.applies("onednn", "cpu", torch.float32) is False
    model, chosen = load_for_stage(tiny_model_dir, {**SETTINGS, "cpu_linear": "onednn"}, device="cpu")
    assert chosen["cpu_linear"] == "aten"
    assert _linears(model) and all(type(m) is torch.nn.Linear for m in _linears(model))
