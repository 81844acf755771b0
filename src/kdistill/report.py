"""Run reports: ``report.md`` with tables and PNG plots (loss parts over steps, accuracy bars)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdistill.files import atomic_write_text
from kdistill.train.logging import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_loss_parts(metrics_files: Mapping[str, Path], path: Path, *, smooth: int = 5) -> Path | None:
    """One line per loss part (and per run) over optimiser steps, from ``metrics.jsonl`` files."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    drawn = 0
    for run_name, file in metrics_files.items():
        if not Path(file).exists():
            continue
        records = [r for r in read_metrics(file) if r.get("kind") == "train"]
        groups: dict[str, list[dict]] = {}  # a multi-stage run logs each stage's steps from 1
        for record in records:
            groups.setdefault(str(record.get("stage", "")), []).append(record)
        for stage, rows in groups.items():
            drawn += _plot_parts(ax, rows, f"{run_name}{f' {stage}' if stage else ''}", smooth)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (weighted part)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def _plot_parts(ax, records: list[dict], label: str, smooth: int) -> int:
    """Each numeric loss part of ``records`` as a smoothed line; returns how many were drawn."""
    keys = [k for k in (records[0] if records else {})
            if k not in ("kind", "step", "time", "lr", "epoch", "stage") and isinstance(records[0][k], (int, float))]
    drawn = 0
    for key in keys:
        steps = [r["step"] for r in records if isinstance(r.get(key), (int, float))]
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        window = max(1, min(smooth, len(values)))
        smoothed = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                    for i in range(len(values))]
        ax.plot(steps, smoothed, label=f"{label}: {key}")
        drawn += 1
    return drawn


def plot_bars(values: Mapping[str, float], path: Path, *, ylabel: str, title: str = "",
              fmt: str = "{:.1%}", ylim: Sequence[float] | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(names)])
    for bar, name in zip(bars, names):
        ax.annotate(fmt.format(values[name]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


CONFIG_HEADING = "## The resolved config"
BENCH_START = "<!-- kdistill:bench:start -->"
BENCH_END = "<!-- kdistill:bench:end -->"
_BENCH = re.compile(re.escape(BENCH_START) + r".*?" + re.escape(BENCH_END) + r"\n?", re.S)


def bench_section(path: Path) -> str | None:
    """The benchmark section ``kdistill bench`` added to a report, if it has one."""
    found = _BENCH.search(path.read_text(encoding="utf-8")) if path.is_file() else None
    return found.group(0).rstrip() if found else None


def put_section(path: Path, section: str) -> None:
    """Add or replace the benchmark ``section`` of ``report.md`` (created if absent), before the
    resolved config that ends a run's report; atomic."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Report\n"
    text = _BENCH.sub("", text).rstrip()
    head, mark, tail = text.partition(CONFIG_HEADING)
    text = f"{head.rstrip()}\n\n{section.rstrip()}\n" + (f"\n{mark}{tail}\n" if mark else "")
    atomic_write_text(path, text)


def _role_rows(metrics: Mapping, baseline: Mapping):
    """``(split, role, figures, agreement with the teacher or None, the split's result)`` for the teacher,
    student and baseline of every split that has figures (the teacher agrees with nobody)."""
    for split, result in metrics.items():
        for role, values in (("teacher", result.get("teacher")), ("student", result.get("student")),
                             ("baseline", baseline.get(split))):
            if values:
                share = {"baseline": values.get("agreement"), "student": result.get("agreement")}.get(role)
                yield split, role, values, share, result


def _perplexity_section(metrics: Mapping, baseline: Mapping) -> str:
    """A causal LM's held-out next-token loss and perplexity per split, and top-1 agreement with the teacher."""
    rows = []
    for split, role, values, share, result in _role_rows(metrics, baseline):
        tokens = result.get("teacher_tokens", result["tokens"]) if role == "teacher" else result["tokens"]
        rows.append([split, role, f"{values['perplexity']:.3f}", f"{values['loss']:.4f}",
                     "" if share is None else f"{share:.2%}", f"{tokens:,}"])
    return "## Perplexity\n\n" + markdown_table(
        ["split", "model", "perplexity", "next-token loss", "top-1 agrees with the teacher", "tokens"], rows)


def _entity_section(metrics: Mapping, baseline: Mapping) -> str:
    """A token classifier's entity precision, recall and F1 (seqeval's default spans) and word accuracy per split."""
    rows = []
    for split, role, values, share, result in _role_rows(metrics, baseline):
        rows.append([split, role, f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}",
                     f"{values['accuracy']:.2%}", "" if share is None else f"{share:.2%}",
                     f"{values['entities']:,}", f"{result['words']:,}"])
    return ("## Entities\n\nEntity-level scores (an entity is a maximal B-X I-X… span, an I-X after O or another "
            "type starting a new one, as seqeval's default mode; right only when type, start and end match), "
            "over words scored at their first sub-token.\n\n" + markdown_table(
                ["split", "model", "precision", "recall", "entity F1", "word accuracy", "tags words as the teacher",
                 "entities", "words"], rows))


def _answer_section(metrics: Mapping, baseline: Mapping) -> str:
    """A question answerer's SQuAD exact match and F1 per split (kdistill.qa_spans)."""
    rows = []
    for split, role, values, share, result in _role_rows(metrics, baseline):
        rows.append([split, role, f"{100 * values['exact_match']:.2f}", f"{100 * values['f1']:.2f}",
                     "" if share is None else f"{share:.2%}", f"{result['examples']:,}", f"{result['windows']:,}"])
    return ("## Answers\n\nSQuAD exact match and F1 (×100; answers lower-cased, punctuation and the articles a/an/the "
            "removed; F1 over words; the best over the gold answers), of the best span of each question over its "
            "windows.\n\n" + markdown_table(
                ["split", "model", "exact match", "F1", "answers as the teacher does", "questions", "windows"], rows))


def _throughput(summary: Mapping) -> str:
    """A sentence on training speed: real tokens per second of each stage and of the baseline."""
    speeds = [(f"'{s['stage']}'", s["tokens_per_second"]) for s in summary.get("stages", [])
              if s.get("tokens_per_second")]
    if (summary.get("baseline") or {}).get("tokens_per_second"):
        speeds.append(("the baseline", summary["baseline"]["tokens_per_second"]))
    if not speeds:
        return ""
    said = ", ".join(f"{name} {speed:,.0f}" for name, speed in speeds)
    return (f"\n\nTraining throughput (real tokens of the training batches per second of training, this "
            f"machine; not measured for a stage resumed from a checkpoint): {said}.")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def run_report(out: Path, summary: Mapping, resolved_yaml: str, *, keep: Sequence[str] = ()) -> Path:
    """``out/report.md`` of a finished ``kdistill run``: teacher vs student per split, sizes, time,
    the loss parts over steps (``loss.png``), test (else validation) accuracy (``accuracy.png``), the
    sections in ``keep`` (e.g. a benchmark's) and, at its end, the resolved config."""
    metrics = summary.get("metrics") or {}
    split = "test" if "test" in metrics or not metrics else next(iter(metrics))  # one the run has
    sections = [f"# kdistill run: {out.name}",
                f"Method `{summary.get('method')}`; {_duration(summary.get('seconds', 0))} on "
                f"{summary.get('processes', 1)} process(es). Figures are measured on the saved student "
                f"(`kdistill eval RUN --split {split}` reproduces them)."]
    finetune = summary.get("teacher_finetune")
    if finetune:
        how = "taken from the cache" if finetune.get("cached") else "fine-tuned in this run"
        sections[-1] += (f" The teacher is a pretrained base fine-tuned on this run's training split ({how}: "
                         f"`{finetune['cache']}`; a copy in `teacher/`).")
    data = summary.get("data") or {}
    if data:
        stages = ", ".join(f"'{s['stage']}' on {s['data']}" for s in summary.get("stages", []) if s.get("data"))
        sections.append("## Data\n\n" + markdown_table(["split", "examples", "from"], [
            [split, f"{part['examples']:,}" + (f" ({part['windows']:,} windows)" if "windows" in part else ""),
             part["source"]] for split, part in data.items()])
            + (f"\n\nStages train on: {stages}." if stages else ""))
    baseline = (summary.get("baseline") or {}).get("metrics") or {}
    if any("perplexity" in result.get("student", {}) for result in metrics.values()):
        sections.append(_perplexity_section(metrics, baseline) + _throughput(summary))
        metrics = {}  # no accuracy for a language model
    from kdistill.embedding import embedding_table, is_embedding_result

    if is_embedding_result(metrics):  # sentence embeddings: nearest-neighbour accuracy, agreement with the teacher
        sections.append("## Embeddings (the train split is the nearest-neighbour index)\n\n"
                        + markdown_table(*embedding_table(metrics, baseline)))
        metrics = {}
    if any("exact_match" in result.get("student", {}) for result in metrics.values()):
        sections.append(_answer_section(metrics, baseline))
        metrics = {}  # SQuAD scores per question instead of one label per example
    if any("f1" in result.get("student", {}) for result in metrics.values()):
        sections.append(_entity_section(metrics, baseline))
        metrics = {}  # entity scores instead of one label per example
    rows = []
    for split, result in metrics.items():
        for role in ("teacher", "student"):
            if role in result:
                rows.append([split, role, f"{result[role]['accuracy']:.2%}", f"{result[role]['macro_f1']:.4f}",
                             f"{result['agreement']:.2%}" if role == "student" else "", result["examples"]])
        if split in baseline:  # the student trained on the labels alone
            row = baseline[split]
            rows.append([split, "baseline", f"{row['accuracy']:.2%}", f"{row['macro_f1']:.4f}",
                         f"{row['agreement']:.2%}", result["examples"]])
    if rows:
        sections.append("## Accuracy\n\n" + markdown_table(
            ["split", "model", "accuracy", "macro-F1", "agrees with the teacher", "examples"], rows))
    if summary.get("teachers"):
        sections.append(_teachers_section(summary))
    params = summary.get("parameters") or {}
    if params:
        teacher, student = params.get("teacher", 0), params.get("student", 0)
        sections.append("## Size\n\n" + markdown_table(["model", "parameters"], [
            ["teacher", f"{teacher:,}"], ["student", f"{student:,} ({student / max(teacher, 1):.1%} of the teacher)"]]))
    curves = {"student": out / "metrics.jsonl"}
    if (out / "baseline" / "metrics.jsonl").is_file():
        curves["baseline"] = out / "baseline" / "metrics.jsonl"
    if plot_loss_parts(curves, out / "loss.png"):
        sections.append("## Loss over steps\n\n![loss parts over optimiser steps](loss.png)")
    split = "test" if "test" in metrics else "validation" if "validation" in metrics else None
    if split and "teacher" in metrics[split]:
        bars = {role: metrics[split][role]["accuracy"] for role in ("teacher", "student")}
        if split in baseline:
            bars["baseline"] = baseline[split]["accuracy"]
        plot_bars(bars,
                  out / "accuracy.png", ylabel=f"{split} accuracy", ylim=(0, 1))
        sections.append(f"## {split.capitalize()} accuracy\n\n![{split} accuracy](accuracy.png)")
    sections += list(keep)
    sections.append(f"{CONFIG_HEADING}\n\n```yaml\n{resolved_yaml.rstrip()}\n```")
    return write_report(out / "report.md", sections)


def _teachers_section(summary: Mapping) -> str:
    """Several teachers (``teachers:``): each one's figures per split, how often the student agrees with it,
    and the ensemble's (the teachers' probabilities averaged with teacher_weights)."""
    def figures(values: Mapping) -> str:
        return ", ".join(f"{key} {value:.4f}" for key, value in values.items()
                         if key != "agreement" and isinstance(value, (int, float)))

    rows = []
    for i, (name, entry) in enumerate(summary["teachers"].items()):
        label = f"{name} (primary)" if i == 0 else name
        for split, values in (entry.get("metrics") or {}).items():
            agreement = values.get("agreement")
            rows.append([label, split, figures(values), f"{agreement:.2%}" if agreement is not None else "",
                         f"{entry.get('parameters') or 0:,}", entry.get("source") or ""])
    for split, values in (summary.get("ensemble") or {}).items():
        rows.append(["ensemble", split, figures(values), "", "", "the teachers' probabilities, weighted"])
    return ("## Teachers\n\nThe `teacher` rows above are the primary teacher's (listed first).\n\n"
            + markdown_table(["teacher", "split", "figures", "student agrees", "parameters", "source"], rows))


def write_report(path: Path, sections: Sequence[str]) -> Path:
    """Write ``report.md`` atomically from markdown sections."""
    atomic_write_text(path, "\n\n".join(sections).rstrip() + "\n")
    return path
