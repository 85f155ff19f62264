"""The ``logps`` section: the log-prob stage vs TRL's reference precompute, and its share of the matmul peak."""

from __future__ import annotations

import random
import time
from pathlib import Path

from perfkit.common import encode, median, n_params, onednn_runs, quiet, sync
from perfkit.train import make_trl_trainer


def bench_logps(args, model_dir: Path, pairs, *, max_length: int, max_prompt_length: int, batch_pairs: int,
                repeats: int, peak: float) -> dict:
    """nashflow's log-prob pass vs TRL's precompute_ref_log_probs on the same pairs."""
    import torch

    from nashflow import onednn
    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    enc = encode(tok, pairs, max_length, max_prompt_length)
    real_tokens = sum(len(e.input_ids) for e in enc)
    trainer = make_trl_trainer(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                               precompute=False, model=model)
    ds = trainer.train_dataset
    trl_tokens = sum(len(p) * 2 + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"],
                                                                      ds["rejected_ids"]))
    ours, aten, theirs, trl_logps = [], [], [], None
    sequence_logps(model, enc[:4], tok.pad_token_id, progress=False)  # warm-up, not counted
    with quiet():
        trainer._precompute_ref_logps(ds.select(range(2)), "warm-up", batch_pairs)

    def timed(model) -> tuple[float, list]:
        sync(args.device)
        t0 = time.perf_counter()
        sums, _ = sequence_logps(model, enc, tok.pad_token_id, max_tokens=args.max_tokens_per_batch, progress=False)
        sync(args.device)
        return time.perf_counter() - t0, sums

    for rep in range(repeats):
        if onednn_runs(args):  # the stage as the job runs it (compute.cpu_linear onednn), and with PyTorch's linears
            onednn.use_onednn(model)
        seconds, sums = timed(model)
        ours.append(seconds)
        if onednn.use_aten(model):
            aten.append(timed(model)[0])
        ds._fingerprint = f"bench{rep}{random.getrandbits(64):x}"  # TRL caches by fingerprint: force the pass
        with quiet():
            sync(args.device)
            t0 = time.perf_counter()
            trl_logps = trainer._precompute_ref_logps(ds, "train", batch_pairs)
            sync(args.device)
            theirs.append(time.perf_counter() - t0)
    n = len(pairs)
    ref_c = torch.tensor(trl_logps["ref_chosen_logps"], dtype=torch.float64)
    agree = float((ref_c - torch.tensor(sums[:n])).abs().max())
    t_o, t_t = median(ours), median(theirs)
    flops = 2 * n_params(model) * real_tokens / t_o / 1e9
    del trainer, model
    extra = {"nashflow_aten_seconds": aten, "nashflow_aten_tokens_per_s": real_tokens / median(aten),
             "speedup_onednn_vs_aten": median(aten) / t_o} if aten else {}
    return {**extra,
        "pairs": n, "sequences": len(enc), "real_tokens": real_tokens, "trl_real_tokens": trl_tokens,
        "nashflow_seconds": ours, "trl_seconds": theirs,
        "nashflow_tokens_per_s": real_tokens / t_o, "trl_tokens_per_s": trl_tokens / t_t,
        "speedup_vs_trl": (real_tokens / t_o) / (trl_tokens / t_t),
        "nashflow_gflops": flops, "peak_matmul_gflops": peak, "fraction_of_peak": flops / peak,
        "max_abs_diff_vs_trl_chosen_logp": agree,
    }
