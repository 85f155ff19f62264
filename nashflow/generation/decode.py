"""The decoding loop of the transformers backend: K samples per prompt from one prefill.

``sample_tokens`` runs the prompts of a batch through the model once (left-padded, logits of the
last position only), repeats each prompt's KV cache K times, and decodes the K·P rows together:

* the prompt is computed once per prompt, not once per sample (``generate`` with K copies of a
  prompt, or ``num_return_sequences=K``, computes it K times);
* the cache of every layer is reserved for the whole response at the start (``_ReservedLayer``):
  a step writes its keys and values in place, where ``DynamicCache`` concatenates the whole cache
  at every step;
* each step is one forward of one token per row, then one draw per row from
  :class:`nashflow.generation.sampling.Sampler` (temperature, top-k, top-p; one uniform variate per row);
* rows that finished (a stop id) are fed the pad id and keep decoding until every row has stopped
  or ``max_new_tokens`` is reached, so that the random stream, and with it every row's tokens,
  does not depend on when the other rows stop.

Greedy decoding (temperature 0) gives ``generate``'s tokens (tested). With ``ref`` the rows are
sampled from Nash-MD's geometric mixture of the two models (:func:`mixture_logprobs`); both
models keep their own caches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from nashflow.torchutil import inference_mode, input_device


def mixture_logprobs(policy_logits: torch.Tensor, ref_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Nash-MD's geometric mixture π_mix(·) ∝ π_ref(·)^α · π_θ(·)^(1−α):
    log π_mix = log_softmax(α·z_ref + (1−α)·z_θ) over the last dimension."""
    return torch.log_softmax(alpha * ref_logits.float() + (1.0 - alpha) * policy_logits.float(), dim=-1)


class _ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in tensors reserved for ``capacity`` positions,
    filled with the prefill's ``keys``/``values`` [P, H, n, D], each row repeated ``repeats`` times;
    ``update`` writes in place and the layer's ``keys``/``values`` are views of the filled part."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        b, h, n, _ = keys.shape
        self._k = keys.new_empty((b * repeats, h, capacity, keys.shape[-1]))
        self._v = values.new_empty((b * repeats, h, capacity, values.shape[-1]))
        self._k.view(b, repeats, h, capacity, -1)[:, :, :, :n] = keys[:, None]
        self._v.view(b, repeats, h, capacity, -1)[:, :, :, :n] = values[:, None]
        self._fill(n)

    def _fill(self, n: int) -> None:
        self.n, self.keys, self.values = n, self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self._k[:, :, self.n:self.n + n] = key_states
        self._v[:, :, self.n:self.n + n] = value_states
        self._fill(self.n + n)
        return self.keys, self.values


def _reserved_cache(prefill: Cache, repeats: int, capacity: int) -> Cache:
    """The prefill cache, every prompt's rows repeated ``repeats`` times, in reserved layers; where a
    layer is not a plain ``DynamicLayer`` (sliding windows, other special layers), transformers' own
    cache repeated."""
    if any(type(layer) is not DynamicLayer for layer in prefill.layers):
        prefill.batch_repeat_interleave(repeats)
        return prefill
    return Cache(layers=[_ReservedLayer(layer.keys, layer.values, repeats, capacity) for layer in prefill.layers])


def _decode_attention(device: torch.device):
    """On a CPU, SDPA's math kernel for one-token steps: twice as fast there as the flash kernel
    at one query per row (SmolLM2's shapes, 64 rows, 80-120 cached positions, measured)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class _Stream:
    """One model's side of the loop: its KV cache and the logits of the next position."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 repeats: int, capacity: int):
        self.model = model
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1].float().repeat_interleave(repeats, dim=0)
        self.cache = _reserved_cache(out.past_key_values, repeats, capacity)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        with _decode_attention(tokens.device):
            out = self.model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=self.cache, use_cache=True)
        self.logits = out.logits[:, -1].float()


@inference_mode
def sample_tokens(model, prompts: Sequence[Sequence[int]], *, samples_per_prompt: int, max_new_tokens: int,
                  stop_ids: set[int], pad_id: int, sampler: Callable[[torch.Tensor], torch.Tensor],
                  ref=None, mixture_coef: float = 0.5) -> torch.Tensor:
    """New tokens ``[P·K, n ≤ max_new_tokens]`` for ``prompts`` (token ids, any lengths), K =
    ``samples_per_prompt`` rows per prompt, prompt-major (row ``p·K + j`` is sample j of prompt p).

    ``sampler`` maps float32 logits [rows, V] to one token per row (:class:`nashflow.generation.sampling.Sampler`;
    it draws from the global torch generator: seed it before the call). After a stop id a row holds
    ``pad_id``. With ``ref`` the logits are those of the geometric mixture with coefficient
    ``mixture_coef`` on ``ref``.
    """
    device = input_device(model)
    k, n_prompts = samples_per_prompt, len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((n_prompts, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n_prompts, width + max_new_tokens), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
        mask[i, width - len(ids):width] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    streams = [_Stream(m, input_ids, mask[:, :width], positions, k, width + max_new_tokens)
               for m in ((model,) if ref is None else (model, ref))]

    mask = mask.repeat_interleave(k, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(k, dim=0) + 1
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    unfinished = torch.ones(n_prompts * k, dtype=torch.bool, device=device)
    new = torch.full((n_prompts * k, max_new_tokens), pad_id, dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        logits = streams[0].logits if ref is None else mixture_logprobs(streams[0].logits, streams[1].logits,
                                                                         mixture_coef)
        tokens = torch.where(unfinished, sampler(logits), pad_id)
        new[:, t] = tokens
        unfinished &= ~torch.isin(tokens, stop)
        if t + 1 == max_new_tokens or not bool(unfinished.any()):
            return new[:, :t + 1]
        mask[:, width + t] = 1
        for s in streams:
            s.step(tokens, mask[:, :width + t + 1], next_pos + t)
    return new[:, :0]
