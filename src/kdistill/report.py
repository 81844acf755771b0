"""Run reports: ``report.md`` with tables and PNG plots (loss parts over steps, accuracy bars)."""

from __future__ import annotations

import os
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
        keys = [k for k in (records[0] if records else {}) if k not in ("kind", "step", "time", "lr", "epoch")]
        for key in keys:
            steps = [r["step"] for r in records if r.get(key) is not None]
            values = [r[key] for r in records if r.get(key) is not None]
            if not values:
                continue
            window = max(1, min(smooth, len(values)))
            smoothed = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                        for i in range(len(values))]
            ax.plot(steps, smoothed, label=f"{run_name}: {key}")
            drawn += 1
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


def write_report(path: Path, sections: Sequence[str]) -> Path:
    """Write ``report.md`` atomically from markdown sections."""
    atomic_write_text(path, "\n\n".join(sections).rstrip() + "\n")
    return path
