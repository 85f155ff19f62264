"""Response log-probabilities: one code path for the log-prob stage and the trainer.

A sequence is the chat-templated prompt (with the assistant header) followed by the response
tokens, plus EOS when the response finished by itself. Only response tokens are scored.
Sequences are sorted by length and batched under a token budget, and the LM head runs only
on response positions (no full-vocabulary tensor for prompt tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nashflow.generate import encode_prompt


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


def collate(encoded: Sequence[Encoded], pad_id: int, device=None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` tensors."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    resp = torch.zeros((len(encoded), width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        resp[i, e.response_start:n] = True
    if device is not None:
        ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
    return ids, attn, resp


def _split_head(model):
    """(decoder body, lm_head) when the model exposes them, else None (use the full forward)."""
    get_dec = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if get_dec is None or head is None:
        return None
    body = get_dec()
    if body is None or body is model:
        return None
    return body, head


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log π(y_t | x, y_<t) on response positions, zero elsewhere; shape [B, T-1].

    Position ``t`` of the result scores token ``t+1`` of ``input_ids``.
    """
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:]
    split = _split_head(model)
    if split is not None:
        body, head = split
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        logits = head(hidden[mask]).float()
        softcap = getattr(model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][mask].float()
    picked = torch.gather(logits.log_softmax(-1), -1, labels[mask].unsqueeze(-1)).squeeze(-1)
    out = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device)
    return out.masked_scatter(mask, picked)


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays under ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, width = [], [], 0
    for i in order:
        w = max(width, lengths[i])
        if cur and (w * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, w = [], lengths[i]
        cur.append(i)
        width = w
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def sequence_logps(model, encoded: Sequence[Encoded], pad_id: int, *, max_tokens: int = 4096,
                   progress: bool = True, per_token: bool = False):
    """Summed response log-probs and response token counts for every encoded sequence.

    With ``per_token`` also returns, per sequence, the list of response-token log-probs.
    """
    device = next(model.parameters()).device
    sums = np.zeros(len(encoded), dtype=np.float64)
    counts = np.array([e.n_response for e in encoded], dtype=np.int64)
    tokens: list[list[float]] = [[] for _ in encoded]
    batches = length_batches([len(e.input_ids) for e in encoded], max_tokens)
    bar = tqdm(total=len(encoded), desc="log-probs", unit="seq", disable=not progress, mininterval=5)
    for idx in batches:
        ids, attn, resp = collate([encoded[i] for i in idx], pad_id, device)
        lp = token_logps(model, ids, attn, resp)
        sums[idx] = lp.sum(-1).double().cpu().numpy()
        if per_token:
            mask = resp[:, 1:].cpu()
            lp_cpu = lp.float().cpu()
            for row, i in enumerate(idx):
                tokens[i] = lp_cpu[row][mask[row]].tolist()
        bar.update(len(idx))
    bar.close()
    return (sums, counts, tokens) if per_token else (sums, counts)
