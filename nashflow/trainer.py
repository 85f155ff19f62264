"""The preference trainer: one concatenated forward for chosen and rejected, pluggable losses.

Reference, history and anchor log-probs are table columns computed by the log-prob stage; the
trainer reads them and never recomputes them. Policy log-probs use the same encoding and
log-prob code path (nashflow.logps) as that stage.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from nashflow.errors import DataError
from nashflow.io import atomic_dir, atomic_path, provenance, read_table, write_json
from nashflow.logps import (
    Encoded,
    build_packed,
    collate,
    encode_pair_side,
    length_batches,
    packed_batches,
    packed_logps,
    packing_mode,
    prompt_groups,
    token_logps,
)
from nashflow.losses import get_loss
from nashflow.precision import attention_for, torch_dtype
from nashflow.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)
ONLY_CHOSEN = {"mle", "nash_md"}  # losses that never look at the rejected response


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    learning_rate: float = 5e-6
    epochs: int = 1
    batch_size: int = 4  # pairs per micro-batch and process
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    gradient_checkpointing: bool = False
    lora: dict[str, Any] | None = None  # LoRA (peft): {r, alpha, dropout, target_modules}; None = full fine-tuning
    report_to: tuple[str, ...] = ("tensorboard",)  # besides the CSV: tensorboard, wandb
    checkpoint_every: int = 50  # optimizer steps between resumable training states (0: never)
    seed: int = 0

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError("training.learning_rate must be > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("training.epochs, batch_size and grad_accum must be >= 1")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise ValueError("training.lr_scheduler must be linear, cosine or constant")
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError("training.optimizer must be adamw or rmsprop")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("training.max_prompt_length must be < training.max_length")
        unknown = set(self.report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"training.report_to: unknown {sorted(unknown)} (tensorboard, wandb)")


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its hyperparameters; ``logp_norm`` = sum (S) or mean (A = S/|y|)."""

    name: str = "dpo"
    beta: float = 0.1
    logp_norm: str = "sum"
    params: dict[str, Any] = field(default_factory=dict)
    select_best: bool = False
    val_fraction: float = 0.1

    def __post_init__(self):
        get_loss(self.name)
        if self.beta <= 0:
            raise ValueError("algorithm.beta must be > 0")
        if self.logp_norm not in ("sum", "mean"):
            raise ValueError("algorithm.logp_norm must be 'sum' or 'mean'")
        if self.name == "mle" and self.logp_norm != "sum":
            raise ValueError("the mle loss needs algorithm.logp_norm: sum")


def normalise(sums: torch.Tensor, counts: torch.Tensor, how: str) -> torch.Tensor:
    return sums / counts.clamp(min=1) if how == "mean" else sums


def _lr_lambda(kind: str, total: int, warmup: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)
    return f


LOGP_COLS = ["chosen_logp", "chosen_tokens", "rejected_logp", "rejected_tokens", "model"]


def _role_table(paths: list[str], prefix: str) -> pd.DataFrame:
    df = pd.concat([read_table(p) for p in paths], ignore_index=True)
    cols = [c for c in LOGP_COLS + ["chosen_token_logps"] if c in df.columns]
    return df[["pair_id"] + cols].rename(columns={c: f"{prefix}_{c}" for c in cols})


def load_training_table(pairs_path: str, logps: dict[str, Any]) -> pd.DataFrame:
    """Pairs joined (by pair_id) with the reference and history log-prob tables.

    ``logps = {"reference": [shard files], "history": [[shard files of player 0], ...]}``.
    """
    df = read_table(pairs_path)
    roles = [("ref", logps["reference"])] + [(f"hist{j}", p) for j, p in enumerate(logps.get("history", []))]
    for prefix, paths in roles:
        df = df.merge(_role_table(paths, prefix), on="pair_id", how="left", validate="one_to_one")
        if df[f"{prefix}_chosen_logp"].isna().any():
            missing = df.loc[df[f"{prefix}_chosen_logp"].isna(), "pair_id"].iloc[0]
            raise DataError(f"pair {missing} has no {prefix} log-probs in {paths}")
    return df


def is_validation(pair_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:4], "little")
    return h / 2**32 < fraction


class PairBatches:
    """Tensors of the whole pair table, indexed per micro-batch."""

    def __init__(self, df: pd.DataFrame, tok, train_cfg: TrainConfig, loss_cfg: LossConfig, n_history: int):
        self.df, self.tok, self.cfg, self.loss_cfg, self.n_history = df, tok, train_cfg, loss_cfg, n_history
        enc = lambda msgs, text, fin: encode_pair_side(  # noqa: E731
            tok, list(msgs), text, finished=fin == "stop", max_length=train_cfg.max_length,
            max_prompt_length=train_cfg.max_prompt_length)
        self.chosen = [enc(m, t, f) for m, t, f in zip(df.messages, df.chosen, df.chosen_finish)]
        self.only_chosen = loss_cfg.name in ONLY_CHOSEN
        self.rejected = [] if self.only_chosen else \
            [enc(m, t, f) for m, t, f in zip(df.messages, df.rejected, df.rejected_finish)]
        col = lambda name: torch.tensor(df[name].to_numpy(dtype=np.float64), dtype=torch.float32)  # noqa: E731
        norm = loss_cfg.logp_norm
        self.tensors = {
            "ref_chosen_logps": normalise(col("ref_chosen_logp"), col("ref_chosen_tokens"), norm),
            "ref_rejected_logps": normalise(col("ref_rejected_logp"), col("ref_rejected_tokens"), norm),
            "chosen_target": col("chosen_target"), "rejected_target": col("rejected_target"),
            "pref_prob": col("pref_prob"),
        }
        if n_history:
            self.tensors["history_chosen_logps"] = torch.stack(
                [normalise(col(f"hist{j}_chosen_logp"), col(f"hist{j}_chosen_tokens"), norm)
                 for j in range(n_history)], -1)
            self.tensors["history_rejected_logps"] = torch.stack(
                [normalise(col(f"hist{j}_rejected_logp"), col(f"hist{j}_rejected_tokens"), norm)
                 for j in range(n_history)], -1)
        self.ref_tokens = list(df["ref_chosen_token_logps"]) if "ref_chosen_token_logps" in df.columns else None
        if loss_cfg.name == "nash_md" and self.ref_tokens is None:
            raise DataError("the nash_md loss needs per-token reference log-probs (column chosen_token_logps)")

    def lengths(self) -> list[int]:
        if self.only_chosen:
            return [len(c.input_ids) for c in self.chosen]
        return [max(len(c.input_ids), len(r.input_ids)) for c, r in zip(self.chosen, self.rejected)]

    def loss(self, model, idx: list[int], loss_fn, device) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Per-example losses of the micro-batch ``idx`` and the policy log-probs used."""
        seqs: list[Encoded] = [self.chosen[i] for i in idx]
        if not self.only_chosen:
            seqs += [self.rejected[i] for i in idx]
        n = len(idx)
        n_tok = sum(len(e.input_ids) for e in seqs)
        mode = packing_mode(model) if self.loss_cfg.name != "nash_md" else None
        if mode == "flat" or (mode == "tree" and min(e.response_start for e in seqs) >= 1):
            # tree: chosen and rejected share their prompt in one packed group; flat: every sequence
            # whole, in one row (see nashflow.logps)
            if mode == "tree":
                cand = [[j] for j in range(n)] if self.only_chosen else [[j, n + j] for j in range(n)]
                (rows,) = packed_batches(seqs, prompt_groups(seqs, cand), max_tokens=1 << 40)
            else:
                (rows,) = packed_batches(seqs, [[j] for j in range(len(seqs))], max_tokens=1 << 40, width=n_tok)
            batch = build_packed(seqs, rows, self.tok.pad_token_id, device, flat=mode == "flat")
            got, _ = packed_logps(model, batch)
            sums = torch.zeros_like(got).index_copy(0, torch.tensor(batch.order, device=got.device), got)
            counts = torch.tensor([e.n_response for e in seqs], dtype=torch.float32, device=got.device)
            lp = resp = None
        else:
            ids, attn, resp = collate(seqs, self.tok.pad_token_id, device)
            lp = token_logps(model, ids, attn, resp)
            sums, counts = lp.sum(-1), resp[:, 1:].sum(-1).float()
        pol = normalise(sums, counts, self.loss_cfg.logp_norm)
        i_t = torch.tensor(idx)
        kw = {k: v[i_t].to(device) for k, v in self.tensors.items()}
        kw["policy_chosen_logps"] = pol[:n]
        kw["policy_rejected_logps"] = pol[n:] if not self.only_chosen else kw["ref_rejected_logps"]
        kw["chosen_tokens"] = counts[:n]
        if self.loss_cfg.name == "nash_md":
            mask = resp[:n, 1:]
            ref_flat = torch.tensor(np.concatenate([np.asarray(self.ref_tokens[i], dtype=np.float32) for i in idx]),
                                    device=device)
            if ref_flat.numel() != int(mask.sum()):
                raise DataError("per-token reference log-probs do not match the policy's response tokens")
            kw.update(policy_token_logps=lp[:n], mask=mask,
                      ref_token_logps=torch.zeros_like(lp[:n]).masked_scatter(mask, ref_flat.to(lp.dtype)))
        losses = loss_fn(beta=self.loss_cfg.beta, **self.loss_cfg.params, **kw)
        return losses, kw, n_tok


def add_lora(model, spec: dict[str, Any]):
    """Wrap the policy with fresh LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=int(spec.get("r", 16)), lora_alpha=int(spec.get("alpha", 32)),
                     lora_dropout=float(spec.get("dropout", 0.0)),
                     target_modules=spec.get("target_modules", "all-linear"), task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d: %d of %d parameters train (%.2f%%)", cfg.r, trainable, total, 100 * trainable / total)
    return model


class TrainState:
    """A resumable training state outside the job's declared outputs (Snakemake deletes those when a
    job fails), saved every ``checkpoint_every`` optimizer steps into ``<folder>/current``:
    accelerate's ``save_state`` (weights, optimizer and scheduler; one shard per rank under
    DeepSpeed and FSDP, written collectively) and ``meta.pt`` (step, metric rows, the best validation
    state, loaded with ``torch.load(weights_only=True)``: no pickled code). A new state is written
    beside the old one and renamed into place; a kill between the two renames leaves the old one as
    ``previous``, which is then loaded, so a kill never leaves a torn or lost state. A state is used
    only when its fingerprint (inputs, settings, processes) matches; it is removed once the model is
    saved."""

    def __init__(self, acc, folder: str | None, fingerprint: str):
        self.acc = acc
        self.folder = Path(folder) if folder else None
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path | None:
        return self.folder / "current" if self.folder else None

    def load(self) -> dict[str, Any] | None:
        """The saved meta data, with model, optimizer and scheduler restored (every rank), or None."""
        if self.folder is None:
            return None
        found = [p for p in (self.path, self.folder / "previous") if (p / "meta.pt").exists()]
        if not found:
            return None
        path = found[0]
        try:
            meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        except Exception as err:  # a torn file cannot happen (atomic rename), a foreign one can
            log.warning("ignoring unreadable training state %s: %s", path, err)
            return None
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("ignoring training state %s: it was made with other inputs or settings", path)
            return None
        self.acc.load_state(str(path))
        return meta

    def save(self, meta: dict[str, Any]) -> None:
        """Collective: every rank calls it."""
        import shutil

        if self.folder is None:
            return
        nxt, old = self.folder / "next", self.folder / "previous"
        if self.acc.is_main_process:
            shutil.rmtree(nxt, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(nxt), safe_serialization=True)
        self.acc.wait_for_everyone()  # every rank has written its shard (and its RNG state) before the rename
        if self.acc.is_main_process:
            torch.save({**meta, "fingerprint": self.fingerprint}, nxt / "meta.pt")
            shutil.rmtree(old, ignore_errors=True)
            if self.path.exists():
                self.path.rename(old)
            nxt.rename(self.path)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def clear(self) -> None:
        if self.folder is not None and self.folder.exists():
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def _fingerprint(*parts: Any) -> str:
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.exists():
        return ""
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class MetricWriters:
    """Per-step metrics to TensorBoard (event files under ``log_dir``) and optionally wandb, besides the
    CSV that the trainer always writes. wandb is imported only when asked for, offline unless
    ``WANDB_MODE`` says otherwise."""

    def __init__(self, report_to, log_dir: str | None, name: str, config: dict[str, Any]):
        self.tb = self.wandb = None
        if "tensorboard" in report_to and log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=log_dir)
        if "wandb" in report_to:
            import os

            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("training.report_to has wandb but the package is missing: "
                                   "pip install 'nashflow[wandb]' or drop it from report_to") from err
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "nashflow"), name=name, config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"), dir=log_dir, reinit=True)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        scalars = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _sharding_on_cpu(acc) -> None:
    """Let CPU processes (our tests, CPU clusters) run DeepSpeed and FSDP as the launcher asked.

    accelerate 1.15 turns FSDP on only in its GPU branch, and under DeepSpeed on CPU it leaves its
    process count at 1 although DeepSpeed has joined all processes over gloo. Both are set here,
    right after ``Accelerator()`` and before ``prepare``; on GPUs this does nothing."""
    import os

    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if acc.device.type != "cpu" or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    states = (PartialState._shared_state, AcceleratorState._shared_state)  # AcceleratorState holds a copy
    if acc.distributed_type == DistributedType.DEEPSPEED and acc.num_processes != dist.get_world_size():
        for shared in states:
            shared.update(num_processes=dist.get_world_size(), process_index=dist.get_rank(),
                          local_process_index=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend="gloo")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        for shared in states:
            shared["distributed_type"] = DistributedType.FSDP


def _configure_deepspeed(acc, train_cfg: TrainConfig) -> None:
    """Fill what DeepSpeed cannot infer without a DataLoader: the micro-batch (pairs per process),
    gradient clipping from ``training.max_grad_norm`` and, for ZeRO-3, gathering full weights on save."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train_cfg.batch_size
    ds["gradient_clipping"] = float(train_cfg.max_grad_norm)
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def _shards_parameters(acc) -> bool:
    """Whether a rank holds only a shard of the weights (ZeRO-3, FSDP)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return int(acc.state.deepspeed_plugin.zero_stage) == 3
    return False


def parameter_share(model) -> tuple[int, int]:
    """(values this process holds, values of the full model): less than all under ZeRO-3 and FSDP."""
    held = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3: the local partition is ds_tensor
            held, total = held + p.ds_tensor.numel(), total + p.ds_numel
        elif hasattr(p, "to_local"):  # FSDP2: a DTensor over the processes
            held, total = held + p.to_local().numel(), total + p.numel()
        else:
            held, total = held + p.numel(), total + p.numel()
    return held, total


def _full_state_dict(acc, model) -> dict[str, torch.Tensor]:
    """The full-size weights on CPU, gathered collectively (every rank calls it; the main process gets
    them, the others may get an empty dict)."""
    sd = acc.get_state_dict(model)
    if not acc.is_main_process:
        return {}
    # tied weights (e.g. lm_head = embed_tokens) once, as save_pretrained writes them
    seen, tied = set(), set()
    for name, p in acc.unwrap_model(model).named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return {k: v.detach().cpu().clone() for k, v in (sd or {}).items() if k not in tied}


def _initial_weights(policy_path: str) -> dict[str, torch.Tensor]:
    """The initial policy's weights read from its safetensors files (no model load, no collective)."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(policy_path).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def train(*, policy_path: str, pairs_path: str, logps: dict[str, Any], output_dir: str, metrics_path: str,
          train_cfg: TrainConfig, loss_cfg: LossConfig, parents: dict[str, Any] | None = None,
          progress: bool = True, tensorboard_dir: str | None = None, state_dir: str | None = None,
          compute: dict[str, str] | None = None) -> None:
    """Train the policy initialised from ``policy_path`` on the pairs; save a safetensors folder.

    Metrics per optimizer step go to ``metrics_path`` (CSV) and, per ``train_cfg.report_to``, to
    TensorBoard event files in ``tensorboard_dir`` and to wandb. With ``state_dir`` a killed job
    resumes from its last saved state (see :class:`TrainState`) instead of restarting. Under
    DeepSpeed ZeRO-2/3 and FSDP (chosen by the launcher) weights are gathered collectively for the
    best-validation copy and the saved model, and saved by the main process. ``compute`` (see
    :mod:`nashflow.precision`): the attention implementation to load with and the dtype of the
    saved weights; the mixed precision itself is the launcher's (accelerate's ``--mixed_precision``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, GradientAccumulationPlugin

    from nashflow.models import load_model, load_tokenizer

    # The plugin, not an int: accelerate would read a DeepSpeed yaml's "auto" from the environment
    acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=train_cfg.grad_accum))
    _sharding_on_cpu(acc)
    _configure_deepspeed(acc, train_cfg)
    sharded = _shards_parameters(acc)
    if train_cfg.lora and sharded:
        raise DataError("training.lora needs the full weights on every process: use training.distributed "
                        "ddp or zero2 (not zero3 or fsdp) with LoRA")
    seed_everything(train_cfg.seed)
    df = load_training_table(pairs_path, logps)
    n_history = len(logps.get("history", []))
    val_df = None
    if loss_cfg.select_best:
        is_val = df.pair_id.map(lambda p: is_validation(p, loss_cfg.val_fraction))
        if is_val.sum() == 0 or (~is_val).sum() == 0:
            raise DataError(f"{len(df)} pairs are too few for a validation split of {loss_cfg.val_fraction}")
        val_df, df = df[is_val].reset_index(drop=True), df[~is_val].reset_index(drop=True)
    tok = load_tokenizer(policy_path)
    compute = {"attn_implementation": "sdpa", "checkpoint_dtype": "float32", **(compute or {})}
    attn = attention_for(compute["attn_implementation"], acc.device.type)
    # float32 weights on every rank (ZeRO-3 init partitions them collectively); the forward runs
    # under accelerate's mixed precision
    model = load_model(policy_path, eval_mode=False, attn_implementation=attn)
    if train_cfg.lora:
        model = add_lora(model, train_cfg.lora)
    model.config.use_cache = False
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    for m in model.modules():  # dropout off, as TRL's disable_dropout does
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0

    data = PairBatches(df, tok, train_cfg, loss_cfg, n_history)
    val = PairBatches(val_df, tok, train_cfg, loss_cfg, n_history) if val_df is not None else None
    lengths = data.lengths()
    base_batches = length_batches(lengths, train_cfg.batch_size * max(lengths), max_batch=train_cfg.batch_size)
    world, rank = acc.num_processes, acc.process_index
    per_proc = len(base_batches) // world
    if per_proc == 0:
        raise DataError(f"{len(df)} pairs are too few for {world} processes x batch {train_cfg.batch_size}")
    steps_per_epoch = max(1, per_proc // train_cfg.grad_accum)
    total_steps = steps_per_epoch * train_cfg.epochs

    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    else:
        # fused: one kernel over all parameters (on a CPU the default is a loop per tensor: 8% of a
        # SmolLM2 step); sharded engines (DeepSpeed, FSDP) keep their defaults
        plain = acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        opt = torch.optim.AdamW(params, lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay,
                                fused=plain or None)
    warmup = int(round(train_cfg.warmup_ratio * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(train_cfg.lr_scheduler, total_steps, warmup))
    # The scheduler is stepped by hand once per optimizer step (batches are sharded by hand), so it
    # is not prepared, only registered for the resumable state.
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)
    held, total = parameter_share(model)
    log.info("%s on %d process(es); this one holds %d of %d parameter values", acc.distributed_type.value, world,
             held, total)
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    loss_fn = get_loss(loss_cfg.name)
    beta = loss_cfg.beta

    def validation_loss() -> float:
        """Mean loss over the validation pairs; every rank computes it (sharded forwards are collective)."""
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            vl = val.lengths()
            for idx in length_batches(vl, train_cfg.batch_size * max(vl), max_batch=train_cfg.batch_size):
                losses, _, _ = val.loss(model, idx, loss_fn, acc.device)
                total, n = total + float(losses.sum()), n + len(idx)
        model.train()
        return float(acc.reduce(torch.tensor(total / max(n, 1), device=acc.device), "mean"))

    rows: list[dict[str, Any]] = []
    step, t0, tokens = 0, time.time(), 0
    saver = TrainState(acc, state_dir, _fingerprint(
        policy_path, _file_digest(str(Path(policy_path) / "model.safetensors")), pairs_path, _file_digest(pairs_path),
        logps, asdict(train_cfg), asdict(loss_cfg), world, str(acc.distributed_type)))
    resumed = saver.load()
    if resumed is not None:
        step, rows, tokens = int(resumed["step"]), list(resumed["rows"]), int(resumed["tokens"])
        best = {"val_loss": resumed["best_val_loss"], "step": int(resumed["best_step"]), "state": resumed["best_state"]}
        log.info("resumed from the training state at optimizer step %d of %d (%s)", step, total_steps, saver.folder)
    else:
        best = {"val_loss": validation_loss() if val else None, "step": 0, "state": None}
    skip = step * train_cfg.grad_accum  # micro-batches already done: the batch order is a function of the seed
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
               disable=not (progress and acc.is_main_process))
    writers = MetricWriters(train_cfg.report_to if acc.is_main_process else (), tensorboard_dir,
                            name=str((parents or {}).get("generator", output_dir)),
                            config={"train": asdict(train_cfg), "loss": asdict(loss_cfg)})
    for epoch in range(train_cfg.epochs):
        order = np.random.default_rng(derive_seed(train_cfg.seed, epoch)).permutation(len(base_batches))
        mine = [base_batches[i] for i in order[: per_proc * world]][rank::world]
        mine = mine[: steps_per_epoch * train_cfg.grad_accum]
        acc_stats: list[dict[str, float]] = []
        for idx in mine:
            if skip > 0:
                skip -= 1
                continue
            with acc.accumulate(model):
                losses, kw, n_tok = data.loss(model, idx, loss_fn, acc.device)
                loss = losses.mean()
                acc.backward(loss)  # under DeepSpeed the engine also clips and steps here
                gnorm = None
                if acc.sync_gradients and train_cfg.max_grad_norm and not deepspeed:
                    gnorm = acc.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
                opt.step()
                if acc.sync_gradients:
                    sched.step()
                    if deepspeed:
                        gnorm = model.get_global_grad_norm()
                opt.zero_grad()
                tokens += n_tok
                with torch.no_grad():
                    rw_c = beta * (kw["policy_chosen_logps"] - kw["ref_chosen_logps"])
                    rw_r = beta * (kw["policy_rejected_logps"] - kw["ref_rejected_logps"])
                    acc_stats.append({
                        "loss": float(loss), "rewards_chosen": float(rw_c.mean()),
                        "rewards_rejected": float(rw_r.mean()), "rewards_margin": float((rw_c - rw_r).mean()),
                        "rewards_accuracy": float((rw_c > rw_r).float().mean()),
                        "logps_chosen": float(kw["policy_chosen_logps"].mean()),
                        "logps_rejected": float(kw["policy_rejected_logps"].mean()),
                        "kl_chosen": float((kw["policy_chosen_logps"] - kw["ref_chosen_logps"]).mean()),
                        "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
                    })
            if acc.sync_gradients:
                step += 1
                stats = {k: float(np.nanmean([s[k] for s in acc_stats])) for k in acc_stats[0]}
                stats = {k: float(acc.reduce(torch.tensor(v, device=acc.device), "mean")) for k, v in stats.items()}
                acc_stats = []
                row = {"step": step, "epoch": epoch + 1, "lr": sched.get_last_lr()[0], **stats,
                       "tokens": tokens * world, "elapsed_s": time.time() - t0,
                       "tokens_per_s": tokens * world / max(time.time() - t0, 1e-9)}
                if val is not None and step % steps_per_epoch == 0:
                    row["val_loss"] = validation_loss()
                    if row["val_loss"] < best["val_loss"]:
                        best.update(val_loss=row["val_loss"], step=step, state=_full_state_dict(acc, model))
                rows.append(row)
                writers.write(row)
                every = train_cfg.checkpoint_every
                if every and step % every == 0 and step < total_steps:
                    saver.save({"step": step, "rows": rows, "tokens": tokens, "best_val_loss": best["val_loss"],
                                "best_step": best["step"], "best_state": best["state"]})
                bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['rewards_accuracy']:.2f}")
                bar.update(1)
    bar.close()
    writers.close()
    keep_initial = val is not None and best["state"] is None
    if keep_initial:
        log.warning("no epoch improved the validation loss (%.6g at step 0): the saved model is the initial "
                    "policy; with few validation pairs consider a larger val_fraction or select_best: false",
                    best["val_loss"])
    # COMAL keeps the best validation checkpoint (step 0 = the initial policy; with LoRA the adapters
    # are dropped below instead of merged). Gathering the weights is collective: every rank.
    if train_cfg.lora:
        final = None  # full weights on every rank: the main process merges and saves the module itself
    elif keep_initial:
        final = _initial_weights(policy_path) if acc.is_main_process else {}
    elif val is not None:
        final = best["state"]
    else:
        final = _full_state_dict(acc, model)
    acc.wait_for_everyone()
    if acc.is_main_process:
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
        with atomic_path(metrics_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        unwrapped = acc.unwrap_model(model)
        unwrapped.config.use_cache = True
        ckpt_dtype = torch_dtype(compute["checkpoint_dtype"])
        extra = {"best_step": best["step"], "best_val_loss": best["val_loss"]} if val is not None else {}
        with atomic_dir(output_dir) as tmp:
            if train_cfg.lora:
                if best["state"] is not None:
                    unwrapped.load_state_dict(best["state"])
                # the adapter (the iterate's delta over π_{t-1}) is kept; sampling and log-prob jobs
                # read the merged weights beside it
                unwrapped.save_pretrained(tmp / "adapter", safe_serialization=True)
                unwrapped = unwrapped.unload() if keep_initial else unwrapped.merge_and_unload()
                extra["lora"] = dict(train_cfg.lora)
                unwrapped.to(ckpt_dtype).save_pretrained(tmp, safe_serialization=True)
            else:
                unwrapped.config.dtype = ckpt_dtype
                unwrapped.save_pretrained(tmp, state_dict={k: v.to(ckpt_dtype) for k, v in final.items()},
                                          safe_serialization=True)
            tok.save_pretrained(tmp)
            write_json(provenance(parents=parents or {"policy_init": policy_path, "pairs": pairs_path},
                                  config={"train": asdict(train_cfg), "loss": asdict(loss_cfg),
                                          "compute": {**compute, "attn_implementation": attn,
                                                      "mixed_precision": acc.mixed_precision}},
                                  seed=train_cfg.seed, role="policy", n_pairs=len(df), steps=step,
                                  processes=world, distributed=str(acc.distributed_type.value), **extra),
                       tmp / "provenance.json")
        saver.clear()
    acc.wait_for_everyone()


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``accelerate launch -m nashflow.trainer --spec spec.json``."""
    import argparse

    from nashflow.logutil import job_logging

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="JSON file with the train() arguments")
    args = ap.parse_args(argv)
    from nashflow.launch import die_with_parent

    die_with_parent()  # accelerate's launcher is our parent; it dies with the job (see launch.py)
    with job_logging(None):
        try:
            run_spec(args.spec)
        finally:
            # join the collective backend's threads before the interpreter exits: left to process
            # teardown, a rank of a 2-process DeepSpeed run on CPU aborted after saving
            # ("terminate called without an active exception", once in a CI run)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def run_spec(spec_path: str) -> None:
    """``train()`` with the arguments of a spec file (written by ``nashflow.stages.train``)."""
    import json

    spec = json.loads(Path(spec_path).read_text())
    threads = spec.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    t = spec.pop("train")
    t["report_to"] = tuple(t.get("report_to", ()))
    train(train_cfg=TrainConfig(**t), loss_cfg=LossConfig(**spec.pop("loss")), **spec)


if __name__ == "__main__":
    main()
