"""Evaluation of classifiers: accuracy, macro-F1 and teacher-student agreement."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from kdistill.adapters.base import model_inputs, output_logits, to_device


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, *, device: torch.device | str | None = None,
            inputs_key: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Predicted class ids and the labels (if the batches carry them) over ``batches``.

    ``inputs_key="student_inputs"`` feeds the student its own tokenisation where it differs.
    """
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    try:
        for batch in batches:
            source = batch[inputs_key] if inputs_key and isinstance(batch, Mapping) and inputs_key in batch else batch
            source = to_device(source, device)
            args, kwargs = model_inputs(source)
            logits = output_logits(model(*args, **kwargs))
            predictions.append(logits.argmax(-1).cpu())
            label = batch.get("labels") if isinstance(batch, Mapping) else (batch[1] if isinstance(batch, (list, tuple)) else None)
            if label is not None:
                labels.append(label.cpu())
    finally:
        model.train(was_training)
    return torch.cat(predictions), (torch.cat(labels) if labels else None)


@torch.no_grad()
def class_count(model: nn.Module, batch, *, inputs_key: str | None = None) -> int | None:
    """How many classes ``model`` predicts: a Hugging Face sequence or token classifier's ``num_labels``, else
    the width of its logits on ``batch`` (one forward); None for a model whose logits are not
    classes (a Hugging Face base or language model)."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):  # a Hugging Face model
        if type(model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification")):
            return getattr(config, "num_labels", None)
        return None
    source = batch[inputs_key] if inputs_key and isinstance(batch, Mapping) and inputs_key in batch else batch
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        args, kwargs = model_inputs(to_device(source, device))
        logits = output_logits(model(*args, **kwargs))
    finally:
        model.train(was_training)
    return int(logits.shape[-1]) if logits.dim() >= 1 else None


def classification_metrics(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """accuracy and macro-F1 over the classes present in labels or predictions."""
    accuracy = (predictions == labels).float().mean().item()
    f1s = []
    for cls in torch.unique(torch.cat([labels, predictions])):
        tp = ((predictions == cls) & (labels == cls)).sum().item()
        fp = ((predictions == cls) & (labels != cls)).sum().item()
        fn = ((predictions != cls) & (labels == cls)).sum().item()
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


def evaluate_classifier(model: nn.Module, batches: Iterable, *, device=None, inputs_key: str | None = None) -> dict[str, float]:
    predictions, labels = predict(model, batches, device=device, inputs_key=inputs_key)
    if labels is None:
        return {}
    return classification_metrics(predictions, labels)

