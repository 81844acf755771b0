"""The loss library: pure functions ``fn(student, teacher, *, hyper-parameters) -> scalar``, by name.

The engine passes ``mask`` (B, T), ``labels``, ``student_features`` and ``teacher_features`` only to
losses that declare them. Register your own with ``@register_loss()`` or name it as
``"package.module:function"``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from kdistill.errors import ConfigError
from kdistill.registry import Registry

LossFn = Callable[..., Tensor]

LOSSES: Registry[LossFn] = Registry("loss")
register_loss = LOSSES.register


def get_loss(name_or_callable: str | LossFn, path: str = "") -> LossFn:
    """The loss registered as ``name``, imported from ``"pkg.module:fn"``, or the callable itself."""
    if callable(name_or_callable):
        return name_or_callable
    if not isinstance(name_or_callable, str):
        raise ConfigError(f"{path or 'loss'}: expected a loss name or a function, got "
                          f"{type(name_or_callable).__name__} {name_or_callable!r}.")
    return LOSSES.get(name_or_callable, path=path)


# The submodules register their losses with ``register_loss`` on import, so they come after it.
from kdistill.losses.attention import attention_kl, attention_mse  # noqa: E402
from kdistill.losses.hidden import cosine, fsp, hidden_mse, mmd, pkd, rkd, rkd_angle, rkd_distance  # noqa: E402
from kdistill.losses.logits import hard_ce, jsd, kl, logits_mse, reverse_kl, soft_ce  # noqa: E402
from kdistill.losses.relations import relation_kl, value_relation_kl  # noqa: E402

nst = mmd

__all__ = [
    "LOSSES",
    "attention_kl",
    "attention_mse",
    "cosine",
    "fsp",
    "get_loss",
    "hard_ce",
    "hidden_mse",
    "jsd",
    "kl",
    "logits_mse",
    "mmd",
    "nst",
    "pkd",
    "register_loss",
    "relation_kl",
    "reverse_kl",
    "rkd",
    "rkd_angle",
    "rkd_distance",
    "soft_ce",
    "value_relation_kl",
]
