"""Method presets and iteration roles.

``METHODS`` maps an ``algorithm.name`` to its defaults (loss, pair builder, reference, history,
anchor, log-prob normalisation, hyperparameters), so any method runs on the embedded default by
changing one key. Keys the user sets in ``algorithm`` override the preset.

Roles of iteration t (1-based; checkpoint 0 is the base model, k ≥ 1 the iterate of iteration k):
  * generator = π_{t−1} (samples; also the policy's initialisation);
  * reference = π_0 (``base``), π_{t−1} (``previous``) or the anchor μ (``anchor``);
  * anchor μ = π_{U·⌊(t−1)/U⌋} with U = ``anchor_every`` (COMAL's prox-point update; 0 = never,
    μ = π_0, which is INPO);
  * history = [π_{t−1}, π_{t−2}, …] newest first, at most ``history`` players, starting at π_1
    (MNPO) or at π_0 when ``history_includes_base`` (INPO/COMAL: π_t is the single player).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LossSpec:
    """What a loss of :data:`nashflow.losses.LOSSES` needs from the workflow.

    ``params``: its hyperparameters besides β (the keys ``algorithm.params`` may set); ``uses_beta``:
    whether β enters the loss (else it only scales the logged implicit rewards β·(log π − log π_ref));
    ``uses_rejected``: whether the rejected response is encoded and forwarded; ``per_token``: per-token
    policy and reference log-probs (no packing); ``min_history``: history players it reads;
    ``logp_norm``: the log-prob normalisation it requires (None: either); ``game_tau``: the
    temperature τ of the KL-regularised game its fixed point solves (``ratio_eta``: τ = ρ·η, ``beta``:
    τ = β; None: none defined, see nashflow.game_eval.regularisation)."""

    params: tuple[str, ...] = ()
    uses_beta: bool = True
    uses_rejected: bool = True
    per_token: bool = False
    min_history: int = 0
    logp_norm: str | None = None
    game_tau: str | None = None

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise ValueError(f"config key 'algorithm.params.{unknown[0]}': not a hyperparameter of the {name} loss "
                             f"(its hyperparameters: {known})")


_MIX = ("history_weights", "max_history")  # losses that mix several history players
LOSS_SPECS: dict[str, LossSpec] = {
    "dpo": LossSpec(),
    "ipo": LossSpec(params=("eta",)),
    "sppo": LossSpec(),
    "sppo_single": LossSpec(),
    "sppo_hard": LossSpec(),
    "gpo": LossSpec(params=("clamp",)),
    "inpo": LossSpec(params=("eta", "ratio"), uses_beta=False, min_history=1, game_tau="ratio_eta"),
    "mnpo": LossSpec(params=("eta", "ratio", *_MIX), uses_beta=False, game_tau="ratio_eta"),
    "mnpo_dpo": LossSpec(params=("het_loss_weight", *_MIX)),
    "nash_md": LossSpec(uses_rejected=False, per_token=True, game_tau="beta"),
    "mle": LossSpec(uses_beta=False, uses_rejected=False, logp_norm="sum"),
}


def loss_spec(name: str) -> LossSpec:
    try:
        return LOSS_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(sorted(LOSS_SPECS))}") from None

METHODS: dict[str, dict[str, Any]] = {
    # Iterative DPO, best vs worst, reference = SFT model.
    "dpo": {"loss": "dpo", "pairs": "max_min", "reference": "base", "beta": 0.1, "logp_norm": "sum"},
    # Iter-IPO (COMAL's ipo.py): reference = previous iterate, target 1/(2η).
    "ipo": {"loss": "ipo", "pairs": "top1_top2", "reference": "previous", "beta": 0.1, "logp_norm": "sum",
            "params": {"eta": 0.1}},
    # SPPO: win-rate targets against all K samples, reference = π_t, η = 1/β.
    "sppo": {"loss": "sppo", "pairs": "sppo", "reference": "previous", "beta": 0.001, "logp_norm": "sum"},
    "sppo_single": {"loss": "sppo_single", "pairs": "sppo", "reference": "previous", "beta": 0.001,
                    "logp_norm": "sum"},
    "sppo_hard": {"loss": "sppo_hard", "pairs": "sppo", "reference": "previous", "beta": 0.001,
                  "logp_norm": "sum"},
    # GPO: GPM score targets, presumed loss (see nashflow.losses.gpo).
    "gpo": {"loss": "gpo", "pairs": "gpo", "reference": "previous", "beta": 0.001, "logp_norm": "sum",
            "params": {"clamp": 1000.0}},
    # MNPO: mean log-probs, SFT reference, 2 history players, uniform λ.
    "mnpo": {"loss": "mnpo", "pairs": "max_min", "reference": "base", "history": 2, "beta": 10.0,
             "logp_norm": "mean", "params": {"eta": 0.0075, "ratio": 0.3333}},
    "mnpo_dpo": {"loss": "mnpo_dpo", "pairs": "max_min", "reference": "base", "history": 2, "beta": 3.0,
                 "logp_norm": "mean", "params": {"het_loss_weight": 0.001}},
    # INPO: anchor μ = SFT model forever, π_t the single history player.
    "inpo": {"loss": "inpo", "pairs": "top1_top2", "reference": "anchor", "anchor_every": 0, "history": 1,
             "history_includes_base": True, "logp_norm": "sum", "beta": 0.1,
             "params": {"eta": 0.002, "ratio": 0.3333333333}},
    # COMAL: INPO with the anchor moved to the last iterate every U iterations, best-val checkpoint.
    "comal": {"loss": "inpo", "pairs": "top1_top2", "reference": "anchor", "anchor_every": 12, "history": 1,
              "history_includes_base": True, "logp_norm": "sum", "beta": 0.1, "select_best": True,
              "params": {"eta": 0.002, "ratio": 0.3333333333}},
    # Nash-MD: policy sample vs a sample of the geometric mixture of policy and reference.
    "nash_md": {"loss": "nash_md", "pairs": "policy_vs_mixture", "reference": "base", "beta": 0.1,
                "logp_norm": "sum", "sampler": "mixture", "mixture_coef": 0.5},
    # MOODPO: weight-conditioned prompts, two samples, better of the two under weighted rewards.
    "moodpo": {"loss": "dpo", "pairs": "better_of_two", "reference": "base", "beta": 0.1, "logp_norm": "sum",
               "conditioning": "moodpo"},
    # MLE on the chosen response (COMAL's SFT stage).
    "mle": {"loss": "mle", "pairs": "max_min", "reference": "base", "beta": 0.1, "logp_norm": "sum"},
}

#: what ``algorithm.reference`` may name: π_0, π_{t−1} or the anchor μ (see iteration_roles)
REFERENCES = ("base", "previous", "anchor")

DEFAULTS: dict[str, Any] = {
    "loss": None, "pairs": "max_min", "reference": "base", "history": 0, "history_weights": None,
    "history_includes_base": False, "anchor_every": 0, "select_best": False, "val_fraction": 0.1,
    "beta": 0.1, "logp_norm": "sum", "params": {}, "sampler": "policy", "mixture_coef": 0.5,
    "conditioning": None,
}


def resolve_algorithm(algo: dict[str, Any]) -> dict[str, Any]:
    """The full algorithm settings: defaults < the method's preset < what the user wrote."""
    name = algo.get("name", "dpo")
    if name not in METHODS:
        raise KeyError(f"unknown algorithm.name '{name}'; known: {', '.join(sorted(METHODS))}")
    out = copy.deepcopy(DEFAULTS)
    out.update(copy.deepcopy(METHODS[name]))
    for key, value in algo.items():
        if value is None:
            continue
        if key == "params":
            out["params"] = {**out.get("params", {}), **value}
        else:
            out[key] = value
    out["name"] = name
    out["loss"] = out["loss"] or name
    if out["reference"] not in REFERENCES:
        raise ValueError(f"algorithm.reference must be base, previous or anchor, got {out['reference']!r}")
    if out["history"] < 0 or out["anchor_every"] < 0:
        raise ValueError("algorithm.history and algorithm.anchor_every must be >= 0")
    weights = out.get("history_weights")
    if weights is not None and len(weights) < out["history"]:
        raise ValueError(f"algorithm.history_weights has {len(weights)} entries for history={out['history']}")
    spec = loss_spec(out["loss"])
    if out["history"] < spec.min_history:
        raise ValueError(f"the {out['loss']} loss needs algorithm.history >= {spec.min_history} "
                         "(π_t is its history player)")
    spec.check_params(out["loss"], out["params"])
    return out


def anchor_of(t: int, every: int) -> int:
    """Checkpoint index of the anchor μ used in iteration t."""
    return every * ((t - 1) // every) if every else 0


def iteration_roles(t: int, algo: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint indices each role uses in iteration t (see the module docstring)."""
    if t < 1:
        raise ValueError("iterations start at 1")
    reference = {"base": 0, "previous": t - 1, "anchor": anchor_of(t, algo["anchor_every"])}[algo["reference"]]
    first = 0 if algo["history_includes_base"] else 1
    history = [k for k in range(t - 1, first - 1, -1)][: algo["history"]]
    return {"generator": t - 1, "reference": reference, "history": history}


def checkpoints_needed(t: int, algo: dict[str, Any]) -> list[int]:
    """Checkpoints whose log-probs iteration t's trainer reads (reference + history), sorted."""
    roles = iteration_roles(t, algo)
    return sorted({roles["reference"], *roles["history"]})
