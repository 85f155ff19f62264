"""The ``train`` section: nashflow's trainer vs TRL's DPOTrainer on the same pairs, batch, precision and limits."""

from __future__ import annotations

import csv
import random
import tempfile
import time
from pathlib import Path

from perfkit.common import encode, median, onednn_runs, quiet, sync, trl_dataset


def make_trl_trainer(args, model_dir: Path, tok, pairs, *, batch_pairs: int, max_length: int, precompute: bool,
                     model=None, steps_log: list | None = None, lr: float = 5e-6, out_dir: str | None = None):
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from nashflow.models import load_model

    class Timing(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            if steps_log is not None:
                sync(args.device)
                steps_log.append((time.perf_counter(), counter["tokens"]))

    counter = {"tokens": 0}

    class CountingDPO(DPOTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            counter["tokens"] += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *a, **kw)

    cfg = DPOConfig(
        output_dir=out_dir or tempfile.mkdtemp(prefix="nashflow-trl-"), per_device_train_batch_size=batch_pairs,
        gradient_accumulation_steps=1, learning_rate=lr, num_train_epochs=1, max_length=max_length,
        lr_scheduler_type="linear", warmup_steps=0.1, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute, report_to="none", save_strategy="no", logging_steps=10 ** 6,
        use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if model is None:
        model = load_model(model_dir, dtype=args.torch_dtype, eval_mode=False)
    with quiet():
        trainer = CountingDPO(model=model, args=cfg, train_dataset=trl_dataset(tok, pairs), processing_class=tok,
                              callbacks=[Timing()])
    return trainer


def steady_rate(stamps: list[tuple[float, int]]) -> float:
    """Tokens/s between the end of the first optimizer step and the end of the last."""
    (t_a, n_a), (t_b, n_b) = stamps[0], stamps[-1]
    return (n_b - n_a) / (t_b - t_a)


def nashflow_train_once(args, model_dir: Path, pairs_path: Path, ref_path: Path, *, batch_pairs: int, max_length: int,
                        max_prompt_length: int, work: Path, lr: float = 5e-6, cpu_linear: str = "onednn") -> float:
    from nashflow.settings import LossConfig, TrainConfig
    from nashflow.training import train

    out = work / f"nf-{random.getrandbits(32):x}"
    tcfg = TrainConfig(learning_rate=lr, batch_size=batch_pairs, max_length=max_length,
                       max_prompt_length=max_prompt_length, report_to=(), checkpoint_every=0)
    train(policy_path=str(model_dir), pairs_path=str(pairs_path), logps={"reference": [str(ref_path)]},
          output_dir=str(out / "model"), metrics_path=str(out / "metrics.csv"), train_cfg=tcfg,
          loss_cfg=LossConfig(name="dpo", beta=0.1), progress=False, compute={"cpu_linear": cpu_linear})
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return steady_rate([(float(r["elapsed_s"]), int(r["tokens"])) for r in rows])


def trl_train_once(args, model_dir: Path, tok, pairs, *, batch_pairs: int, max_length: int, work: Path,
                   lr: float = 5e-6) -> float:
    stamps: list = []
    trainer = make_trl_trainer(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                               precompute=True, steps_log=stamps, lr=lr, out_dir=str(work / "trl"))
    with quiet():
        trainer.train()
    return steady_rate(stamps)


def write_train_inputs(args, model_dir: Path, pairs, work: Path, *, max_length: int, max_prompt_length: int):
    """The pairs table and its reference log-prob table, as the workflow's jobs write them."""
    import pandas as pd

    from nashflow import onednn
    from nashflow.io import write_table
    from nashflow.logps import sequence_logps
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.torch_dtype, device=args.device)
    if onednn_runs(args):  # as the log-prob job computes them (compute.cpu_linear onednn)
        onednn.use_onednn(model)
    enc = encode(tok, pairs, max_length, max_prompt_length)
    sums, counts = sequence_logps(model, enc, tok.pad_token_id, progress=False)
    n = len(pairs)
    work.mkdir(parents=True, exist_ok=True)
    pairs_path, ref_path = work / "pairs.parquet", work / "ref.parquet"
    write_table(pairs, pairs_path)
    write_table(pd.DataFrame({"pair_id": pairs.pair_id, "model": "base", "chosen_logp": sums[:n],
                              "chosen_tokens": counts[:n], "rejected_logp": sums[n:], "rejected_tokens": counts[n:]}),
                ref_path)
    return pairs_path, ref_path


def bench_train(args, model_dir: Path, pairs, *, max_length: int, max_prompt_length: int, batch_pairs: int,
                repeats: int, work: Path) -> dict:
    from nashflow.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    pairs_path, ref_path = write_train_inputs(args, model_dir, pairs, work, max_length=max_length,
                                              max_prompt_length=max_prompt_length)
    ours, aten, theirs = [], [], []
    kw = dict(batch_pairs=batch_pairs, max_length=max_length, max_prompt_length=max_prompt_length, work=work)
    for _ in range(repeats):
        ours.append(nashflow_train_once(args, model_dir, pairs_path, ref_path, **kw))
        if onednn_runs(args):  # the same trainer with PyTorch's own linears: what oneDNN adds
            aten.append(nashflow_train_once(args, model_dir, pairs_path, ref_path, cpu_linear="aten", **kw))
        theirs.append(trl_train_once(args, model_dir, tok, pairs, batch_pairs=batch_pairs, max_length=max_length,
                                     work=work))
    r_o, r_t = median(ours), median(theirs)
    out = {"pairs": len(pairs), "batch_pairs": batch_pairs, "steps": len(pairs) // batch_pairs,
           "nashflow_tokens_per_s_runs": ours, "trl_tokens_per_s_runs": theirs,
           "nashflow_tokens_per_s": r_o, "trl_tokens_per_s": r_t, "speedup_vs_trl": r_o / r_t}
    if aten:
        out.update(nashflow_aten_tokens_per_s_runs=aten, nashflow_aten_tokens_per_s=median(aten),
                   speedup_aten_vs_trl=median(aten) / r_t, speedup_onednn_vs_aten=r_o / median(aten))
    return out
