"""``kdistill run CONFIG --processes N``: the same run in N processes on this machine.

The command runs PyTorch's launcher (``torch.distributed.run --standalone --nproc_per_node N -m
kdistill run CONFIG …``, what ``accelerate launch --multi_gpu`` runs underneath) in this process;
it starts N workers. Each worker builds the run from the config; the Trainer's Accelerator finds
the others through the launcher's environment (RANK, WORLD_SIZE, …). With as many GPUs as
processes each worker takes one GPU (NCCL); without a GPU the workers share the CPU (gloo), which is
how CI and the tests run it.

Why not ``accelerate launch --cpu --num_processes N``: on one machine without an MPI host file it
starts a single process. For several machines, FSDP or DeepSpeed, use ``accelerate launch``
directly (docs/scale.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from kdistill.errors import ConfigError

LAUNCHED = "KDISTILL_LAUNCHED"  # set in the children, so a child never launches again


def distributed_world_size() -> int:
    """How many processes the launcher that started this one started (1 when none did)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def processes_use_cpu() -> bool:
    """Whether the processes of this run share the CPU (gloo): asked for (ACCELERATE_USE_CPU), or
    several processes and no GPU (Accelerate would otherwise treat each as a run of its own)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes", "y", "on"):
        return True
    if distributed_world_size() > 1:
        import torch

        return not torch.cuda.is_available()
    return False


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0, or the only process)."""
    return os.environ.get("RANK", "0") in ("", "0")


def leave_process_group() -> None:
    """Under a launcher: wait for every process, then tear the process group down, so no process exits
    while another still talks to it (an exit with a live gloo group can abort the process: exit -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch_command(args: Sequence[str], processes: int, *, gpus: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``kdistill ARGS`` in ``processes`` processes.

    args: the kdistill arguments without ``--processes`` (e.g. ``["run", "cfg.yaml", "--resume"]``).
    gpus: CUDA devices to use (default: those visible). GPUs when there are enough, else the CPU.
    """
    if processes < 1:
        raise ConfigError(f"--processes: {processes} must be at least 1.")
    if os.environ.get(LAUNCHED) or distributed_world_size() > 1:
        raise ConfigError("--processes: this command already runs under a launcher (WORLD_SIZE is set); "
                          "drop --processes, the launcher decides the number of processes.")
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < processes:
        raise ConfigError(f"--processes: {processes} processes but {gpus} GPU{'s' if gpus != 1 else ''}; "
                          f"use --processes {gpus} (one process per GPU), or hide the GPUs "
                          "(CUDA_VISIBLE_DEVICES=) to run the processes on the CPU.")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "kdistill", *args]
    env = dict(os.environ)
    env[LAUNCHED] = "1"
    if gpus == 0:
        env["ACCELERATE_USE_CPU"] = "true"  # gloo on the CPU
    # Several processes on one machine: one intra-op thread each unless the user said otherwise
    # (torch.distributed.run does the same; stated here so it holds for any launcher).
    env.setdefault("OMP_NUM_THREADS", "1")
    return command, env


def relaunch(args: Sequence[str], processes: int) -> int:
    """Run ``kdistill ARGS`` in ``processes`` processes and wait; returns the exit status.

    The launcher runs in this process (as ``accelerate launch --multi_gpu`` runs it), which saves
    starting one more Python; only the workers are new processes.
    """
    from torch.distributed import run as distributed_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    command, env = launch_command(args, processes)
    device = "CPU (gloo)" if env.get("ACCELERATE_USE_CPU") == "true" else "GPU"
    print(f"kdistill: starting {processes} processes on the {device}: python -m {' '.join(command[2:])}",
          file=sys.stderr, flush=True)
    launcher_args = distributed_run.get_args_parser().parse_args(command[3:])
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        distributed_run.run(launcher_args)
    except ChildFailedError as exc:
        failed = ", ".join(f"process {rank} (exit status {failure.exitcode})" for rank, failure in
                           sorted(exc.failures.items()))
        print(f"error: the {processes}-process run failed: {failed}; the messages above say why.", file=sys.stderr)
        return 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0


def strip_processes(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--processes N`` / ``--processes=N`` (what the children receive)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--processes":
            skip = True
            continue
        if item.startswith("--processes="):
            continue
        out.append(item)
    return out


__all__ = ["LAUNCHED", "distributed_world_size", "is_main_process", "launch_command", "processes_use_cpu", "relaunch",
           "strip_processes"]
