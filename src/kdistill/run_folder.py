"""A run folder, read in one place: its config, summary, student and data splits.

    folder = RunFolder("runs/sst2-hinton")
    folder.config()          # the RunConfig it ran (config.resolved.yaml, validated)
    folder.split("test")     # that split's texts and labels, by the run's own rules
    folder.teacher_path()    # teacher.path of its config (its own teacher/ when fine-tuned)

``kdistill eval``, ``export`` and ``bench`` read run folders through this class, so a split is
rebuilt exactly as the run built it (the same files, cut, missing-text rule and label ids) and
figures measured on it agree with the run's summary.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from kdistill.errors import ConfigError
from kdistill.labels import class_names
from kdistill.outputs import RESOLVED_NAME


class RunFolder:
    """The folder ``kdistill run`` wrote (``config.resolved.yaml``, ``student/``, ``summary.json`` …)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def resolved_file(self) -> Path:
        return self.path / RESOLVED_NAME

    @property
    def is_run(self) -> bool:
        """Whether kdistill ran here (the folder holds its resolved config)."""
        return self.resolved_file.is_file()

    @property
    def student_dir(self) -> Path:
        return self.path / "student"

    def raw_config(self) -> dict:
        """The resolved config as plain data (no validation: for reading single keys)."""
        from kdistill.config import parse_yaml

        if not self.is_run:
            raise ConfigError(f"'{self.path}' is not a kdistill run folder: it has no {RESOLVED_NAME}.")
        raw = parse_yaml(self.resolved_file.read_text(encoding="utf-8"), source=str(self.resolved_file))
        return raw if isinstance(raw, dict) else {}

    @functools.cache  # noqa: B019 - one folder object reads its config once
    def config(self) -> Any:
        """The RunConfig the run ran, validated as ``kdistill run`` validated it."""
        from kdistill.config import config_from_dict

        return config_from_dict(self.raw_config(), base_dir=self.path, source=str(self.resolved_file),
                                import_from_base=False)

    def summary(self) -> dict | None:
        file = self.path / "summary.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    def teacher_path(self) -> Path | None:
        """The run's teacher folder: ``teacher/`` in the run when ``teacher.finetune`` trained it from
        ``teacher.path`` (the base has no classifier of the run's classes), else ``teacher.path`` of the
        run's config when it is a model folder; None otherwise."""
        from kdistill.finetune import TEACHER_DIR, TEACHERS_DIR

        raw = self.raw_config() if self.is_run else {}
        teacher, name = raw.get("teacher"), None
        if isinstance(raw.get("teachers"), dict) and raw["teachers"]:  # several: the primary, listed first
            name, teacher = next(iter(raw["teachers"].items()))
        path = teacher.get("path") if isinstance(teacher, dict) else None
        if isinstance(teacher, dict) and teacher.get("finetune") is not None:
            path = self.path / TEACHER_DIR if name is None else self.path / TEACHERS_DIR / name
        return Path(path) if path and (Path(path) / "config.json").is_file() else None

    def split(self, name: str):
        """The run's ``name`` split (a :class:`kdistill.data.TextTable`), or None when it has none, or its
        examples are no sentences with one label (tagged words, questions on contexts)."""
        from kdistill.run_data import read_tables

        from kdistill.config import IMAGE_DATA

        config = self.config()
        if config.data.builtin in IMAGE_DATA:
            return None  # packaged images are no texts to tokenise
        if config.tagged() or config.answers_questions():
            return None  # word tags (kdistill.conll) or QA records (kdistill.squad): not one text and label each
        return read_tables(config).tables.get(name)


def model_label_names(model_dir: str | os.PathLike) -> list[str] | None:
    """The class names a saved classifier's ``config.json`` gives (``id2label``), in id order; None
    when it names none (the generic ``LABEL_0``…). String labels of a file evaluated against this
    model are encoded with them, so its predicted ids and the labels mean the same classes."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = class_names(raw.get("id2label") or {}) if isinstance(raw, dict) else None
    return list(names) if names else None


__all__ = ["RunFolder", "model_label_names"]
