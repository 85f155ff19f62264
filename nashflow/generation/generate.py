"""Sampling responses with the transformers backend.

Prompts are sorted by length and decoded in batches, so that left padding is minimal; the K
samples of a prompt come from one prefill of it (``nashflow.generation.decode``). Each batch is seeded from
(seed, batch number): a re-run with the same config gives the same samples.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from tqdm.auto import tqdm

from nashflow.errors import DataError
from nashflow.generation.sampling import Sampler
from nashflow.seeding import derive_seed
from nashflow.settings import SamplingConfig

log = logging.getLogger(__name__)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the chat-templated prompt, ending with the assistant header."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def stop_ids(tokenizer, generation_config) -> set[int]:
    """Token ids that end a response: every ``eos_token_id`` of the generation config and the tokenizer's.
    Both backends stop on, and drop, exactly these."""
    ids = set()
    for src in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update(src if isinstance(src, (list, tuple)) else [src])
    return ids


def _stop_ids(tokenizer, model) -> set[int]:
    return stop_ids(tokenizer, model.generation_config)


def encode_prompts(tokenizer, prompts: pd.DataFrame, cfg: SamplingConfig, context: int | None) -> list[tuple]:
    """``(prompt_id, messages, token ids)`` per prompt: chat-templated, cut from the left to
    ``cfg.max_prompt_length``; a prompt that cannot fit ``context`` with the new tokens is an error."""
    encoded = []
    for pid, msgs in zip(prompts["prompt_id"], prompts["messages"]):
        ids = encode_prompt(tokenizer, list(msgs))
        if len(ids) > cfg.max_prompt_length:
            ids = ids[-cfg.max_prompt_length:]  # keep the end: the question and the assistant header
        if context and len(ids) + cfg.max_new_tokens > context:
            raise DataError(
                f"prompt {pid} has {len(ids)} tokens after the chat template; with {cfg.max_new_tokens} new tokens "
                f"it does not fit the model's context of {context} tokens. Shorten or remove that prompt, or lower "
                f"generation.max_prompt_length (prompts are cut from the left) or max_new_tokens")
        encoded.append((pid, list(msgs), ids))
    return encoded


def finish_sample(tokenizer, new_ids, stop: set[int]) -> tuple[list[int], str, str]:
    """``(response ids, text, finish_reason)`` of generated ids: cut before the first stop id
    (``stop``) or run to the token limit (``length``); the text is decoded without special tokens."""
    toks, finish = list(new_ids), "length"
    for pos, t in enumerate(toks):
        if t in stop:
            toks, finish = toks[:pos], "stop"
            break
    return toks, tokenizer.decode(toks, skip_special_tokens=True).strip(), finish


def generate_samples(model, tokenizer, prompts: pd.DataFrame, cfg: SamplingConfig, *, seed: int,
                     generator: str, progress: bool = True, mixture_ref=None, mixture_coef: float = 0.5,
                     sample_offset: int = 0) -> pd.DataFrame:
    """Sample ``cfg.samples_per_prompt`` responses for every row of ``prompts``.

    ``prompts`` needs columns ``prompt_id`` and ``messages``. Returns the samples table
    (see docs/data-contracts.md): one row per (prompt_id, sample_index). With ``mixture_ref``
    the samples come from Nash-MD's geometric mixture of ``model`` and ``mixture_ref``
    (``sampler`` = ``mixture``); sample indices start at ``sample_offset``.

    Prompts are sorted by length (longest first: memory peaks early, fails fast) and decoded
    ``batch_size // K`` prompts (at least one) at a time, each prompt's K samples from one prefill
    (:func:`nashflow.generation.decode.sample_tokens`); batch b is seeded with ``derive_seed(seed, b)``.
    """
    from nashflow.generation.decode import sample_tokens

    context = getattr(model.config, "max_position_embeddings", None)
    encoded = encode_prompts(tokenizer, prompts, cfg, context)
    k = cfg.samples_per_prompt
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][2]), i))
    stop = _stop_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop))
    sampler = Sampler(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    per_batch = max(1, cfg.batch_size // k)
    out_rows = []
    bar = tqdm(total=len(encoded) * k, desc="generate", unit="sample", disable=not progress, mininterval=5)
    for b, start in enumerate(range(0, len(order), per_batch)):
        batch = order[start:start + per_batch]
        batch_seed = derive_seed(seed, b)
        torch.manual_seed(batch_seed)
        new = sample_tokens(model, [encoded[i][2] for i in batch], samples_per_prompt=k,
                            max_new_tokens=cfg.max_new_tokens, stop_ids=stop, pad_id=pad_id, sampler=sampler,
                            ref=mixture_ref, mixture_coef=mixture_coef).cpu().tolist()
        for row, (i, j) in enumerate((i, j) for i in batch for j in range(k)):
            toks, text, finish = finish_sample(tokenizer, new[row], stop)
            pid, msgs, ids = encoded[i]
            out_rows.append({
                "prompt_id": pid, "messages": msgs, "sample_index": j + sample_offset, "response": text,
                "token_count": len(toks), "prompt_tokens": len(ids), "finish_reason": finish,
                "seed": batch_seed, "generator": generator,
                "sampler": "policy" if mixture_ref is None else "mixture",
            })
        bar.update(len(batch) * k)
    bar.close()
    df = pd.DataFrame(out_rows)
    if len(df):
        df = df.sort_values(["prompt_id", "sample_index"]).reset_index(drop=True)
    return df


SAMPLE_COLUMNS = ["prompt_id", "messages", "sample_index", "response", "token_count", "prompt_tokens",
                  "finish_reason", "seed", "generator", "sampler"]


def generate_table(model, tok, prompts: pd.DataFrame, cfg: SamplingConfig, *, seed: int, generator: str,
                   **kwargs) -> pd.DataFrame:
    """``generate_samples`` (keyword arguments passed on), or an empty samples table for no prompts."""
    if len(prompts) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SAMPLE_COLUMNS})
    return generate_samples(model, tok, prompts, cfg, seed=seed, generator=generator, progress=True, **kwargs)


def policy_and_mixture(model, tok, prompts: pd.DataFrame, cfg: SamplingConfig, *, seed: int, generator: str,
                       reference, reference_name: str, coef: float) -> pd.DataFrame:
    """Nash-MD's samples: per prompt one from the policy (``sample_index`` 0) and one from the
    geometric mixture of policy and ``reference`` with weight ``coef`` (index 1, its own seed)."""
    from dataclasses import replace

    one = replace(cfg, samples_per_prompt=1)
    df = generate_table(model, tok, prompts, one, seed=seed, generator=generator)
    if not len(prompts):
        return df
    mix = generate_table(model, tok, prompts, one, seed=derive_seed(seed, "mixture"),
                         generator=f"mixture({generator},{reference_name},{coef})", mixture_ref=reference,
                         mixture_coef=coef, sample_offset=1)
    return pd.concat([df, mix]).sort_values(["prompt_id", "sample_index"]).reset_index(drop=True)
