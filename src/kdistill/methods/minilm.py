"""MiniLM: deep self-attention distillation of the last Transformer layer.

- v1 (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
  Pre-Trained Transformers"): KL between the teacher's and student's last-layer attention
  distributions (``attention_kl`` on ``attn.-1``) plus KL between their value relations
  softmax(V Vᵀ/√d_head) (``value_relation_kl`` on ``value.-1``), head by head — so both models must
  have the same number of attention heads; widths and depths may differ.
- v2 (Wang et al. 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation"): query–query,
  key–key and value–value relations (``relation_kl`` on ``query.L``/``key.L``/``value.L``), each
  model's vectors regrouped into ``num_relation_heads`` relation heads, so head counts may differ
  too. The teacher layer is chosen (``teacher_layer``, default the last): MiniLMv2 uses an
  upper-middle layer for large teachers (e.g. layer 21 of BERT-large's 24), the last for base ones.
- Teacher assistant (v1 §3.4): with a much smaller student, distil teacher → assistant (the paper's
  assistant has the teacher's depth and the student's width), then assistant → student, in one recipe.

The losses are summed with equal weights, as in the papers. MiniLM is task-agnostic distillation on
unlabelled text (``data: unlabelled``) followed by fine-tuning the student on the task (``finetune``
stage, hard labels only). The official MiniLM repository publishes checkpoints but no distillation
code; this recipe follows the papers' equations. Minor points the papers leave open and we fix: KL
is summed over keys and averaged over batch · heads · real queries; padded tokens are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from torch import nn

from kdistill.errors import ConfigError
from kdistill.matches import Match
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import check_choice, check_layer_list, head_count, hidden_width
from kdistill.ranges import ALPHA, FLAG, HEADS, TEMPERATURE, WEIGHT, OneOf, Range
from kdistill.schedules import Scalar

ASSISTANT_CONFIG_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size")
DATA = ("unlabelled", "train")
PAPER_RELATION_HEADS = {"base": 48, "large": 64}


def v1_matches(*, num_heads: int, teacher_layer: int = -1, student_layer: int = -1) -> list[Match]:
    """Attention-distribution KL and value-relation KL of one layer pair (equal head counts)."""
    return [
        Match(f"attn.{teacher_layer}", f"attn.{student_layer}", "attention_kl", 1.0, name="attention"),
        Match(f"value.{teacher_layer}", f"value.{student_layer}", "value_relation_kl", 1.0,
              args={"num_heads": num_heads}, name="value_relation"),
    ]


def v2_matches(*, num_relation_heads: int, teacher_layer: int = -1, student_layer: int = -1) -> list[Match]:
    """Query-query, key-key and value-value relation KL of one layer pair (any head counts)."""
    return [
        Match(f"{kind}.{teacher_layer}", f"{kind}.{student_layer}", "relation_kl", 1.0,
              args={"num_heads": num_relation_heads}, name=f"{kind}_relation")
        for kind in ("query", "key", "value")
    ]


def _assistant_spec(assistant: Mapping, teacher: nn.Module | None) -> tuple[dict, int | None, int | None]:
    """The Recipe's assistant spec and, where known, the assistant's head count and width."""
    if not isinstance(assistant, Mapping):
        raise ConfigError(f"method_args.assistant: expected a mapping such as {{layers: [0, 2, 4]}} or "
                          f"{{num_layers: 12, hidden_size: 384}}, got {assistant!r}.")
    unknown = [k for k in assistant if k not in ("layers", *ASSISTANT_CONFIG_KEYS)]
    if unknown:
        raise ConfigError(f"method_args.assistant: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: layers, "
                          f"{', '.join(ASSISTANT_CONFIG_KEYS)}.")
    from kdistill.adapters.hf import hf_num_heads

    teacher_heads = hf_num_heads(teacher) if teacher is not None else None
    if "layers" in assistant:
        if len(assistant) > 1:
            raise ConfigError("method_args.assistant: 'layers' (copy teacher blocks) cannot be combined with "
                              "config sizes.")
        layers = list(assistant["layers"])
        if teacher is not None:
            from kdistill.models import num_layers

            layers = check_layer_list("minilm", "assistant.layers", layers, num_layers(teacher))
        return {"from_teacher": {"layers": layers}}, teacher_heads, hidden_width(teacher)
    if "num_layers" not in assistant:
        raise ConfigError("method_args.assistant: give 'layers' (teacher blocks to copy) or 'num_layers' with sizes.")
    heads = assistant.get("num_attention_heads", teacher_heads)
    width = assistant.get("hidden_size", hidden_width(teacher))
    return {"config": dict(assistant)}, heads, width


@register_method("minilm", ranges={
    "version": OneOf((1, 2), why="MiniLM v1 or v2"),
    "teacher_layer": Range(integer=True, why="a 0-based teacher block; −1 is the last"),
    "num_relation_heads": Range(1, integer=True, why="relation heads; each width must be divisible by it"),
    "weight": WEIGHT, "teacher_heads": HEADS, "student_heads": HEADS, "finetune": FLAG,
    "data": OneOf(DATA, why="the distillation stages' text: general unlabelled text or the task's"),
    "kd_temperature": TEMPERATURE, "kd_alpha": ALPHA,
    "distil_epochs": Range(0, low_open=True, why="epochs of the relation stages (fractions allowed)")})
def minilm(*, teacher: nn.Module | None = None, student: nn.Module | None = None, version: int = 1,
           teacher_layer: int = -1, num_relation_heads: int | None = None, assistant: Mapping | None = None,
           finetune: bool = True, data: str = "unlabelled", weight: Scalar = 1.0,
           teacher_heads: int | None = None, student_heads: int | None = None,
           kd_temperature: float | None = None, kd_alpha: float = 0.5, distil_epochs: float | None = None) -> Recipe:
    """MiniLM v1 (attention + value relation) or v2 (q/k/v relations), optionally via a teacher assistant.

    version: 1 or 2. teacher_layer: the teacher block distilled (0-based, default −1 = last); the
    student's last block learns from it. num_relation_heads (v2): relation heads; default the
    student's attention head count (papers: 48 for base-size, 64 for large-size teachers); it must
    divide both widths. assistant: ``{layers: [...]}`` (copy teacher blocks) or ``{num_layers, hidden_size,
    num_attention_heads, intermediate_size}`` (a smaller config of the teacher's class).
    finetune: add a last stage training the student on the task's labels. data: of the distillation
    stages (``unlabelled``: general text; ``train``: the task's texts). kd_temperature: make that last
    stage Hinton KD on the teacher's logits (``prediction``: T = kd_temperature, α = kd_alpha, as the
    ``hinton`` method) instead of labels alone. distil_epochs: the relation stages' length (default
    ``training.epochs``).
    """
    method = "minilm"
    if version not in (1, 2):
        raise ConfigError(f"method_args.version: MiniLM is version 1 or 2, got {version!r}.")
    check_choice(method, "data", data, DATA)
    if isinstance(teacher_layer, bool) or not isinstance(teacher_layer, int):
        raise ConfigError(f"method_args.teacher_layer: expected a 0-based block index (−1 = last), "
                          f"got {teacher_layer!r}.")
    t_heads = head_count(teacher, teacher_heads, role="teacher", method=method, required=False)
    s_heads = head_count(student, student_heads, role="student", method=method, required=False)
    notes: list[str] = []
    assistant_spec = None
    # The chain of (teacher role, its head count, its width, teacher layer) -> next model.
    links = [("teacher", t_heads, hidden_width(teacher), teacher_layer)]
    if assistant is not None:
        assistant_spec, a_heads, a_width = _assistant_spec(assistant, teacher)
        links.append(("assistant", a_heads, a_width, -1))
        notes.append("teacher assistant: teacher -> assistant, then assistant -> student (MiniLM §3.4: the "
                     "paper's assistant has the teacher's depth and the student's width).")
    targets = [(h, w) for _, h, w, _ in links[1:]] + [(s_heads, hidden_width(student))]

    stages: list[Stage] = []
    for (role, heads, width, layer), (next_heads, next_width) in zip(links, targets):
        next_name = "assistant" if role == "teacher" and assistant is not None else "student"
        if version == 1:
            if heads is not None and next_heads is not None and heads != next_heads:
                raise ConfigError(
                    f"minilm: version 1 compares attention maps head by head, but the {role} has {heads} heads "
                    f"and the {next_name} {next_heads}; use version: 2 (relations regrouped into "
                    f"num_relation_heads, so head counts may differ) or give the {next_name} {heads} heads.")
            num_heads = next_heads if next_heads is not None else heads
            if num_heads is None:
                extra = " (or assistant.num_attention_heads)" if assistant is not None else ""
                raise ConfigError(f"minilm: cannot tell the {next_name}'s attention head count for the value "
                                  f"relation; give the models or the options teacher_heads and student_heads{extra}.")
            matches = v1_matches(num_heads=num_heads, teacher_layer=layer)
        else:
            relation_heads = num_relation_heads if num_relation_heads is not None else next_heads
            if relation_heads is None:
                raise ConfigError("method_args.num_relation_heads: cannot default it to the student's head count "
                                  "without the student; give num_relation_heads (papers: 48 for base, 64 for large).")
            for who, w in ((role, width), (next_name, next_width)):
                if w is not None and w % relation_heads:
                    raise ConfigError(f"method_args.num_relation_heads: {relation_heads} does not divide the {who}'s "
                                      f"width {w}; choose a number of relation heads that divides both widths.")
            matches = v2_matches(num_relation_heads=relation_heads, teacher_layer=layer)
        if weight != 1.0:
            matches = [m.with_(weight=weight) for m in matches]
        name = "distil" if assistant is None else f"distil_{next_name}"
        stages.append(Stage(name, matches, data=data, teacher=role, epochs=distil_epochs))
    notes.append(f"MiniLM v{version}: {'attention + value-relation KL' if version == 1 else 'q/k/v relation KL'} "
                 f"of teacher block {teacher_layer} and the student's last block, on {data} text.")
    if finetune and kd_temperature is not None:  # Hinton KD from the teacher itself, not the assistant
        from kdistill.methods.hinton import hinton

        (prediction,) = hinton(temperature=kd_temperature, alpha=kd_alpha).stages
        stages.append(replace(prediction, name="prediction"))
        notes.append(f"prediction: the student then learns the teacher's logits (Hinton KD, T = {kd_temperature}, "
                     f"α = {kd_alpha}) with the labels.")
    elif finetune:
        # A stage trains the model after its teacher in the chain: after an assistant, that is the student.
        stages.append(Stage("finetune", [], hard_label_weight=1.0, data="train",
                            teacher="assistant" if assistant is not None else "teacher"))
        notes.append("finetune: the student is then trained on the task's labels alone (MiniLM is task-agnostic).")
    return Recipe(method, stages, assistant=assistant_spec, notes=notes)


__all__ = ["minilm", "v1_matches", "v2_matches"]
