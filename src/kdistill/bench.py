"""``kdistill bench RUN``: teacher vs student in PyTorch fp32, ONNX Runtime fp32 and int8.

For each model and runtime: latency per example at batch 1 and 32 (median and min–max over
repeated runs, the runners alternated A B C … within each repeat so that machine noise hits all
alike), throughput, weight-file size, accuracy on a labelled split and agreement with the PyTorch
model. A markdown table and a bar chart (``bench.png``) are added to the run's ``report.md``
(a previous benchmark section is replaced); the numbers go to ``bench.json``.

The core is :func:`bench_models`: any callables, any batches, an injectable clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.errors import ConfigError, DataError
from kdistill.export import (
    HeldOut,
    MissingDependencyError,
    OrtRunner,
    add_data_arguments,
    export,
    folder_size,
    held_out,
    load_model,
    model_input_names,
    require_onnx,
    resolve_source,
    text_batches,
    torch_runner,
)
from kdistill.files import atomic_write_text
from kdistill.report import BENCH_END as SECTION_END
from kdistill.report import BENCH_START as SECTION_START

RUNTIMES = ("pytorch", "onnx", "onnx-int8")
BATCH_SIZES = (1, 32)


# ---------------------------------------------------------------------------------------------
# The core: time callables on batches


@dataclass
class Timing:
    """Milliseconds per example over repeats (each repeat runs every batch once)."""

    median_ms: float
    min_ms: float
    max_ms: float
    examples_per_second: float
    repeats: list[float]

    @property
    def spread(self) -> float:
        """(max − min) / median: how noisy the repeats were."""
        return (self.max_ms - self.min_ms) / self.median_ms if self.median_ms else 0.0


def _examples(batch: Any) -> int:
    if isinstance(batch, Mapping):
        return int(next(iter(batch.values())).shape[0])
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return int(batch.shape[0])
    return len(batch)


def bench_models(
    models: Mapping[str, Callable[[Any], Any]],
    batches: Sequence[Any] | Mapping[str, Sequence[Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Latency per example of each callable over its batches, repeated, the models alternated.

    ``batches``: one sequence for all models, or a mapping ``name -> batches`` (when models
    tokenise differently). A batch is a dict of tensors (its first value's first dimension is the
    number of examples), a tensor or a sized sequence. Every model first runs ``warmup`` batches
    untimed. Then, ``repeats`` times, each model runs all its batches; the order of the models
    rotates by one each repeat (A B C, B C A, C A B …) so none always runs first. Per repeat:
    elapsed / examples. Returns median, min, max (ms per example) and examples/s at the median.
    """
    if repeats < 1:
        raise ConfigError(f"bench: repeats={repeats} must be at least 1.")
    names = list(models)
    feeds = {name: list(batches[name] if isinstance(batches, Mapping) else batches) for name in names}
    for name, feed in feeds.items():
        if not feed:
            raise DataError(f"bench: no batches to time '{name}' on.")
    examples = {name: sum(_examples(batch) for batch in feed) for name, feed in feeds.items()}
    for name in names:
        for batch in feeds[name][:warmup]:
            models[name](batch)
    per_example: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            run, feed = models[name], feeds[name]
            start = clock()
            for batch in feed:
                run(batch)
            per_example[name].append((clock() - start) * 1000.0 / examples[name])
    timings = {}
    for name, values in per_example.items():
        median = statistics.median(values)
        throughput = 1000.0 / median if median > 0 else float("inf")
        timings[name] = Timing(median, min(values), max(values), throughput, values)
    return timings


# ---------------------------------------------------------------------------------------------
# Finding the teacher


def _is_classifier(folder: Path) -> bool:
    """Whether a model folder's config.json names a sequence-classification architecture."""
    try:
        architectures = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return True  # let the loader say what is wrong
    from kdistill.labels import is_classifier

    return is_classifier(architectures)


def find_teacher(run_dir: Path | None) -> tuple[Path | None, str]:
    """The teacher folder of a run and how it was found; ``(None, why not)`` when there is none.

    Looked for: ``teacher.path`` in the run's ``config.resolved.yaml`` (its ``teacher/`` folder when the
    run fine-tuned it); ``teacher_dir``/``teacher_path`` in ``summary.json``.
    """
    if run_dir is None:
        return None, "a model folder has no teacher (pass --teacher DIR)"
    from kdistill.run_folder import RunFolder

    folder = RunFolder(run_dir)
    if folder.is_run and folder.teacher_path() is not None:
        return folder.teacher_path(), f"teacher.path in {folder.resolved_file.name}"
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8")) or {}
        for key in ("teacher_dir", "teacher_path"):
            path = summary.get(key)
            if path and (Path(path) / "config.json").is_file():
                return Path(path), f"{key} in summary.json"
    return None, "the run names no teacher; pass --teacher DIR"


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class BenchRow:
    """One model in one runtime."""

    model: str  # "teacher" or "student"
    runtime: str  # "pytorch", "onnx" or "onnx-int8"
    size_bytes: int
    accuracy: float | None = None
    agreement: float | None = None  # with the same model in PyTorch fp32 (1.0 for PyTorch itself)
    latency: dict[int, Timing] | None = None

    @property
    def name(self) -> str:
        return f"{self.model} / {self.runtime}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = {f"batch_{size}": asdict(t) for size, t in (self.latency or {}).items()}
        return data


@dataclass
class _Model:
    """A loaded model with its tokenizer, input names and the batches it is measured on."""

    folder: Path
    model: Any
    tokenizer: Any
    input_names: tuple[str, ...]
    max_length: int


def _load(folder: Path, fallback_tokenizer: Any, data: HeldOut) -> _Model:
    from kdistill.export import _maybe_tokenizer

    model = load_model(folder)
    tokenizer = _maybe_tokenizer(folder) or fallback_tokenizer
    if tokenizer is None:
        raise ConfigError(f"'{folder}' has no tokenizer; save one beside the model (tokenizer.save_pretrained).")
    limit = int(getattr(model.config, "max_position_embeddings", data.max_length) or data.max_length)
    return _Model(folder, model, tokenizer, model_input_names(model), min(data.max_length, limit))


def _sample(data: HeldOut, count: int, seed: int) -> list[Any]:
    chosen = np.random.default_rng(seed).choice(len(data.texts), min(count, len(data.texts)), replace=False)
    return [data.texts[i] for i in chosen.tolist()]


def _predict(runner: Callable, batches: Sequence[Mapping[str, torch.Tensor]]) -> np.ndarray:
    return np.concatenate([np.asarray(runner(batch)).argmax(-1) for batch in batches])


def bench(
    run_dir: str | Path,
    *,
    teacher_dir: str | Path | None = None,
    split: str = "test",
    data: HeldOut | None = None,
    threads: int | None = None,
    repeats: int = 5,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    latency_examples: int = 32,
    latency_batches: int = 4,
    runtimes: Sequence[str] = RUNTIMES,
    write_report: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure the teacher and the student of ``run_dir`` (or a model folder: the student alone).

    Data: ``data``, else the run's ``split`` (:func:`kdistill.export.held_out`). Batch 1 times
    ``latency_examples`` examples one by one; other batch sizes time ``latency_batches`` batches;
    all drawn with ``seed``. ``threads`` sets PyTorch's and ONNX Runtime's intra-op threads alike
    (default: PyTorch's current count). ONNX rows are exported to ``<run>/bench/`` and skipped, with
    a note, when onnx/onnxruntime are missing. Writes ``bench.json``, ``bench.png`` and a section of
    ``report.md`` in the run folder; returns what ``bench.json`` holds.
    """
    say = log or (lambda _text: None)
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ConfigError(f"bench: unknown runtime '{runtime}'; choose from {', '.join(RUNTIMES)}.")
    model_dir, run = resolve_source(run_dir)
    out_dir = run if run is not None else model_dir.parent
    notes: list[str] = []
    data = data or held_out(run, split=split)
    if data is None or not data.texts:
        raise DataError(
            f"bench: no {split} data found for '{run_dir}' (looked for data/{split}.csv|tsv|jsonl|json, "
            f"{split}.*, and the run's config.resolved.yaml); pass --data FILE "
            "--text-column TEXT --label-column LABEL."
        )
    if data.labels is None:
        notes.append(f"{data.source} has no labels, so accuracy is not measured.")
    teacher_path, how = _teacher_to_measure(run, teacher_dir, notes)
    runtimes = _available_runtimes(runtimes, notes)
    threads = threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        student = _load(model_dir, None, data)
        models = {"student": student}
        if teacher_path is not None:
            models = {"teacher": _load(teacher_path, student.tokenizer, data), "student": student}
        rows, runners, batches, labels = _runners(models, runtimes, data, out_dir, threads, say)
        _accuracy(rows, runners, batches, labels)
        for batch_size in batch_sizes:
            count = latency_examples if batch_size == 1 else latency_batches * batch_size
            texts = _sample(data, count, seed)
            feeds = {row.name: text_batches(models[row.model].tokenizer, texts, models[row.model].input_names,
                                            batch_size=batch_size, max_length=models[row.model].max_length)
                     for row in rows}
            say(f"bench: batch {batch_size}: {len(texts)} examples × {repeats} repeats × {len(rows)} runners "
                f"({threads} thread{'s' if threads != 1 else ''})")
            timings = bench_models(runners, feeds, repeats=repeats)
            for row in rows:
                row.latency = {**(row.latency or {}), batch_size: timings[row.name]}
    finally:
        torch.set_num_threads(previous_threads)

    result = _summarise(rows, data, threads, repeats, notes, teacher_path, how, batch_sizes)
    atomic_write_text(out_dir / "bench.json", json.dumps(result, indent=2) + "\n")
    if write_report:
        chart = plot_latency(rows, out_dir / "bench.png")
        append_report(out_dir / "report.md", markdown_section(result, rows, chart.name if chart else None))
        if run is not None:  # the student's model card shows the latency too
            from kdistill.model_card import write_model_card

            write_model_card(run)
    say(markdown_table(rows, batch_sizes))
    for line in result["headline"]:
        say(line)
    for note in notes:
        say(f"note: {note}")
    return result


def _teacher_to_measure(run: Path | None, teacher_dir: str | Path | None, notes: list[str]) -> tuple[Path | None, str]:
    """The teacher folder to measure beside the student (``--teacher``, else the run's), and how it was found;
    None (with a note) when there is none or it is no classifier."""
    if teacher_dir is not None:
        teacher_path, how = Path(teacher_dir), "--teacher"
    else:
        teacher_path, how = find_teacher(run)
        if teacher_path is None:
            notes.append(f"Teacher not measured: {how}.")
    if teacher_path is not None and not _is_classifier(teacher_path):
        notes.append(f"Teacher not measured: '{teacher_path}' ({how}) has no sequence-classification head, so its "
                     "outputs are no class predictions to compare.")
        teacher_path = None
    return teacher_path, how


def _available_runtimes(runtimes: Sequence[str], notes: list[str]) -> list[str]:
    """``runtimes`` less the ONNX ones when onnx/onnxruntime are missing (with a note)."""
    runtimes = list(runtimes)
    if any(runtime != "pytorch" for runtime in runtimes):
        try:
            require_onnx("The ONNX Runtime rows of the benchmark")
        except MissingDependencyError as exc:
            notes.append(f"ONNX Runtime rows skipped: {exc}")
            runtimes = [runtime for runtime in runtimes if runtime == "pytorch"]
    return runtimes


def _runners(models: dict[str, _Model], runtimes: Sequence[str], data: HeldOut, out_dir: Path, threads: int,
             say: Callable[[str], None]) -> tuple[list[BenchRow], dict[str, Callable], dict, dict]:
    """A row and a runner per model and runtime (ONNX ones exported to ``out_dir/bench/`` first), and
    each model's whole-split batches (shortest first) and their labels, for accuracy."""
    rows: list[BenchRow] = []
    runners: dict[str, Callable] = {}
    labels_by_model, accuracy_batches = {}, {}
    for role, loaded in models.items():
        order = sorted(range(len(data.texts)), key=lambda i: len(str(data.texts[i])))
        texts = [data.texts[i] for i in order]
        accuracy_batches[role] = text_batches(loaded.tokenizer, texts, loaded.input_names, batch_size=32,
                                              max_length=loaded.max_length)
        labels_by_model[role] = None if data.labels is None else np.asarray([data.labels[i] for i in order])
        reference = torch_runner(loaded.model)
        for runtime in runtimes:
            if runtime == "pytorch":
                runner, size = reference, folder_size(loaded.folder)
            else:
                say(f"bench: exporting the {role} to {runtime}")
                target = out_dir / "bench" / f"{role}-{runtime}"
                check = accuracy_batches[role][:16]
                export(loaded.folder, target, runtime, check_batches=check,
                       check_source=f"{data.source} (first batches)", log=None)
                runner, size = OrtRunner(target / "model.onnx", threads=threads), folder_size(target)
            row = BenchRow(role, runtime, size)
            rows.append(row)
            runners[row.name] = runner
    return rows, runners, accuracy_batches, labels_by_model


def _accuracy(rows: list[BenchRow], runners: dict[str, Callable], batches: dict, labels: dict) -> None:
    """Each row's accuracy, and its agreement with the model's own PyTorch fp32 predictions, on the whole split."""
    reference_predictions = {}
    for row in rows:
        predictions = _predict(runners[row.name], batches[row.model])
        if row.runtime == "pytorch":
            reference_predictions[row.model] = predictions
        row_labels = labels[row.model]
        row.accuracy = None if row_labels is None else float((predictions == row_labels).mean())
        if row.model in reference_predictions:
            row.agreement = float((predictions == reference_predictions[row.model]).mean())


# ---------------------------------------------------------------------------------------------
# Summary, table, chart, report


def _row(rows: Sequence[BenchRow], model: str, runtime: str) -> BenchRow | None:
    return next((row for row in rows if row.model == model and row.runtime == runtime), None)


def _summarise(rows, data: HeldOut, threads: int, repeats: int, notes: list[str], teacher_path, how,
               batch_sizes: Sequence[int]) -> dict[str, Any]:
    headline: list[str] = []
    comparisons: dict[str, float] = {}
    first = min(batch_sizes)
    student_fp32, student_int8 = _row(rows, "student", "pytorch"), _row(rows, "student", "onnx-int8")
    teacher_fp32 = _row(rows, "teacher", "pytorch")
    if student_fp32 and student_int8:
        speedup = student_fp32.latency[first].median_ms / student_int8.latency[first].median_ms
        comparisons["student_int8_vs_fp32_speedup"] = speedup
        text = f"int8 ONNX student vs fp32 PyTorch student at batch {first}: {speedup:.2f}× faster"
        if student_fp32.accuracy is not None:
            drop = 100 * (student_fp32.accuracy - student_int8.accuracy)
            comparisons["student_int8_accuracy_drop_points"] = drop
            change = f"{drop:.2f} points lower" if drop >= 0 else f"{-drop:.2f} points higher"
            text += f", accuracy {100 * student_int8.accuracy:.2f}% vs {100 * student_fp32.accuracy:.2f}% ({change})"
        headline.append(text + ".")
    if teacher_fp32 and student_int8:
        speedup = teacher_fp32.latency[first].median_ms / student_int8.latency[first].median_ms
        comparisons["teacher_fp32_to_student_int8_speedup"] = speedup
        text = f"fp32 PyTorch teacher → int8 ONNX student at batch {first}: {speedup:.2f}× faster"
        if teacher_fp32.accuracy is not None:
            text += f", accuracy {100 * teacher_fp32.accuracy:.1f}% → {100 * student_int8.accuracy:.1f}%"
        headline.append(text + ".")
    if teacher_fp32 and student_fp32:
        speedup = teacher_fp32.latency[first].median_ms / student_fp32.latency[first].median_ms
        comparisons["teacher_to_student_fp32_speedup"] = speedup
    return {
        "data": {"source": data.source, "examples": len(data.texts), "labelled": data.labels is not None},
        "teacher": None if teacher_path is None else {"path": str(teacher_path), "found_by": how},
        "threads": threads,
        "repeats": repeats,
        "rows": [row.to_json() for row in rows],
        "comparisons": comparisons,
        "headline": headline,
        "notes": notes,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _ms(timing: Timing) -> str:
    return f"{timing.median_ms:.2f} ({timing.min_ms:.2f}–{timing.max_ms:.2f})"


def markdown_table(rows: Sequence[BenchRow], batch_sizes: Sequence[int] = BATCH_SIZES) -> str:
    """The benchmark as a markdown table: one row per model and runtime."""
    header = ["model", "runtime", "size (MB)"]
    for size in batch_sizes:
        header.append(f"ms/example @ batch {size}: median (min–max)")
    header += [f"examples/s @ batch {max(batch_sizes)}", "accuracy", "agrees with PyTorch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row.model, row.runtime, f"{row.size_bytes / 1e6:.1f}"]
        cells += [_ms(row.latency[size]) for size in batch_sizes]
        cells.append(f"{row.latency[max(batch_sizes)].examples_per_second:.1f}")
        cells.append("–" if row.accuracy is None else f"{100 * row.accuracy:.2f}%")
        cells.append("–" if row.agreement is None else f"{100 * row.agreement:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_latency(rows: Sequence[BenchRow], path: Path) -> Path | None:
    """Bar chart: ms per example of every row, one panel per batch size (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    sizes = sorted(rows[0].latency)
    colours = {"pytorch": "#4c72b0", "onnx": "#dd8452", "onnx-int8": "#55a868"}
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        labels = [f"{row.model}\n{row.runtime}" for row in rows]
        values = [row.latency[size].median_ms for row in rows]
        errors = [[v - row.latency[size].min_ms for v, row in zip(values, rows)],
                  [row.latency[size].max_ms - v for v, row in zip(values, rows)]]
        bars = ax.bar(range(len(rows)), values, yerr=errors, capsize=3,
                      color=[colours.get(row.runtime, "#8172b2") for row in rows])
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(f"batch {size}")
        ax.set_ylabel("ms per example (median; bars: min–max)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def markdown_section(result: Mapping[str, Any], rows: Sequence[BenchRow], chart: str | None) -> str:
    """The report section (between markers, so a later benchmark replaces it)."""
    sizes = sorted(rows[0].latency) if rows else list(BATCH_SIZES)
    lines = [
        SECTION_START,
        "## Serving benchmark",
        "",
        f"Measured {result['measured_at']} on CPU with {result['threads']} thread(s), {result['repeats']} repeats, "
        f"runners alternated; data: {result['data']['source']} ({result['data']['examples']} examples). "
        "Latency is per example; the spread is min–max over repeats.",
        "",
        markdown_table(rows, sizes),
        "",
    ]
    lines += [f"- {line}" for line in result["headline"]]
    lines += [f"- Note: {note}" for note in result["notes"]]
    if chart:
        lines += ["", f"![serving latency]({chart})"]
    lines.append(SECTION_END)
    return "\n".join(lines)


def append_report(path: Path, section: str) -> None:
    """Add ``section`` to ``report.md`` (created if absent), replacing an earlier benchmark section; atomic."""
    from kdistill.report import put_section

    put_section(path, section)


# ---------------------------------------------------------------------------------------------
# CLI


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdistill bench RUN``."""
    parser.add_argument("run", help="a run folder (holding student/), or a model folder to measure alone")
    parser.add_argument("--teacher", default=None, help="teacher model folder (default: the one the run names)")
    parser.add_argument("--split", default="test", help="which split of the run's data (default: test)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (default: 5)")
    parser.add_argument("--latency-examples", type=int, default=32, help="examples timed at batch 1 (default: 32)")
    parser.add_argument("--latency-batches", type=int, default=4, help="batches timed at batch 32 (default: 4)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list of {', '.join(RUNTIMES)}")
    parser.add_argument("--no-report", action="store_true", help="do not touch report.md")
    add_data_arguments(parser)


def bench_main(args: argparse.Namespace) -> int:
    """``kdistill bench``."""
    data = None
    if args.data is not None:
        from kdistill.run_folder import model_label_names

        model_dir, _ = resolve_source(args.run)
        data = held_out(None, data=args.data, text_column=args.text_column, label_column=args.label_column,
                        max_length=args.max_length, label_names=model_label_names(model_dir))
    elif args.max_length is not None:
        _, run = resolve_source(args.run)
        data = held_out(run, split=args.split, max_length=args.max_length)
    bench(args.run, teacher_dir=args.teacher, split=args.split, data=data, threads=args.threads,
          repeats=args.repeats, latency_examples=args.latency_examples, latency_batches=args.latency_batches,
          runtimes=[r.strip() for r in args.runtimes.split(",") if r.strip()], write_report=not args.no_report)
    return 0


# The CLI's plugin protocol (``kdistill.cli.PLUGIN_VERBS``): ``add_arguments`` and ``main``.
add_arguments = add_bench_arguments
main = bench_main

__all__ = [
    "BenchRow",
    "Timing",
    "add_bench_arguments",
    "append_report",
    "bench",
    "bench_main",
    "bench_models",
    "find_teacher",
    "markdown_table",
]
