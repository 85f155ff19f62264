"""The benchmark workload (prompts, pairs, encodings) and shared utilities: medians, the matmul peak,
quiet output, random Llamas."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def prompt_texts() -> list[str]:
    return [json.loads(x)["prompt"] for x in (REPO / "resources/prompts/default.jsonl").read_text().splitlines()]


def make_pairs(tok, n: int, resp_range: tuple[int, int], seed: int = 0, prompt_tokens: int | None = None):
    """``n`` preference pairs: prompts from the shipped prompt file, responses cut from other prompts'
    text to token lengths drawn uniformly from ``resp_range`` (a spread like on-policy samples).
    With ``prompt_tokens`` every prompt is cut to that many tokens of text (scaling runs)."""
    import pandas as pd

    rng = random.Random(seed)
    texts = prompt_texts()
    corpus = tok(" ".join(texts * 20), add_special_tokens=False)["input_ids"]

    def text_of(n_tok: int) -> str:
        start = rng.randrange(0, len(corpus) - n_tok - 1)
        return tok.decode(corpus[start:start + n_tok]).strip()

    rows = []
    for i in range(n):
        prompt = texts[i % len(texts)] if prompt_tokens is None else text_of(prompt_tokens)
        rows.append({
            "pair_id": f"b{i}", "prompt_id": f"p{i}", "messages": [{"role": "user", "content": prompt}],
            "chosen": text_of(rng.randint(*resp_range)), "rejected": text_of(rng.randint(*resp_range)),
            "chosen_finish": "stop", "rejected_finish": "stop",
            "chosen_target": 1.0, "rejected_target": 0.0, "pref_prob": 1.0,
        })
    return pd.DataFrame(rows)


def encode(tok, pairs, max_length: int, max_prompt_length: int):
    from nashflow.logps import encode_pair_side

    return [encode_pair_side(tok, list(m), t, finished=True, max_length=max_length, max_prompt_length=max_prompt_length)
            for side in ("chosen", "rejected") for m, t in zip(pairs.messages, pairs[side])]


def trl_dataset(tok, pairs):
    """The same pairs as TRL's plain-text preference format: the chat-templated prompt as text, the
    responses as text (TRL appends EOS, as nashflow does for finished responses)."""
    from datasets import Dataset

    prompts = [tok.apply_chat_template(list(m), add_generation_prompt=True, tokenize=False) for m in pairs.messages]
    return Dataset.from_dict({"prompt": prompts, "chosen": list(pairs.chosen), "rejected": list(pairs.rejected)})


def onednn_runs(args) -> bool:
    """Whether the jobs would run this benchmark's models through oneDNN (``compute.cpu_linear:
    onednn`` applies: float32 on a CPU where oneDNN linears run); the sections then measure them and
    PyTorch's own linears side by side."""
    from nashflow import onednn

    return onednn.applies("onednn", args.device, args.torch_dtype)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def peak_matmul_gflops(device: str, dtype, n: int, repeats: int = 5, onednn: bool = False) -> float:
    """GFLOP/s of an n³ matmul, best of ``repeats``: ``torch.mm`` (MKL for float32 on a CPU), or with
    ``onednn`` the oneDNN matmul of ``compute.cpu_linear``."""
    import torch

    from nashflow.onednn import matmul

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    mm = matmul if onednn else torch.mm
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        mm(a, b).sum().item()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times[1:]) / 1e9


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet():
    """Silence library chatter (TRL, transformers, accelerate) while a peer runs."""
    import logging
    import warnings

    buf = io.StringIO()
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# Llama-3.2-1B's shape: 1.07B parameters with SmolLM2's 49 152-token vocabulary (tied embeddings)
RANDOM_LLAMA = {"1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, tie_word_embeddings=True)}


def model_params(model_dir: Path) -> int:
    """Parameter count from the config alone (a meta-device model: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return n_params(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))


def random_llama(tokenizer_dir: Path, size: str, out: Path) -> Path:
    """A randomly initialised Llama of ``size`` with ``tokenizer_dir``'s tokenizer, saved at ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nashflow.models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **RANDOM_LLAMA[size])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1B init is slow on a CPU
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
