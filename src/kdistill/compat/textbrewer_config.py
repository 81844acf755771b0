"""TextBrewer's ``TrainingConfig``, ``DistillationConfig`` and ``IntermediateMatch``, with its defaults,
its key names and the names it uses (re-exported by :mod:`kdistill.compat.textbrewer`)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from kdistill.errors import ConfigError, suggest

MODULE = "kdistill.compat.textbrewer"
FEATURES = ("hidden", "attention")
ADAPTOR_KEYS = ("logits", "logits_mask", "losses", "inputs_mask", "labels", *FEATURES)
KD_LOSS_TYPES = ("ce", "mse")
PROJECTIONS = ("linear", "relu", "tanh")
WEIGHT_SCHEDULERS = ("linear_decay", "linear_growth")
TEMPERATURE_SCHEDULERS = ("constant", "flsw", "cwsm")
_BATCH = "textbrewer_batch"
_ARGS = "textbrewer_model_args"

LOSS_MAP: dict[str, str] = {
    "hidden_mse": "hidden_mse",
    "cos": "cosine",
    "pkd": "pkd",
    "attention_mse": "attention_mse",
    "attention_mse_sum": f"{MODULE}:attention_mse_sum",
    "attention_ce": "attention_kl",
    "attention_ce_mean": f"{MODULE}:attention_ce_mean",
    "fsp": "fsp",
    "gram": "fsp",
    "nst": "mmd",
    "mmd": "mmd",
}
"""TextBrewer's intermediate loss name -> the kdistill loss it becomes (docs/compat.md explains each).

``nst``/``mmd`` on two *different* layers per side become ``kdistill.compat.textbrewer:token_gram_mse``;
``attention_ce`` in Python runs ``kdistill.compat.textbrewer:attention_ce`` (attention_kl that refuses
pre-softmax scores). The logits term: ``kd_loss_type='ce'`` -> ``soft_ce`` with ``t2_scale=False``
(TextBrewer's ``kd_ce_loss`` has no T²), ``'mse'`` -> ``logits_mse``.
"""


# ---------------------------------------------------------------------------------------------
# Configurations


def _check_keys(cls, data: Mapping, path: str) -> None:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{path}: unknown field '{key}'{suggest(key, names)} {cls.__name__} takes: "
                              f"{', '.join(names)}.")


class _Config:
    @classmethod
    def from_dict(cls, data: Mapping):
        """Build from a dict (TextBrewer's ``from_dict``); unknown keys are an error with a suggestion."""
        _check_keys(cls, data, cls.__name__)
        return cls(**dict(data))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingConfig(_Config):
    """TextBrewer's training configuration, same fields and defaults.

    ckpt_frequency: save the student at most this many times per epoch (at the end of each
        1/ckpt_frequency of it; 0 = never). ckpt_epoch_frequency: only in every n-th epoch (and the last).
    ckpt_steps: with ``train(num_steps=...)``, save every ckpt_steps steps (and at the end).
    log_dir: ``metrics.jsonl`` and TensorBoard events go here (None: no log files).
    output_dir: checkpoints ``gs{step}.safetensors`` (student state dict) go here.
    device: where to train; ``'cuda'`` without a GPU falls back to the CPU with a warning.
    fp16: autocast to float16 with a gradient scaler on CUDA (TextBrewer used apex; ``fp16_opt_level``
        is accepted and ignored). data_parallel / local_rank: not supported — use kdistill's Trainer,
        which runs on Accelerate.
    """

    gradient_accumulation_steps: int = 1
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    ckpt_steps: int | None = None
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    device: Any = "cuda"
    fp16: bool = False
    fp16_opt_level: str = "O1"
    data_parallel: bool = False
    local_rank: int = -1

    def __post_init__(self) -> None:
        problems = []
        for name in ("gradient_accumulation_steps", "ckpt_epoch_frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"TrainingConfig.{name}: must be an integer >= 1, got {value!r}")
        if isinstance(self.ckpt_frequency, bool) or not isinstance(self.ckpt_frequency, int) or self.ckpt_frequency < 0:
            problems.append(f"TrainingConfig.ckpt_frequency: must be an integer >= 0, got {self.ckpt_frequency!r}")
        if self.ckpt_steps is not None and (not isinstance(self.ckpt_steps, int) or self.ckpt_steps < 1):
            problems.append(f"TrainingConfig.ckpt_steps: must be a positive integer or None, got {self.ckpt_steps!r}")
        if self.data_parallel:
            problems.append("TrainingConfig.data_parallel: not supported by kdistill.compat; run on several GPUs "
                            "with kdistill's Trainer (Hugging Face Accelerate) instead")
        if self.local_rank != -1:
            problems.append("TrainingConfig.local_rank: distributed training is not supported by kdistill.compat; "
                            "use kdistill's Trainer (Hugging Face Accelerate)")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def resolved_device(self) -> torch.device:
        device = torch.device(self.device) if self.device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(f"TrainingConfig.device is '{self.device}' but no CUDA device is available; "
                          "training on the CPU.", stacklevel=3)
            return torch.device("cpu")
        return device


@dataclass
class IntermediateMatch:
    """One ``intermediate_matches`` entry: ``layer_T``/``layer_S`` index the adaptor's ``hidden`` or
    ``attention`` list (a pair of indices for ``fsp``/``nst``); ``proj = [kind, dim_S, dim_T, {group opts}]``."""

    layer_T: int | list[int]
    layer_S: int | list[int]
    feature: str
    loss: str
    weight: float
    proj: list | None = None

    @classmethod
    def from_dict(cls, data: Mapping, *, path: str = "intermediate_matches[0]") -> IntermediateMatch:
        if isinstance(data, IntermediateMatch):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a dict with layer_T, layer_S, feature, loss, weight, got "
                              f"{type(data).__name__}.")
        _check_keys(cls, data, path)
        missing = [f.name for f in fields(cls) if f.name != "proj" and f.name not in data]
        if missing:
            raise ConfigError(f"{path}: missing {', '.join(missing)} (each entry needs layer_T, layer_S, feature, "
                              "loss and weight).")
        match = cls(**dict(data))
        match.validate(path)
        return match

    def validate(self, path: str) -> None:
        for name in ("layer_T", "layer_S"):
            value = getattr(self, name)
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value))
            if not ok:
                raise ConfigError(f"{path}.{name}: expected a layer index or a pair of them, got {value!r}.")
        if isinstance(self.layer_T, (list, tuple)) != isinstance(self.layer_S, (list, tuple)):
            raise ConfigError(f"{path}: layer_T and layer_S must both be single indices or both pairs.")
        if self.feature not in FEATURES:
            raise ConfigError(f"{path}.feature: unknown feature '{self.feature}'{suggest(self.feature, FEATURES)} "
                              f"Available: {', '.join(FEATURES)}.")
        if self.loss not in LOSS_MAP:
            raise ConfigError(f"{path}.loss: unknown loss '{self.loss}'{suggest(self.loss, LOSS_MAP)} "
                              f"Available: {', '.join(sorted(LOSS_MAP))}.")
        if self.loss in ("fsp", "gram") and not isinstance(self.layer_T, (list, tuple)):
            raise ConfigError(f"{path}: loss '{self.loss}' compares two layers per model; give layer_T and layer_S "
                              "as pairs, e.g. [0, 4].")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)):
            raise ConfigError(f"{path}.weight: expected a number, got {self.weight!r}.")
        if self.proj is not None:
            proj = list(self.proj)
            if (len(proj) not in (3, 4) or proj[0] not in PROJECTIONS or not all(isinstance(v, int) for v in proj[1:3])
                    or (len(proj) == 4 and not isinstance(proj[3], Mapping))):
                raise ConfigError(f"{path}.proj: expected [kind, dim_S, dim_T] or [kind, dim_S, dim_T, {{optimizer "
                                  f"options}}] with kind one of {', '.join(PROJECTIONS)}, got {self.proj!r}.")
            self.proj = proj

    @property
    def is_pair(self) -> bool:
        return isinstance(self.layer_T, (list, tuple))

    def name(self) -> str:
        def text(layers):
            return "-".join(map(str, layers)) if isinstance(layers, (list, tuple)) else str(layers)

        return f"{self.feature}_{self.loss}_{text(self.layer_S)}_{text(self.layer_T)}"


@dataclass
class DistillationConfig(_Config):
    """TextBrewer's distillation configuration, same fields and defaults.

    total loss = kd_loss_weight · KD(logits) + hard_label_weight · Σ adaptor ``losses`` +
    Σ weight · intermediate losses. ``kd_loss_type='ce'`` has **no T²** factor (TextBrewer's
    semantics; kdistill's native ``soft_ce`` has it unless ``t2_scale=False``).
    Schedulers: weights ``'linear_decay'`` (1 → 0 over the run) / ``'linear_growth'`` (0 → 1), which
    *replace* the weight as in TextBrewer; temperature ``'constant'``, ``['flsw', beta, gamma]``,
    ``['cwsm', beta]``.
    """

    temperature: float = 4
    temperature_scheduler: Any = "none"
    hard_label_weight: float = 0
    hard_label_weight_scheduler: str = "none"
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1
    kd_loss_weight_scheduler: str = "none"
    probability_shift: bool = False
    intermediate_matches: list = field(default_factory=list)
    is_caching_logits: bool = False

    def __post_init__(self) -> None:
        if self.kd_loss_type not in KD_LOSS_TYPES:
            raise ConfigError(f"DistillationConfig.kd_loss_type: '{self.kd_loss_type}' is not one of "
                              f"{', '.join(KD_LOSS_TYPES)}.")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"DistillationConfig.temperature: must be a number > 0, got {self.temperature!r}.")
        for name in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            value = getattr(self, name)
            if value not in ("none", None, *WEIGHT_SCHEDULERS):
                raise ConfigError(f"DistillationConfig.{name}: unknown scheduler '{value}'"
                                  f"{suggest(str(value), WEIGHT_SCHEDULERS)} Available: none, "
                                  f"{', '.join(WEIGHT_SCHEDULERS)}.")
        self.temperature_scheduler = self._check_temperature_scheduler(self.temperature_scheduler)
        self.intermediate_matches = [
            IntermediateMatch.from_dict(entry, path=f"intermediate_matches[{i}]")
            for i, entry in enumerate(self.intermediate_matches or [])
        ]

    @staticmethod
    def _check_temperature_scheduler(value: Any) -> Any:
        if value in ("none", None, "constant"):
            return "none" if value in ("none", None) else value
        spec = [value] if isinstance(value, str) else list(value)
        name = spec[0] if spec else None
        needed = {"flsw": 2, "cwsm": 1}.get(name)
        if needed is None:
            raise ConfigError(f"DistillationConfig.temperature_scheduler: unknown scheduler {value!r}. Available: "
                              f"none, {', '.join(TEMPERATURE_SCHEDULERS)}.")
        if len(spec) - 1 < needed:
            example = "['flsw', beta, gamma]" if name == "flsw" else "['cwsm', beta]"
            raise ConfigError(f"DistillationConfig.temperature_scheduler: '{name}' needs its parameters: {example}.")
        return spec

    def to_dict(self) -> dict:
        data = asdict(self)
        data["intermediate_matches"] = [
            {k: v for k, v in asdict(m).items() if not (k == "proj" and v is None)} for m in self.intermediate_matches
        ]
        return data
