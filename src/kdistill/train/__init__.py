"""Training: the loop, checkpoints, optimiser set-up, metrics and evaluation."""

from kdistill.train.checkpoint import TrainPosition, latest_good_checkpoint, list_checkpoints, save_weights
from kdistill.train.evaluate import classification_metrics, evaluate_classifier, predict
from kdistill.train.logging import MetricsLog, read_metrics
from kdistill.train.trainer import (Callback, TrainConfig, Trainer, TrainResult, TrainState, run_length,
                                    seed_everything)

__all__ = [
    "run_length",
    "Callback", "MetricsLog", "TrainConfig", "TrainPosition", "TrainResult", "TrainState", "Trainer",
    "classification_metrics", "evaluate_classifier", "latest_good_checkpoint", "list_checkpoints", "predict",
    "read_metrics", "save_weights", "seed_everything",
]
