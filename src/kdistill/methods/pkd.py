"""Patient Knowledge Distillation (Sun et al. 2019), "Patient Knowledge Distillation for BERT Model Compression".

``L = (1−α)·CE(y, z_s) + α·L_DS + β·L_PT`` where
- ``L_DS`` is the soft cross-entropy at temperature T, **without** T² — the paper's equation
  (``soft_ce``, ``t2_scale=False``; the reference code multiplies by T², ``t2_scale=True`` gives that);
- ``L_PT`` is the squared distance of the L2-normalised [CLS] vectors (``pkd`` loss), summed over
  M−1 layer pairs: the student's last layer is left out, the prediction covers it.
  PKD-skip pairs student layer m with teacher layer m·k (k = N/M; 12 → 6: teacher 2, 4, 6, 8, 10);
  PKD-last with the teacher's last layers before the top (12 → 6: teacher 7, 8, 9, 10, 11).

β: the reference code computes L_PT as ``F.mse_loss`` over the stacked normalised vectors, i.e. our
sum divided by (M−1)·D, and its grid β ∈ {10, 100, 500, 1000} is on that scale. With
``beta_scale="reference"`` (default) each pair's weight is β / ((M−1)·D) so β = 100 means what it
meant there; ``beta_scale="sum"`` weights the paper's sum by β directly. The student starts from the
teacher's first M blocks (the paper's initialisation). T and α were grid-searched per task
(T ∈ {5, 10, 20}, α ∈ {0.2, 0.5, 0.7}); defaults here: T = 5, α = 0.5, β = 100.
"""

from __future__ import annotations

from torch import nn

from kdistill.errors import ConfigError
from kdistill.matches import Match, hidden_matches, last_k_layer_map, skip_layer_map
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import check_choice, hidden_width, layer_count, one_minus
from kdistill.ranges import ALPHA, COUNT, FLAG, LAYERS, TEMPERATURE, WEIGHT, OneOf
from kdistill.schedules import Scalar

STRATEGIES = ("skip", "last")
BETA_SCALES = ("reference", "sum")


def pkd_layer_map(teacher_layers: int, student_layers: int, strategy: str = "skip") -> list[tuple[int, int]]:
    """The M−1 (teacher hidden index, student hidden index) pairs of PKD-skip or PKD-last."""
    check_choice("pkd", "strategy", strategy, STRATEGIES)
    if student_layers > teacher_layers:
        raise ConfigError(f"pkd: the student has more layers ({student_layers}) than the teacher ({teacher_layers}).")
    full = (skip_layer_map if strategy == "skip" else last_k_layer_map)(teacher_layers, student_layers)
    return full[:-1]


@register_method("pkd", ranges={"temperature": TEMPERATURE, "alpha": ALPHA, "beta": WEIGHT, "teacher_width": COUNT,
                                "teacher_layers": LAYERS, "student_layers": LAYERS, "strategy": OneOf(STRATEGIES),
                                "beta_scale": OneOf(BETA_SCALES), "t2_scale": FLAG})
def pkd(*, teacher: nn.Module | None = None, student: nn.Module | None = None, strategy: str = "skip",
        temperature: Scalar = 5.0, alpha: Scalar = 0.5, beta: float = 100.0, beta_scale: str = "reference",
        t2_scale: bool = False, teacher_width: int | None = None, teacher_layers: int | None = None,
        student_layers: int | None = None) -> Recipe:
    """PKD-skip / PKD-last: normalised [CLS] distance on M−1 layer pairs (β) + soft CE (α) + hard CE (1−α)."""
    method = "pkd"
    check_choice(method, "beta_scale", beta_scale, BETA_SCALES)
    n = layer_count(teacher, teacher_layers, role="teacher", method=method)
    m = layer_count(student, student_layers, role="student", method=method)
    pairs = pkd_layer_map(n, m, strategy)
    weight = float(beta)
    if beta_scale == "reference" and pairs:
        width = hidden_width(teacher) if teacher is not None else teacher_width
        if width is None:
            raise ConfigError("pkd: beta_scale 'reference' divides β by (M−1)·D and needs the teacher's width: "
                              "give the teacher model or the option teacher_width (or use beta_scale: sum).")
        weight = float(beta) / (len(pairs) * width)
    patience = hidden_matches(pairs, loss="pkd", weight=weight)
    soft = Match("logits", "logits", "soft_ce", alpha, args={"temperature": temperature, "t2_scale": t2_scale},
                 name="soft")
    hard = one_minus(alpha)
    student_init = None if student is not None else {"from_teacher": {"layers": list(range(m))}}
    notes = [f"PKD-{strategy}: (teacher, student) hidden pairs {pairs} on [CLS]; per-pair weight {weight:.6g} "
             f"(β={beta}, scale '{beta_scale}').",
             f"soft CE at T={temperature} {'with' if t2_scale else 'without'} T² (the paper's L_DS has none; "
             "the reference code multiplies by T²)."]
    return Recipe(method, [Stage("distil", [soft, *patience], hard_label_weight=hard)],
                  student_init=student_init, notes=notes)


__all__ = ["pkd", "pkd_layer_map"]
