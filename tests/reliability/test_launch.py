"""``kdistill run --processes N``: the launcher command, its environment and its refusals (no
process is started here; test_multiprocess runs one for real)."""

from __future__ import annotations

import sys

import pytest

from kdistill.errors import ConfigError
from kdistill.launch import launch_command, strip_processes

from ._helpers import write_config


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "KDISTILL_LAUNCHED", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)


def test_cpu_command_and_environment():
    command, env = launch_command(["run", "cfg.yaml", "--resume", "training.lr=3e-5"], 2, gpus=0)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "kdistill", "run", "cfg.yaml", "--resume", "training.lr=3e-5"]
    assert env["ACCELERATE_USE_CPU"] == "true" and env["KDISTILL_LAUNCHED"] == "1"
    assert env["OMP_NUM_THREADS"]

    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(command[3:])
    assert (parsed.nproc_per_node, parsed.standalone, parsed.module) == ("2", True, True)
    assert (parsed.training_script, parsed.training_script_args) == (
        "kdistill", ["run", "cfg.yaml", "--resume", "training.lr=3e-5"])


def test_gpus_are_used_when_there_is_one_per_process():
    _, env = launch_command(["run", "cfg.yaml"], 4, gpus=8)
    assert "ACCELERATE_USE_CPU" not in env


def test_refusals(monkeypatch):
    with pytest.raises(ConfigError, match=r"^--processes: 4 processes but 2 GPUs; use --processes 2"):
        launch_command(["run", "cfg.yaml"], 4, gpus=2)
    with pytest.raises(ConfigError, match=r"^--processes: 0 must be at least 1\.$"):
        launch_command(["run", "cfg.yaml"], 0, gpus=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already runs under a launcher"):
        launch_command(["run", "cfg.yaml"], 2, gpus=0)


def test_the_workers_get_the_arguments_without_processes():
    assert strip_processes(["run", "c.yaml", "--processes", "2", "a.b=1", "--resume"]) == [
        "run", "c.yaml", "a.b=1", "--resume"]
    assert strip_processes(["run", "--processes=3", "c.yaml"]) == ["run", "c.yaml"]


def test_cli_checks_the_config_before_starting_processes(tmp_path, capsys):
    from kdistill.cli import main

    bad = write_config(tmp_path, tmp_path / "out", training={"lr": -1})
    assert main(["run", str(bad), "--processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "  - training.lr: must be greater than 0.0, got -1." in err and "starting" not in err
    good = write_config(tmp_path, tmp_path / "out", name="good.yaml")
    assert main(["run", str(good), "--processes", "0"]) == 2
    assert capsys.readouterr().err == "error: --processes: 0 must be at least 1.\n"
