"""The scorer interface and what model-backed scorers share.

A scorer has a ``name`` and a ``kind``:

* ``reward``: ``score(messages, responses) -> [N]``, one scalar per response;
* ``objectives``: ``score(messages, responses) -> [N, M]``, one value per objective
  (``objectives`` names them), e.g. a reward model with several heads;
* ``preference``: ``preferences(groups) -> [PreferenceResult]``, one K×K matrix P per prompt with
  P + Pᵀ = 1 (a pairwise model, an LLM judge, a general preference model).

Scorers see the stored chat messages, never token ids of the policy, and apply their own
template: a mismatch between the policy's and the scorer's chat format cannot pass silently.
Model-backed scorers load once (in ``__init__``, through :func:`load_scorer_model`), check at
start-up what they can check (template, label tokens) and score in length-sorted batches.

Importing ``nashflow.scorers`` does not import torch (the workflow reads the registry while it
builds its DAG): model-backed scorers import torch (and ``nashflow.logps``) inside the methods
that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from nashflow.errors import ConfigError, DataError
from nashflow.pairs import bradley_terry_matrix

BASE_MODEL_ALIAS = "base"


@dataclass
class PreferenceResult:
    """One prompt's preferences between its K samples.

    ``P[i][j]`` = P(sample i ≻ sample j), P + Pᵀ = 1. ``table`` holds raw skew-symmetric scores
    T (GPM; GPO trains on W = T − Tᵀ). ``scores`` are per-candidate scalars when the scorer
    defines them (PairRM's aggregated logits); else the mean win probability is used.
    """

    P: np.ndarray
    table: np.ndarray | None = None
    scores: np.ndarray | None = None


class Scorer:
    """Base class; subclasses set ``name`` and ``kind`` and implement ``score`` or ``preferences``."""

    name = "scorer"
    kind = "reward"
    #: objective names of an ``objectives`` scorer
    objectives: list[str] = []
    #: model folders this scorer reads (the DAG makes them inputs of the score job)
    model_paths: tuple[str, ...] = ()

    def score(self, messages: Sequence[list[dict]], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"scorer '{self.name}' gives preferences, not rewards")

    def preferences(self, groups: Sequence[tuple[list[dict], list[str]]]) -> list[PreferenceResult]:
        """Default for reward scorers: P[i][j] = σ(r_i − r_j)."""
        out = []
        for messages, responses in groups:
            r = np.asarray(self.score([messages] * len(responses), responses), dtype=np.float64)
            out.append(PreferenceResult(P=bradley_terry_matrix(r), scores=r))
        return out

    def compare(self, messages: Sequence[list[dict]], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_n ≻ b_n) for every row n (used by the held-out evaluation)."""
        results = self.preferences([(list(m), [x, y]) for m, x, y in zip(messages, a, b)])
        return np.array([r.P[0, 1] for r in results], dtype=np.float64)


def resolve_model_path(path: str, base_model_dir: str | None, component: str) -> str:
    """``base`` names the workflow's converted base model; anything else is a local folder."""
    if path == BASE_MODEL_ALIAS:
        if base_model_dir is None:
            raise ConfigError(f"scorer '{component}': model 'base' needs the base model folder")
        return str(base_model_dir)
    return str(path)


def check_model_dir(path: str, component: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"scorer '{component}': model folder {path} does not exist (hub ids are not downloaded: "
                        "put the model in a local folder and give its path)")
    if not (p / "config.json").exists():
        raise DataError(f"scorer '{component}': model folder {path} has no config.json; is it a model?")
    return p


def load_scorer_tokenizer(path: str, component: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise DataError(f"scorer '{component}': the tokenizer in {path} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def check_chat_template(tok, component: str, path: str) -> None:
    """Fail at start-up when the scorer's tokenizer cannot render the conversations it will see."""
    if not getattr(tok, "chat_template", None):
        raise DataError(
            f"scorer '{component}': the tokenizer in {path} has no chat template; set the component's "
            "args.input_format to 'pair' or 'response', or use a model that ships its template"
        )
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    for msgs in (probe, probe[1:]):
        try:
            tok.apply_chat_template(msgs, tokenize=False)
        except Exception as err:  # templates raise their own exception types (jinja, ValueError)
            if msgs is probe:
                continue  # some templates reject system turns; conversations without one still work
            raise DataError(f"scorer '{component}': the chat template of {path} cannot render a "
                            f"user/assistant conversation: {err}") from err


def render_conversation(tok, messages: list[dict], response: str) -> str:
    """The scorer's own chat template applied to prompt messages + the response as assistant turn."""
    msgs = list(messages) + [{"role": "assistant", "content": response}]
    try:
        return tok.apply_chat_template(msgs, tokenize=False)
    except Exception:
        if msgs and msgs[0]["role"] == "system":  # fold the system turn into the first user turn
            system, rest = msgs[0]["content"], msgs[1:]
            rest[0] = {"role": rest[0]["role"], "content": f"{system}\n\n{rest[0]['content']}"}
            return tok.apply_chat_template(rest, tokenize=False)
        raise


class ScorerModel(NamedTuple):
    """A loaded model-backed scorer: its folder, tokenizer, model (eval mode) and the device its
    inputs go to."""

    path: str
    tok: Any
    model: Any
    device: Any


def load_scorer_model(auto_class: str, model: str, *, component: str, base_model_dir: str | None = None,
                      dtype: str | None = None, compute: dict | None = None, device: str | None = None,
                      trust_remote_code: bool = False, chat_template: bool = True) -> ScorerModel:
    """What every model-backed scorer does first: resolve ``model`` (``base`` = the workflow's base
    model), check that it is a local model folder, load its tokenizer (with a pad token), check its
    chat template (unless ``chat_template`` is false: the scorer renders no chats), then load the
    model as ``transformers.<auto_class>`` in eval mode with the scoring stage's ``compute``
    settings (dtype, attention, placement on the job's GPUs: :func:`nashflow.models.load_for_stage`).
    The component's own ``dtype`` wins; an explicit ``device`` puts the whole model there."""
    path = resolve_model_path(model, base_model_dir, component)
    check_model_dir(path, component)
    tok = load_scorer_tokenizer(path, component, trust_remote_code=trust_remote_code)
    if chat_template:
        check_chat_template(tok, component, path)
    import transformers

    from nashflow.models import load_for_stage
    from nashflow.precision import DEFAULT_COMPUTE
    from nashflow.torchutil import input_device

    settings = dict(compute or DEFAULT_COMPUTE)
    if dtype:
        settings["dtype"] = dtype
    net, _ = load_for_stage(path, settings, trust_remote_code=trust_remote_code,
                            auto_class=getattr(transformers, auto_class), device=device)
    return ScorerModel(path, tok, net, input_device(net))


def scorer_device(device: str | None) -> str:
    from nashflow.models import default_device

    return device or default_device()
