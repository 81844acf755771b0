"""Run metrics: JSON lines (always) and TensorBoard events (when tensorboard is installed)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from kdistill.files import atomic_write_text


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Each line is written whole and flushed, so a crash loses at most the line being written.

    keep_until: None appends to what the file holds. A step N keeps the records of steps up to N
        and drops the later ones (a run resumed from its checkpoint of step N logs those again, so
        no step appears twice); 0 starts a fresh file. ``kept`` holds the records kept.
    """

    def __init__(self, directory: Path | None, *, tensorboard: bool = True, keep_until: int | None = None):
        self.directory = Path(directory) if directory else None
        self.records: list[dict] = []
        self.kept: list[dict] = []
        self._file = None
        self._tb = None
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "metrics.jsonl"
        if keep_until is not None:
            earlier = read_metrics(path) if path.is_file() else []
            self.kept = [record for record in earlier if record.get("step", 0) <= keep_until]
            if path.is_file():  # rewritten whole: also drops a line torn by a crash
                atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in self.kept))
        self._file = open(path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.directory / "tensorboard"))
            except ImportError:
                self._tb = None

    def log(self, step: int, values: dict[str, float], *, kind: str = "train") -> None:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        record.update({k: (float(v) if v is not None else None) for k, v in values.items()})
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def notice(message: str) -> None:
    """Tell the user what a run does about its folder or checkpoints (stderr, main process only)."""
    from kdistill.launch import is_main_process

    if is_main_process():
        tqdm.write(f"kdistill: {message}", file=sys.stderr)


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.jsonl`` back (a torn last line is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
