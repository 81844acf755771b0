"""Sharded (FSDP) training: what the Trainer does differently when Accelerate shards the model.

Accelerate shards the prepared Distiller (student + projections) when launched with an FSDP config
(``accelerate launch --config_file examples/accelerate/fsdp.yaml -m kdistill run cfg.yaml``). Each
process then holds a shard of every parameter and of the optimiser state, so the main process's
own ``state_dict()`` is a shard too. Everything written to disk is therefore gathered first, by
every process together (a collective), and written by the main process as FULL state dicts:

- checkpoints: the model's and the optimiser's full state dicts (``full_state``); a resume loads
  them back into the sharded model and optimiser in every process (``load_full_state``);
- ``best/`` and the trained student: the ``student.`` part of the model's full state dict.

Evaluation calls the student alone, outside the Distiller's forward, so the parameters the root
shard owns (embeddings, heads) are gathered around it (``whole_for_evaluation``).

The gathering is torch's ``get_model_state_dict`` / ``get_optimizer_state_dict`` with
``full_state_dict=True, cpu_offload=True`` — what ``Accelerator.get_state_dict`` calls under FSDP2 —
used directly because the optimiser needs the same gather, and so it works for FSDP1 and FSDP2 alike.

The teachers are not prepared: they stay whole in every process (frozen, eval mode, no optimiser
state), as under DDP. Accelerate prepares one model under FSDP2, and sharding a teacher by hand
would be distributed code of kdistill's own.

On the CPU, Accelerate 1.16 never turns FSDP on (it runs DDP, or independent processes); kdistill
refuses such a run instead of training something else (``check_fsdp_is_on``).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from kdistill.errors import ConfigError

STUDENT_PREFIX = "student."


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a module inside it) is sharded by FSDP1 or FSDP2."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch`` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes", "y", "on")


def check_fsdp_is_on(accelerator) -> None:
    """ConfigError when FSDP was asked for but Accelerate did not turn it on (no GPU)."""
    from accelerate.utils import DistributedType

    if fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        import accelerate

        raise ConfigError(
            f"distributed: FSDP was asked for (ACCELERATE_USE_FSDP=true, an `accelerate launch` FSDP config), but "
            f"Accelerate {accelerate.__version__} runs this as '{accelerator.distributed_type.value}': it turns FSDP "
            "on only on GPUs (or other accelerators), never on the CPU. Run FSDP on GPU machines, or drop the FSDP "
            "config here: `kdistill run CONFIG --processes N` trains on N CPU processes with DDP.")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The model's and the optimiser's FULL state dicts, on the CPU of the main process (the other
    processes get empty dicts). Every process must call it: the shards are gathered together."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options()
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's FULL state dict on the main process (empty elsewhere); every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def student_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's tensors of a Distiller's state dict, named as in the student's own state dict."""
    return {name[len(STUDENT_PREFIX):]: tensor for name, tensor in state.items() if name.startswith(STUDENT_PREFIX)}


def load_full_state(model: nn.Module, optimizer, model_state: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Load FULL state dicts (as ``full_state`` returns them, read by every process) into the sharded
    model and optimiser: each process keeps its shard. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    options = _options()
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


@contextlib.contextmanager
def whole_for_evaluation(model: nn.Module):
    """Within: the student of a sharded ``model`` can be called alone (evaluation, no gradients).

    FSDP gathers a shard's parameters only around the forward of the module that owns it; the
    root owns what no inner FSDP module does, so calling ``model.student`` directly would meet
    shards there. FSDP2: the root's parameters are gathered (``unshard``) and freed after; inner
    modules gather their own in their forward as usual. FSDP1: every parameter is gathered
    (``summon_full_params``). Every process must enter it, and call the student equally often.
    """
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    if isinstance(model, FSDPModule):
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    elif isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield
    else:
        yield
