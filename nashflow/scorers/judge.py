"""LLM-as-judge: a causal LM compares two responses, in both positions, from a prompt template.

The template (``nashflow/templates/judge_pairwise.txt`` by default, COMAL's "Output (a)/(b)"
style) holds ``{instruction}``, ``{output_a}`` and ``{output_b}``. It is sent as a user turn with
the judge's own chat template; the judge's answer is forced to begin with ``answer_prefix``
("Output (") and one forward pass gives the log-probs of the two label tokens ("a", "b") at the
next position. No sampling, so the score is deterministic and batch-independent. The K(K−1)
queries of a prompt share the template head and the instruction: that prefix runs once and its
KV cache serves them all (``prefix_cache``).

P(a wins) follows COMAL (``data_processing.py``): if both labels are among the ``top_logprobs``
most likely tokens, p_a = e^{lp_a} / (e^{lp_a} + e^{lp_b}); only one present → 1 or 0; neither →
½. ``top_logprobs: null`` always uses both labels. Every ordered pair (i, j), i ≠ j, is judged;
P[i][j] = ½(p(i, j) + 1 − p(j, i)) cancels position bias and gives P + Pᵀ = 1.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from nashflow.batching import length_batches, right_pad
from nashflow.errors import ConfigError, DataError
from nashflow.messages import last_user_text
from nashflow.pairs import judge_matrix, sigmoid
from nashflow.scorers.base import PreferenceResult, Scorer, load_scorer_model
from nashflow.torchutil import inference_mode

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "judge_pairwise.txt"
PLACEHOLDERS = ("{instruction}", "{output_a}", "{output_b}")


def load_template(path: str | None) -> str:
    """Read a judge template and check its placeholders (a missing one would judge nothing)."""
    p = Path(path) if path else DEFAULT_TEMPLATE
    if not p.is_file():
        raise ConfigError(f"judge template {p} does not exist (config key scorer.components[].args.template)")
    text = p.read_text(encoding="utf-8")
    missing = [ph for ph in PLACEHOLDERS if ph not in text]
    if missing:
        raise ConfigError(f"judge template {p} lacks the placeholder(s) {', '.join(missing)}; "
                          f"a template must contain all of {', '.join(PLACEHOLDERS)}")
    return text


def label_probability(lp_a: float, lp_b: float, a_in_top: bool, b_in_top: bool) -> tuple[float, str]:
    """P(first output wins) from the label log-probs, with COMAL's fallbacks; also which case applied."""
    if a_in_top and b_in_top:
        return float(sigmoid(lp_a - lp_b)), "both"
    if a_in_top:
        return 1.0, "only_a"
    if b_in_top:
        return 0.0, "only_b"
    return 0.5, "neither"


class JudgeScorer(Scorer):
    """Pairwise preferences from a causal LM judge (``kind = preference``)."""

    name = "judge"
    kind = "preference"

    def __init__(self, model: str = "base", *, template: str | None = None, answer_prefix: str = "Output (",
                 labels: tuple[str, str] = ("a", "b"), top_logprobs: int | None = 4, max_output_tokens: int = 512,
                 batch_size: int = 16, max_tokens: int = 16384, prefix_cache: bool = True, dtype: str | None = None,
                 device: str | None = None, trust_remote_code: bool = False, base_model_dir: str | None = None,
                 component: str = "judge", compute: dict | None = None):
        self.validate_args(template=template, labels=labels, top_logprobs=top_logprobs)
        self.template = load_template(template)
        self.component, self.answer_prefix, self.labels = component, answer_prefix, tuple(labels)
        self.top_logprobs, self.max_output_tokens = top_logprobs, int(max_output_tokens)
        self.batch_size, self.max_tokens, self.prefix_cache = int(batch_size), int(max_tokens), bool(prefix_cache)
        self.path, self.tok, self.model, self.device = load_scorer_model(
            "AutoModelForCausalLM", model, component=component, base_model_dir=base_model_dir, dtype=dtype,
            compute=compute, device=device, trust_remote_code=trust_remote_code)
        self.model_paths = (self.path,)
        self.fallbacks: Counter = Counter()
        self.tokens_read = 0  # context tokens forwarded (throughput reports)
        # Start-up check: the two labels must be distinct next tokens after the answer prefix.
        _, a, b = self.encode_query("instruction", "first", "second")
        if a == b:
            raise DataError(f"scorer '{component}': the labels {labels} give the same token after "
                            f"{answer_prefix!r} with the tokenizer of {self.path}; choose other labels")

    @staticmethod
    def validate_args(*, template: str | None = None, labels=("a", "b"), top_logprobs=4, **_) -> None:
        load_template(template)
        if len(labels) != 2 or labels[0] == labels[1]:
            raise ConfigError(f"judge: 'labels' must be two different strings, got {labels!r}")
        if top_logprobs is not None and int(top_logprobs) < 1:
            raise ConfigError("judge: 'top_logprobs' must be >= 1 or null")

    def _clip(self, text: str) -> str:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_output_tokens else self.tok.decode(ids[: self.max_output_tokens])

    def encode_query(self, instruction: str, out_a: str, out_b: str) -> tuple[list[int], int, int]:
        """Context token ids (ending just before the label) and the two label token ids."""
        filled = (self.template.replace("{instruction}", instruction)
                  .replace("{output_a}", self._clip(out_a)).replace("{output_b}", self._clip(out_b)))
        prefix = self.tok.apply_chat_template([{"role": "user", "content": filled}], tokenize=False,
                                              add_generation_prompt=True) + self.answer_prefix
        ids_a = self.tok(prefix + self.labels[0], add_special_tokens=False)["input_ids"]
        ids_b = self.tok(prefix + self.labels[1], add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
            n += 1
        if n == 0 or n >= min(len(ids_a), len(ids_b)):
            raise DataError(f"scorer '{self.component}': cannot locate the label token after {self.answer_prefix!r}")
        return ids_a[:n], ids_a[n], ids_b[n]

    def _last_logits(self, contexts: list[list[int]]):
        """Yield (positions, next-token logits [B, V]) for every context, in length-sorted batches.

        With ``prefix_cache`` the contexts' longest common prefix (template head + instruction,
        shared by all K(K−1) queries of a prompt) runs once and its KV cache is reused.
        """
        import torch

        from nashflow.logps import split_head

        split = split_head(self.model)
        common = 0
        if self.prefix_cache and split is not None and len(contexts) > 1:
            first, shortest = contexts[0], min(len(c) for c in contexts)
            while common < shortest - 1 and all(c[common] == first[common] for c in contexts):
                common += 1
        prefix = None
        if common > 0:
            prefix = split[0](input_ids=torch.tensor([contexts[0][:common]], device=self.device),
                              use_cache=True).past_key_values
        suffixes = [c[common:] for c in contexts]
        for idx in length_batches([len(x) for x in suffixes], self.max_tokens, self.batch_size):
            ids, attn, lens = right_pad([suffixes[i] for i in idx], self.tok.pad_token_id, self.device)
            rows, last = torch.arange(len(idx), device=self.device), (lens - 1).to(self.device)
            if split is None:
                logits = self.model(input_ids=ids, attention_mask=attn).logits  # on the last GPU of a split model
                yield idx, logits[rows.to(logits.device), last.to(logits.device)]
                continue
            body, head = split
            kw = {}
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(idx))
                kw = {"past_key_values": cache, "use_cache": True,
                      "position_ids": (common + torch.arange(ids.shape[1], device=self.device)).expand_as(ids)}
                attn = torch.cat([torch.ones((len(idx), common), dtype=attn.dtype, device=self.device), attn], 1)
            hidden = body(input_ids=ids, attention_mask=attn, **kw).last_hidden_state
            yield idx, head(hidden[rows.to(hidden.device), last.to(hidden.device)])

    @inference_mode
    def first_wins(self, queries: Sequence[tuple[str, str, str]], progress: bool = False) -> np.ndarray:
        """p(first output wins) for each (instruction, output_a, output_b); queries sharing an
        instruction share one prefix computation."""
        import torch

        enc = [self.encode_query(*q) for q in queries]
        self.tokens_read += sum(len(e[0]) for e in enc)
        out = np.zeros(len(enc), dtype=np.float64)
        by_instruction: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_instruction.setdefault(q[0], []).append(i)
        bar = tqdm(total=len(enc), desc=f"judge {self.component}", unit="pair", disable=not progress, mininterval=5)
        for members in by_instruction.values():
            for pos, logits in self._last_logits([enc[i][0] for i in members]):
                lp = torch.log_softmax(logits.float(), dim=-1)
                top = torch.topk(lp, self.top_logprobs, dim=-1).indices if self.top_logprobs else None
                for row, p in enumerate(pos):
                    i = members[p]
                    a, b = enc[i][1], enc[i][2]
                    a_in = top is None or bool((top[row] == a).any())
                    b_in = top is None or bool((top[row] == b).any())
                    out[i], case = label_probability(float(lp[row, a]), float(lp[row, b]), a_in, b_in)
                    self.fallbacks[case] += 1
                bar.update(len(pos))
        bar.close()
        return out

    def preferences(self, groups):
        queries, index = [], []
        for g, (messages, responses) in enumerate(groups):
            instruction = last_user_text(list(messages))
            for i, ri in enumerate(responses):
                for j, rj in enumerate(responses):
                    if i != j:
                        queries.append((instruction, ri, rj))
                        index.append((g, i, j))
        probs = self.first_wins(queries, progress=len(queries) > 32)
        per_group: list[dict] = [{} for _ in groups]
        for (g, i, j), p in zip(index, probs):
            per_group[g][(i, j)] = float(p)
        if self.fallbacks:
            log.info("judge label cases so far: %s", dict(self.fallbacks))
        return [PreferenceResult(P=judge_matrix(d, len(resp))) for d, (_, resp) in zip(per_group, groups)]
