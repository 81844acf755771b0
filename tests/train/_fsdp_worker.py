"""One process of tests/train/test_sharding.py: FSDP2 (``fully_shard``) on 2 CPU processes over gloo,
sharded as Accelerate shards a prepared Distiller on GPUs (a student block, then the root).

Rank r trains on rows 4r … 4r+3 of each global batch of 8; process 0 also trains an unsharded copy
on all 8 rows. It writes what the test checks to ``OUT/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from kdistill.train.checkpoint import TrainPosition, latest_good_checkpoint, load_checkpoint, save_checkpoint
from kdistill.train.optim import make_scheduler
from kdistill.train.sharding import full_model_state, full_state, is_sharded, student_part, whole_for_evaluation


class TinyDistiller(nn.Module):
    """The shape of a Distiller's state dict: ``student.*`` and ``projections.*``."""

    def __init__(self):
        super().__init__()
        self.student = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
        self.projections = nn.ModuleDict({"hidden": nn.Linear(3, 5)})

    def forward(self, x):
        return self.projections["hidden"](self.student(x)).pow(2).mean()


def make(seed: int):
    torch.manual_seed(seed)
    model = TinyDistiller()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, make_scheduler(optimizer, kind="linear", warmup_steps=1, total_steps=8)


def shard(model: TinyDistiller) -> TinyDistiller:
    """The first block its own shard; the root owns the rest (as embeddings and heads on GPUs)."""
    fully_shard(model.student[0])
    fully_shard(model)
    return model


def step(model, optimizer, scheduler, batch) -> None:
    model(batch).backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(123)
    batches = [torch.randn(8, 6) for _ in range(4)]
    mine = [batch[4 * rank:4 * rank + 4] for batch in batches]
    sharded, optimizer, scheduler = make(0)
    plain, plain_optimizer, plain_scheduler = make(0)
    shard(sharded)  # after the optimiser, as Accelerate swaps the optimiser onto the sharded parameters
    optimizer.param_groups[0]["params"] = list(sharded.parameters())
    for batch, whole in zip(mine[:3], batches[:3]):
        step(sharded, optimizer, scheduler, batch)
        step(plain, plain_optimizer, plain_scheduler, whole)
    with torch.no_grad(), whole_for_evaluation(sharded):  # the student alone, as evaluation calls it
        student_outputs = sharded.student(batches[0]) - plain.student(batches[0])
    local = {name: tuple(tensor.to_local().shape) for name, tensor in sharded.state_dict().items()}
    gathered = full_state(sharded, optimizer)
    student = student_part(full_model_state(sharded))
    if rank == 0:
        save_checkpoint(out / "checkpoints", sharded, optimizer, scheduler, TrainPosition(step=3), gathered=gathered)
    dist.barrier()
    # Resume: a differently initialised sharded model loads the checkpoint, then both take step 4.
    resumed, resumed_optimizer, resumed_scheduler = make(1)
    shard(resumed)
    resumed_optimizer.param_groups[0]["params"] = list(resumed.parameters())
    path, state = latest_good_checkpoint(out / "checkpoints")
    position = load_checkpoint(path, state, resumed, resumed_optimizer, resumed_scheduler)
    step(sharded, optimizer, scheduler, mine[3])
    step(resumed, resumed_optimizer, resumed_scheduler, mine[3])
    step(plain, plain_optimizer, plain_scheduler, batches[3])
    after, after_resumed = full_model_state(sharded), full_model_state(resumed)
    if rank == 0:
        reference = plain.state_dict()
        result = {
            "sharded": is_sharded(sharded) and not is_sharded(plain),
            "local_shapes": local,
            "full_shapes": {name: list(tensor.shape) for name, tensor in gathered[0].items()},
            "reference_shapes": {name: list(tensor.shape) for name, tensor in reference.items()},
            "optimizer_states": sorted(gathered[1]["state"]),
            "student_keys": sorted(student),
            "gap_to_one_process": max((gathered[0][name] - tensor).abs().max().item()
                                       for name, tensor in make_reference_at_3(batches).items()),
            "moved": min((gathered[0][name] - tensor).abs().max().item() for name, tensor in make(0)[0].state_dict().items()),
            "gap_student_alone": student_outputs.abs().max().item(),
            "gap_after_resume": max((after[name] - after_resumed[name]).abs().max().item() for name in after),
            "gap_to_one_process_after_4": max((after[name] - reference[name]).abs().max().item() for name in after),
            "resumed_step": position.step,
            "lr": [resumed_scheduler.get_last_lr()[0], scheduler.get_last_lr()[0]],
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def make_reference_at_3(batches) -> dict[str, torch.Tensor]:
    """The unsharded model after the first three global batches."""
    model, optimizer, scheduler = make(0)
    for batch in batches[:3]:
        step(model, optimizer, scheduler, batch)
    return model.state_dict()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
