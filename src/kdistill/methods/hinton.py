"""Hinton et al. (2015), "Distilling the Knowledge in a Neural Network".

``L = α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE(y, z_s)``. T and α may be schedules. The T² factor is
applied once, inside the ``kl`` loss (``t2_scale=True``), so soft and hard gradients stay on one
scale as T changes. KL and soft cross-entropy differ by the teacher's entropy, a constant in the
student's parameters: their gradients are identical; KL is reported because it is 0 at a perfect
student.

On a question-answering teacher (start and end logits, :mod:`kdistill.qa_spans`) the soft term is
``span_kl``: the KL of the start and of the end distributions over the window's context tokens and
CLS; ``loss: kl`` (the default) means it there, and the hard term is the mean of the start and end
cross-entropies.
"""

from __future__ import annotations

from torch import nn

from kdistill.errors import ConfigError
from kdistill.matches import Match
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import one_minus
from kdistill.ranges import ALPHA, LAYERS, TEMPERATURE
from kdistill.schedules import Scalar


@register_method("hinton", ranges={"temperature": TEMPERATURE, "alpha": ALPHA, "teacher_layers": LAYERS,
                                   "student_layers": LAYERS})
def hinton(*, teacher: nn.Module | None = None, student: nn.Module | None = None,
           temperature: Scalar = 4.0, alpha: Scalar = 0.5, loss: str = "kl",
           teacher_layers: int | None = None, student_layers: int | None = None) -> Recipe:
    """Soft targets at temperature T (weight α, T² inside the loss) plus hard labels (weight 1−α).

    Layer counts are accepted for a uniform method signature; Hinton KD reads only the logits.
    """
    from kdistill.qa_spans import is_qa_model

    if teacher is not None and is_qa_model(teacher):
        if loss not in ("kl", "span_kl"):
            raise ConfigError(f"method_args.loss: '{loss}' compares one distribution per example or token; a "
                              "question-answering teacher gives start and end distributions over the context: use "
                              "'span_kl' (what the default 'kl' means for it).")
        loss = "span_kl"
    soft_weight = alpha
    hard_weight = one_minus(alpha)
    match = Match("logits", "logits", loss, soft_weight, args={"temperature": temperature, "t2_scale": True},
                  name="soft")
    return Recipe("hinton", [Stage("distil", [match], hard_label_weight=hard_weight)])
