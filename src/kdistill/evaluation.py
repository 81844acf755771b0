"""Teacher against student on a run's splits, and a finished run folder evaluated again (``kdistill eval``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill.adapters.hf import is_hf_model
from kdistill.config import IMAGE_DATA, RunConfig
from kdistill.embedding import compare_embeddings, evaluate_embedding_splits, is_embedding_model
from kdistill.errors import ConfigError, DataError
from kdistill.outputs import RESOLVED_NAME
from kdistill.qa_spans import compare_qa, is_qa_model
from kdistill.run_build import load_model, make_recipe, student_from_init
from kdistill.run_data import DataParts, build_data, make_loaders
from kdistill.token_tags import compare_tags, is_token_classifier

# ---------------------------------------------------------------------------------------------
# Evaluation


def _logits_are_classes(model: nn.Module) -> bool:
    if is_hf_model(model):
        return type(model).__name__.endswith("ForSequenceClassification")
    return True


def compare(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """Accuracy and macro-F1 of teacher and student on ``loader``, and how often they agree."""
    from kdistill.train.evaluate import classification_metrics, predict

    device = next(student.parameters()).device
    teacher_pred, labels = predict(teacher, loader, device=device)
    student_pred, _ = predict(student, loader, device=device, inputs_key="student_inputs")
    result: dict[str, Any] = {"examples": int(len(student_pred)),
                              "agreement": float((teacher_pred == student_pred).float().mean())}
    if labels is not None:
        result["teacher"] = classification_metrics(teacher_pred, labels)
        result["student"] = classification_metrics(student_pred, labels)
    return result


def evaluation_during_training(model: nn.Module, validation: DataLoader | None, *, classes: bool
                               ) -> tuple[DataLoader | None, Any]:
    """What the Trainer evaluates ``model`` on and how: (validation, None) for a classifier (accuracy and
    macro-F1) when ``classes``; (validation, :func:`kdistill.token_tags.tag_metrics`) for a token
    classifier (entity F1, word accuracy); (None, None) otherwise (a language model is measured at the end)."""
    if validation is not None and is_token_classifier(model):
        from kdistill.token_tags import tag_metrics

        return validation, tag_metrics
    if validation is not None and is_qa_model(model):
        from kdistill.qa_spans import qa_metrics

        return validation, qa_metrics
    return (validation, None) if classes and _logits_are_classes(model) else (None, None)


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face causal language model (``AutoModelForCausalLM``'s classes: Llama, GPT-2's LMHead…)."""
    if not is_hf_model(model):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@torch.no_grad()
def compare_lm(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> dict[str, Any]:
    """Held-out next-token loss and perplexity of teacher and student over the tokens that carry loss
    (``loss_mask``), and how often the student's top-1 next token is the teacher's.

    A student with its own tokenizer (``student_inputs`` in the batches) is scored on its own tokens:
    ``tokens`` counts the student's, ``teacher_tokens`` the teacher's, and ``agreement`` is None (two
    vocabularies have no common top-1; per-token perplexities of two tokenizers are not comparable).
    """
    import math

    import torch.nn.functional as F

    from kdistill.adapters.base import model_inputs, output_logits, to_device

    device = next(student.parameters()).device
    totals = {"teacher": 0.0, "student": 0.0}
    counts = {"teacher": 0, "student": 0}
    agree = examples = 0
    paired = False
    modes = {model: model.training for model in (teacher, student)}
    for model in modes:
        model.eval()
    try:
        for batch in loader:
            batch = to_device(batch, device)
            paired = "student_inputs" in batch
            top = {}
            for role, model in (("teacher", teacher), ("student", student)):
                own = batch["student_inputs"] if role == "student" and paired else batch
                keep = own["loss_mask"].bool()
                args, kwargs = model_inputs(own)
                logits = output_logits(model(*args, **kwargs))[keep].float()
                totals[role] += float(F.cross_entropy(logits, own["labels"][keep], reduction="sum"))
                counts[role] += int(keep.sum())
                top[role] = logits.argmax(-1)
            if not paired:
                agree += int((top["teacher"] == top["student"]).sum())
            examples += int(batch["input_ids"].shape[0])
    finally:
        for model, mode in modes.items():
            model.train(mode)
    tokens = counts["student"]
    result: dict[str, Any] = {"examples": examples, "tokens": tokens,
                              "agreement": None if paired else agree / max(tokens, 1)}
    if paired:
        result["teacher_tokens"] = counts["teacher"]
    for role, total in totals.items():
        loss = total / max(counts[role], 1)
        result[role] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return result


def evaluate_splits(teacher: nn.Module, student: nn.Module, loaders: Mapping[str, DataLoader],
                    splits=("validation", "test")) -> dict[str, Any]:
    """Teacher against student on each of ``splits`` the run has: accuracy and macro-F1 for classifiers,
    next-token loss, perplexity and top-1 agreement for causal language models, entity precision/recall/F1
    and word accuracy for token classifiers (:func:`kdistill.token_tags.compare_tags`), SQuAD exact match and F1 of
    question answerers (:func:`kdistill.qa_spans.compare_qa`), nearest-neighbour accuracy
    and agreement of embedding models against the train split (:mod:`kdistill.embedding`); {} for other models."""
    if is_causal_lm(teacher) and is_causal_lm(student):
        return {split: compare_lm(teacher, student, loaders[split]) for split in splits if split in loaders}
    if is_token_classifier(teacher) and is_token_classifier(student):
        return {split: compare_tags(teacher, student, loaders[split]) for split in splits if split in loaders}
    if is_qa_model(teacher) and is_qa_model(student):
        return {split: compare_qa(teacher, student, loaders[split]) for split in splits if split in loaders}
    if is_embedding_model(teacher) and is_embedding_model(student):
        return evaluate_embedding_splits(teacher, student, loaders, splits)
    if not (_logits_are_classes(teacher) and _logits_are_classes(student)):
        return {}
    return {split: compare(teacher, student, loaders[split]) for split in splits if split in loaders}


# ---------------------------------------------------------------------------------------------
# eval of a finished run


def load_run(run_dir: str | os.PathLike) -> tuple[RunConfig, nn.Module, nn.Module, DataParts, dict[str, DataLoader]]:
    """Reload a run folder: its config, the teacher, the trained student and the data."""
    from kdistill import models
    from kdistill.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.is_run:
        raise ConfigError(f"'{folder.path}' is not a kdistill run folder: it has no {RESOLVED_NAME}.")
    student_dir = folder.student_dir
    if not student_dir.is_dir():
        raise ConfigError(f"'{folder.path}' holds no trained student (no student/ folder): the run has not finished. "
                          "Continue it with `kdistill run CONFIG --resume`.")
    config = folder.config()
    if config.tasks is not None:
        raise ConfigError(f"'{folder.path}' is a multi-task run (tasks: {', '.join(config.tasks)}): its summary.json "
                          "holds each task's figures, measured on the saved student/<task>/ folders, and `kdistill eval` "
                          "measures each task again; a task's student loads alone with "
                          "AutoModelForSequenceClassification.from_pretrained('student/<task>').")
    if config.teacher.finetune is not None:  # the fine-tuned teacher the run saved, not the base
        if folder.teacher_path() is None:
            raise ConfigError(f"'{folder.path}' holds no fine-tuned teacher (no teacher/ folder) although its "
                              "teacher.finetune is set: continue the run with `kdistill run CONFIG --resume`.")
        teacher = models.load_hf_model(folder.teacher_path(), task=config.teacher.task)
    else:
        teacher = load_model(config.teacher, "teacher", config)
    if (student_dir / "config.json").is_file():
        task = config.student.task if config.student is not None and config.student.path else config.teacher.task
        student = models.load_hf_model(student_dir, task=task)
    else:
        if config.student is not None:
            student = load_model(config.student, "student", config, teacher=teacher)
        else:
            draft = make_recipe(config, teacher, None)
            student = student_from_init(draft.student_init or {}, teacher,
                                        where=f"method '{config.method}' student_init")
        from safetensors.torch import load_model as load_weights_into

        load_weights_into(student, str(student_dir / "student.safetensors"))
    from kdistill.embedding import mark_models

    mark_models(config, teacher, student)
    tokenizer = student_tokenizer = None
    if config.data.builtin not in IMAGE_DATA:
        tokenizer = models.load_tokenizer(config.data.tokenizer or config.teacher.path)
        if config.data.student_tokenizer:
            student_tokenizer = models.load_tokenizer(config.data.student_tokenizer)
    data = build_data(config, tokenizer, student_tokenizer)
    return config, teacher, student, data, make_loaders(config, data)


def evaluate_run(run_dir: str | os.PathLike, split: str = "test") -> dict[str, Any]:
    """Teacher vs student (and the baseline) on one split of a finished run: accuracy, macro-F1 and
    agreement of classifiers; next-token loss, perplexity and top-1 agreement of causal LMs; entity
    precision/recall/F1, word accuracy and agreement of token classifiers; SQuAD exact match and F1 of
    question answerers. A multi-task run: each task's (``{"split", "tasks": {name: figures}}``,
    :func:`kdistill.multitask.evaluate_tasks`)."""
    from kdistill.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if folder.is_run and folder.raw_config().get("tasks") is not None:
        from kdistill.multitask import evaluate_tasks

        return evaluate_tasks(folder, split)
    _config, teacher, student, _data, loaders = load_run(run_dir)
    if split not in loaders or split == "unlabelled":
        available = ", ".join(s for s in loaders if s != "unlabelled")
        raise ConfigError(f"--split: the run's data has no '{split}' split; it has: {available}.")
    teacher.eval()
    compare_fn = (compare_lm if is_causal_lm(teacher) and is_causal_lm(student) else
                  compare_tags if is_token_classifier(teacher) and is_token_classifier(student) else
                  compare_qa if is_qa_model(teacher) and is_qa_model(student) else compare)
    if is_embedding_model(teacher) and is_embedding_model(student):  # the train split is the neighbours' index
        if split == "train":
            raise ConfigError("--split: an embedding run classifies each text by its nearest train text, so the "
                              "train split is the index, not a split to measure; choose validation or test.")
        compare_fn = lambda t, s, loader: compare_embeddings(t, s, loader, loaders["train"])  # noqa: E731
    result = compare_fn(teacher, student, loaders[split])
    if "teacher" not in result:
        raise DataError(f"the '{split}' split has no labels, so accuracy cannot be measured "
                        f"(agreement of teacher and student: {result['agreement']:.4f}).")
    baseline_dir = Path(run_dir) / "baseline" / "student"
    if baseline_dir.is_dir():  # baseline: true — the same student trained on the labels alone
        import copy

        from kdistill.finetune import load_baseline

        baseline = copy.deepcopy(student)
        load_baseline(baseline, Path(run_dir))
        again = compare_fn(teacher, baseline, loaders[split])
        result["baseline"] = {**again["student"], "agreement": again["agreement"]}
    if _config.teachers is not None:  # several teachers: each one's figures, and the ensemble's (kdistill.teachers)
        from kdistill.teachers import load_run_teachers, teacher_results

        teachers = load_run_teachers(run_dir, _config, teacher)
        several = teacher_results(teachers, student, loaders, _config.teacher_weights, {}, splits=(split,),
                                  primary_metrics={split: result})
        result["teachers"] = {name: entry["metrics"].get(split) for name, entry in several["teachers"].items()}
        if len(teachers) > 1 and split in several.get("ensemble", {}):
            result["ensemble"] = several["ensemble"][split]
    return {"split": split, **result}
