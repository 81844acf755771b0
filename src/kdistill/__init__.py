"""kdistill: knowledge distillation for PyTorch and Hugging Face models.

    from kdistill import Distiller, Match, Trainer, TrainConfig, methods, losses

A whole run from a YAML file, as ``kdistill run`` does it:

    from kdistill import load_config, plan, run
    config = load_config("examples/hinton_classifier.yaml")
    print(plan(config))
    results = run(config)

``kdistill.run`` is the function; its module is ``importlib.import_module("kdistill.run")``
(``from kdistill.run import …`` works as ever).
"""

from kdistill import losses, methods
from kdistill.config import load_config
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
from kdistill.run import plan, run
from kdistill.train import Callback, TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "Callback", "ConfigError", "DistillOutput", "Distiller", "Features", "KdistillError", "Match",
    "TrainConfig", "Trainer", "attention_matches", "explicit_layer_map", "hidden_matches",
    "last_k_layer_map", "load_config", "losses", "methods", "plan", "register_loss", "run",
    "skip_layer_map", "uniform_layer_map",
]
