"""TinyBERT (Jiao et al. 2020), "TinyBERT: Distilling BERT for Natural Language Understanding".

Layer-to-layer distillation through a layer map g(m) = m·L_t/L_s:

- embeddings: ``hidden_mse`` on ``hidden.0`` (through a learned projection when widths differ);
- hidden states: ``hidden_mse`` on ``hidden.g(m)`` ← ``hidden.m`` (projection W_h when widths differ);
- attention: ``attention_mse`` on the maps of block g(m)−1 ← m−1, pre-softmax scores by default
  (``attention: scores``, as the reference code) or probabilities (``attention: probs``);
- prediction: ``soft_ce`` of the logits at temperature T **without** T² (``t2_scale=False``).

Staging, as the article and the reference code describe: the intermediate layers are distilled
first, the prediction layer after. Here the task stage is one run whose intermediate matches stop at
``intermediate_fraction`` of it and whose prediction match starts there (``Match.stop``/``start``);
``split_task_stage=True`` gives two Stages instead (the reference code's two separate runs, each
with its own optimiser and LR schedule). ``stage``: ``task`` (fine-tuned teacher → student on the
task data), ``general`` (pre-trained teacher → student on unlabelled text, intermediate matches
only) or ``both`` (general, then task).

Known differences from the reference code (huawei-noah/Pretrained-Language-Model, TinyBERT):

- The reference projects every student hidden state, embeddings included, with one shared
  ``fit_dense``; the paper has W_e and W_h. Here each matched layer gets its own linear projection
  (``shared_projection=True`` gives the reference's single shared map, inserted even at equal widths).
- The reference zeroes scores ≤ −100 (padding) and averages over *all* entries, zeros included;
  ``attention_mse`` averages over the real (query, key) entries only (see its docstring).
- The prediction loss: the reference's ``soft_cross_entropy`` is ``(−p_t · log p_s).mean()``, a mean
  over examples *and classes*; ``soft_ce`` sums over classes and averages over examples (the paper's
  L_pred), so its value is C times the reference's for C classes (the same gradients up to that factor).
- Fractions of a run (``intermediate_fraction``) need ``total_steps``; the Trainer always passes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kdistill.matches import Match, attention_matches, explicit_layer_map, hidden_matches, uniform_layer_map
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import check_choice, check_fraction, layer_count
from kdistill.ranges import FLAG, FRACTION, LAYERS, TEMPERATURE, WEIGHT, OneOf
from kdistill.schedules import Scalar

STAGES = ("task", "general", "both")
ATTENTION = ("scores", "probs")


class SharedLinear:
    """A projection factory returning one ``nn.Linear`` for every match (TinyBERT's shared ``fit_dense``).

    Called by the Distiller as ``factory(in_features, out_features)`` once per match; every match with
    the same widths gets the *same* module, so its weights are shared (and stored once in checkpoints).
    """

    def __init__(self) -> None:
        self.modules: dict[tuple[int, int], nn.Linear] = {}

    def __call__(self, in_features: int, out_features: int) -> nn.Linear:
        key = (in_features, out_features)
        if key not in self.modules:
            self.modules[key] = nn.Linear(in_features, out_features)
        return self.modules[key]


def intermediate_matches(layer_map: Sequence[tuple[int, int]], *, attention: str = "scores",
                         projection: object = "auto") -> list[Match]:
    """TinyBERT's embedding, hidden-state and attention matches for a layer map (pairs of hidden indices)."""
    hidden = hidden_matches(layer_map, loss="hidden_mse", projection=projection)
    if attention == "scores":
        attn = attention_matches(layer_map, loss="attention_mse", kind="attn_scores", args={"kind": "scores"})
    else:
        attn = attention_matches(layer_map, loss="attention_mse", kind="attn", args={"kind": "probs"})
    return hidden + attn


@register_method("tinybert", ranges={"temperature": TEMPERATURE, "intermediate_fraction": FRACTION,
                                     "hard_label_weight": WEIGHT, "teacher_layers": LAYERS, "student_layers": LAYERS,
                                     "stage": OneOf(STAGES), "attention": OneOf(ATTENTION), "split_task_stage": FLAG,
                                     "shared_projection": FLAG})
def tinybert(*, teacher: nn.Module | None = None, student: nn.Module | None = None,
             stage: str = "task", temperature: Scalar = 1.0, attention: str = "scores",
             layer_map: Sequence[Sequence[int]] | None = None, intermediate_fraction: float = 0.5,
             split_task_stage: bool = False, shared_projection: bool = False,
             hard_label_weight: Scalar = 0.0, general_teacher: str = "teacher",
             teacher_layers: int | None = None, student_layers: int | None = None) -> Recipe:
    """TinyBERT: embedding + hidden (projected) + attention MSE, then prediction soft CE (no T²).

    stage: ``task`` | ``general`` | ``both``. temperature: of the prediction loss (reference default 1).
    attention: ``scores`` (pre-softmax, reference code) | ``probs``. layer_map: ``[[teacher, student], …]``
    over hidden-state indices (0 = embeddings); default uniform g(m) = m·L_t/L_s with 0 ↔ 0.
    intermediate_fraction: share of the task stage spent on intermediate layers before the prediction
    layer takes over. general_teacher: which model teaches the general stage (TinyBERT uses the
    *pre-trained*, not the fine-tuned, teacher there).
    """
    method = "tinybert"
    check_choice(method, "stage", stage, STAGES)
    check_choice(method, "attention", attention, ATTENTION)
    fraction = check_fraction(method, "intermediate_fraction", intermediate_fraction)
    if layer_map is None:
        t_layers = layer_count(teacher, teacher_layers, role="teacher", method=method)
        s_layers = layer_count(student, student_layers, role="student", method=method)
        pairs = uniform_layer_map(t_layers, s_layers)
    else:
        pairs = explicit_layer_map(layer_map)
    projection = SharedLinear() if shared_projection else "auto"
    notes = [f"layer map (teacher hidden index, student hidden index): {pairs}",
             f"attention compared as {'pre-softmax scores' if attention == 'scores' else 'probabilities'}; "
             f"prediction soft CE at T={temperature} without T² (TinyBERT)."]

    def intermediate(**limits) -> list[Match]:
        return [m.with_(**limits) for m in intermediate_matches(pairs, attention=attention, projection=projection)]

    prediction = Match("logits", "logits", "soft_ce", 1.0, args={"temperature": temperature, "t2_scale": False},
                       name="prediction")
    stages: list[Stage] = []
    if stage in ("general", "both"):
        stages.append(Stage("general", intermediate(), data="unlabelled", teacher=general_teacher))
        notes.append("general stage: pre-trained teacher -> student on unlabelled text, intermediate layers "
                     f"only (teacher: '{general_teacher}').")
    if stage in ("task", "both"):
        if split_task_stage:
            stages.append(Stage("task_intermediate", intermediate()))
            stages.append(Stage("task_prediction", [prediction], hard_label_weight=hard_label_weight))
            notes.append("task stage split in two runs: intermediate layers, then the prediction layer.")
        else:
            stages.append(Stage("task", intermediate(stop=fraction) + [prediction.with_(start=fraction)],
                                hard_label_weight=hard_label_weight))
            notes.append(f"task stage: intermediate layers for the first {fraction:.0%} of the steps, the "
                         "prediction layer after.")
        notes.append("TinyBERT's data augmentation: kdistill.methods.augment.augment_texts, labelled by the teacher.")
    return Recipe(method, stages, notes=notes)


__all__ = ["SharedLinear", "intermediate_matches", "tinybert"]
