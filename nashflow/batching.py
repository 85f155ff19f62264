"""Arranging encoded sequences into model inputs: padded batches, length batches, packed rows.

Nothing here computes log-probs (that is :mod:`nashflow.logps`). The batching of indices
(:func:`length_batches`, :func:`prompt_groups`, :func:`pack_rows`, ...) needs no torch, so that
the workflow can use it while it builds its DAG; the functions that build tensors
(:func:`collate`, :func:`build_packed`) import torch themselves.

Packed layout: the responses that share a prompt (a pair's chosen and rejected, a prompt's K
samples) form one group, ``prompt | response 1 | response 2 | ...``; groups are packed first-fit
into rows (no padding between them) and rows are batched under a token budget. Flat rows hold
whole sequences one after another, told apart by position ids restarting at 0 (see
:func:`nashflow.logps.packing_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from nashflow.logps import Encoded


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None):
    """``input_ids`` and ``attention_mask`` of token lists padded on the right to the longest, and
    their lengths (the one padding of log-probs, training and model-backed scorers)."""
    import torch

    lens = torch.tensor([len(x) for x in seqs])
    ids = torch.full((len(seqs), int(lens.max())), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attn[i, : len(x)] = 1
    if device is not None:
        ids, attn = ids.to(device), attn.to(device)
    return ids, attn, lens


def collate(encoded: Sequence[Encoded], pad_id: int, device=None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` tensors."""
    import torch

    ids, attn, _ = right_pad([e.input_ids for e in encoded], pad_id)
    resp = torch.zeros(ids.shape, dtype=torch.bool)
    for i, e in enumerate(encoded):
        resp[i, e.response_start:len(e.input_ids)] = True
    if device is not None:
        ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
    return ids, attn, resp


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


def prompt_groups(encoded: Sequence[Encoded], candidates: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Groups of sequence indices that share their prompt tokens exactly.

    ``candidates`` (e.g. a pair's chosen and rejected) limits the sharing to within each candidate
    group; without it every sequence with the same prompt joins one group.
    """
    if candidates is None:
        candidates = [range(len(encoded))]
    groups: list[list[int]] = []
    for cand in candidates:
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i in cand:
            e = encoded[i]
            by_prompt.setdefault(tuple(e.input_ids[: e.response_start]), []).append(i)
        groups.extend(by_prompt.values())
    return groups


def group_length(encoded: Sequence[Encoded], group: Sequence[int]) -> int:
    return encoded[group[0]].response_start + sum(encoded[i].n_response for i in group)


def split_groups(encoded: Sequence[Encoded], groups: Sequence[Sequence[int]], width: int) -> list[list[int]]:
    """Groups cut so that each packed group fits ``width`` tokens (a cut repeats the prompt)."""
    out = []
    for g in groups:
        cur: list[int] = []
        for i in g:
            if cur and group_length(encoded, cur + [i]) > width:
                out.append(cur)
                cur = []
            cur.append(i)
        out.append(cur)
    return out


def pack_rows(encoded: Sequence[Encoded], groups: Sequence[Sequence[int]], width: int) -> list[list[list[int]]]:
    """Groups packed first-fit (longest first) into rows of at most ``width`` tokens."""
    sized = sorted(((group_length(encoded, g), list(g)) for g in groups), key=lambda x: -x[0])
    rows: list[list[list[int]]] = []
    free: list[int] = []
    for n, g in sized:
        if n > width:
            raise ValueError(f"a packed group of {n} tokens does not fit rows of {width}")
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(g)
                free[r] -= n
                break
        else:
            rows.append([g])
            free.append(width - n)
    return rows


@dataclass
class PackedBatch:
    """Packed rows as model inputs, and where each response token is read from.

    ``src[k]`` is the flat position (row * width + column) whose hidden state predicts response token
    ``tgt[k]`` of sequence ``seq[k]`` (an index into ``order``, the encoded indices in this batch).
    """

    input_ids: torch.Tensor  # [B, W]
    position_ids: torch.Tensor  # [B, W]
    attention_mask: torch.Tensor | None  # [B, 1, W, W] bool, True = may attend; None for flat rows
    src: torch.Tensor  # [N]
    tgt: torch.Tensor  # [N]
    seq: torch.Tensor  # [N]
    order: list[int]
    tokens: int  # real tokens in the rows (prompts counted once per group)


def build_packed(encoded: Sequence[Encoded], rows: Sequence[Sequence[Sequence[int]]], pad_id: int,
                 device=None, flat: bool = False) -> PackedBatch:
    """Model inputs for packed rows; ``flat`` rows (groups of one sequence each) get no mask: the
    position ids, restarting at 0 for each sequence, separate them (see :func:`packing_mode`)."""
    import torch

    width = max(sum(group_length(encoded, g) for g in row) for row in rows)
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    block = torch.zeros((n_rows, width), dtype=torch.long)  # 0 = padding
    branch = torch.zeros((n_rows, width), dtype=torch.long)  # 0 = prompt, k = k-th response of the group
    src, tgt, seq, order = [], [], [], []
    tokens = 0
    for r, row in enumerate(rows):
        cur = 0
        for b, g in enumerate(row, start=1):
            p = encoded[g[0]].response_start
            prompt_ids = encoded[g[0]].input_ids[:p]
            ids[r, cur:cur + p] = torch.tensor(prompt_ids)
            pos[r, cur:cur + p] = torch.arange(p)
            block[r, cur:cur + p] = b
            last_prompt = r * width + cur + p - 1
            cur += p
            for k, i in enumerate(g, start=1):
                resp = encoded[i].input_ids[p:]
                n = len(resp)
                ids[r, cur:cur + n] = torch.tensor(resp)
                pos[r, cur:cur + n] = torch.arange(p, p + n)
                block[r, cur:cur + n] = b
                branch[r, cur:cur + n] = k
                src += [last_prompt] + list(range(r * width + cur, r * width + cur + n - 1))
                tgt += resp
                seq += [len(order)] * n
                order.append(i)
                cur += n
        tokens += cur
    mask = None
    if not flat:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same_block = block[:, :, None] == block[:, None, :]
        same_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
        mask = (same_block & same_branch & causal)[:, None]
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    out = PackedBatch(ids, pos, mask, t(src), t(tgt), t(seq), order, tokens)
    if device is not None:
        for name in ("input_ids", "position_ids", "attention_mask", "src", "tgt", "seq"):
            if getattr(out, name) is not None:
                setattr(out, name, getattr(out, name).to(device))
    return out


def packed_batches(encoded: Sequence[Encoded], groups: Sequence[Sequence[int]], max_tokens: int,
                   width: int | None = None) -> list[list[list[list[int]]]]:
    """Rows of packed groups, batched so that rows x width stays under ``max_tokens`` (at least one row).

    Rows are as wide as the longest group (capped at ``max_tokens``; longer groups are cut) unless
    ``width`` is given; a single sequence always fits.
    """
    longest = max(len(e.input_ids) for e in encoded)
    if width is None:
        width = min(max(group_length(encoded, g) for g in groups), max_tokens)
    width = max(width, longest)
    rows = pack_rows(encoded, split_groups(encoded, groups, width), width)
    rows.sort(key=lambda row: -sum(group_length(encoded, g) for g in row))
    per_batch = max(1, max_tokens // width)
    return [rows[i:i + per_batch] for i in range(0, len(rows), per_batch)]
