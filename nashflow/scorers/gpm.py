"""General preference model (GPM, Zhang et al. 2024): skew-symmetric scores from embeddings.

A backbone LM reads the chat-templated [user, assistant] conversation; a bias-free value head of
width 2k maps the hidden state at the last token to v(y|x), L2-normalised. With blocks
R = [[0, −1], [1, 0]] on the diagonal,

    s(y_i ≻ y_j | x) = (1/τ) · Σ_{m=1..k} λ_m(x) · (v_i[2m−1]·v_j[2m] − v_i[2m]·v_j[2m−1])

(1-based), so s(i, j) = −s(j, i) exactly: the table is computed as (M − Mᵀ)/τ. λ = 1 without a
prompt head; with one, λ = softmax(W·h_x), h_x the hidden state at the last prompt token.
P[i][j] = σ(T[i][j] − T[j][i]) = σ(2·s(i, j)) as in ``compute_prob_from_raw.py``; the raw table T
is kept for GPO (W = T − Tᵀ).

Folder layout: a transformers backbone (config.json + safetensors) and the heads either in
``gpm_head.safetensors`` or in the backbone's weights, as ``value_head.weight`` [2k, hidden] and
optionally ``prompt_head.weight`` [k, hidden].
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nashflow.batching import length_batches, right_pad
from nashflow.errors import DataError
from nashflow.pairs import sigmoid
from nashflow.scorers.base import PreferenceResult, Scorer, load_scorer_model, render_conversation
from nashflow.torchutil import inference_mode

if TYPE_CHECKING:
    import torch

HEAD_FILE = "gpm_head.safetensors"


def gpm_table(v: torch.Tensor, tau: float, lam: torch.Tensor | None = None) -> torch.Tensor:
    """[K, K] scores s(i, j) from L2-normalised embeddings v [K, 2k] and prompt weights λ [k]."""
    a, b = v[:, 0::2], v[:, 1::2]  # the two coordinates of every 2-d block
    if lam is not None:
        a = a * lam
    m = a @ b.T  # m[i, j] = Σ_m λ_m v_i[2m−1] v_j[2m]
    return (m - m.T) / tau


def _find_heads(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = [path / HEAD_FILE] if (path / HEAD_FILE).exists() else sorted(path.glob("*.safetensors"))
    heads = {}
    for f in files:
        for key, val in load_file(str(f)).items():
            for name in ("value_head.weight", "prompt_head.weight"):
                if key == name or key.endswith("." + name):
                    heads[name] = val
    if "value_head.weight" not in heads:
        raise DataError(f"GPM folder {path} has no value_head.weight (in {HEAD_FILE} or the model weights)")
    return heads


class GPMScorer(Scorer):
    """Preference matrix and raw score table from a general preference model (``kind = preference``)."""

    name = "gpm"
    kind = "preference"

    def __init__(self, model: str, *, tau: float = 0.1, batch_size: int = 16, max_tokens: int = 16384,
                 max_length: int = 4096, dtype: str | None = None, device: str | None = None,
                 trust_remote_code: bool = False, base_model_dir: str | None = None, component: str = "gpm",
                 compute: dict | None = None):
        import torch

        if tau <= 0:
            raise DataError(f"scorer '{component}': tau must be > 0")
        self.component, self.tau = component, float(tau)
        self.batch_size, self.max_tokens, self.max_length = int(batch_size), int(max_tokens), int(max_length)
        self.path, self.tok, self.backbone, self.device = load_scorer_model(
            "AutoModel", model, component=component, base_model_dir=base_model_dir, dtype=dtype, compute=compute,
            device=device, trust_remote_code=trust_remote_code)
        self.model_paths = (self.path,)
        heads = _find_heads(Path(self.path))
        self.value_head = heads["value_head.weight"].to(self.device, torch.float32)
        self.prompt_head = heads.get("prompt_head.weight")
        if self.prompt_head is not None:
            self.prompt_head = self.prompt_head.to(self.device, torch.float32)
        width = self.value_head.shape[0]
        if width % 2 or (self.prompt_head is not None and self.prompt_head.shape[0] != width // 2):
            raise DataError(f"GPM {self.path}: value head width {width} must be even and the prompt head "
                            "must have half as many rows")

    @inference_mode
    def _hidden(self, seqs: list[list[int]]) -> torch.Tensor:
        """Last-layer hidden state at the last token of every sequence (right padding)."""
        import torch

        out = torch.zeros((len(seqs), self.value_head.shape[1]), device=self.device)
        for idx in length_batches([len(s) for s in seqs], self.max_tokens, self.batch_size):
            ids, attn, lens = right_pad([seqs[i] for i in idx], self.tok.pad_token_id, self.device)
            h = self.backbone(input_ids=ids, attention_mask=attn).last_hidden_state
            out[idx] = h[torch.arange(len(idx), device=h.device), (lens - 1).to(h.device)].float().to(self.device)
        return out

    def _encode(self, messages: list[dict], response: str) -> list[int]:
        text = render_conversation(self.tok, messages, response)
        return self.tok(text, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]

    def embed(self, groups) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per prompt: (v [K, 2k] L2-normalised, λ [k] or None); all groups' sequences in shared batches."""
        import torch

        seqs = [self._encode(list(m), r) for m, resp in groups for r in resp]
        v_all = torch.nn.functional.normalize(self._hidden(seqs) @ self.value_head.T, dim=-1)
        lam_all = None
        if self.prompt_head is not None:
            prompts = [self.tok.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True)
                       for m, _ in groups]
            h_x = self._hidden([self.tok(p, add_special_tokens=False)["input_ids"][-self.max_length:] for p in prompts])
            lam_all = torch.softmax(h_x @ self.prompt_head.T, dim=-1)
        out, start = [], 0
        for g, (_, resp) in enumerate(groups):
            out.append((v_all[start:start + len(resp)], None if lam_all is None else lam_all[g]))
            start += len(resp)
        return out

    def preferences(self, groups):
        out = []
        for v, lam in self.embed(groups):
            T = gpm_table(v.double(), self.tau, None if lam is None else lam.double()).cpu().numpy()
            out.append(PreferenceResult(P=sigmoid(np.clip(T - T.T, -700, 700)), table=T))
        return out
