"""Sharded (FSDP) training: full state dicts gathered for checkpoints and the student, resume into
the shards, the ready GPU launch config, and the refusal of FSDP where Accelerate cannot run it.

Accelerate 1.16 turns FSDP on only on GPUs, so the Trainer itself cannot run sharded on a CPU. The
pieces it uses under FSDP (kdistill.train.sharding, the ``gathered`` checkpoint path) are tested on
2 CPU processes over gloo with torch's FSDP2 ``fully_shard``, which does run there
(``_fsdp_worker.py``): sharded as Accelerate shards the Distiller (one block its own shard, the root
the rest).

Tolerance 1e-5 against one process on the whole batch, as in tests/reliability/test_multiprocess.py:
FSDP averages the two half-batch gradients (a reduce-scatter), one process back-propagates the mean
over the whole batch, so the sums run in another order (observed gap ~3e-8), while training moved
every tensor by > 1e-3 (a shard saved in place of the whole, or a missed gradient, fails by far more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill import Trainer
from kdistill.errors import ConfigError
from tiny_engine import bert_distiller, quiet_config, token_loader

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "accelerate" / "fsdp.yaml"
TOLERANCE = 1e-5


def test_two_cpu_processes_under_fsdp2_save_full_state_and_resume_into_the_shards(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(__file__).with_name("_fsdp_worker.py")), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sharded"]
    # Each process held half of every sharded tensor; the checkpoint holds them whole.
    assert result["local_shapes"]["student.0.weight"] == [16, 6]
    assert result["full_shapes"] == result["reference_shapes"]
    from safetensors.torch import load_file

    checkpoint = tmp_path / "checkpoints" / "step-0000003"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert {name: list(tensor.shape) for name, tensor in saved.items()} == result["reference_shapes"]
    assert result["optimizer_states"] == sorted(result["reference_shapes"])  # the whole optimiser state
    assert result["student_keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert result["moved"] > 1e-3
    assert result["gap_to_one_process"] <= TOLERANCE
    # The student called alone (evaluation) inside whole_for_evaluation agrees with the plain one.
    assert result["gap_student_alone"] <= TOLERANCE
    # Resumed into a differently initialised sharded model: the next step is the uninterrupted one.
    assert result["resumed_step"] == 3 and result["lr"][0] == result["lr"][1]
    assert result["gap_after_resume"] == 0.0
    assert result["gap_to_one_process_after_4"] <= TOLERANCE


def test_the_fsdp_launch_config_is_what_accelerates_own_launcher_reads(monkeypatch):
    """examples/accelerate/fsdp.yaml through accelerate's config loader and launcher to the FSDP plugin."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import StateDictType

    config = load_config_from_file(str(CONFIG))
    assert config.distributed_type == DistributedType.FSDP
    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), "-m", "kdistill", "run", "cfg.yaml"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]


def test_fsdp_asked_for_where_accelerate_runs_without_it_is_refused(monkeypatch, tmp_path):
    """On the CPU Accelerate ignores an FSDP config (DDP or independent processes): kdistill says so."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    trainer = Trainer(bert_distiller(), token_loader(4), config=quiet_config(max_steps=1), output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"FSDP was asked for .* never on the CPU.*--processes N"):
        trainer.train()
    assert not (tmp_path / "checkpoints").exists()


def test_an_unsharded_model_is_not_taken_for_a_sharded_one():
    from kdistill.train.sharding import is_sharded

    assert not is_sharded(bert_distiller())


def test_kdistill_run_under_fsdp_refuses_a_chain_of_stages(monkeypatch, tmp_path):
    """A multi-stage method would re-shard a sharded student: refused before training, with DDP named."""
    from kdistill.config import config_from_dict
    from kdistill.errors import ConfigError
    from kdistill.run import run

    from tests.test_run import DATA, EXAMPLES, _example_module

    teacher = tmp_path / "teacher"
    _example_module("tiny_models").tiny_bert(num_layers=2, hidden_size=32, num_heads=2).save_pretrained(teacher)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (teacher / name).write_bytes((DATA / "tiny_tokenizer" / name).read_bytes())
    raw = {"teacher": {"path": str(teacher)}, "method": "theseus", "method_args": {"student_layers": 1},
           "data": {"train": str(DATA / "reviews_train.csv"), "max_length": 16, "batch_size": 16},
           "training": {"max_steps": 1, "progress": False, "tensorboard": False}, "output_dir": str(tmp_path / "run")}
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="under FSDP kdistill run trains one stage of a plain student"):
        run(config_from_dict(raw, base_dir=EXAMPLES))
