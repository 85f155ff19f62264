"""The ``scaling`` section: log-prob and training throughput against sequence length and batch size."""

from __future__ import annotations

import time
from pathlib import Path

from perfkit.common import encode, make_pairs, median, n_params, onednn_runs, sync
from perfkit.train import nashflow_train_once, write_train_inputs


def bench_scaling(args, model_dir: Path, work: Path, *, lengths: list[int], batches: list[int], repeats: int,
                  train_lengths: list[int], train_batches: list[int], token_budget: int) -> dict:
    """Throughput as the work grows. Training runs two optimizer steps per point (the second is timed)."""
    from nashflow import onednn
    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    if onednn_runs(args):  # as the log-prob job runs it (compute.cpu_linear onednn)
        onednn.use_onednn(model)

    def logps_rate(pairs, max_length, max_tokens) -> float:
        enc = encode(tok, pairs, max_length, max_length // 2)
        real = sum(len(e.input_ids) for e in enc)
        sequence_logps(model, enc[:2], tok.pad_token_id, max_tokens=max_tokens, progress=False)
        times = []
        for _ in range(repeats):
            sync(args.device)
            t0 = time.perf_counter()
            sequence_logps(model, enc, tok.pad_token_id, max_tokens=max_tokens, progress=False)
            sync(args.device)
            times.append(time.perf_counter() - t0)
        return real / median(times)

    def train_rate(pairs, max_length, batch_pairs, tag) -> float:
        w = work / tag
        pp, rp = write_train_inputs(args, model_dir, pairs, w, max_length=max_length, max_prompt_length=max_length // 2)
        return median([nashflow_train_once(args, model_dir, pp, rp, batch_pairs=batch_pairs, max_length=max_length,
                                           max_prompt_length=max_length // 2, work=w) for _ in range(repeats)])

    def fixed(length: int, n: int, seed: int):
        # prompt of 1/4 of the sequence, responses of the rest (about: templates add a few tokens)
        return make_pairs(tok, n, (length * 3 // 4 - 8, length * 3 // 4 - 8), seed=seed, prompt_tokens=length // 4)

    params = n_params(model)
    out = {"logps_vs_length": [], "logps_vs_batch": [], "train_vs_length": [], "train_vs_batch": []}
    for length in lengths:
        n = max(2, token_budget // length)  # about the same number of tokens at every length
        rate = logps_rate(fixed(length, n, length), length, max(token_budget, length))
        out["logps_vs_length"].append({"length": length, "sequences": 2 * n, "tokens_per_s": rate,
                                       "us_per_token": 1e6 / rate, "gflops": 2 * params * rate / 1e9})
    base = lengths[min(2, len(lengths) - 1)]
    for b in batches:
        pairs = fixed(base, max(b, 8), 7)
        rate = logps_rate(pairs, base, b * base)
        out["logps_vs_batch"].append({"length": base, "batch_sequences": b, "tokens_per_s": rate,
                                      "us_per_token": 1e6 / rate})
    for length in train_lengths:
        rate = train_rate(fixed(length, 2, 100 + length), length, 1, f"tl{length}")
        out["train_vs_length"].append({"length": length, "batch_pairs": 1, "tokens_per_s": rate,
                                       "us_per_token": 1e6 / rate})
    for b in train_batches:
        rate = train_rate(fixed(base, 2 * b, 200 + b), base, b, f"tb{b}")
        out["train_vs_batch"].append({"length": base, "batch_pairs": b, "tokens_per_s": rate,
                                      "us_per_token": 1e6 / rate})
    return out
