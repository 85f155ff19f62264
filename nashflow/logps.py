"""Response log-probabilities: one code path for the log-prob stage and the trainer.

A sequence is the chat-templated prompt (with the assistant header) followed by the response
tokens, plus EOS when the response finished by itself. Only response tokens are scored, and the
LM head runs only on response positions (no full-vocabulary tensor for prompt tokens).

Two ways to batch, with equal results (tested to 1e-4 per token against one unpadded forward per
sequence):

- packed (default where the attention implementation takes a 4D mask: ``sdpa``, ``eager``): the
  responses that share a prompt (a pair's chosen and rejected, a prompt's K samples) form one
  group, ``prompt | response 1 | response 2 | ...``, in which each response attends to the prompt
  and to itself only and takes the position ids it would have alone; the prompt is computed once.
  Groups are packed first-fit into rows (no padding between them) and rows are batched under a
  token budget. See :mod:`nashflow.batching` (the layouts) and :func:`packed_logps`.
- flat (flash-attention, whose kernels take no 4D mask): whole sequences one after another in one
  row per batch, their position ids restarting at 0; transformers turns the position ids into
  variable-length attention (and, for sdpa/eager, into the equivalent block mask, which is how the
  layout is tested on a CPU). Prompts are not shared.
- padded: sequences sorted by length, right-padded batches (:func:`nashflow.batching.collate`,
  :func:`token_logps`), used for other attention implementations and for per-token outputs in
  the trainer's [B, T] layout (Nash-MD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nashflow.batching import PackedBatch, build_packed, collate, length_batches, packed_batches, prompt_groups
from nashflow.generation.generate import encode_prompt
from nashflow.torchutil import inference_mode, input_device, unwrap


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    response_start: int  # index of the first response token

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


def encode_pair_side(tokenizer, messages: list[dict], response: str, *, finished: bool, max_length: int,
                     max_prompt_length: int) -> Encoded:
    """Encode prompt + response; truncate the prompt from the left, then the response from the right."""
    prompt = encode_prompt(tokenizer, list(messages))
    resp = tokenizer(response, add_special_tokens=False)["input_ids"]
    if finished and tokenizer.eos_token_id is not None:
        resp = resp + [tokenizer.eos_token_id]
    if not resp:  # an empty unfinished response still needs one scored token
        resp = [tokenizer.eos_token_id]
    if len(prompt) + len(resp) > max_length:
        prompt = prompt[-max_prompt_length:]
        resp = resp[: max(1, max_length - len(prompt))]
    return Encoded(prompt + resp, len(prompt))


def encode_pairs(tokenizer, pairs, sides: Sequence[str] = ("chosen", "rejected"), *, max_length: int,
                 max_prompt_length: int) -> list[Encoded]:
    """Every response of a pairs table under its prompt: all rows of ``sides[0]``, then of ``sides[1]``.

    The one encoding of pairs: the log-prob stage and the trainer both call it, so that reference
    and policy log-probs are taken over the same tokens."""
    return [encode_pair_side(tokenizer, list(msgs), text, finished=fin == "stop", max_length=max_length,
                             max_prompt_length=max_prompt_length)
            for side in sides for msgs, text, fin in zip(pairs["messages"], pairs[side], pairs[f"{side}_finish"])]


def split_head(model):
    """(decoder body, lm_head) when the model exposes them, else None (used by the judge's prefix cache)."""
    get_dec = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if get_dec is None or head is None:
        return None
    body = get_dec()
    if body is None or body is model:
        return None
    return body, head


def logits_at(model, src: torch.Tensor, **inputs) -> torch.Tensor:
    """Logits [N, V] at the flat positions ``src`` (row * width + column) of the model's inputs.

    The forward is the (possibly wrapped) model's own, so DDP, DeepSpeed's engine (ZeRO-3's
    parameter hooks), FSDP2's root module and accelerate's autocast all apply; the model's own
    output code (e.g. Gemma-2's logit soft-capping) too. A pre-hook on the output embeddings hands
    the LM head only the ``src`` hidden states, so no full-vocabulary tensor exists for the other
    positions (``logits_to_keep=0`` keeps the model from slicing them first).
    """
    def pick(_module, args):
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1])[src.to(hidden.device)],)

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(pick)
    try:
        out = model(**inputs, logits_to_keep=0, use_cache=False)
    finally:
        handle.remove()
    return out.logits.reshape(len(src), -1)


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log π(y_t | x, y_<t) on response positions, zero elsewhere; shape [B, T-1].

    Position ``t`` of the result scores token ``t+1`` of ``input_ids``.
    """
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:]
    width = input_ids.shape[1]
    rows, cols = mask.nonzero(as_tuple=True)
    logits = logits_at(model, rows * width + cols, input_ids=input_ids, attention_mask=attention_mask).float()
    picked = -torch.nn.functional.cross_entropy(logits, labels[rows, cols].to(logits.device), reduction="none")
    picked = picked.to(input_ids.device)
    out = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)
    return out.index_put((rows, cols), picked)


#: attention implementations that take packed sequences separated by position ids alone (varlen kernels)
FLAT_ONLY = ("flash_attention_2", "flash_attention_3")


def packing_mode(model) -> str | None:
    """How ``model`` (or the model inside its DDP / DeepSpeed wrapper) can take packed rows.

    ``tree`` where the attention implementation takes a custom 4D mask (``sdpa``, ``eager``): a
    group's responses share one copy of its prompt. ``flat`` for flash-attention: whole sequences
    (prompt and response) one after another in a single row, told apart by their position ids
    restarting at 0 (transformers' padding-free path), no mask. ``None``: padded batches.
    """
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or not hasattr(inner, "get_output_embeddings"):
        return None
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl in ("sdpa", "eager"):
        return "tree"
    return "flat" if impl in FLAT_ONLY else None


def can_pack(model) -> bool:
    return packing_mode(model) is not None


def _mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4D boolean mask as the model's attention takes it: sdpa takes booleans; eager adds the mask
    to its scores, so it gets 0 where attention is allowed and the dtype's minimum elsewhere
    (a boolean there would add 1 and 0 and mask nothing)."""
    inner = unwrap(model)
    if getattr(inner.config, "_attn_implementation", None) != "eager":
        return mask
    dtype = inner.get_input_embeddings().weight.dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def packed_logps(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs per sequence of ``batch.order`` and the flat per-token log-probs.

    One forward over the packed rows (through the model's own forward, see :func:`logits_at`); the
    LM head runs only on the positions that predict a response token. log π(y) is
    ``-cross_entropy(logits, y)``: log-softmax and gather in one fused call (faster than
    log_softmax + gather or logit[y] - logsumexp on CPU).
    """
    inputs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = _mask_for(model, batch.attention_mask)
    logits = logits_at(model, batch.src, **inputs)
    # a model split across GPUs returns its logits on the last one
    tok = -torch.nn.functional.cross_entropy(logits.float(), batch.tgt.to(logits.device), reduction="none")
    tok = tok.to(batch.tgt.device)
    sums = torch.zeros(len(batch.order), dtype=tok.dtype, device=tok.device).index_add(0, batch.seq, tok)
    return sums, tok


@inference_mode
def sequence_logps(model, encoded: Sequence[Encoded], pad_id: int, *, max_tokens: int = 4096,
                   progress: bool = True, per_token: bool = False, packing: bool | str | None = None,
                   groups: Sequence[Sequence[int]] | None = None):
    """Summed response log-probs and response token counts for every encoded sequence.

    With ``per_token`` also returns, per sequence, the list of response-token log-probs. Packed
    (see the module docstring) by default as the model allows (:func:`packing_mode`); ``packing``
    False pads, ``"tree"`` or ``"flat"`` forces a layout. ``groups`` says which sequences may share
    their prompt in tree rows (default: all with the same prompt).
    """
    device = input_device(model)
    sums = np.zeros(len(encoded), dtype=np.float64)
    counts = np.array([e.n_response for e in encoded], dtype=np.int64)
    tokens: list[list[float]] = [[] for _ in encoded]
    if packing is None or packing is True:
        packing = packing_mode(model) or ("tree" if packing else None)
    if packing == "flat" and encoded:
        total = sum(len(e.input_ids) for e in encoded)
        rows = packed_batches(encoded, [[i] for i in range(len(encoded))], max_tokens, width=min(total, max_tokens))
        batches = _packed_results(model, encoded, rows, pad_id, device, per_token, flat=True)
    elif packing and encoded and min(e.response_start for e in encoded) >= 1:
        rows = packed_batches(encoded, prompt_groups(encoded, groups), max_tokens)
        batches = _packed_results(model, encoded, rows, pad_id, device, per_token)
    else:
        batches = _padded_results(model, encoded, pad_id, max_tokens, device, per_token)
    bar = tqdm(total=len(encoded), desc="log-probs", unit="seq", disable=not progress, mininterval=5)
    for order, batch_sums, batch_tokens in batches:
        sums[order] = batch_sums
        for i, t in zip(order, batch_tokens):
            tokens[i] = t
        bar.update(len(order))
    bar.close()
    return (sums, counts, tokens) if per_token else (sums, counts)


def _packed_results(model, encoded, batches, pad_id, device, per_token, flat=False):
    """(encoded indices, summed log-probs, per-token lists or nothing) per batch of packed rows."""
    for rows in batches:
        batch = build_packed(encoded, rows, pad_id, device, flat=flat)
        s, tok = packed_logps(model, batch)
        per = []
        if per_token:
            tok_cpu, seq_cpu = tok.float().cpu(), batch.seq.cpu()
            per = [tok_cpu[seq_cpu == j].tolist() for j in range(len(batch.order))]
        yield batch.order, s.double().cpu().numpy(), per


def _padded_results(model, encoded, pad_id, max_tokens, device, per_token):
    """(encoded indices, summed log-probs, per-token lists or nothing) per length-sorted padded batch."""
    for idx in length_batches([len(e.input_ids) for e in encoded], max_tokens):
        ids, attn, resp = collate([encoded[i] for i in idx], pad_id, device)
        lp = token_logps(model, ids, attn, resp)
        per = []
        if per_token:
            mask, lp_cpu = resp[:, 1:].cpu(), lp.float().cpu()
            per = [lp_cpu[row][mask[row]].tolist() for row in range(len(idx))]
        yield idx, lp.sum(-1).double().cpu().numpy(), per
