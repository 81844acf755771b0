"""The loss library: pure functions ``fn(student, teacher, *, hyper-parameters) -> scalar``, by name.

The engine passes ``mask`` (B, T), ``teacher_mask`` (the teacher's own), ``labels``, ``student_features``
and ``teacher_features`` only to losses that declare them. Register your own with ``@register_loss()`` or name it as
``"package.module:function"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from kdistill.errors import ConfigError
from kdistill.registry import Registry

LossFn = Callable[..., Tensor]

LOSSES: Registry[LossFn] = Registry("loss")
_PROPERTIES = "__kdistill_loss__"


@dataclass(frozen=True)
class LossProperties:
    """What the engine needs to know of a loss, declared where it is registered.

    ``width_free``: it compares distributions, relations or kernels, so student and teacher widths may
    differ (no projection is inserted); otherwise it compares tensors element by element.
    ``topk``: it reads only the teacher's distribution over classes, so the teacher cache may keep
    just the top-k logits (``cache.logits_topk``).
    """

    width_free: bool = False
    topk: bool = False


def register_loss(name: str | None = None, *, overwrite: bool = False, ranges=None, width_free: bool = False,
                  topk: bool = False) -> Callable[[LossFn], LossFn]:
    """Register a loss under ``name`` (default: the function's name), with its argument ``ranges``
    (:mod:`kdistill.ranges`) and its :class:`LossProperties`."""
    def decorator(fn: LossFn) -> LossFn:
        registered = LOSSES.register(name, overwrite=overwrite, ranges=ranges)(fn)
        if width_free or topk or not hasattr(fn, _PROPERTIES):  # registering it again keeps what it declared
            setattr(fn, _PROPERTIES, LossProperties(width_free=width_free, topk=topk))
        return registered

    return decorator


# What kdistill passes to a loss itself (never set in a match's args).
SUPPLIED_INPUTS = ("student", "teacher", "mask", "teacher_mask", "labels", "student_features",
                   "teacher_features", "causal")


def argument_problems(loss_fn: LossFn, name: str, args: Mapping, where: str) -> list[str]:
    """The one binder of a match's ``args`` to its loss, for ``kdistill validate`` and the Distiller
    alike: an input kdistill supplies, or an argument the loss does not take (with a suggestion), as
    ``where.key: …`` sentences. (Ranges: :func:`kdistill.ranges.argument_problems`.)"""
    from kdistill.errors import suggest

    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return []
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p not in SUPPLIED_INPUTS and params[p].kind != params[p].VAR_KEYWORD]
    problems = []
    for key in args:
        if key in SUPPLIED_INPUTS:
            problems.append(f"{where}.{key}: '{key}' is supplied by kdistill, not set in args.")
        elif key not in params and not takes_any:
            problems.append(f"{where}.{key}: loss '{name}' takes no argument '{key}'{suggest(key, valid) or '.'} "
                            f"It takes: {', '.join(valid) or 'none'}.")
    return problems


def topk_losses() -> list[str]:
    """The registered losses that work from top-k teacher logits, sorted."""
    return [name for name in LOSSES.names() if loss_properties(name).topk]


def loss_properties(loss: str | LossFn) -> LossProperties:
    """The properties a loss declared (a user function that declared none: element-wise, no top-k)."""
    fn = get_loss(loss) if isinstance(loss, str) else loss
    return getattr(fn, _PROPERTIES, None) or LossProperties()


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
from kdistill.losses.spans import span_kl  # noqa: E402
from kdistill.losses.topk import token_topk_kl  # noqa: E402
from kdistill.losses.vocab import (  # noqa: E402
    token_jsd,
    token_kl,
    token_reverse_kl,
    token_skew_kl,
    token_tv,
    uld,
)

nst = mmd

__all__ = [
    "LOSSES",
    "SUPPLIED_INPUTS",
    "argument_problems",
    "LossProperties",
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
    "loss_properties",
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
    "span_kl",
    "token_jsd",
    "token_kl",
    "token_reverse_kl",
    "token_skew_kl",
    "token_topk_kl",
    "token_tv",
    "topk_losses",
    "uld",
    "value_relation_kl",
]
