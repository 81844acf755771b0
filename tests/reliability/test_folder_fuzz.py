"""Run-folder fuzz: random sequences of ``kdistill run`` with two configs, plain, ``--resume`` or
``--overwrite``, some cut short by a crash at a random point (before training, mid-run, after a
checkpoint). After every step of a sequence:

- a run that finished did what its config says: ``config.resolved.yaml`` is that config, the
  summary's steps are its ``max_steps``, ``metrics.jsonl`` holds each step 1..max_steps once, and
  the summary's figures equal a re-evaluation of the saved student (``kdistill eval``);
- a run that stopped stopped with a KdistillError (or the simulated crash), and whatever summary the
  folder holds still agrees with its student and its config;
- the user's own files, in the folder and inside ``student/``, are still there.

    PYTHONPATH=src .venv/bin/python -m pytest tests/reliability/test_folder_fuzz.py -q -s
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdistill.errors import KdistillError

from ._helpers import BASE, merge
from ._models import CONTROL, SimulatedCrash

PER_TEST = int(os.environ.get("KDISTILL_FOLDER_FUZZ_EXAMPLES", "8"))
OUTCOMES: Counter = Counter()
CONFIGS = {  # two runs that differ in length and student
    "a": {"training": {"max_steps": 3}},
    "b": {"training": {"max_steps": 5}, "student": {"from_teacher": {"num_layers": 1, "hidden_size": 32,
                                                                     "num_attention_heads": 2,
                                                                     "intermediate_size": 32}}},
}
steps = st.fixed_dictionaries({
    "config": st.sampled_from(sorted(CONFIGS)),
    "flag": st.sampled_from([None, "resume", "overwrite"]),
    "crash_after": st.one_of(st.none(), st.integers(0, 4)),  # 0: on the first batch, before training
})


def _load(folder: Path, out: Path, name: str):
    from kdistill.config import load_config

    raw = merge(BASE, {"output_dir": str(out), **CONFIGS[name]})
    raw["training"] = {**raw["training"], "save_every": 1, "eval_every": 1}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


def _consistent(out: Path) -> None:
    """Whatever finished run the folder holds agrees with its student and its config."""
    from kdistill.config import parse_yaml
    from kdistill.run import evaluate_run

    summary_file = out / "summary.json"
    if not summary_file.is_file():
        return
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    resolved = parse_yaml((out / "config.resolved.yaml").read_text(encoding="utf-8"))
    if summary["stages"][0]["steps"] != resolved["training"]["max_steps"]:
        # only while a new run of another config is under way (cut short before it could finish)
        assert not (out / "stage_done.json").is_file(), "a finished marker beside a summary of another run"
        return
    again = evaluate_run(out, "validation")
    reported = summary["metrics"]["validation"]["student"]["accuracy"]
    assert math.isclose(again["student"]["accuracy"], reported, abs_tol=1e-6), (again, reported)


@settings(max_examples=PER_TEST, deadline=None, derandomize="KDISTILL_FOLDER_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(steps, min_size=2, max_size=4))
def test_any_sequence_of_runs_leaves_a_true_folder(sequence, tmp_path_factory):
    from kdistill.run import run
    from kdistill.train import read_metrics

    folder = tmp_path_factory.mktemp("seq")
    out = folder / "run"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    for step in sequence:
        config = _load(folder, out, step["config"])
        CONTROL.update(calls=0, nan_at=None, crash_once_exists=None)
        if step["crash_after"] is not None:
            point = step["crash_after"]
            CONTROL["crash_once_exists"] = str(out if point == 0 else out / "checkpoints" / f"step-{point:07d}")
        had_student = (out / "student").is_dir()
        if had_student:
            (out / "student" / "NOTES.md").write_text("my card")
        try:
            summary = run(config, resume=step["flag"] == "resume", overwrite=step["flag"] == "overwrite")
        except SimulatedCrash:
            OUTCOMES["crashed"] += 1
        except KdistillError:
            OUTCOMES["refused"] += 1
        else:
            OUTCOMES["finished"] += 1
            wanted = config.training.max_steps
            assert summary["stages"][0]["steps"] == wanted
            assert yaml.safe_load((out / "config.resolved.yaml").read_text()) == config.resolved()
            train = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
            assert train == list(range(1, wanted + 1)), train
        finally:
            CONTROL.update(crash_once_exists=None)
        assert (out / "my_notes.txt").read_text() == "mine"
        if had_student:  # kdistill replaces or removes its own files in student/, never the user's
            assert (out / "student" / "NOTES.md").read_text() == "my card"
        _consistent(out)


def test_report_the_outcomes():
    print(f"\nfolder fuzz outcomes: {dict(OUTCOMES)}")
