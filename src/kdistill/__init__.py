"""kdistill: knowledge distillation for PyTorch and Hugging Face models.

    from kdistill import Distiller, Match, Trainer, TrainConfig, methods, losses
"""

from kdistill import losses
from kdistill.distiller import Distiller, DistillOutput
from kdistill.errors import ConfigError, KdistillError
from kdistill.features import Features
from kdistill.losses import register_loss
from kdistill.matches import (
    Match,
    attention_matches,
    explicit_layer_map,
    hidden_matches,
    last_k_layer_map,
    skip_layer_map,
    uniform_layer_map,
)
from kdistill.train import Callback, TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "Callback", "ConfigError", "DistillOutput", "Distiller", "Features", "KdistillError", "Match",
    "TrainConfig", "Trainer", "attention_matches", "explicit_layer_map", "hidden_matches",
    "last_k_layer_map", "losses", "register_loss", "skip_layer_map", "uniform_layer_map",
]
