"""Run metrics: JSON lines (always) and TensorBoard events (when tensorboard is installed)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Each line is written whole and flushed, so a crash loses at most the line being written.
    """

    def __init__(self, directory: Path | None, *, tensorboard: bool = True):
        self.directory = Path(directory) if directory else None
        self.records: list[dict] = []
        self._file = None
        self._tb = None
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")
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


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.jsonl`` back (a torn last line is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
