"""Deterministic seeds derived from (base seed, iteration, shard, ...). Imports no torch."""

import hashlib
import random

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 31-bit seed that depends only on ``parts`` (stable across processes and machines)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)
