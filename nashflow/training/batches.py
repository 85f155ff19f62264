"""The trainer's data: the pairs joined with their log-prob tables, the validation split, and the
per-micro-batch forward that turns pairs into the loss's keyword tensors.

Reference, history and anchor log-probs are table columns computed by the log-prob stage; the
trainer reads them and never recomputes them. Policy log-probs use the same encoding
(:func:`nashflow.logps.encode_pairs`) and log-prob code path (nashflow.logps) as that stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from nashflow.batching import build_packed, collate, length_batches, packed_batches, prompt_groups
from nashflow.errors import DataError
from nashflow.io import read_table
from nashflow.logps import Encoded, encode_pairs, packed_logps, packing_mode, token_logps
from nashflow.seeding import derive_seed
from nashflow.settings import LossConfig, TrainConfig

LOGP_COLS = ["chosen_logp", "chosen_tokens", "rejected_logp", "rejected_tokens", "model"]


def normalise(sums: torch.Tensor, counts: torch.Tensor, how: str) -> torch.Tensor:
    return sums / counts.clamp(min=1) if how == "mean" else sums


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


def split_validation(df: pd.DataFrame, loss_cfg: LossConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(training pairs, validation pairs or None): the split by pair id when ``select_best`` asks for one."""
    if not loss_cfg.select_best:
        return df, None
    is_val = df.pair_id.map(lambda p: is_validation(p, loss_cfg.val_fraction))
    if is_val.sum() == 0 or (~is_val).sum() == 0:
        raise DataError(f"{len(df)} pairs are too few for a validation split of {loss_cfg.val_fraction}")
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


class PairBatches:
    """Tensors of the whole pair table, indexed per micro-batch."""

    def __init__(self, df: pd.DataFrame, tok, train_cfg: TrainConfig, loss_cfg: LossConfig, n_history: int):
        self.df, self.tok, self.cfg, self.loss_cfg, self.n_history = df, tok, train_cfg, loss_cfg, n_history
        self.spec = loss_cfg.spec
        # losses that never look at the rejected response do not encode or forward it
        sides = ("chosen", "rejected") if self.spec.uses_rejected else ("chosen",)
        enc = encode_pairs(tok, df, sides, max_length=train_cfg.max_length,
                           max_prompt_length=train_cfg.max_prompt_length)
        self.chosen, self.rejected = enc[:len(df)], enc[len(df):]
        self.tensors = self._table_tensors(df, loss_cfg.logp_norm, n_history)
        self.ref_tokens = list(df["ref_chosen_token_logps"]) if "ref_chosen_token_logps" in df.columns else None
        if self.spec.per_token and self.ref_tokens is None:
            raise DataError(f"the {loss_cfg.name} loss needs per-token reference log-probs (column chosen_token_logps)")

    @staticmethod
    def _table_tensors(df: pd.DataFrame, norm: str, n_history: int) -> dict[str, torch.Tensor]:
        """The loss's inputs read from the table: reference and history log-probs (normalised), targets."""
        col = lambda name: torch.tensor(df[name].to_numpy(dtype=np.float64), dtype=torch.float32)  # noqa: E731
        tensors = {
            "ref_chosen_logps": normalise(col("ref_chosen_logp"), col("ref_chosen_tokens"), norm),
            "ref_rejected_logps": normalise(col("ref_rejected_logp"), col("ref_rejected_tokens"), norm),
            "chosen_target": col("chosen_target"), "rejected_target": col("rejected_target"),
            "pref_prob": col("pref_prob"),
        }
        if n_history:
            tensors["history_chosen_logps"] = torch.stack(
                [normalise(col(f"hist{j}_chosen_logp"), col(f"hist{j}_chosen_tokens"), norm)
                 for j in range(n_history)], -1)
            tensors["history_rejected_logps"] = torch.stack(
                [normalise(col(f"hist{j}_rejected_logp"), col(f"hist{j}_rejected_tokens"), norm)
                 for j in range(n_history)], -1)
        return tensors

    def lengths(self) -> list[int]:
        if not self.spec.uses_rejected:
            return [len(c.input_ids) for c in self.chosen]
        return [max(len(c.input_ids), len(r.input_ids)) for c, r in zip(self.chosen, self.rejected)]

    def loss(self, model, idx: list[int], loss_fn, device) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Per-example losses of the micro-batch ``idx`` and the policy log-probs used."""
        seqs: list[Encoded] = [self.chosen[i] for i in idx]
        if self.spec.uses_rejected:
            seqs += [self.rejected[i] for i in idx]
        n = len(idx)
        n_tok = sum(len(e.input_ids) for e in seqs)
        sums, counts, lp, resp = self._policy_logps(model, seqs, n, device)
        pol = normalise(sums, counts, self.loss_cfg.logp_norm)
        i_t = torch.tensor(idx)
        kw = {k: v[i_t].to(device) for k, v in self.tensors.items()}
        kw["policy_chosen_logps"] = pol[:n]
        kw["policy_rejected_logps"] = pol[n:] if self.spec.uses_rejected else kw["ref_rejected_logps"]
        kw["chosen_tokens"] = counts[:n]
        if self.spec.per_token:
            kw.update(self._per_token_inputs(idx, lp[:n], resp[:n, 1:], device))
        losses = loss_fn(beta=self.loss_cfg.beta, **self.loss_cfg.params, **kw)
        return losses, kw, n_tok

    def _policy_logps(self, model, seqs: list[Encoded], n: int, device):
        """(summed log-probs, response token counts, per-token log-probs, response mask) of ``seqs``;
        the last two only on the padded path (None when packed)."""
        mode = packing_mode(model) if not self.spec.per_token else None
        if mode == "flat" or (mode == "tree" and min(e.response_start for e in seqs) >= 1):
            # tree: chosen and rejected share their prompt in one packed group; flat: every sequence
            # whole, in one row (see nashflow.logps)
            if mode == "tree":
                cand = [[j, n + j] for j in range(n)] if self.spec.uses_rejected else [[j] for j in range(n)]
                (rows,) = packed_batches(seqs, prompt_groups(seqs, cand), max_tokens=1 << 40)
            else:
                n_tok = sum(len(e.input_ids) for e in seqs)
                (rows,) = packed_batches(seqs, [[j] for j in range(len(seqs))], max_tokens=1 << 40, width=n_tok)
            batch = build_packed(seqs, rows, self.tok.pad_token_id, device, flat=mode == "flat")
            got, _ = packed_logps(model, batch)
            sums = torch.zeros_like(got).index_copy(0, torch.tensor(batch.order, device=got.device), got)
            counts = torch.tensor([e.n_response for e in seqs], dtype=torch.float32, device=got.device)
            return sums, counts, None, None
        ids, attn, resp = collate(seqs, self.tok.pad_token_id, device)
        lp = token_logps(model, ids, attn, resp)
        return lp.sum(-1), resp[:, 1:].sum(-1).float(), lp, resp

    def _per_token_inputs(self, idx: list[int], lp: torch.Tensor, mask: torch.Tensor, device) -> dict[str, Any]:
        """Per-token policy and reference log-probs [B, T] on the chosen responses (Nash-MD's inputs)."""
        ref_flat = torch.tensor(np.concatenate([np.asarray(self.ref_tokens[i], dtype=np.float32) for i in idx]),
                                device=device)
        if ref_flat.numel() != int(mask.sum()):
            raise DataError("per-token reference log-probs do not match the policy's response tokens")
        return dict(policy_token_logps=lp, mask=mask,
                    ref_token_logps=torch.zeros_like(lp).masked_scatter(mask, ref_flat.to(lp.dtype)))


@dataclass(frozen=True)
class BatchPlan:
    """The micro-batches: length batches of all pairs, shuffled per epoch and dealt out to the
    processes; each process runs the same number (``per_proc``, cut to whole optimizer steps)."""

    batches: list[list[int]]
    per_proc: int
    steps_per_epoch: int
    total_steps: int

    def mine(self, epoch: int, seed: int, rank: int, world: int, grad_accum: int) -> list[list[int]]:
        """This process's micro-batches of ``epoch`` (the order is a function of the seed alone)."""
        order = np.random.default_rng(derive_seed(seed, epoch)).permutation(len(self.batches))
        mine = [self.batches[i] for i in order[: self.per_proc * world]][rank::world]
        return mine[: self.steps_per_epoch * grad_accum]


def plan_batches(lengths: list[int], train_cfg: TrainConfig, world: int) -> BatchPlan:
    batches = length_batches(lengths, train_cfg.batch_size * max(lengths), max_batch=train_cfg.batch_size)
    per_proc = len(batches) // world
    if per_proc == 0:
        raise DataError(f"{len(lengths)} pairs are too few for {world} processes x batch {train_cfg.batch_size}")
    steps_per_epoch = max(1, per_proc // train_cfg.grad_accum)
    return BatchPlan(batches, per_proc, steps_per_epoch, steps_per_epoch * train_cfg.epochs)
