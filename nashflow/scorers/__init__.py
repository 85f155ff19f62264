"""Scorers: rewards, per-objective rewards, or pairwise preference matrices for sampled responses.

``SCORERS`` maps a config ``type`` to its class, so new scorers plug in by name (see
``nashflow.scorers.base`` for the interface). The config lists components:

* reward components (``sentiment``, ``length``, ``regex``, ``python``, ``reward_model``) are
  combined into ``reward`` = Σ_m w_m · (r_m − μ_m)/σ_m over objectives m (z-normalisation only
  where ``normalize`` is given), each kept as a ``reward_<objective>`` column; MOODPO rows carry
  their own weights. A ``reward_model`` with ``heads`` contributes one objective per head.
* a preference component (``judge``, ``gpm``, ``pairrm``) stands alone: the score table gets the
  prompt's K×K matrix in ``preference`` (row-major, repeated on the prompt's rows), GPM's raw
  table in ``score_table``, and as ``reward`` the candidate's score (PairRM's s_i, else its mean
  win probability against the other samples).

Scalar rewards become P = σ(r_i − r_j) where a builder needs preferences
(:func:`nashflow.pairs.bradley_terry_matrix`). ``CompositeScorer`` (``nashflow.scorers.composite``)
loads and runs the components. Importing this package does not import torch.
"""

from __future__ import annotations

import inspect

from nashflow.errors import ConfigError
from nashflow.scorers.base import BASE_MODEL_ALIAS, PreferenceResult, Scorer
from nashflow.scorers.composite import CompositeScorer
from nashflow.scorers.gpm import GPMScorer
from nashflow.scorers.judge import JudgeScorer
from nashflow.scorers.matrix_game import MatrixGameScorer
from nashflow.scorers.pairrm import PairRMScorer
from nashflow.scorers.programmatic import LengthScorer, PythonScorer, RegexScorer, SentimentScorer
from nashflow.scorers.reward_model import RewardModelScorer
from nashflow.settings import ComponentConfig, ScorerConfig

SCORERS: dict[str, type] = {
    "sentiment": SentimentScorer,
    "length": LengthScorer,
    "regex": RegexScorer,
    "python": PythonScorer,
    "reward_model": RewardModelScorer,
    "judge": JudgeScorer,
    "gpm": GPMScorer,
    "pairrm": PairRMScorer,
    "matrix_game": MatrixGameScorer,
}
#: keywords the composite passes to model-backed scorers itself
INJECTED = ("base_model_dir", "component", "compute")


def check_args(kind: str, args: dict, key: str) -> None:
    """A component's ``type`` and ``args``: an unknown scorer, unknown or missing arguments are config
    errors, found before any model loads."""
    if kind not in SCORERS:
        raise ConfigError(f"{key}.type: unknown scorer '{kind}'; known: {', '.join(SCORERS)}")
    cls = SCORERS[kind]
    if not isinstance(args, dict):
        raise ConfigError(f"{key}.args must be a mapping")
    bad = [a for a in args if a in INJECTED]
    if bad:
        raise ConfigError(f"{key}.args: '{bad[0]}' is set by nashflow, not in the config")
    sig = inspect.signature(cls.__init__)
    try:
        sig.bind(None, **args)
    except TypeError as err:
        known = [p for p in sig.parameters if p not in ("self", *INJECTED)]
        raise ConfigError(f"{key}.args: {err} (arguments of '{cls.name}': {', '.join(known) or 'none'})") from err
    if hasattr(cls, "validate_args"):
        try:
            cls.validate_args(**args)
        except ConfigError as err:
            raise ConfigError(f"{key}.args: {err}") from err




def uses_base_model(kind: str, args: dict) -> bool:
    """Whether a component reads the workflow's base model (``model: base``), a DAG input then."""
    params = inspect.signature(SCORERS[kind].__init__).parameters
    keys = ["model"] + (["template_model"] if args.get("prompt_format") == "chat" else [])
    return any(k in params and args.get(k, params[k].default) == BASE_MODEL_ALIAS for k in keys)


__all__ = ["SCORERS", "Scorer", "PreferenceResult", "ComponentConfig", "ScorerConfig", "CompositeScorer",
           "check_args", "uses_base_model"]
