"""Training on labels alone, inside a run: the teacher fine-tuned from a pretrained base, and the
no-distillation baseline.

    teacher: {path: ./my-pretrained-bert, finetune: {epochs: 3, lr: 1e-4, freeze: ["*word_embeddings*"]}}
    baseline: true

**Teacher fine-tuning.** The base is given a classifier for the run's classes (their names in
``id2label``), trained on the run's training split (``data.batch_size``, the finetune settings;
``finetune.seed``, default the run's seed, draws its head and its batch order), evaluated on
validation and test, saved as a Hugging Face folder in the run
(``teacher/``) and cached by content in ``<cache>/teachers/<key>/`` (``$KDISTILL_CACHE`` or
``~/.cache/kdistill``). The key covers the base's files, the tokenised training data and its labels,
the label names and the settings, so a second run — another student, another method — reuses the
teacher, and any change fine-tunes afresh. ``kdistill plan`` says which.

**Baseline.** The student as it was built (the same weights before training) trained on the labels
alone with the run's training settings and seed, saved in ``baseline/student`` and evaluated on the
same splits; summary and report set teacher, student and baseline side by side.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from kdistill.files import cache_root, fingerprint

TEACHER_DIR = "teacher"  # the fine-tuned teacher, saved in the run
TEACHERS_DIR = "teachers"  # several teachers (kdistill.teachers): each fine-tuned one in teachers/<name>/
BASELINE_DIR = "baseline"


@dataclass
class FinetunedTeacher:
    """Where the run's teacher comes from when ``teacher.finetune`` is set."""

    folder: Path  # the cache folder of this fine-tune
    cached: bool  # already there before this run
    key: str
    settings: dict


def _weight_files(base: Path) -> list[Path]:
    names = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    return [base / name for name in names if (base / name).is_file()] + sorted(base.glob("model-*.safetensors"))


# The run's ``training`` settings a fine-tune inherits (the others are the finetune's own, or only
# say how it is logged and saved); with early stopping, also those that decide when it stops.
INHERITED_TRAINING = ("lr_schedule", "grad_accum", "max_grad_norm", "mixed_precision", "on_nonfinite", "unpad")
EARLY_STOP_TRAINING = ("early_stop_patience", "metric", "greater_is_better", "eval_every")


def finetune_settings(config: Any) -> dict:
    """Everything besides the data and the base that decides the fine-tuned teacher."""
    spec = config.teacher.finetune
    training = config.training
    inherited = INHERITED_TRAINING + (EARLY_STOP_TRAINING if training.early_stop_patience else ())
    return {**spec.model_dump(mode="json"), "seed": spec.seed if spec.seed is not None else config.train_seed(),
            "batch_size": config.data.batch_size, "max_length": config.data.max_length,
            "training": {name: getattr(training, name) for name in inherited}}


def _data_key(dataset: Any) -> str:
    """The tokenised texts and labels of a TokenizedDataset (or a QA dataset's windows), as a digest."""
    if hasattr(dataset, "data_key"):
        return dataset.data_key()
    labels = dataset.labels.tobytes() if dataset.labels is not None else b""
    return hashlib.sha256(dataset.teacher.input_ids.tobytes() + dataset.teacher.offsets.tobytes() + labels).hexdigest()


def finetuned_teacher(config: Any, train: Any, label_names: list[str] | None, classes: int,
                      validation: Any = None) -> FinetunedTeacher:
    """The cache entry of the teacher ``config`` fine-tunes on ``train`` (a TokenizedDataset); with early
    stopping the ``validation`` split decides where it stops, so it is part of the key too."""
    settings = finetune_settings(config)
    base = Path(config.teacher.path)
    stops_on = _data_key(validation) if config.training.early_stop_patience and validation is not None else None
    key = fingerprint(*_weight_files(base), _data_key(train), label_names, classes, settings, stops_on)
    folder = cache_root() / "teachers" / key
    return FinetunedTeacher(folder, (folder / "config.json").is_file(), key, settings)


def finetune_teacher(config: Any, entry: FinetunedTeacher, loaders: dict[str, DataLoader], label_names,
                     classes: int, tokenizer: Any) -> nn.Module:
    """Fine-tune the base on the labels of ``loaders['train']`` and store it in the cache entry.

    Its checkpoints live beside the entry (``<key>.work/``), not in the run folder, so a fine-tune
    cut short continues in the next run that needs the same teacher, whatever its output folder.
    """
    import shutil

    import torch

    from kdistill.data import make_loader
    from kdistill.models import load_hf_model, save_model_folder
    from kdistill.run_data import bucket_chunks

    torch.manual_seed(entry.settings["seed"])
    teacher = load_hf_model(config.teacher.path, num_labels=classes, task=config.teacher.task)
    if label_names:
        teacher.config.id2label = dict(enumerate(label_names))
        teacher.config.label2id = {name: i for i, name in enumerate(label_names)}
    # Its batches are shuffled with its own seed: the fine-tuned teacher depends on nothing but its key.
    shuffled = make_loader(loaders["train"].dataset, config.data.batch_size, shuffle=True, seed=entry.settings["seed"],
                           bucket=bool(config.data.bucket), bucket_size_multiplier=bucket_chunks(config))
    train_config = finetune_train_config(config, shuffled)
    work = entry.folder.with_name(f"{entry.key}.work")
    with _fine_tune_lock(work):
        train_on_labels(teacher, {**loaders, "train": shuffled}, train_config, work, "teacher fine-tune")
        teacher.eval()
        save_model_folder(teacher, entry.folder, tokenizer)
    shutil.rmtree(work, ignore_errors=True)
    return teacher


@contextlib.contextmanager
def _fine_tune_lock(work: Path) -> Iterator[None]:
    """One fine-tune per cache entry at a time: ``<key>.work/lock`` holds the pid of the run doing it. A
    lock whose process is gone (a run killed mid-fine-tune) is taken over; a live one is a ConfigError."""
    import os

    from kdistill.errors import ConfigError

    work.mkdir(parents=True, exist_ok=True)
    lock = work / "lock"
    try:
        holder = int(lock.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        holder = None
    if holder is not None and holder != os.getpid() and _alive(holder):
        raise ConfigError(f"teacher.finetune: another run (process {holder}) is fine-tuning this teacher now, in "
                          f"'{work}'; wait for it to finish (this run then takes the teacher from the cache), or "
                          "change the fine-tune's settings.")
    lock.write_text(str(os.getpid()), encoding="utf-8")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def copy_into_run(entry: FinetunedTeacher, out: Path, name: str | None = None) -> Path:
    """The fine-tuned teacher as a Hugging Face folder in the run (``teacher/``; teacher ``name`` of several:
    ``teachers/<name>/``), copied from the cache."""
    import shutil

    from kdistill.files import atomic_folder

    folder = out / TEACHER_DIR if name is None else out / TEACHERS_DIR / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder) as tmp:
        shutil.copytree(entry.folder, tmp, dirs_exist_ok=True)
    return folder


def finetune_train_config(config: Any, loader: DataLoader) -> Any:
    """The TrainConfig of the teacher's fine-tune: the run's ``training`` with ``teacher.finetune``'s settings."""
    spec = config.teacher.finetune
    seed = spec.seed if spec.seed is not None else config.train_seed()
    return _train_config(config, epochs=spec.epochs, lr=spec.lr, warmup=spec.warmup, weight_decay=spec.weight_decay,
                         freeze=list(spec.freeze), max_steps=spec.max_steps, seed=seed, loader=loader)


def _train_config(config: Any, *, loader: DataLoader, epochs: float, max_steps: int | None = None, **fields):
    from kdistill.train import TrainConfig, run_length

    training = config.training
    epochs, max_steps = run_length(epochs, max_steps, len(loader), training.grad_accum)
    return TrainConfig(**{**training.model_dump(), **fields, "epochs": epochs, "max_steps": max_steps,
                          "layerdrop": 0.0})


def train_on_labels(model: nn.Module, loaders: dict[str, DataLoader], train_config: Any, output_dir: Path,
                    name: str) -> Any:
    """Train ``model`` on the labels of ``loaders['train']`` (cross-entropy, no teacher), checkpointed
    in ``output_dir`` and continued from its last checkpoint when one is there."""
    from kdistill.distiller import Distiller
    from kdistill.evaluation import evaluation_during_training
    from kdistill.train import Trainer

    distiller = Distiller(None, model, hard_label_weight=1.0)
    resume = (output_dir / "checkpoints").is_dir() and any((output_dir / "checkpoints").iterdir())
    # Evaluated during training when its outputs are classes or tags (a language model is measured at the end).
    eval_data, metric_fn = evaluation_during_training(model, loaders.get("validation"), classes=True)
    trainer = Trainer(distiller, loaders["train"], config=train_config, eval_data=eval_data, metric_fn=metric_fn,
                      output_dir=output_dir, name=name)
    return trainer.train(resume=resume)


def baseline_of(student: nn.Module) -> nn.Module:
    """The baseline's starting point: a copy of the student as built, before any training."""
    return copy.deepcopy(student)


def train_baseline(model: nn.Module, loaders: dict[str, DataLoader], train_config: Any, out: Path,
                   tokenizer: Any = None, planned: int | None = None) -> dict:
    """Train the baseline on labels alone with the distilled student's settings and save it in
    ``baseline/``; a run continued after the baseline finished loads it instead, unless it now plans
    more steps (``--resume`` with a longer run): then the baseline continues to them as the student does."""
    from kdistill.files import atomic_write_text

    folder = out / BASELINE_DIR
    done = folder / "stage_done.json"
    if baseline_finished(out, planned):
        load_baseline(model, out)
        return json.loads(done.read_text(encoding="utf-8"))
    import time

    from kdistill.evaluation import is_causal_lm
    from kdistill.lm_bench import training_tokens_per_second

    resumed = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    started = time.perf_counter()
    result = train_on_labels(model, loaders, train_config, folder, "baseline")
    seconds = time.perf_counter() - started
    _save(model, folder / "student", tokenizer)
    record = {"steps": result.steps, "final_metrics": result.final_metrics, "seconds": round(seconds, 2)}
    if is_causal_lm(model) and not resumed:  # a resumed baseline trained only part of its steps now
        record["tokens_per_second"] = training_tokens_per_second(loaders["train"], result.steps,
                                                                 train_config.grad_accum, seconds)
    atomic_write_text(done, json.dumps(record, indent=2))
    return record


def baseline_finished(out: Path, planned: int | None = None) -> bool:
    """Whether the run in ``out`` holds a finished baseline of at least ``planned`` steps (it is loaded,
    not trained again)."""
    folder = out / BASELINE_DIR
    done = folder / "stage_done.json"
    if not (done.is_file() and (folder / "student").is_dir()):
        return False
    return planned is None or planned <= int(json.loads(done.read_text(encoding="utf-8")).get("steps") or 0)


def load_baseline(model: nn.Module, out: Path) -> None:
    """Put the saved baseline's weights into ``model`` (a run continued after its baseline finished)."""
    from safetensors.torch import load_model

    from kdistill.lora import merge_lora

    merge_lora(model)  # a LoRA baseline was saved merged
    folder = out / BASELINE_DIR / "student"
    file = folder / "model.safetensors" if (folder / "model.safetensors").is_file() else folder / "student.safetensors"
    load_model(model, str(file), strict=False)


def _save(model: nn.Module, folder: Path, tokenizer: Any = None) -> None:
    """Like the student: a Hugging Face folder with the tokenizer that feeds it, else safetensors."""
    from kdistill.adapters.hf import is_hf_model
    from kdistill.files import atomic_folder
    from kdistill.models import save_model_folder
    from kdistill.lora import merge_lora
    from kdistill.train import save_weights

    merge_lora(model)  # student.lora: the baseline trained adapters too; saved (and evaluated) merged
    if is_hf_model(model):
        save_model_folder(model, folder, tokenizer)
        return
    with atomic_folder(folder) as tmp:
        save_weights(model, tmp / "student.safetensors")


__all__ = ["BASELINE_DIR", "FinetunedTeacher", "TEACHER_DIR", "baseline_finished", "baseline_of", "copy_into_run", "finetune_settings",
           "finetune_teacher", "finetune_train_config", "finetuned_teacher", "load_baseline", "train_baseline",
           "train_on_labels"]
