"""PairRM (llm-blender) as in SPPO's ``scripts/rank.py``; the optional extra ``nashflow[pairrm]``.

PairRM compares every ordered pair of candidates; llm-blender aggregates the comparison logits
C into per-candidate scores s_i = mean_j (C[i][j] − C[j][i]) (``rank(..., return_scores=True)``).
SPPO then sets P[i][j] = σ(s_i − s_j) (``compute_prob.py``; :func:`nashflow.pairs.bradley_terry_matrix`),
which is what this scorer returns, with s as the per-candidate score. PairRM reads the prompt as
text: the plain user message (``prompt_format: text``) or, as SPPO does, the prompt rendered with
a chat template (``prompt_format: chat``, the template of ``template_model``).
"""

from __future__ import annotations

import numpy as np

from nashflow.errors import ConfigError, DataError
from nashflow.messages import last_user_text
from nashflow.pairs import bradley_terry_matrix
from nashflow.scorers.base import PreferenceResult, Scorer, resolve_model_path, scorer_device


class PairRMScorer(Scorer):
    name = "pairrm"
    kind = "preference"

    def __init__(self, model: str = "llm-blender/PairRM", *, prompt_format: str = "text",
                 template_model: str = "base", batch_size: int = 8, device: str | None = None,
                 base_model_dir: str | None = None, component: str = "pairrm"):
        self.validate_args(prompt_format=prompt_format)
        try:
            import llm_blender
        except ImportError as err:
            raise DataError(f"scorer '{component}' needs the optional extra: pip install 'nashflow[pairrm]' "
                            f"(llm-blender): {err}") from err
        self.component, self.prompt_format, self.batch_size = component, prompt_format, int(batch_size)
        self.blender = llm_blender.Blender()
        self.blender.loadranker(model, device=scorer_device(device))
        self.tok = None
        if prompt_format == "chat":
            from nashflow.models import load_tokenizer

            self.tok = load_tokenizer(resolve_model_path(template_model, base_model_dir, component))

    @staticmethod
    def validate_args(*, prompt_format: str = "text", **_) -> None:
        if prompt_format not in ("text", "chat"):
            raise ConfigError(f"pairrm: prompt_format must be text or chat, got {prompt_format!r}")

    def _prompt(self, messages: list[dict]) -> str:
        if self.tok is None:
            return last_user_text(messages)
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def preferences(self, groups):
        prompts = [self._prompt(list(m)) for m, _ in groups]
        cands = [list(r) for _, r in groups]
        scores = self.blender.rank(prompts, cands, return_scores=True, batch_size=self.batch_size)
        return [PreferenceResult(P=bradley_terry_matrix(s), scores=np.asarray(s, dtype=np.float64)) for s in scores]
