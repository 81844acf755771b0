"""BERT-of-Theseus (Xu et al. 2020), "BERT-of-Theseus: Compressing BERT by Progressive Module Replacing".

The predecessor's N blocks are split into M consecutive groups; successor block g stands for group g.
During training, each group is replaced by its successor block with probability p (one Bernoulli
draw per group per forward pass), so the successors learn to work inside the predecessor. p is a
constant or grows (``replace_rate`` is a number or a schedule, e.g. :func:`curriculum_rate`); in
the final phase (``successor_only_fraction`` of the run onwards), and always in eval mode, only the
successors run. The predecessor is frozen. There is no distillation loss: only the task's hard-label
loss trains the successors. :meth:`TheseusModule.export` returns a stand-alone model of the
predecessor's class holding only the successor blocks.

Works for any model whose blocks are one ``nn.ModuleList`` (BERT, RoBERTa, DistilBERT, GPT-2 …,
found by :func:`kdistill.models.find_layer_list`; models with shared-weight layers such as ALBERT
are refused, and an encoder-decoder needs its stack named, ``teacher.blocks: encoder.block``;
predecessor and successor blocks always come from that one list): each forward temporarily installs a mixed block
list (with the config's layer count and per-layer lists and the blocks' ``layer_idx`` set to match),
and restores the successor-only model afterwards, also on an exception.

Choices from the reference code (JetRunner/BERT-of-Theseus, ``run_glue.py``): successors start as
copies of the predecessor's *first* M blocks (``successor_init="first"``; ``"groups"`` takes the first
block of each group instead); only the successor blocks are trained — embeddings, pooler and
classifier stay the predecessor's (``train_outside_blocks=True`` trains them too); the constant
scheduler switches to p = 1 after ``steps_for_replacing`` steps (our ``successor_only_fraction``);
the linear scheduler is p = min(1, k·t + b) (:func:`curriculum_rate`). The reference needs N to be
a multiple of M; here uneven groups differ in size by at most one. Under DDP, set
``find_unused_parameters=True`` (as the reference does): unreplaced successors get no gradient.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdistill.errors import ConfigError
from kdistill.methods import Recipe, Stage, register_method
from kdistill.methods._common import check_choice, check_layer_list, layer_count
from kdistill.models import LAYER_COUNT_KEYS, find_layer_list, layer_count_keys, student_from_teacher
from kdistill.ranges import FLAG, LAYERS, OneOf, Range
from kdistill.schedules import Constant, Ramp, Scalar, step_at, value_at

SUCCESSOR_INIT = ("first", "groups")


def group_layers(predecessor_layers: int, successor_layers: int) -> list[list[int]]:
    """Split blocks 0..N−1 into M consecutive groups whose sizes differ by at most one."""
    n, m = predecessor_layers, successor_layers
    if not 0 < m <= n:
        raise ConfigError(f"theseus: the successor needs between 1 and {n} layers (the predecessor's count), got {m}.")
    return [list(range(n * g // m, n * (g + 1) // m)) for g in range(m)]


def successor_init_layers(predecessor_layers: int, successor_layers: int, how: str = "first") -> list[int]:
    """Which predecessor blocks the successors start from: the first M (reference) or each group's first."""
    check_choice("theseus", "successor_init", how, SUCCESSOR_INIT)
    groups = group_layers(predecessor_layers, successor_layers)
    if how == "first":
        return list(range(successor_layers))
    return [group[0] for group in groups]


def curriculum_rate(base: float, k: float) -> Ramp:
    """The reference's linear replacement scheduler p(t) = min(1, k·t + b) as a schedule (t: the step)."""
    if not 0.0 <= base <= 1.0 or not k > 0:
        raise ConfigError(f"theseus: curriculum rate needs 0 ≤ base ≤ 1 and k > 0, got base={base}, k={k}.")
    return Ramp(base, k, 1.0)


def _needs_total_steps(value: object) -> bool:
    """Whether a schedule has a point given as a fraction of the run (or 'the end'), so needs total_steps."""
    if isinstance(value, (int, float, Constant)):
        return False
    points = [getattr(value, name, 0) for name in ("start", "end")] + list(getattr(value, "boundaries", ()))
    return any(p is None or (isinstance(p, float) and 0.0 <= p <= 1.0) for p in points)


def _check_rate(value: object) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or callable(value)):
        raise ConfigError(f"method_args.replace_rate: expected a probability or a schedule, got {value!r}.")
    if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
        raise ConfigError(f"method_args.replace_rate: {value!r} is not a probability in [0, 1].")


def _per_layer_lists(config: Any, count: int) -> dict[str, list]:
    """Per-layer config lists (``layer_types`` …) of a model with ``count`` blocks."""
    if config is None:
        return {}
    return {key: value for key, value in vars(config).items()
            if "layer" in key and isinstance(value, list) and len(value) == count and key not in LAYER_COUNT_KEYS}


def _count_keys(config: Any, block_path: str) -> list[str]:
    """The config keys that count the blocks at ``block_path`` (set to the mixed list's length in forward)."""
    if config is None:
        return []
    present = set(config.to_dict()) | set(getattr(config, "attribute_map", {})) if hasattr(config, "to_dict") else set()
    return [key for key in layer_count_keys(config, block_path)
            if key in present and isinstance(getattr(config, key, None), int)]


def _successor_blocks(host: nn.Module, block_path: str) -> nn.ModuleList:
    """The successor's block list: the one at the predecessor's path, so both come from one stack."""
    try:
        blocks = host.get_submodule(block_path)
    except AttributeError:
        blocks = None
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"theseus: the successor {type(host).__name__} has no block list at '{block_path}', "
                          "the predecessor's; give a successor of the predecessor's architecture.")
    return blocks


class TheseusModule(nn.Module):
    """Progressive module replacement around a predecessor model. ``forward`` takes the model's own inputs.

    predecessor: the fine-tuned model to compress (frozen; its blocks are shared, not copied).
    successor: the successor model (same class, fewer blocks — its embeddings and head are used), or
        an int M (built from the predecessor, blocks chosen by ``successor_init``), or a list of
        predecessor block indices to copy.
    replace_rate: p, a number or a schedule of the step. successor_only_fraction: from this point of
        the run (a fraction in [0, 1] or a step count) only successors run; None: never forced.
    total_steps: the run's length, needed when the rate or the final phase is given as fractions.
        The step counts training-mode forward passes (with gradient accumulation: micro-batches) and
        is a buffer, saved and resumed with checkpoints; ``follow(distiller)`` makes it the Trainer's
        optimiser step and takes ``total_steps`` from the Trainer too (what a runner should do).
    """

    def __init__(self, predecessor: nn.Module, successor: nn.Module | int | Sequence[int], *,
                 replace_rate: Scalar = 0.5, successor_only_fraction: float | int | None = None,
                 total_steps: int | None = None, successor_init: str = "first",
                 train_outside_blocks: bool = False, seed: int = 0):
        super().__init__()
        _check_rate(replace_rate)
        block_path, predecessor_blocks = find_layer_list(predecessor)
        n = len(predecessor_blocks)
        if isinstance(successor, nn.Module):
            if type(successor) is not type(predecessor):
                raise ConfigError(f"theseus: the successor is a {type(successor).__name__} but the predecessor a "
                                  f"{type(predecessor).__name__}; the successor must be the same class with fewer blocks.")
            host = successor
        elif isinstance(successor, int) and not isinstance(successor, bool):
            host = student_from_teacher(predecessor, successor_init_layers(n, successor, successor_init))
        else:
            host = student_from_teacher(predecessor, check_layer_list("theseus", "successor", successor, n))
        self.block_path, successor_blocks = block_path, _successor_blocks(host, block_path)
        self.groups = group_layers(n, len(successor_blocks))
        self.successor = host
        self.predecessor_blocks = predecessor_blocks
        self.predecessor_blocks.requires_grad_(False)
        if not train_outside_blocks:
            block_params = {id(p) for p in successor_blocks.parameters()}
            for param in host.parameters():
                if id(param) not in block_params:
                    param.requires_grad_(False)
        self.replace_rate = replace_rate
        self.successor_only_fraction = successor_only_fraction
        self.total_steps = total_steps
        self.seed = seed
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.last_replaced: list[bool] = [True] * len(self.groups)
        self._generator: torch.Generator | None = None
        self._generator_step: int | None = None
        self._predecessor_lists = _per_layer_lists(getattr(predecessor, "config", None), n)
        self._count_keys = _count_keys(getattr(host, "config", None), block_path)

    # ------------------------------------------------------------------ schedule
    @property
    def num_successor_layers(self) -> int:
        return len(self.groups)

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        self.step.fill_(int(step))
        if total_steps is not None:
            self.total_steps = total_steps

    def _point(self, point: float | int) -> int:
        return step_at(point, self.total_steps, what="theseus.successor_only_fraction")

    def successor_only(self, step: int | None = None) -> bool:
        """Whether the final phase (successors alone) has begun at ``step`` (default: now)."""
        step = int(self.step) if step is None else step
        return self.successor_only_fraction is not None and step >= self._point(self.successor_only_fraction)

    def rate(self, step: int | None = None) -> float:
        """The replacement probability p at ``step`` (1 in the final phase)."""
        step = int(self.step) if step is None else step
        if self.successor_only(step):
            return 1.0
        return min(max(value_at(self.replace_rate, step, self.total_steps), 0.0), 1.0)

    def _check_total_steps(self) -> None:
        fraction_phase = isinstance(self.successor_only_fraction, float) and 0.0 <= self.successor_only_fraction <= 1.0
        if self.total_steps is None and (fraction_phase or _needs_total_steps(self.replace_rate)):
            raise ConfigError("theseus: the replacement schedule or successor_only_fraction is given as a fraction "
                              "of the run, but total_steps is unknown; set TheseusModule.total_steps (the number "
                              "of training forward passes) or give step counts.")

    def sample_replacement(self, step: int) -> list[bool]:
        """One Bernoulli(p(step)) per group: True = the successor replaces the group.

        Draws come from a generator seeded with (seed, step), so a run is reproducible and resumes
        exactly; several forwards at one step (gradient accumulation under :meth:`follow`) draw anew.
        """
        if self._generator_step != step:
            self._generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            self._generator_step = step
        draws = torch.rand(len(self.groups), generator=self._generator)
        return (draws < self.rate(step)).tolist()

    def follow(self, distiller: nn.Module) -> Any:
        """Take the step and run length from ``distiller(batch, step=..., total_steps=...)`` calls.

        The Trainer passes the optimiser step and the run's length to the Distiller on every forward;
        following it makes the schedule count optimiser steps (not micro-batches) and needs no
        ``total_steps``. Returns the hook handle (``.remove()`` to stop following).
        """
        def take_step(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            if "step" in kwargs:
                self.set_step(kwargs["step"], kwargs.get("total_steps"))

        return distiller.register_forward_pre_hook(take_step, with_kwargs=True)

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            return self.successor(*args, **kwargs)
        self._check_total_steps()
        step = int(self.step)
        replaced = self.sample_replacement(step)
        self.step += 1
        self.last_replaced = replaced
        if all(replaced):
            return self.successor(*args, **kwargs)
        blocks, origins = [], []
        successor_blocks = self.successor.get_submodule(self.block_path)
        for group, (use_successor, members) in enumerate(zip(replaced, self.groups)):
            if use_successor:
                blocks.append(successor_blocks[group])
                origins.append(("successor", group))
            else:
                blocks.extend(self.predecessor_blocks[i] for i in members)
                origins.extend(("predecessor", i) for i in members)
        with self._installed(blocks, origins):
            output = self.successor(*args, **kwargs)
        if not any(replaced) and torch.is_grad_enabled():
            output = _attached(output)
        return output

    @contextlib.contextmanager
    def _installed(self, blocks: list[nn.Module], origins: list[tuple[str, int]]) -> Iterator[None]:
        """Run the host model with ``blocks`` as its block list; everything is put back afterwards."""
        parent_path, _, attr = self.block_path.rpartition(".")
        parent = self.successor.get_submodule(parent_path) if parent_path else self.successor
        original = getattr(parent, attr)
        config = getattr(self.successor, "config", None)
        saved_config = {key: getattr(config, key) for key in self._count_keys}
        successor_lists = _per_layer_lists(config, len(original))
        saved_lists = dict(successor_lists)
        saved_indices = []
        for position, block in enumerate(blocks):
            for module in block.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    saved_indices.append((module, module.layer_idx))
                    module.layer_idx = position
        try:
            for key in saved_config:
                setattr(config, key, len(blocks))
            for key, values in successor_lists.items():
                theirs = self._predecessor_lists.get(key)
                setattr(config, key, [values[i] if kind == "successor" else (theirs or values)[i % len(theirs or values)]
                                      for kind, i in origins])
            parent._modules[attr] = nn.ModuleList(blocks)
            yield
        finally:
            parent._modules[attr] = original
            for key, value in saved_config.items():
                setattr(config, key, value)
            for key, value in saved_lists.items():
                setattr(config, key, value)
            for module, index in reversed(saved_indices):
                module.layer_idx = index

    # ------------------------------------------------------------------ result
    def export(self) -> nn.Module:
        """The compressed model alone: the predecessor's class with only the successor blocks, in eval mode.

        A deep copy with every parameter trainable again; for Hugging Face models it saves with
        ``save_pretrained`` and reloads with the matching ``AutoModel…`` class.
        """
        model = copy.deepcopy(self.successor)
        model.requires_grad_(True)
        return model.eval()


def _attached(output: Any) -> Any:
    """``output`` with its float tensors joined to the autograd graph through a zero leaf.

    When every group kept its frozen predecessor blocks, nothing in the forward needs a gradient and
    ``loss.backward()`` would fail. Adding a fresh zero tensor that requires grad (not a parameter)
    makes backward run while every successor parameter keeps ``grad=None`` — the optimiser skips
    them for this step, as in the reference code, where the unused successors get no gradient.
    """
    def attach(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            return value + torch.zeros((), dtype=value.dtype, device=value.device, requires_grad=True)
        return value

    if isinstance(output, torch.Tensor):
        return attach(output)
    if isinstance(output, dict):  # ModelOutput keeps keys and attributes in step on item assignment
        for key in list(output.keys()):
            output[key] = attach(output[key])
        return output
    if isinstance(output, tuple):
        return type(output)(attach(v) for v in output) if not hasattr(output, "_fields") else \
            type(output)(*(attach(v) for v in output))
    return output


@dataclass(frozen=True)
class TheseusWrapper:
    """The recipe's ``student_wrapper``: ``(teacher, student) -> TheseusModule`` with these settings."""

    replace_rate: Scalar = 0.5
    successor_only_fraction: float | int | None = 0.5
    train_outside_blocks: bool = False
    seed: int = 0

    def __call__(self, teacher: nn.Module, student: nn.Module) -> TheseusModule:
        return TheseusModule(teacher, student, replace_rate=self.replace_rate,
                             successor_only_fraction=self.successor_only_fraction,
                             train_outside_blocks=self.train_outside_blocks, seed=self.seed)


@register_method("theseus", ranges={
    "replace_rate": Range(0, 1, why="the probability that a successor block replaces its group"),
    "successor_only_fraction": Range(0, why="a fraction of the run (0–1) or a step count"),
    "seed": Range(0, integer=True, why="a random seed"), "teacher_layers": LAYERS, "student_layers": LAYERS,
    "successor_init": OneOf(SUCCESSOR_INIT), "train_outside_blocks": FLAG})
def theseus(*, teacher: nn.Module | None = None, student: nn.Module | None = None,
            replace_rate: Scalar = 0.5, successor_only_fraction: float | int | None = 0.5,
            successor_init: str = "first", train_outside_blocks: bool = False, seed: int = 0,
            teacher_layers: int | None = None, student_layers: int | None = None) -> Recipe:
    """BERT-of-Theseus: progressive module replacement, trained by the task's hard labels only.

    replace_rate: p, constant (paper: 0.5) or a schedule (:func:`curriculum_rate` for p = min(1, kt + b)).
    successor_only_fraction: when the successor-only phase starts (default half the run).
    successor_init: ``first`` (reference: predecessor blocks 0..M−1) or ``groups``. student_layers: M
    when no student is given (default N // 2, the paper's 12 → 6).
    """
    method = "theseus"
    _check_rate(replace_rate)
    check_choice(method, "successor_init", successor_init, SUCCESSOR_INIT)
    student_init = None
    notes = ["not distillation by loss: no matches; the successors learn from the task's hard labels "
             "inside the frozen predecessor (student_wrapper builds the TheseusModule).",
             "the runner calls TheseusModule.follow(distiller) (step and run length from the Trainer) and "
             "saves TheseusModule.export(), a plain model with only the successor blocks."]
    if student is None:
        n = layer_count(teacher, teacher_layers, role="teacher", method=method)
        m = n // 2 if student_layers is None else student_layers
        layers = successor_init_layers(n, m, successor_init)
        student_init = {"from_teacher": {"layers": layers}}
        notes.append(f"successor: predecessor blocks {layers}; groups {group_layers(n, m)}.")
    wrapper = TheseusWrapper(replace_rate, successor_only_fraction, train_outside_blocks, seed)
    stage = Stage("replace", [], hard_label_weight=1.0)
    return Recipe(method, [stage], student_init=student_init, student_wrapper=wrapper, notes=notes)


__all__ = ["TheseusModule", "TheseusWrapper", "curriculum_rate", "group_layers", "successor_init_layers", "theseus"]
