"""Temperature, top-k and top-p (nucleus) sampling without sorting the vocabulary.

transformers' ``TopPLogitsWarper`` sorts the whole vocabulary for every row at every decoding step
(on CPU with a 49k vocabulary, a fifth of a sampling step), and its sampling step,
``torch.multinomial`` over the full softmax, draws one exponential variate per vocabulary entry
(49k per row per step: a fifth of the decoding time of SmolLM2-135M on our 2-core CPU, profiled).
Here:

* :func:`nucleus` takes the ``k`` largest scores (``topk``, linear time), checks that they hold at
  least ``top_p`` of the probability mass in every row, and doubles ``k`` until they do (at worst
  the whole vocabulary). The kept set is the one ``TopPLogitsWarper`` keeps: a token stays when
  the probability of the tokens strictly more likely than it is below ``top_p``; at least one token
  always stays. With ``top_k`` the nucleus is taken within the ``top_k`` largest, renormalised, as
  ``generate(top_k=, top_p=)`` does.
* :class:`Sampler` draws one token per row from that distribution by inverse CDF: one uniform
  variate per row (``torch.rand`` from the global generator), located in the cumulative weights of
  the kept tokens. The distribution is the filtered softmax exactly (tested); the draws are not
  ``torch.multinomial``'s, so samples differ from ``generate``'s for the same seed.
* :class:`NucleusFilter` is the same filter as a ``generate`` logits processor.
"""

from __future__ import annotations

import torch


def nucleus(scores: torch.Tensor, top_p: float = 1.0, top_k: int = 0, k: int = 256):
    """Candidates ``(values, ids, keep)`` of each row, largest first: the ``top_k`` largest scores
    (all of them without ``top_k``) cut to the top-p nucleus; ``keep`` marks the nucleus, a prefix of
    every row. None when neither filter applies (the whole vocabulary)."""
    vocab = scores.shape[-1]
    if top_k and top_k < vocab:
        vals, idx = scores.topk(top_k, dim=-1)
        if top_p >= 1.0:
            return vals, idx, torch.ones_like(vals, dtype=torch.bool)
        probs = vals.softmax(-1)
        return vals, idx, _keep(probs, top_p)
    if top_p >= 1.0:
        return None
    log_z = scores.logsumexp(-1, keepdim=True)
    k = min(max(k, 1), vocab)
    while True:
        vals, idx = scores.topk(k, dim=-1)  # sorted, largest first
        probs = (vals - log_z).exp()
        if k == vocab or bool((probs.sum(-1) >= top_p).all()):
            return vals, idx, _keep(probs, top_p)
        k = min(2 * k, vocab)


def _keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
    keep = before < top_p
    keep[:, 0] = True
    return keep


def nucleus_mask(logits: torch.Tensor, top_p: float, k: int = 256) -> torch.Tensor:
    """Boolean mask [B, V] of the tokens inside each row's top-p nucleus."""
    found = nucleus(logits, top_p, 0, k)
    if found is None:
        return torch.ones_like(logits, dtype=torch.bool)
    _, idx, keep = found
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, keep)


def inverse_cdf(weights: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row of ``weights`` [B, n] (non-negative, not normalised), drawn with probability
    proportional to its weight from one ``torch.rand`` variate per row; ``last`` [B, 1] caps the
    index (the last positive weight) against rounding at the top of the cumulative sum."""
    cum = weights.cumsum(-1)
    u = torch.rand(weights.shape[0], 1, dtype=cum.dtype, device=cum.device) * cum[:, -1:]
    idx = torch.searchsorted(cum, u, right=True)
    return torch.minimum(idx, last) if last is not None else idx.clamp_(max=weights.shape[-1] - 1)


class Sampler:
    """Next tokens [B] from logits [B, V]: temperature, then top-k, then top-p, as
    ``generate(temperature=, top_k=, top_p=)`` apply them; ``temperature`` 0 is greedy (argmax)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, k: int = 256):
        self.temperature, self.top_k, self.top_p, self.k = temperature, top_k, top_p, k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return logits.argmax(-1)
        scores = logits / self.temperature if self.temperature != 1.0 else logits
        found = nucleus(scores, self.top_p, self.top_k, self.k)
        if found is None:
            return inverse_cdf((scores - scores.amax(-1, keepdim=True)).exp()).squeeze(1)
        vals, idx, keep = found
        weights = (vals - vals[:, :1]).exp().masked_fill_(~keep, 0.0)
        return idx.gather(1, inverse_cdf(weights, keep.sum(-1, keepdim=True) - 1)).squeeze(1)


class NucleusFilter:
    """The same filter as a logits processor for ``generate(logits_processor=LogitsProcessorList([...]))``
    with ``generate``'s own temperature, top-k and top-p left at 1.0 / 0 / 1.0: kept scores stay,
    the rest become -inf. (Not a subclass of transformers' ``LogitsProcessor``, so that importing
    it does not import transformers.)"""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, k: int = 256):
        self.temperature, self.top_k, self.top_p, self.k = temperature, top_k, top_p, k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature if self.temperature != 1.0 else scores
        found = nucleus(scores, self.top_p, self.top_k, self.k)
        if found is None:
            return scores
        vals, idx, keep = found
        return torch.full_like(scores, float("-inf")).scatter(-1, idx, vals.masked_fill(~keep, float("-inf")))
