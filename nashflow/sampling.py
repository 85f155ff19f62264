"""Temperature, top-k and top-p (nucleus) filtering without sorting the vocabulary.

transformers' ``TopPLogitsWarper`` sorts the whole vocabulary for every row at every decoding step;
on CPU with a 49k vocabulary that sort took a fifth of a sampling step. The nucleus is almost always
a few hundred tokens, so :class:`NucleusFilter` takes the ``k`` largest logits (``topk``, linear
time), checks that they hold at least ``top_p`` of the probability mass in every row, and doubles
``k`` until they do (at worst the whole vocabulary). The kept set is the one
``TopPLogitsWarper`` keeps: a token stays when the probability of the tokens strictly more likely
than it is below ``top_p``; at least one token always stays.
"""

from __future__ import annotations

import torch


def nucleus_mask(logits: torch.Tensor, top_p: float, k: int = 256) -> torch.Tensor:
    """Boolean mask [B, V] of the tokens inside each row's top-p nucleus."""
    vocab = logits.shape[-1]
    log_z = logits.logsumexp(-1, keepdim=True)
    k = min(max(k, 1), vocab)
    while True:
        vals, idx = logits.topk(k, dim=-1)  # sorted, largest first
        probs = (vals - log_z).exp()
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        if k == vocab or bool((before[:, -1] + probs[:, -1] >= top_p).all()):
            keep = before < top_p
            keep[:, 0] = True
            return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, keep)
        k = min(2 * k, vocab)


class NucleusFilter:
    """Temperature, then top-k, then top-p, as ``generate(temperature=, top_k=, top_p=)`` apply them;
    a logits processor for ``generate(logits_processor=LogitsProcessorList([...]))`` with those left
    at 1.0 / 0 / 1.0. (Not a subclass of transformers' ``LogitsProcessor``, so that importing it
    does not import transformers: the workflow's DAG-time imports stay light.)"""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, k: int = 256):
        self.temperature, self.top_k, self.top_p, self.k = temperature, top_k, top_p, k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature if self.temperature != 1.0 else scores
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            scores = scores.masked_fill(~nucleus_mask(scores, self.top_p, self.k), float("-inf"))
        return scores
