"""A tiny policy built from nothing (``base_model.tiny``): a random causal LM, a byte-level tokenizer
and a ChatML template, so that a whole iteration of the DAG takes seconds on a CPU.

The tokenizer has one token per byte (ids 2-257, byte b at id b + 2, no merges) and two special
tokens, ``<|im_start|>`` (0) and ``<|im_end|>`` (1, end of a turn and padding): it reads any prompt
and needs no training. The model is a small Llama with tied embeddings. With ``first_token`` the
random model is fitted (Adam on cross-entropy against a fixed target) so that its first response
token follows a chosen distribution: the tokens that the matrix-game action rule selects with the
same ``tokens`` pattern, the k-th with probability ``probs[k mod n]`` split evenly among the tokens
of the same k mod n. It is fitted on random texts, so any prompt gets about that distribution.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULTS: dict[str, Any] = {"seed": 0, "hidden_size": 32, "layers": 2, "heads": 4, "first_token": None,
                            "fit_steps": 150}


def settings(tiny: dict | None) -> dict[str, Any]:
    """``base_model.tiny`` with defaults filled in."""
    s = {**DEFAULTS, **(tiny or {})}
    if s["first_token"] is not None:
        s["first_token"] = {"tokens": ".+", "probs": [1.0, 1.0, 1.0], **s["first_token"]}
    return s


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def build_tokenizer():
    """The byte-level ``tokenizers.Tokenizer`` (deterministic, no training, no file)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({b2u[b]: len(SPECIAL_TOKENS) + b for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def hf_tokenizer():
    """The byte-level tokenizer as a transformers tokenizer with the ChatML template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), bos_token=SPECIAL_TOKENS[0],
                                   eos_token=SPECIAL_TOKENS[1], pad_token=SPECIAL_TOKENS[1])
    fast.chat_template = CHATML
    return fast


def first_token_target(spec: dict[str, Any], vocab_size: int) -> np.ndarray:
    """The fitted first-token distribution: ``probs[k mod n]`` split over the selected tokens of k mod n."""
    from nashflow.scorers.matrix_game import action_map

    probs = np.asarray(spec["probs"], dtype=np.float64)
    groups = action_map(build_tokenizer(), spec["tokens"], len(probs))
    target = np.zeros(vocab_size)
    for a, p in enumerate(probs / probs.sum()):
        members = np.flatnonzero(groups == a)
        target[members] = p / len(members)
    return target


def check_settings(tiny: dict[str, Any]) -> None:
    """ValueError naming the ``base_model.tiny`` key that cannot work (before any job runs)."""
    import re

    from nashflow.scorers.matrix_game import action_map, missing_actions

    s = settings(tiny)
    if s["hidden_size"] % s["heads"]:
        raise ValueError(f"base_model.tiny.heads: {s['heads']} does not divide hidden_size "
                         f"{s['hidden_size']}")
    spec = s["first_token"]
    if spec is None:
        return
    try:
        re.compile(spec["tokens"])
    except re.error as err:
        raise ValueError(f"base_model.tiny.first_token.tokens: not a regular expression ({err})") from None
    n = len(spec["probs"])
    missing = missing_actions(action_map(build_tokenizer(), spec["tokens"], n), n)
    if missing:
        raise ValueError(f"base_model.tiny.first_token.tokens: {spec['tokens']!r} selects no token of "
                         f"the tiny tokenizer for probs position(s) {missing}")
    if sum(spec["probs"]) <= 0:
        raise ValueError("base_model.tiny.first_token.probs: the probabilities sum to 0")


def _random_prompts(rng: np.random.Generator, n: int) -> list[list[dict]]:
    """Random lowercase texts of 1-24 words as user turns (what the fit generalises from)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for _ in range(n):
        words = ["".join(rng.choice(letters, size=rng.integers(1, 9))) for _ in range(rng.integers(1, 25))]
        text = " ".join(words).capitalize() + rng.choice(["?", ".", "!"])
        out.append([{"role": "user", "content": text}])
    return out


def fit_first_token(model, tok, target: np.ndarray, *, steps: int, seed: int, batch: int = 16,
                    lr: float = 1e-2) -> float:
    """Fit the next-token distribution after the assistant header to ``target`` on random prompts;
    returns the last batch's KL(target ‖ model) in nats. Loss: ``−Σ_v target_v·log π(v | prompt)``."""
    import torch

    from nashflow.generation.generate import encode_prompt

    rng = np.random.default_rng(seed)
    goal = torch.tensor(target, dtype=torch.float32)
    entropy = float(-(goal[goal > 0] * goal[goal > 0].log()).sum())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        ids = [encode_prompt(tok, m) for m in _random_prompts(rng, batch)]
        width = max(map(len, ids))
        x = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((batch, width), dtype=torch.long)
        for j, row in enumerate(ids):  # left padding, as the samplers do
            x[j, width - len(row):] = torch.tensor(row)
            attn[j, width - len(row):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=x, attention_mask=attn, position_ids=pos).logits[:, -1, :]
        loss = -(goal * torch.log_softmax(logits.float(), -1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach()) - entropy


def build_tiny_policy(tiny: dict[str, Any] | None, out_dir: str | os.PathLike) -> None:
    """Build the tiny policy (model, tokenizer, chat template, provenance) into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nashflow.io import atomic_dir, provenance, write_json

    s = settings(tiny)
    tok = hf_tokenizer()
    torch.manual_seed(s["seed"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s["hidden_size"], intermediate_size=2 * s["hidden_size"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["heads"], max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    fit = None
    if s["first_token"] is not None:
        with torch.enable_grad():
            fit = fit_first_token(model, tok, first_token_target(s["first_token"], len(tok)),
                                  steps=s["fit_steps"], seed=s["seed"])
        log.info("first response token fitted: KL(target ‖ model) = %.4f nats on the last random batch", fit)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(provenance(parents={"source": "nashflow.tiny_policy"}, config=s, seed=s["seed"], role="base",
                              first_token_kl=fit), tmp / "provenance.json")


__all__ = ["build_tokenizer", "hf_tokenizer", "build_tiny_policy", "check_settings", "first_token_target",
           "fit_first_token", "settings"]
