"""Sequence-classification reward models (ArmoRM, Skywork, Athene, OpenAssistant, gpt2 RMs).

The reward model's own chat template renders the stored conversation (``input_format: chat``);
classifiers trained on text pairs get ``tokenizer(prompt, response)`` (``pair``, MOODPO's gpt2
reward models) and response-only classifiers ``response`` (the humor classifier). Models with
several outputs (ArmoRM's objective heads, 2-label classifiers) pick one with ``head`` or expose
several as objectives with ``heads``. Sequences are sorted by length and right-padded, so a
score does not depend on the batch it lands in.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from nashflow.batching import length_batches, right_pad
from nashflow.errors import ConfigError, DataError
from nashflow.messages import last_user_text
from nashflow.scorers.base import Scorer, load_scorer_model, render_conversation
from nashflow.torchutil import inference_mode

log = logging.getLogger(__name__)
INPUT_FORMATS = ("chat", "pair", "response")


class RewardModelScorer(Scorer):
    """Scalar (``head``) or per-objective (``heads``) rewards from ``AutoModelForSequenceClassification``."""

    name = "reward_model"

    def __init__(self, model: str, *, input_format: str = "chat", head: int = 0,
                 heads: list[str] | dict[str, int] | None = None, output: str = "auto", batch_size: int = 16,
                 max_tokens: int = 16384, max_length: int = 4096, dtype: str | None = None, device: str | None = None,
                 trust_remote_code: bool = False, base_model_dir: str | None = None, component: str = "reward_model",
                 compute: dict | None = None):
        self.validate_args(input_format=input_format, output=output, heads=heads)
        self.component = component
        self.input_format, self.output = input_format, output
        self.batch_size, self.max_tokens, self.max_length = int(batch_size), int(max_tokens), int(max_length)
        if heads:
            self.kind = "objectives"
            self.head_index = dict(heads) if isinstance(heads, dict) else {h: i for i, h in enumerate(heads)}
            self.objectives = list(self.head_index)
        else:
            self.head_index = {component: int(head)}
        self.path, self.tok, self.model, self.device = load_scorer_model(
            "AutoModelForSequenceClassification", model, component=component, base_model_dir=base_model_dir,
            dtype=dtype, compute=compute, device=device, trust_remote_code=trust_remote_code,
            chat_template=input_format == "chat")
        self.model_paths = (self.path,)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        n_out = int(getattr(self.model.config, "num_labels", 1))
        bad = [h for h, i in self.head_index.items() if output != "score" and not 0 <= i < n_out]
        if bad:
            raise DataError(f"scorer '{component}': head {self.head_index[bad[0]]} ('{bad[0]}') is out of range; "
                            f"{self.path} has {n_out} outputs")

    @staticmethod
    def validate_args(*, input_format: str = "chat", output: str = "auto", heads=None, **_) -> None:
        if input_format not in INPUT_FORMATS:
            raise ConfigError(f"reward_model: input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
        if output not in ("auto", "logits", "score"):
            raise ConfigError(f"reward_model: output must be auto, logits or score, got {output!r}")
        if heads is not None and not heads:
            raise ConfigError("reward_model: heads must name at least one objective")

    def encode(self, messages: Sequence[list[dict]], responses: Sequence[str]) -> list[list[int]]:
        kw = dict(truncation=True, max_length=self.max_length)
        if self.input_format == "chat":
            texts = [render_conversation(self.tok, list(m), r) for m, r in zip(messages, responses)]
            return [self.tok(t, add_special_tokens=False, **kw)["input_ids"] for t in texts]
        if self.input_format == "pair":
            return [self.tok(last_user_text(list(m)), r, **kw)["input_ids"] for m, r in zip(messages, responses)]
        return [self.tok(r, **kw)["input_ids"] for r in responses]

    @inference_mode
    def raw_scores(self, encoded: list[list[int]], progress: bool = False) -> np.ndarray:
        """[N, outputs] model outputs, computed in length-sorted right-padded batches."""

        out: np.ndarray | None = None
        batches = length_batches([len(e) for e in encoded], self.max_tokens, self.batch_size)
        bar = tqdm(total=len(encoded), desc=f"score {self.component}", unit="seq", disable=not progress, mininterval=5)
        for idx in batches:
            ids, attn, _ = right_pad([encoded[i] for i in idx], self.tok.pad_token_id, self.device)
            res = self.model(input_ids=ids, attention_mask=attn)
            use_score = self.output == "score" or (self.output == "auto" and getattr(res, "score", None) is not None)
            vals = (res.score if use_score else res.logits).float().reshape(len(idx), -1).cpu().numpy()
            if out is None:
                out = np.zeros((len(encoded), vals.shape[1]), dtype=np.float64)
            out[idx] = vals
            bar.update(len(idx))
        bar.close()
        return out if out is not None else np.zeros((0, 1))

    def score(self, messages, responses):
        raw = self.raw_scores(self.encode(messages, responses), progress=len(responses) > 64)
        cols = np.array([raw[:, i] for i in self.head_index.values()]).T if len(raw) else \
            np.zeros((0, len(self.head_index)))
        return cols if self.kind == "objectives" else cols[:, 0]
