"""The meaning checks of a config, after its types are right (kdistill.config's schema).

One :class:`Checker` walks the sections — models (folders, factories, ``from_teacher``,
``finetune``), data (sources, splits and the keys a split would ignore, files and their columns,
tokenizers), matches (losses, arguments, refs, projections, schedules), the layer map and the method —
and collects every problem as a ``path: problem`` sentence; ``kdistill.config`` joins them into one
ConfigError. Nothing here loads weights.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

from kdistill import packaged
from kdistill.config import (
    _EXTENSIONS,
    BUILTIN_DATA,
    DATA_FORMATS,
    IMAGE_DATA,
    LAYER_MAPS,
    PROJECTIONS,
    DataSpec,
    FromTeacherSpec,
    MatchSpec,
    ModelSpec,
    _hint,
    _show,
)
from kdistill.errors import ConfigError, DataError, RefError
from kdistill.factories import FACTORY_RE, strings_in
from kdistill.model_files import folder_contents, missing_tokenizer
from kdistill.ranges import WEIGHT, Range, argument_problems
from kdistill.refs import LAYER_KINDS, parse_ref


LIMIT_SPLITS = ("train", "validation", "test", "unlabelled")
FINETUNE_TASKS = ("sequence-classification", "token-classification", "question-answering")  # teacher.finetune
# Losses that read one distribution per example or per token: wrong on a QA model's (B, 2, T) span logits.
SPAN_REFUSED_LOSSES = ("kl", "soft_ce", "reverse_kl", "jsd", "token_kl", "token_reverse_kl", "token_jsd",
                       "token_skew_kl", "token_tv", "token_topk_kl")


# What the evaluation during training gives, by teacher.task (training.metric picks the best step by one).
TRAINING_METRICS = {
    "sequence-classification": ("accuracy", "macro_f1"),
    "token-classification": ("f1", "precision", "recall", "accuracy"),
    "question-answering": ("exact_match", "f1"),
}


class Checker:
    """Meaning checks after the types are right; every problem goes to ``errors``."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.factories: list[tuple[str, str]] = []  # (config path, "module:function") to import

    def add(self, text: str) -> None:
        self.errors.append(text)

    def resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (self.base_dir / path)

    # ------------------------------------------------------------------ top level, across sections
    def top_level(self, top: Any, source: str | None, import_from_base: bool) -> None:
        """The run's scalar keys: python_path folders (the config's own folder first), the method and
        its arguments, hard_label_weight, and output_dir (default ``runs/<config name>``)."""
        top.python_path = [str(self.resolve(p)) for p in top.python_path]
        for i, folder in enumerate(top.python_path):
            if not Path(folder).is_dir():
                self.add(f"python_path[{i}]: the folder '{folder}' does not exist.")
        if import_from_base and str(self.base_dir) not in top.python_path:
            top.python_path.insert(0, str(self.base_dir))
        if top.method is not None:
            self.method(top.method, top.method_args)
        if top.hard_label_weight is not None:
            self.scalar(top.hard_label_weight, "hard_label_weight", what="a weight", within=WEIGHT)
        if top.output_dir is None:
            stem = Path(source).stem if source else "kdistill"
            top.output_dir = str(Path("runs") / stem)
        top.output_dir = str(Path(os.path.expanduser(top.output_dir)).absolute())

    def _capture(self, capture: Any, causal: bool, top: Any, data: Any) -> None:
        """``capture`` serves causal-LM runs of one tokenizer, instead of (not beside) ``cache``."""
        if not causal:
            self.add("capture: stores top-k next-token log-probabilities of a causal language model; this "
                     "teacher's task is not causal-lm. Remove 'capture' (classification runs: cache: logits).")
        if top is not None and top.cache is not None:
            self.add(f"capture: replaces the teacher in training, so 'cache: {top.cache}' has nothing to do; "
                     "keep one of them (remove 'cache').")
        if data.student_tokenizer is not None:
            self.add("capture: the teacher's top-k token ids name its own vocabulary, but data.student_tokenizer "
                     "gives the student another; remove 'capture' (cross-tokenizer runs read the live teacher).")
        capture.path = str(Path(os.path.expanduser(capture.path)).absolute())

    def across_sections(self, top: Any, parsed: dict, raw: dict) -> None:
        """What one section asks of another: a method or matches, a student, labels for the keys that
        learn from them, a tokenizer for text when the teacher is a factory."""
        raw_matches = raw.get("matches")
        method = top.method if top is not None else raw.get("method")
        labels_only = isinstance(raw.get("hard_label_weight"), (int, float)) and raw["hard_label_weight"] > 0
        if method is None and not raw_matches and not labels_only:
            self.add("matches: give a 'method' (e.g. method: hinton; see `kdistill methods`) or a list of "
                     "'matches' (see `kdistill losses`) — the run has neither. (A run on the labels alone, "
                     "without a teacher signal: matches: [] and hard_label_weight: 1.)")
        if raw.get("student") is None and method is None:
            self.add("student: required when no 'method' builds it: a Hugging Face 'path', a 'factory' or "
                     "'from_teacher' (e.g. from_teacher: {layers: [0, 2, 4]}).")
        data, teacher = parsed.get("data"), parsed.get("teacher")
        if data is not None:
            labelled = data.label is not None or data.builtin is not None
            weight = top.hard_label_weight if top is not None else None
            if not labelled and isinstance(weight, (int, float)) and weight:
                self.add("hard_label_weight: is set, but data.label is null (no labels to learn from).")
            if not labelled and teacher is not None and teacher.finetune is not None:
                self.add("teacher.finetune: needs labelled training data, but data.label is null.")
            if not labelled and top is not None and top.baseline:
                self.add("baseline: trains the student on the labels alone, but data.label is null.")
            if teacher is not None and teacher.task == "token-classification" and top is not None \
                    and top.cache == "logits":
                self.add("cache: 'logits' stores one row of class scores per example; a token-classification run "
                         "has one per token: use cache: teacher or no cache.")
            if teacher is not None and teacher.task == "question-answering":
                self._question_answering(raw, top)
            if teacher is not None:
                self._training_metric(raw, teacher.task)
            causal = teacher is not None and teacher.task == "causal-lm"
            if causal and top is not None and top.cache == "logits":
                self.add("cache: 'logits' stores each example's logits whole (classes, or tokens x vocabulary in "
                         "float32: 196,608 bytes per token at a 49,152-word vocabulary) and does not serve causal "
                         "language models; use cache: teacher (float16, filled during the first epoch) or no cache.")
            capture = parsed.get("capture")
            if capture is not None:
                self._capture(capture, causal, top, data)
            if data.student_tokenizer is not None and causal:
                from kdistill.lm_pairs import cross_tokenizer_problems

                matches = raw_matches if isinstance(raw_matches, list) else []
                for problem in cross_tokenizer_problems(data, matches, method, raw.get("hard_label_weight")):
                    self.add(problem)
            text_data = data.builtin not in IMAGE_DATA
            if (text_data and teacher is not None and teacher.path is None and data.tokenizer is None
                    and (data.builtin or data.train or data.path)):
                self.add("data.tokenizer: the teacher is built by a factory, so name the tokenizer folder for "
                         "the text (data.tokenizer: path/to/folder).")

    def _training_metric(self, raw: dict, task: str) -> None:
        """``training.metric`` names a figure the task's evaluation during training gives (else the best
        step and early stopping would silently never happen); a task measured only at the end has none."""
        training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
        metric, patience = training.get("metric"), training.get("early_stop_patience")
        if task in ("causal-lm", "embedding", "base", "masked-lm"):
            measured = {"causal-lm": "perplexity and agreement on the test split",
                        "embedding": "nearest-neighbour accuracy and agreement on the test split"}.get(task, "nothing")
            article = "an" if task[0] in "aeiou" else "a"
            # (the default metric, 'accuracy', is written into every config.resolved.yaml: not a choice)
            chosen = {"metric": None if metric == "accuracy" else metric, "early_stop_patience": patience}
            for key, value in chosen.items():
                if value:
                    self.add(f"training.{key}: {article} {task} run is not evaluated during training (it "
                             f"measures {measured} at the end), so there is no best step to keep or stop at; "
                             f"remove training.{key}.")
            return
        if metric is None:
            return
        names = TRAINING_METRICS.get(task, TRAINING_METRICS["sequence-classification"])
        if metric not in names:  # (several tasks: kdistill.multitask checks '<task>/<figure>')
            self.add(f"training.metric: '{metric}' is not a figure a {task} run's validation gives, so the best "
                     f"step would never be kept; choose one of {', '.join(names)}.")

    def _question_answering(self, raw: dict, top: Any) -> None:
        """What a question-answering run (kdistill.qa_spans) does not do, refused before any weight loads."""
        if top is not None and top.cache is not None:
            self.add(f"cache: '{top.cache}' stores per-example class scores or per-token features; a "
                     "question-answering run's span logits (start and end over each window) are not cached: "
                     "remove 'cache'.")
        if top is not None and top.method not in (None, "hinton"):
            self.add(f"method: '{top.method}' is not available for question answering yet (its prediction and layer "
                     "losses are not checked against span logits); use method: hinton (span_kl on the start and end "
                     "distributions plus the labels' cross-entropy) or your own matches.")
        if raw.get("teachers"):
            self.add("teachers: several teachers are not supported for question answering (their span "
                     "distributions would be averaged over every token, question and padding included); give one "
                     "'teacher'.")
        for i, match in enumerate(raw.get("matches") or []):
            if not isinstance(match, dict):
                continue
            reads_logits = match.get("teacher", "logits") == "logits" or match.get("student", "logits") == "logits"
            loss = match.get("loss")
            if reads_logits and isinstance(loss, str) and loss in SPAN_REFUSED_LOSSES:
                self.add(f"matches[{i}].loss: '{loss}' compares one distribution per example or per token; a "
                         "question-answering model's logits are start and end distributions over the context: "
                         "use loss: span_kl (or hard_ce for the labels).")

    # ------------------------------------------------------------------ models
    def model(self, spec: ModelSpec, where: str, *, role: str) -> None:
        sources = [key for key in ("path", "factory", "from_teacher") if getattr(spec, key) is not None]
        allowed = ("path", "factory") if role == "teacher" else ("path", "factory", "from_teacher")
        if spec.from_teacher is not None and role == "teacher":
            self.add(f"{where}.from_teacher: only a student can be built from the teacher; give the teacher a "
                     "'path' (a Hugging Face folder) or a 'factory'.")
            sources.remove("from_teacher")
        if not sources:
            self.add(f"{where}: say where the model comes from: one of {', '.join(allowed)}.")
        elif len(sources) > 1:
            self.add(f"{where}: give only one of {', '.join(allowed)}; this has {' and '.join(sources)}.")
        if spec.args and spec.factory is None:
            self.add(f"{where}.args: arguments are passed to a 'factory' only; this model has none.")
        if spec.finetune is not None and (role != "teacher" or spec.path is None
                                          or spec.task not in FINETUNE_TASKS):
            self.add(f"{where}.finetune: fine-tunes a teacher given by 'path' (a pretrained Hugging Face folder) as a "
                     "sequence or token classifier or a question answerer; "
                     + ("a student is trained by the run itself." if role != "teacher" else
                        f"this teacher has {'a factory' if spec.path is None else f'task {spec.task!r}'}."))
        if spec.lora is not None:
            if role != "student":
                self.add(f"{where}.lora: LoRA adapters train a student; the teacher is frozen.")
            else:
                from kdistill.lora import require_peft

                require_peft(f"{where}.lora")
        if spec.num_labels is not None and spec.path is None:
            self.add(f"{where}.num_labels: applies to a Hugging Face 'path' (its classifier size); a factory takes "
                     "its sizes in 'args'.")
        if spec.path is not None:
            spec.path = self.model_folder(spec.path, f"{where}.path")
        if spec.factory is not None:
            self.factory(spec.factory, f"{where}.factory")
        if spec.from_teacher is not None:
            self.from_teacher(spec.from_teacher, f"{where}.from_teacher")

    def model_folder(self, value: str, where: str) -> str:
        name = packaged.builtin_name(value)
        if name is not None:  # a model that ships in a package: its folder there
            problem = packaged.builtin_problem(name, packaged.BUILTIN_MODELS, where)
            if problem:
                self.add(problem)
                return value
            try:
                value = str(packaged.BUILTIN_MODELS[name]())
            except DataError as exc:
                self.add(f"{where}: {exc}")
                return value
        folder = self.resolve(value)
        if not folder.exists():
            self.add(f"{where}: the model folder '{folder}' does not exist (models load offline, from a folder "
                     "holding config.json and the weights; nothing is downloaded).")
            return str(folder)
        if not folder.is_dir():
            self.add(f"{where}: '{folder}' is a file; give the folder that holds config.json and the weights.")
            return str(folder)
        if not os.access(folder, os.R_OK | os.X_OK):
            self.add(f"{where}: the model folder '{folder}' cannot be read (permission denied).")
            return str(folder)
        config = folder / "config.json"
        if not config.is_file():
            self.add(f"{where}: the folder '{folder}' has no config.json, so it is not a Hugging Face model "
                     f"folder (it holds: {folder_contents(folder)}).")
            return str(folder)
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            self.add(f"{where}: cannot read '{config}': {exc}.")
        except json.JSONDecodeError as exc:
            self.add(f"{where}: '{config}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                     "the model folder is damaged.")
        return str(folder)

    def factory(self, value: str, where: str) -> None:
        """Check the form of a ``module:function`` string; well-formed ones are imported at the end."""
        if not FACTORY_RE.match(value):
            self.add(f"{where}: '{value}' is not of the form 'package.module:function' "
                     "(e.g. 'my_models:build_student').")
        else:
            self.factories.append((where, value))

    def from_teacher(self, spec: FromTeacherSpec, where: str) -> None:
        if (spec.layers is None) == (spec.num_layers is None):
            self.add(f"{where}: give either 'layers' (teacher blocks to copy, e.g. [0, 2, 4]) or 'num_layers' "
                     "(a randomly initialised smaller model), not both or neither.")
        if spec.layers is not None:
            if not spec.layers:
                self.add(f"{where}.layers: give at least one teacher layer to keep.")
            for i, layer in enumerate(spec.layers):
                if layer < 0:
                    self.add(f"{where}.layers[{i}]: {layer} is negative; layers count from 0.")
            sizes = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads") if getattr(spec, k) is not None]
            if sizes:
                self.add(f"{where}: {', '.join(sizes)} apply with 'num_layers' only; copied layers keep the teacher's sizes.")

    # ------------------------------------------------------------------ data
    def data(self, spec: DataSpec, where: str = "data", *, lm_kind: str | None = None, tagged: bool = False,
             squad: bool = False) -> None:
        files = [key for key in ("train", "validation", "test") if getattr(spec, key) is not None]
        sources = (["builtin"] if spec.builtin else []) + (["path"] if spec.path else []) + (["train"] if spec.train else [])
        if not sources:
            if files:
                self.add(f"{where}.train: required when validation/test files are given.")
            else:
                self.add(f"{where}: say where the examples come from: 'train' (with optional 'validation' and "
                         f"'test') files, one 'path' cut by 'split', or 'builtin' ({', '.join(BUILTIN_DATA)}).")
        elif len(sources) > 1:
            self.add(f"{where}: give only one of 'builtin', 'path' or 'train'/'validation'/'test' files; "
                     f"this has {' and '.join(sources)}.")
        elif sources != ["train"]:
            self.cut_data(spec, sources[0], where)
        if spec.split_seed is not None and spec.train is not None:
            self.add(f"{where}.split_seed: applies to 'path' or 'builtin' data cut by 'split', not to separate "
                     "train/validation/test files.")
        if spec.split is not None:
            if spec.train is not None:
                self.add(f"{where}.split: applies to 'path' or 'builtin' data, not to separate train/validation/test files.")
            ratios = spec.split
            if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
                self.add(f"{where}.split: {ratios} must be two or three non-negative fractions that sum to 1 "
                         "(train, validation[, test]), e.g. [0.8, 0.1, 0.1].")
        text_columns = self.text_columns(spec.text, f"{where}.text")
        image = spec.builtin in IMAGE_DATA
        if lm_kind is not None:
            self.lm_data(spec, where, lm_kind)
        self.tagged_data(spec, where, tagged)
        self.squad_data(spec, where, squad)
        for key in ("train", "validation", "test", "path") if lm_kind is None and not tagged and not squad else ():
            value = getattr(spec, key)
            if value is None:
                continue
            resolved = self.resolve(value)
            setattr(spec, key, str(resolved))
            columns = self.data_file(resolved, f"{where}.{key}", spec.format)
            if columns is None:
                continue
            for column in text_columns or []:
                if column not in columns:
                    self.add(f"{where}.text: no column '{column}' in '{resolved}'{_hint(column, columns)} "
                             f"Columns: {', '.join(columns)}.")
            if spec.label is not None and spec.label not in columns:
                self.add(f"{where}.label: no column '{spec.label}' in '{resolved}'{_hint(spec.label, columns)} "
                         f"Columns: {', '.join(columns)}. (Set 'label: null' for unlabelled data.)")
        self.limits(spec, where)
        if type(spec.bucket) is int and spec.bucket < 1:
            self.add(f"{where}.bucket: {spec.bucket} batches per length-sorted chunk; give at least 1 (1: random "
                     "batches), true (chunks of 50) or false.")
        if spec.distil_on != "train" and spec.unlabelled is None:
            self.add(f"{where}.distil_on: '{spec.distil_on}' needs data.unlabelled (a file of texts, or "
                     "'builtin:sentiment_extra'); set it, or distil_on: train.")
        unlabelled_name = packaged.builtin_name(spec.unlabelled)
        if unlabelled_name is not None:
            if problem := packaged.builtin_problem(unlabelled_name, packaged.BUILTIN_TEXTS, f"{where}.unlabelled"):
                self.add(problem)
        elif spec.unlabelled is not None:
            resolved = self.resolve(spec.unlabelled)
            spec.unlabelled = str(resolved)
            fmt = None if resolved.suffix.lower() == ".txt" else spec.format
            columns = self.data_file(resolved, f"{where}.unlabelled", fmt)
            if columns is not None and text_columns and text_columns[0] not in columns:
                self.add(f"{where}.unlabelled: no column '{text_columns[0]}' in '{resolved}'"
                         f"{_hint(text_columns[0], columns)} Columns: {', '.join(columns)}. "
                         "(A .txt file holds one text per line.)")
        for key in ("tokenizer", "student_tokenizer"):
            value = getattr(spec, key)
            if value is not None:
                folder = self.resolve(value)
                setattr(spec, key, str(folder))
                if not folder.is_dir():
                    self.add(f"{where}.{key}: the tokenizer folder '{folder}' does not exist.")
                elif missing := missing_tokenizer(folder, f"{where}.{key}"):
                    self.add(missing)
        if image and (spec.tokenizer or spec.student_tokenizer or spec.unlabelled):
            self.add(f"{where}: '{spec.builtin}' holds images; 'tokenizer', 'student_tokenizer' and 'unlabelled' "
                     "apply to text data only.")

    def tagged_data(self, spec: DataSpec, where: str, tagged: bool) -> None:
        """Word-level BIO tags (``teacher.task: token-classification``): CoNLL files or a tagged builtin
        set, and nothing that applies to sentence data. The files themselves are read by
        :func:`kdistill.conll.read_tag_tables` once the config is whole (each bad line named)."""
        from kdistill.config import TAGGED_DATA

        if not tagged:
            if spec.kind == "conll":
                self.add(f"{where}.kind: 'conll' data tags words; it needs teacher.task: token-classification.")
            if spec.builtin in TAGGED_DATA:
                self.add(f"{where}.builtin: '{spec.builtin}' holds word-level tags; it needs teacher.task: "
                         "token-classification.")
            return
        if spec.kind not in (None, "conll"):
            self.add(f"{where}.kind: a token-classification teacher reads word-level tags: kind 'conll' (the "
                     f"default), not '{spec.kind}'.")
        if spec.builtin is not None and spec.builtin not in TAGGED_DATA:
            self.add(f"{where}.builtin: '{spec.builtin}' has no word-level tags; a token-classification run takes "
                     f"one of {', '.join(TAGGED_DATA)} or CoNLL files (train/validation/test or path).")
        defaults = DataSpec.model_fields
        for key in ("text", "label", "format", "student_tokenizer", "unlabelled"):
            if spec.builtin is None and getattr(spec, key) != defaults[key].default:
                self.add(f"{where}.{key}: does not apply to CoNLL data (a word and its tag a line, read by position; "
                         "one tokenizer, labelled sentences only); remove it.")
        self.data_files(spec, where, "a two-column (CoNLL) file")

    def squad_data(self, spec: DataSpec, where: str, squad: bool) -> None:
        """SQuAD-shaped records (``teacher.task: question-answering``): JSONL or JSON files, nothing that applies
        to sentence data. The records themselves are read by :func:`kdistill.squad.read_qa_tables` once the
        config is whole (each bad record named by file and line)."""
        defaults = DataSpec.model_fields
        if not squad:
            if spec.kind == "squad":
                self.add(f"{where}.kind: 'squad' data holds questions on contexts; it needs teacher.task: "
                         "question-answering.")
            for key in ("stride", "max_answer_length"):
                if getattr(spec, key) != defaults[key].default:
                    self.add(f"{where}.{key}: applies to question answering (teacher.task: question-answering) only; "
                             "remove it.")
            return
        if spec.kind not in (None, "squad"):
            self.add(f"{where}.kind: a question-answering teacher reads SQuAD-shaped records: kind 'squad' (the "
                     f"default), not '{spec.kind}'.")
        if spec.builtin is not None:
            self.add(f"{where}.builtin: no extractive question-answering set ships in a package; give SQuAD-shaped "
                     "JSONL or JSON files (train/validation/test or path).")
        for key in ("text", "label", "format", "student_tokenizer", "unlabelled"):
            if getattr(spec, key) != defaults[key].default:
                self.add(f"{where}.{key}: does not apply to question-answering data (records with id, question, "
                         "context and answers; one tokenizer, answered questions only); remove it.")
        if spec.stride >= spec.max_length:
            self.add(f"{where}.stride: {spec.stride} context tokens shared by consecutive windows must be fewer than "
                     f"data.max_length ({spec.max_length}); e.g. stride: {spec.max_length // 4}.")
        for key, resolved in self.data_files(spec, where, "a JSONL or JSON file of QA records"):
            if resolved.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
                self.add(f"{where}.{key}: '{resolved}' is not a .jsonl or .json file; question-answering data "
                         "is SQuAD-shaped JSON records.")

    def data_files(self, spec: DataSpec, where: str, wanted: str) -> list[tuple[str, Path]]:
        """Resolve ``spec``'s file keys (train/validation/test/path) in place; a missing file or a folder is a
        problem naming the key. Returns the keys whose file exists, with their paths."""
        files = []
        for key in ("train", "validation", "test", "path"):
            value = getattr(spec, key)
            if value is None:
                continue
            resolved = self.resolve(value)
            setattr(spec, key, str(resolved))
            if resolved.is_file():
                files.append((key, resolved))
            else:
                self.add(f"{where}.{key}: the data file '{resolved}' does not exist." if not resolved.exists() else
                         f"{where}.{key}: '{resolved}' is a folder; give {wanted}.")
        return files

    def lm_data(self, spec: DataSpec, where: str, kind: str) -> None:
        """A causal-LM run's files: read whole and checked without a tokenizer (:func:`kdistill.lm_data.read_lm_records`)."""
        from kdistill.hf_datasets import is_dataset_dict_folder
        from kdistill.lm_data import lm_records

        if spec.kind == "classification":
            self.add(f"{where}.kind: 'classification' data cannot teach a causal-lm teacher; choose one of text, "
                     "prompt_completion, chat.")
        if spec.builtin is not None and kind != "text":
            self.add(f"{where}.builtin: '{spec.builtin}' holds texts; it serves kind 'text', not '{kind}'.")
        for key in ("train", "validation", "test", "path"):
            value = getattr(spec, key)
            if value is None:
                continue
            resolved = self.resolve(value)
            setattr(spec, key, str(resolved))
            if not resolved.exists():
                self.add(f"{where}.{key}: the data file '{resolved}' does not exist.")
                continue
            if is_dataset_dict_folder(resolved) and key != "path":
                self.add(f"{where}.{key}: '{resolved}' is a saved DatasetDict (several splits); give it as "
                         "data.path, or one split's sub-folder here.")
                continue
            try:
                lm_records(resolved, kind, spec)
            except (ConfigError, DataError) as exc:  # a record's problem, placed at the key that reads the file
                self.add(str(exc) if str(exc).startswith(f"{where}.") else f"{where}.{key}: {exc}")

    def chat_template(self, folder: str | None) -> None:
        """Chat data needs a tokenizer with a chat template: its folder says so (no weights, no tokenizer load)."""
        if folder is None or not Path(folder).is_dir():
            return
        folder_path = Path(folder)
        if (folder_path / "chat_template.jinja").is_file() or (folder_path / "chat_template.json").is_file():
            return
        try:
            settings = json.loads((folder_path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no readable settings: the tokenizer itself will say
        if not settings.get("chat_template"):
            self.add(f"data.kind: 'chat' renders each conversation with the tokenizer's chat template, but the "
                     f"tokenizer in '{folder}' has none (no chat_template in tokenizer_config.json, no "
                     "chat_template.jinja). Give a tokenizer with a template (data.tokenizer), or use kind "
                     "prompt_completion.")

    def limits(self, spec: DataSpec, where: str) -> None:
        """``data.limit``: a positive number, or a mapping of split names to positive numbers."""
        limit = spec.limit
        items = limit.items() if isinstance(limit, dict) else [] if limit is None else [(None, limit)]
        for split, value in items:
            path = f"{where}.limit" + (f".{split}" if split is not None else "")
            if split is not None and split not in LIMIT_SPLITS:
                self.add(f"{path}: '{split}' is not a split; choose from {', '.join(LIMIT_SPLITS)}.")
            elif value < 1:
                self.add(f"{path}: must be at least 1 (the first N records are kept), got {value}.")

    def cut_data(self, spec: DataSpec, source: str, where: str) -> None:
        """Data cut by ``split`` (a ``path`` or a ``builtin`` set): every key it would ignore is an error.
        A ``path`` that is a saved DatasetDict keeps its own splits: nothing cuts it."""
        from kdistill.hf_datasets import is_dataset_dict_folder

        if source == "path" and is_dataset_dict_folder(self.resolve(spec.path)):
            for key in ("split", "split_seed", "validation", "test"):
                if getattr(spec, key) is not None:
                    self.add(f"{where}.{key}: '{spec.path}' is a saved DatasetDict, whose own train/validation/test "
                             f"splits are used as they are; remove {key}.")
            return
        if spec.validation is not None:
            self.add(f"{where}.validation: '{source}' data is cut into train/validation by 'split', so a validation "
                     "file would be ignored; remove it, or give 'train', 'validation' and 'test' files instead.")
        if spec.test is not None:
            if source == "builtin":
                self.add(f"{where}.test: a 'builtin' set is cut into train/validation/test by 'split'; a test file "
                         "would be ignored. Give your own 'train'/'validation'/'test' files instead.")
            elif spec.split is not None and len(spec.split) == 3:
                self.add(f"{where}.split: {spec.split} cuts a test split too, but data.test names a test file; give "
                         "two fractions [train, validation] (e.g. [0.9, 0.1]), or drop data.test.")
        if source == "builtin":
            defaults = DataSpec.model_fields
            for key in ("text", "label", "format"):
                if getattr(spec, key) != defaults[key].default:
                    self.add(f"{where}.{key}: the builtin set '{spec.builtin}' has its own columns and format, so "
                             f"'{key}' would be ignored; remove it.")

    def text_columns(self, value: Any, where: str) -> list[str] | None:
        columns = [value] if isinstance(value, str) else value
        if (not isinstance(columns, list) or not 1 <= len(columns) <= 2
                or not all(isinstance(c, str) and c for c in columns)):
            self.add(f"{where}: give one text column name or a list of two (a pair such as "
                     f"[question, sentence]), got {_show(value)}.")
            return None
        return columns

    def data_file(self, path: Path, where: str, format: str | None) -> list[str] | None:
        """The column names of a data file, read from its header (None when it cannot tell)."""
        if not path.exists():
            self.add(f"{where}: the data file '{path}' does not exist.")
            return None
        fmt = format or ("hf" if path.is_dir() else _EXTENSIONS.get(path.suffix.lower()))
        if fmt == "hf":
            from kdistill.hf_datasets import folder_columns, is_dataset_dict_folder

            if not path.is_dir():
                self.add(f"{where}: format 'hf' needs a dataset folder saved with save_to_disk; '{path}' is a file.")
            elif is_dataset_dict_folder(path) and not where.endswith(".path"):
                self.add(f"{where}: '{path}' is a saved DatasetDict (several splits); give it as data.path, or one "
                         "split's sub-folder here.")
            return folder_columns(path) if path.is_dir() else None
        if path.is_dir():
            self.add(f"{where}: '{path}' is a folder; give a data file (or format: hf for a saved dataset).")
            return None
        if fmt is None:
            self.add(f"{where}: cannot tell the format of '{path}' from its extension; set data.format to one "
                     f"of {', '.join(DATA_FORMATS)}.")
            return None
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                head = _first_lines(handle, 2)
        except UnicodeDecodeError:
            self.add(f"{where}: '{path}' is not UTF-8 text; save it as UTF-8.")
            return None
        except OSError as exc:
            self.add(f"{where}: cannot read '{path}': {exc.strerror or exc}.")
            return None
        if not head:
            self.add(f"{where}: the data file '{path}' is empty.")
            return None
        if fmt == "txt":
            return None
        if fmt in ("csv", "tsv"):
            rows = list(csv.reader(head, delimiter="," if fmt == "csv" else "\t"))
            if len(rows) < 2:
                self.add(f"{where}: the data file '{path}' has a header but no records.")
                return None
            return rows[0]
        first = head[0].strip()
        if fmt == "json" and first.startswith("["):
            try:
                records = json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as exc:
                self.add(f"{where}: '{path}' is not valid JSON (line {exc.lineno}: {exc.msg}).")
                return None
            if not records:
                self.add(f"{where}: the data file '{path}' holds an empty list.")
                return None
            record = records[0]
        else:
            try:
                record = json.loads(first)
            except json.JSONDecodeError as exc:
                self.add(f"{where}: the first line of '{path}' is not valid JSON ({exc.msg}).")
                return None
        if not isinstance(record, dict):
            self.add(f"{where}: the first record of '{path}' is a JSON {type(record).__name__}, not an object.")
            return None
        return list(record)

    # ------------------------------------------------------------------ matches, methods, schedules
    def scalar(self, value: Any, where: str, *, what: str = "a number", within: Range | None = None) -> Any:
        """A number, or a schedule mapping validated by kdistill.schedules; in ``within`` when given.

        Returns the number or the schedule object, or None after reporting a problem.
        """
        from kdistill.schedules import schedule_from_dict

        if isinstance(value, dict):
            if "schedule" not in value:
                self.add(f"{where}: a mapping here must be a schedule, e.g. {{schedule: linear, start_value: 0.0, "
                         f"end_value: 1.0}}; it has no 'schedule' key.")
                return None
            kind = value["schedule"]
            if not isinstance(kind, str):  # a list or mapping here is not a name (nor hashable)
                self.add(f"{where}.schedule: expected a schedule name such as 'linear', got {_show(kind)}.")
                return None
            try:
                schedule = schedule_from_dict(value, path=where)
                for step in (0, 5, 10):  # the numbers inside must be numbers: try it over a 10-step run
                    if not math.isfinite(schedule(step, 10)):
                        raise ValueError(f"it is {schedule(step, 10)} at step {step}")
            except ConfigError as exc:
                self.add(str(exc).rstrip())
                return None
            except (TypeError, ValueError, ArithmeticError) as exc:
                self.add(f"{where}: the schedule {_show(value)} does not give a number ({exc}); its values and "
                         "steps must be numbers.")
                return None
            value = schedule
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(f"{where}: expected {what} or a schedule, got {_show(value)}.")
            return None
        problem = within.problem(value, where) if within is not None else None
        if problem:
            self.add(problem)
            return None
        return value

    def arguments(self, function: Any, args: dict, where: str) -> None:
        """``args`` against the ranges ``function`` declares; schedule mappings are checked as schedules."""
        values = {}
        for key, value in args.items():
            if isinstance(value, dict) and "schedule" in value:
                value = self.scalar(value, f"{where}.{key}")
                if value is None:
                    continue
            values[key] = value
        self.errors += argument_problems(function, values, where)

    def loss_args(self, loss: str, args: dict, where: str) -> None:
        from kdistill.losses import LOSSES

        if loss not in LOSSES:
            return
        from kdistill.losses import SUPPLIED_INPUTS, argument_problems

        loss_fn = LOSSES.get(loss)
        self.errors += argument_problems(loss_fn, loss, args, where)
        params = inspect.signature(loss_fn).parameters
        self.arguments(loss_fn, {k: v for k, v in args.items() if k in params and k not in SUPPLIED_INPUTS}, where)

    def match(self, spec: MatchSpec, where: str, layer_map_used: list[bool]) -> None:
        from kdistill.losses import LOSSES

        if spec.loss not in LOSSES and ":" not in spec.loss:
            names = LOSSES.names()
            self.add(f"{where}.loss: unknown loss '{spec.loss}'{_hint(spec.loss, names)} Available: {', '.join(names)}.")
        elif ":" in spec.loss:
            self.factory(spec.loss, f"{where}.loss")
        else:
            self.loss_args(spec.loss, spec.args, f"{where}.args")
        teacher_star = self.ref(spec.teacher, f"{where}.teacher")
        student_star = self.ref(spec.student, f"{where}.student") if spec.student is not None else teacher_star
        if teacher_star != student_star:
            self.add(f"{where}: '.*' refs expand over the layer map, so teacher and student must both use one "
                     f"of the same kind (e.g. teacher: hidden.*, student: hidden.*); got '{spec.teacher}' and '{spec.student}'.")
        elif teacher_star:
            layer_map_used.append(True)
        self.scalar(spec.weight, f"{where}.weight", what="a weight", within=WEIGHT)
        for key in ("start", "stop"):
            value = getattr(spec, key)
            if value is None and key == "stop":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                self.add(f"{where}.{key}: expected a step (a whole number) or a fraction of the run (0.0–1.0), "
                         f"got {_show(value)}.")
        if spec.projection is not None and ":" in spec.projection:
            self.factory(spec.projection, f"{where}.projection")
        elif spec.projection is not None and spec.projection not in PROJECTIONS:
            self.add(f"{where}.projection: unknown projection '{spec.projection}'{_hint(spec.projection, PROJECTIONS)} "
                     f"Available: {', '.join(PROJECTIONS)}, or 'package.module:function' building a module "
                     "from (in_width, out_width).")
        # teacher_name: against the run's teachers (kdistill.teachers.teachers_problems).

    def ref(self, text: str, where: str) -> str | None:
        """Check a ref; return its kind when it is a layer wildcard (``hidden.*``)."""
        if isinstance(text, str) and text.endswith(".*"):
            kind = text[:-2]
            if kind not in LAYER_KINDS:
                self.add(f"{where}: '{text}': only layer refs expand over the layer map: "
                         f"{', '.join(k + '.*' for k in LAYER_KINDS)}{_hint(kind, LAYER_KINDS)}")
                return None
            return kind
        try:
            parse_ref(text, where=where)
        except RefError as exc:
            self.add(str(exc))
        return None

    def layer_map(self, value: Any, where: str = "layer_map") -> None:
        if isinstance(value, str):
            if value not in LAYER_MAPS:
                self.add(f"{where}: unknown layer map '{value}'{_hint(value, LAYER_MAPS)} Available: "
                         f"{', '.join(LAYER_MAPS)}, or a list of [teacher_hidden, student_hidden] pairs.")
            return
        if not isinstance(value, list) or not value:
            self.add(f"{where}: expected one of {', '.join(LAYER_MAPS)} or a list of [teacher_hidden, "
                     f"student_hidden] pairs, got {_show(value)}.")
            return
        for i, pair in enumerate(value):
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pair)):
                self.add(f"{where}[{i}]: expected [teacher_hidden, student_hidden] (two layer numbers, 0 = "
                         f"embeddings), got {_show(pair)}.")

    def method(self, name: str, args: dict) -> None:
        from kdistill.methods import METHODS

        for where, text in strings_in(args, "method_args"):  # e.g. a loss given as 'my_losses:fn'
            self.factory(text, where)
        if name not in METHODS:
            if ":" in name:
                self.factory(name, "method")
            else:
                names = METHODS.names()
                self.add(f"method: unknown method '{name}'{_hint(name, names)} Available: {', '.join(names)}.")
            return
        try:
            params = inspect.signature(METHODS.get(name)).parameters
        except (TypeError, ValueError):
            return
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        valid = [p for p in params if p not in ("teacher", "student") and params[p].kind != params[p].VAR_KEYWORD]
        for key in args:
            if key in ("teacher", "student"):
                self.add(f"method_args.{key}: the models come from the config's 'teacher' and 'student'.")
            elif key not in params and not takes_any:
                self.add(f"method_args.{key}: method '{name}' takes no argument '{key}'{_hint(key, valid)} "
                         f"It takes: {', '.join(valid) or 'none'}.")
        known = {k: v for k, v in args.items() if k in params and k not in ("teacher", "student")}
        self.arguments(METHODS.get(name), known, "method_args")


def _first_lines(handle, count: int) -> list[str]:
    lines = []
    for line in handle:
        if line.strip():
            lines.append(line)
            if len(lines) == count:
                break
    return lines


__all__ = ["Checker"]
