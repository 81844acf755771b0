"""Config files written for TextBrewer or KnowledgeDistillation, read as kdistill's native config.

``detect_and_convert(raw)`` is what the config loader calls on a parsed YAML/JSON file: it returns
``(native_dict, note)`` when the file holds one of the two libraries' shapes, else ``None``.
``note`` says what was converted and shows the equivalent native YAML, to paste in its place.

Recognised shapes:

- TextBrewer: ``intermediate_matches: [...]`` (with any other ``DistillationConfig`` field) at the
  top level, or ``distill_config: {intermediate_matches: [...], temperature: ...}``; optionally
  ``train_config: {gradient_accumulation_steps, fp16, output_dir, ...}``.
- KnowledgeDistillation: ``distill_config: [{teacher_layer_name, teacher_layer_output_name,
  student_layer_name, student_layer_output_name, loss: {loss_function, args}, weight}, ...]``.

Other top-level keys (``teacher``, ``student``, ``data``, ``training``, ``output_dir`` …) pass through
unchanged. Refs assume the standard adaptors: TextBrewer's ``layer_T: 4`` on ``hidden`` is the
model's ``hidden_states[4]`` (``hidden.4``), on ``attention`` block 4's attention (``attn.4``);
KnowledgeDistillation's layer names follow the seed article's output adaptor
(``embedding_layer``/``bert_layer<N>``/``pred_layer``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import yaml

from kdistill.compat.knowledge_distillation import _check_entry, translate_loss
from kdistill.compat.textbrewer import (
    DistillationConfig,
    IntermediateMatch,
    TrainingConfig,
    kd_match,
    translate_match,
    weight_schedule,
)
from kdistill.errors import ConfigError
from kdistill.matches import Match
from kdistill.schedules import SCHEDULES, schedule_to_dict

NATIVE_MATCH_KEYS = ("teacher", "student", "loss", "weight", "args", "projection")
DISTILLATION_FIELDS = tuple(f.name for f in fields(DistillationConfig))
TRAINING_FIELDS = tuple(f.name for f in fields(TrainingConfig))
_KD_FIELDS = ("temperature", "temperature_scheduler", "kd_loss_type", "kd_loss_weight",
              "kd_loss_weight_scheduler", "probability_shift")
SCHEDULE_TYPES = tuple(SCHEDULES.values())
_BERT_LAYER = re.compile(r"^bert_layer(\d+)$")


def match_to_dict(match: Match) -> dict[str, Any]:
    """A Match as a native config entry {teacher, student, loss, weight, args, projection}."""
    if not isinstance(match.loss, str):
        raise ConfigError(f"match '{match.name}': its loss is a Python function and has no config form.")
    projection = match.projection
    if projection is None:
        projection = "none"
    elif not isinstance(projection, str):
        raise ConfigError(f"match '{match.name}': its projection is a Python object and has no config form.")
    return {
        "teacher": match.teacher,
        "student": match.student,
        "loss": match.loss,
        "weight": schedule_to_dict(match.weight),
        "args": {key: schedule_to_dict(value) if isinstance(value, SCHEDULE_TYPES) else value
                 for key, value in match.args.items()},
        "projection": projection,
    }


def _native_yaml(native: Mapping) -> str:
    return yaml.safe_dump(dict(native), sort_keys=False, default_flow_style=None, allow_unicode=True).rstrip()


# ---------------------------------------------------------------------------------------------
# TextBrewer


def from_textbrewer_dict(data: Mapping) -> tuple[list[dict], str]:
    """A TextBrewer ``DistillationConfig`` as a dict -> (native matches, note with the native YAML).

    The logits KD term becomes a ``logits`` match when the dict sets a KD option (temperature,
    kd_loss_type, …) or has no intermediate_matches — TextBrewer only ran it when both adaptors
    returned logits, which a config file cannot tell. ``hard_label_weight`` becomes a ``hard_ce``
    match on the labels (TextBrewer weighted the adaptor's ``losses``, usually that same CE).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"TextBrewer config: expected a mapping of DistillationConfig fields, got "
                          f"{type(data).__name__}.")
    config = DistillationConfig.from_dict(data)
    matches: list[dict] = []
    remarks: list[str] = []
    wants_kd = any(key in data for key in _KD_FIELDS) or not config.intermediate_matches
    if wants_kd and config.kd_loss_weight_scheduler in ("none", None) and not config.kd_loss_weight:
        wants_kd = False
    if wants_kd:
        matches.append(match_to_dict(kd_match(config)))
        if config.kd_loss_type == "ce":
            remarks.append(f"kd_loss_type 'ce' -> soft_ce with t2_scale: false (TextBrewer's kd_ce_loss has no T²; "
                           f"kdistill's soft_ce multiplies by T² = {config.temperature ** 2:g} unless told not to).")
        else:
            remarks.append("kd_loss_type 'mse' -> logits_mse (mean of ((s − t)/T)², identical).")
    elif config.intermediate_matches:
        remarks.append("no logits KD term: TextBrewer adds one only when both adaptors return logits. If your "
                       f"models have a head, add: {{teacher: logits, loss: soft_ce, weight: {config.kd_loss_weight}, "
                       f"args: {{temperature: {config.temperature}, t2_scale: false}}}}.")
    if config.hard_label_weight or config.hard_label_weight_scheduler not in ("none", None):
        weight = weight_schedule(config.hard_label_weight, config.hard_label_weight_scheduler)
        matches.append(match_to_dict(Match("logits", "logits", "hard_ce", weight, projection=None)))
        remarks.append("hard_label_weight -> a hard_ce match on the batch's labels (TextBrewer weighted the "
                       "adaptor's 'losses').")
    if config.intermediate_matches:
        remarks.append("layer_T/layer_S are read as the models' hidden_states indices (hidden.N, 0 = embeddings) "
                       "and attention block numbers (attn.N), as TextBrewer's standard adaptor lists them; if your "
                       "adaptor built its lists differently (e.g. appended the pooler), edit those refs.")
    for i, entry in enumerate(config.intermediate_matches):
        matches.append(match_to_dict(translate_match(entry, i, python=False)))
        remarks.extend(_textbrewer_remarks(i, entry))
    if config.is_caching_logits:
        remarks.append("is_caching_logits: kdistill's teacher cache does this natively (training options).")
    return matches, _note("TextBrewer DistillationConfig", remarks, {"matches": matches})


def _textbrewer_remarks(i: int, entry: IntermediateMatch) -> list[str]:
    where = f"intermediate_matches[{i}]"
    remarks = []
    if entry.loss == "attention_mse":
        remarks.append(f"{where}: attention_mse on attention probabilities (attn.N); masked entries never count "
                       "(TextBrewer without a mask also zeroed every value ≤ −1e-3).")
    elif entry.loss == "attention_ce":
        remarks.append(f"{where}: attention_ce -> attention_kl on probabilities (TextBrewer's value on scores minus "
                       "the teacher's entropy: same gradient).")
    elif entry.loss in ("nst", "mmd"):
        same = not entry.is_pair or (entry.layer_T[0] == entry.layer_T[1] and entry.layer_S[0] == entry.layer_S[1])
        remarks.append(f"{where}: {entry.loss} -> " + (
            "mmd (the NST paper's MMD² on one layer; TextBrewer's was an MSE of token Gram matrices)." if same else
            "kdistill.compat.textbrewer:token_gram_mse (TextBrewer's Gram MSE, normalised by width, mask or not)."))
    if entry.proj is not None:
        if entry.is_pair:
            remarks.append(f"{where}: a projection on a pair of layers has no native form; the match has none, so "
                           "the two models' widths must be equal (or use the Python compat GeneralDistiller).")
        elif entry.proj[0] != "linear":
            remarks.append(f"{where}: proj '{entry.proj[0]}' -> the factory kdistill.compat.textbrewer:"
                           f"{entry.proj[0]}_projection (Linear + {entry.proj[0]}).")
        if len(entry.proj) == 4 and entry.proj[3]:
            remarks.append(f"{where}: per-projection optimiser options {entry.proj[3]} -> use training.projection_lr.")
        remarks.append(f"{where}: widths come from the models, not from proj's {entry.proj[1]} -> {entry.proj[2]}; "
                       "`kdistill plan` shows the projection inserted.")
    return remarks


def training_from_textbrewer(data: Mapping) -> tuple[dict, dict, list[str]]:
    """TextBrewer TrainingConfig fields -> (native training dict, other native top-level keys, remarks)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"train_config: expected a mapping of TrainingConfig fields, got {type(data).__name__}.")
    config = TrainingConfig.from_dict(data)
    training: dict[str, Any] = {}
    top: dict[str, Any] = {}
    remarks: list[str] = []
    if config.gradient_accumulation_steps != 1:
        training["grad_accum"] = config.gradient_accumulation_steps
    if config.fp16:
        training["mixed_precision"] = "fp16"
    if "output_dir" in data:
        top["output_dir"] = config.output_dir
    ignored = [key for key in data if key in ("ckpt_frequency", "ckpt_epoch_frequency", "ckpt_steps", "log_dir",
                                              "device", "fp16_opt_level", "data_parallel", "local_rank")]
    if ignored:
        remarks.append(f"train_config: {', '.join(ignored)} have no direct native form: kdistill checkpoints at "
                       "training.save_every steps (default: every epoch), logs to <output_dir>/metrics.jsonl and "
                       "TensorBoard, and picks devices through Accelerate.")
    return training, top, remarks


# ---------------------------------------------------------------------------------------------
# KnowledgeDistillation


def _kd_ref(layer: object, output: object, where: str) -> str:
    """The seed article's output-adaptor names -> refs."""
    if output == "logits":
        return "logits"
    if layer == "embedding_layer" and output == "embedding":
        return "hidden.0"
    if layer == "pred_layer" and output == "pooler_output":
        return "pooled"
    found = _BERT_LAYER.match(str(layer))
    if found and int(found.group(1)) >= 1:
        number = int(found.group(1))
        if output == "hidden_states":
            return f"hidden.{number}"
        if output == "attention":
            return f"attn.{number - 1}"
    raise ConfigError(
        f"{where}: cannot map '{layer}'/'{output}' to a model feature without the Python output adaptor. The "
        "import understands the seed article's adaptor names: embedding_layer/embedding, bert_layer<N>/hidden_states, "
        "bert_layer<N>/attention, pred_layer/pooler_output, <any>/logits. Write this match natively instead, e.g. "
        "{teacher: hidden.4, student: hidden.1, loss: hidden_mse}, or use kdistill.compat.knowledge_distillation "
        "in Python with your adaptor."
    )


def from_knowledge_distillation_list(entries: Sequence[Mapping]) -> tuple[list[dict], str]:
    """A KnowledgeDistillation ``distill_config`` list -> (native matches, note with the native YAML)."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or not entries:
        raise ConfigError("distill_config: expected a non-empty list of {teacher_layer_name, "
                          "teacher_layer_output_name, student_layer_name, student_layer_output_name, loss, weight}.")
    matches: list[dict] = []
    remarks: list[str] = []
    for i, entry in enumerate(entries):
        entry = _check_entry(entry, i)
        where = f"distill_config[{i}]"
        teacher = _kd_ref(entry["teacher_layer_name"], entry["teacher_layer_output_name"], f"{where}.teacher")
        student = _kd_ref(entry["student_layer_name"], entry["student_layer_output_name"], f"{where}.student")
        loss, args, weight = translate_loss(entry)
        matches.append(match_to_dict(Match(teacher, student, loss, weight, args)))
        original = entry["loss"]["loss_function"]
        if original == "cos":
            remarks.append(f"{where}: cos (0.5 − 0.5·cos) -> cosine (1 − cos) at half the weight.")
        elif original == "cross_entropy":
            remarks.append(f"{where}: cross_entropy -> soft_ce at temperature 1, no T² (the student's CE against the "
                           "teacher's distribution).")
        elif original == "mse":
            remarks.append(f"{where}: mse -> hidden_mse, which leaves padded tokens out (identical without padding).")
    return matches, _note("KnowledgeDistillation distill_config", remarks, {"matches": matches})


# ---------------------------------------------------------------------------------------------
# Detection


def _note(what: str, remarks: list[str], native: Mapping) -> str:
    lines = [f"Converted a {what} to kdistill's native form."]
    lines += [f"  - {remark}" for remark in remarks]
    lines += ["Equivalent native YAML (paste it in place of the old keys):", "", _native_yaml(native)]
    return "\n".join(lines)


def detect_and_convert(raw: object) -> tuple[dict, str] | None:
    """``(native_dict, note)`` if ``raw`` holds a TextBrewer or KnowledgeDistillation config shape, else None.

    Keys that are not the old library's pass through to ``native_dict`` untouched (the native schema
    validates them). Native ``matches`` and converted ones together are an error: say one way.
    """
    if not isinstance(raw, Mapping):
        return None
    raw = dict(raw)
    distill = raw.get("distill_config")
    top_level_textbrewer = "intermediate_matches" in raw
    if not top_level_textbrewer and distill is None:
        return None
    rest: dict[str, Any] = {}
    if top_level_textbrewer:
        textbrewer_part = {key: raw[key] for key in DISTILLATION_FIELDS if key in raw}
        rest = {key: value for key, value in raw.items() if key not in textbrewer_part}
        matches, note = from_textbrewer_dict(textbrewer_part)
        what = "TextBrewer"
    elif isinstance(distill, Mapping):
        rest = {key: value for key, value in raw.items() if key != "distill_config"}
        matches, note = from_textbrewer_dict(distill)
        what = "TextBrewer"
    elif isinstance(distill, Sequence) and not isinstance(distill, (str, bytes)):
        rest = {key: value for key, value in raw.items() if key != "distill_config"}
        matches, note = from_knowledge_distillation_list(distill)
        what = "KnowledgeDistillation"
    else:
        raise ConfigError(f"distill_config: expected TextBrewer's mapping (intermediate_matches, temperature, …) or "
                          f"KnowledgeDistillation's list of layer matches, got {type(distill).__name__}.")
    if "matches" in rest:
        raise ConfigError(f"matches: the file has native 'matches' and a {what} configuration; keep one of them "
                          "(the note of `kdistill plan` shows the native form of the old one).")
    native = dict(rest)
    native["matches"] = matches
    extra_remarks: list[str] = []
    train_config = native.pop("train_config", None)
    if train_config is not None:
        training, top, extra_remarks = training_from_textbrewer(train_config)
        merged = {**training, **(native.get("training") or {})}
        if merged:
            native["training"] = merged
        for key, value in top.items():
            native.setdefault(key, value)
    if extra_remarks or train_config is not None:
        shown = {key: native[key] for key in ("matches", "training", "output_dir") if key in native}
        head, _, _ = note.partition("Equivalent native YAML")
        note = head.rstrip("\n") + "\n" + "\n".join(f"  - {r}" for r in extra_remarks)
        note = note.rstrip() + "\nEquivalent native YAML (paste it in place of the old keys):\n\n" + _native_yaml(shown)
    return native, note


__all__ = [
    "detect_and_convert", "from_knowledge_distillation_list", "from_textbrewer_dict", "match_to_dict",
    "training_from_textbrewer",
]
