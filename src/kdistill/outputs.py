"""The run folder: what kdistill writes there, when a run may write, and what --overwrite removes.

A run folder (``output_dir``)::

    config.resolved.yaml        the config after defaults, overrides and path resolution
    metrics.jsonl               one JSON object per logged step / evaluation
    checkpoints/step-*/         resumable checkpoints
    best/student.safetensors    the student at its best evaluation
    tensorboard/events.*        TensorBoard scalars
    stage_done.json             a finished stage: its record (steps, metrics)
    student_after.safetensors   the student after that stage
    stages/<n>-<name>/          multi-stage runs: each stage's checkpoints, metrics, stage_done.json …
    student/                    the student (Hugging Face folder, else student.safetensors)
    summary.json                teacher and student metrics, sizes
    teacher-cache/              ``cache: teacher``: teacher features keyed by content (kept by --overwrite)

Ownership: kdistill removes or replaces only what it wrote. Outside ``student/`` its files have
fixed names (``OWNED``). Inside ``student/`` they depend on the model (``save_pretrained`` and
the tokenizer choose them), so ``save_student`` lists them in ``student/.kdistill-files.json``;
a re-save replaces the listed files and carries over every other file (a model card, notes).
In a ``student/`` without that list (written before it existed, or made by the user) kdistill's
files are its model and tokenizer files (``MODEL_FILE_PATTERNS``); every other file is the user's.

Order of an --overwrite: the early checks (``check_output_dir``) change nothing; the old results
are removed only when the new run is about to train (``start_run_folder``), finished-stage
markers first and ``config.resolved.yaml`` last, so an overwrite killed half-way never leaves a
folder that reports the old run's student as done.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from torch import nn

from kdistill.config import RunConfig, dump_yaml, parse_yaml
from kdistill.errors import ConfigError
from kdistill.files import atomic_folder, atomic_write_text

RESOLVED_NAME = "config.resolved.yaml"
STAGE_DONE = "stage_done.json"
STAGE_STUDENT = "student_after.safetensors"
RUN_LOG = "run.log"  # kdistill.progress: the run's stage lines and estimates (appended, kept by --overwrite)
STUDENT_FILES = ".kdistill-files.json"  # in student/: the files kdistill wrote there
RESULT_NAMES = ("checkpoints", "student", "summary.json", "metrics.jsonl", "stages", "best", "tensorboard",
                STAGE_DONE, STAGE_STUDENT)

ALL = "all"  # the whole file or folder is kdistill's
LISTED = "listed"  # a student folder: the files its STUDENT_FILES lists


def _with_temporaries(owned: dict[str, Any]) -> dict[str, Any]:
    """``owned`` plus the temporary names of its files (``.NAME.tmp<pid>``, left by a killed atomic write)."""
    extra = {f".{name}.tmp*": ALL for name, what in owned.items() if what == ALL and "*" not in name}
    return {**owned, **extra}


# What kdistill writes in a stage folder (the run folder itself for single-stage runs); a dict
# value: the names inside that folder. Finished-stage markers come first: they go first.
STAGE_OWNED = _with_temporaries({
    STAGE_DONE: ALL, STAGE_STUDENT: ALL, "metrics.jsonl": ALL,
    "checkpoints": {"step-*": ALL, ".tmp-step-*": ALL},
    "best": _with_temporaries({"student.safetensors": ALL}),
    "tensorboard": {"events.out.tfevents.*": ALL},
})
OWNED = _with_temporaries({
    STAGE_DONE: ALL, "stages": {"*": STAGE_OWNED}, "summary.json": ALL, "student": LISTED,
    "report.md": ALL, "loss.png": ALL, "accuracy.png": ALL, "baseline": ALL, "teacher": ALL,
    **STAGE_OWNED, ".student.tmp-*": ALL, ".student.old-*": LISTED, ".kdistill-write-test-*": ALL,
    RESOLVED_NAME: ALL,
})


def remove_results(out: Path) -> None:
    """Remove what kdistill wrote in the run folder ``out`` (OWNED) and nothing else.

    Kept: a user's own files (anywhere), ``teacher-cache/`` (keyed by content, valid for any run),
    and ``config.resolved.yaml`` (replaced afterwards by the new run's, so the folder always says
    which run it held).
    """
    _remove_owned(out, {name: what for name, what in OWNED.items() if name != RESOLVED_NAME})


def _remove_owned(folder: Path, owned: dict[str, Any]) -> None:
    for pattern, what in owned.items():
        for path in sorted(p for p in folder.iterdir() if fnmatch.fnmatchcase(p.name, pattern)):
            if what == ALL:
                _remove(path)
            elif what == LISTED:
                _remove_listed(path)
            elif path.is_dir() and not path.is_symlink():
                _remove_owned(path, what)
                _remove_if_empty(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: it holds a user's file
        pass


# What a student folder written before the list existed holds of kdistill's: the model and
# tokenizer files save_pretrained / save_weights write. Anything else there (a README, notes) is a user's.
MODEL_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "config.json", "generation_config.json",
                       "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                       "*.model", "chat_template.jinja")


def _listed_files(folder: Path) -> list[str]:
    """The files kdistill wrote in a student folder: from its list, or (a folder written before the
    list existed) its top-level model and tokenizer files."""
    try:
        return list(json.loads((folder / STUDENT_FILES).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return [p.name for p in folder.iterdir() if p.is_file()
                and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in MODEL_FILE_PATTERNS)]


def _remove_listed(folder: Path) -> None:
    if not folder.is_dir():  # a file where student/ belongs: kdistill's
        _remove(folder)
        return
    listed = _listed_files(folder)
    for name in [*listed, STUDENT_FILES]:
        (folder / name).unlink(missing_ok=True)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _remove_if_empty(sub)
    _remove_if_empty(folder)
    if folder.is_dir():  # a user's files are left: an empty list says none of them is kdistill's
        atomic_write_text(folder / STUDENT_FILES, "[]")


def has_results(out: Path) -> bool:
    """Whether a run folder holds anything a new run would lose (an empty metrics log and a student
    folder holding only a user's files do not count)."""
    for name in RESULT_NAMES:
        path = out / name
        if name == "tensorboard" or not path.exists():
            continue
        listed = _listed_files(path) if name == "student" and path.is_dir() else None
        if listed is not None and not any((path / file).exists() for file in listed):
            continue
        if path.is_dir() and not any(path.iterdir()):
            continue
        if path.is_file() and path.stat().st_size == 0:
            continue
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Before and at the start of a run


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}.{i}"))
        return out
    return {prefix: data}


def config_differences(old: Any, new: Any, limit: int = 5) -> list[str]:
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(set(flat_old) | set(flat_new))
    changed = [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys if flat_old.get(k) != flat_new.get(k)]
    return changed[:limit] + ([f"… {len(changed) - limit} more"] if len(changed) > limit else [])


def check_output_dir(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> tuple[Path, bool]:
    """Check the output folder before any weight loads; change nothing in it.

    Returns the folder and whether the run continues from what is there. The folder is created
    (and a probe file written and removed) to prove it is writable.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the run in the output "
                          "folder, overwrite replaces it.")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: '{out}' is a file; give a folder for the run's outputs.")
    continuing = resume
    if out.is_dir():
        saved = out / RESOLVED_NAME
        results = has_results(out)
        if saved.is_file():
            resolved = config.resolved()
            try:
                old = parse_yaml(saved.read_text(encoding="utf-8"), source=str(saved))
            except (ConfigError, OSError):
                old = None
            if old != resolved and results and not (resume or overwrite):
                changes = "; ".join(config_differences(old, resolved)) if isinstance(old, dict) else "unreadable"
                raise ConfigError(
                    f"output_dir: '{out}' holds a run with a different config ({changes}). Pass --resume to "
                    "continue that run with this config, --overwrite to replace its results, or choose another "
                    "output_dir."
                )
            if old == resolved and results and not overwrite:
                continuing = True
        elif any(out.iterdir()) and not overwrite:
            raise ConfigError(f"output_dir: '{out}' is not empty and holds no kdistill run (no {RESOLVED_NAME}); "
                              "choose a new or empty folder, or pass --overwrite to write into it.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".kdistill-write-test-{os.getpid()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to '{out}' ({exc.strerror or exc}); choose a folder you can "
                          "write to (output_dir=… on the command line).") from None
    return out, continuing and not overwrite


def start_run_folder(config: RunConfig, *, overwrite: bool = False, reopened: tuple[Path, ...] = ()) -> Path:
    """Right before training: with ``overwrite`` remove the old run's results (``remove_results``);
    ``reopened``: stage folders whose finished stage trains on (their done markers go); then write
    ``config.resolved.yaml``."""
    out = Path(config.output_dir)
    if overwrite:
        remove_results(out)
    for directory in reopened:
        for name in (STAGE_DONE, STAGE_STUDENT):
            (directory / name).unlink(missing_ok=True)
    atomic_write_text(out / RESOLVED_NAME, dump_yaml(config.resolved()))
    return out


def prepare_output_dir(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> tuple[Path, bool]:
    """``check_output_dir`` and ``start_run_folder`` at once (``run`` calls them apart, with the
    models built and checked in between)."""
    out, continuing = check_output_dir(config, resume=resume, overwrite=overwrite)
    start_run_folder(config, overwrite=overwrite)
    return out, continuing


# ---------------------------------------------------------------------------------------------
# The student


def save_student(parts: Any, model: nn.Module, out: Path) -> Path:
    """Write ``out/student`` atomically: HF save_pretrained + tokenizer, else student.safetensors.

    ``parts``: the run's RunParts (label names, tokenizers). The files written are listed in
    ``student/.kdistill-files.json``; files of the old ``student/`` that kdistill did not write
    (a README, notes) are carried over into the new one.
    """
    return save_students({"": (parts, model)}, out)


def save_students(students: Mapping[str, tuple[Any, nn.Module]], out: Path) -> Path:
    """Write ``out/student`` atomically with one model per entry of ``students`` (folder name ->
    (RunParts, model)) in ``student/<name>/`` (``""``: ``student/`` itself, :func:`save_student`); one
    ``student/.kdistill-files.json`` lists every file written (several tasks: :mod:`kdistill.multitask`)."""
    final = out / "student"
    with atomic_folder(final) as tmp:
        for name, (parts, model) in students.items():
            _write_student(parts, model, tmp / name if name else tmp)
        written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        atomic_write_text(tmp / STUDENT_FILES, json.dumps(written, indent=1))
        _carry_over_user_files(final, tmp, skip=set(written))
    return final


def _write_student(parts: Any, model: nn.Module, folder: Path) -> None:
    """One student into ``folder``: HF save_pretrained + tokenizer, else student.safetensors."""
    from kdistill.adapters.hf import is_hf_model
    from kdistill.train import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    if is_hf_model(model):
        names = parts.data.label_names
        if names and getattr(model.config, "num_labels", None) == len(names):
            model.config.id2label = dict(enumerate(names))
            model.config.label2id = {name: i for i, name in enumerate(names)}
        from kdistill.models import save_pretrained

        save_pretrained(model, folder)
        tokenizer = parts.student_tokenizer or parts.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        _sentence_transformers_files(parts, model, folder)
    else:
        save_weights(model, folder / "student.safetensors")


def _sentence_transformers_files(parts: Any, model: nn.Module, folder: Path) -> None:
    """An embedding student's folder also loads in sentence-transformers, pooled as the run pooled it (and
    normalised when the teacher's folder normalises); the projection used in training is not part of it."""
    from kdistill.embedding import folder_normalises, pooling_of, write_sentence_transformers_files

    mode = pooling_of(model)
    if mode is not None:
        width = getattr(model.config, "hidden_size", None) or 0
        write_sentence_transformers_files(folder, mode, width, normalise=folder_normalises(parts.config.teacher.path))


def student_file_owner(folder: Path, name: str) -> str | None:
    """Whose ``name`` in a student folder is: "kdistill" (listed as written by it), "user", or None (absent)."""
    if not (folder / name).exists():
        return None
    return "kdistill" if name in _listed_files(folder) else "user"


def claim_student_file(folder: Path, name: str) -> None:
    """Add ``name`` (just written by kdistill into the student folder) to the folder's list of kdistill's
    files, so a re-save or an --overwrite replaces it like the model files."""
    listed = _listed_files(folder)
    if name not in listed:
        atomic_write_text(folder / STUDENT_FILES, json.dumps(sorted([*listed, name]), indent=1))


def _carry_over_user_files(old: Path, new: Path, *, skip: set[str]) -> None:
    """Copy the files of ``old`` kdistill did not write into ``new`` (copies: ``old`` keeps them
    until ``new`` is in place)."""
    if not old.is_dir():
        return
    ours = {*_listed_files(old), *skip, STUDENT_FILES}
    for path in sorted(old.rglob("*")):
        name = path.relative_to(old).as_posix()
        if path.is_file() and name not in ours:
            (new / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, new / name)
