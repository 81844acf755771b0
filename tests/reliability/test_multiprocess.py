"""Two CPU processes (gloo) through ``kdistill run --processes 2`` train the same student as one
process on the same global batches; only the main process writes.

How the batches split: Accelerate's BatchSamplerShard gives whole batches of our LengthBucketSampler
to the processes in turn — process 0 gets batches 0, 2, 4, …, process 1 gets 1, 3, 5, … — so with
a per-process batch B one optimiser step sees batches 2k and 2k+1 (2B examples). The single-process
reference therefore trains on exactly those pairs, concatenated (``PairedBatches``).

Why not bit-identical: DDP averages the two processes' gradients (an all-reduce: (g0 + g1) / 2 in
float32), while one process back-propagates the mean over the 2B examples; the paired batch is also
padded to its longer half, which changes the length of some reductions inside the model. Both
change the order of floating-point sums, so the parameters agree to rounding, not bit for bit. After
16 Adam steps at lr 1e-2 the largest observed gap is ~3e-7; the test allows 1e-5 while training
moved every compared matrix by > 1e-3 (so a wrong batch split, a doubled learning rate or an unsynchronised
process would fail by orders of magnitude).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kdistill.outputs import STUDENT_FILES

from ._helpers import saved_student, start_kdistill, state_of, write_config

TOLERANCE = 1e-5
B = 4  # per-process batch; 64 training reviews -> 16 batches -> 8 optimiser steps per epoch


class PairedBatches:
    """Batches ``n·k … n·k + n − 1`` of ``inner`` as one batch: the global batch of ``n`` processes."""

    def __init__(self, inner, n: int):
        self.inner, self.n = inner, n
        self.batch_size = inner.batch_size * n

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.n)

    def __iter__(self):
        batches = list(self.inner)
        for start in range(0, len(batches), self.n):
            yield [index for batch in batches[start:start + self.n] for index in batch]


def reference_run(config_path: Path, out: Path):
    """The run of ``config_path`` in this process, each step on batches 2k and 2k+1 joined."""
    from kdistill.config import load_config
    from kdistill.run import build, stage_train_config
    from kdistill.train import Trainer

    config = load_config(config_path, [f"output_dir={out}"])
    parts = build(config)
    part = parts.stages[0]
    assert len(part.loader) == 16 and part.loader.batch_sampler.batch_size == B
    paired = DataLoader(part.loader.dataset, batch_sampler=PairedBatches(part.loader.batch_sampler, 2),
                        collate_fn=part.loader.collate_fn)
    initial = state_of(part.student)
    trainer = Trainer(parts.stage_distiller(0), paired, config=stage_train_config(config, part),
                      eval_data=parts.loaders["validation"], output_dir=out)
    return trainer.train(), part.student, initial, parts.loaders["validation"]


def test_two_processes_match_one_process_on_the_same_global_batches(tmp_path):
    out = tmp_path / "two"
    config = write_config(tmp_path, out, training={"epochs": 2})
    launched = start_kdistill("run", str(config), "--processes", "2")
    try:  # the reference trains here while the two processes start
        result, student, initial, validation = reference_run(config, tmp_path / "one")
        stdout, stderr = launched.communicate(timeout=300)
    finally:
        launched.kill()
    assert launched.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert "starting 2 processes on the CPU (gloo)" in stderr
    assert stdout.count("done: student in") == 1  # printed by the main process only

    two = saved_student(out)
    one = {name: tensor.clone() for name, tensor in student.state_dict().items() if name in two}
    assert len(one) == len(two) > 20
    # Attention key biases add the same amount to every score of a query, which softmax ignores:
    # their exact gradient is 0, so Adam turns rounding noise into full-size steps in *both* runs.
    # They cannot change an output, so they are compared through the logits below.
    compared = [name for name in two if not name.endswith("attention.self.key.bias")]
    assert len(compared) == len(two) - 1
    gaps = {name: (two[name] - one[name]).abs().max().item() for name in compared}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= TOLERANCE, f"{worst} differs by {gaps[worst]:.3g}"
    moved = {name: (one[name] - initial[name]).abs().max().item() for name in compared if one[name].ndim == 2}
    assert min(moved.values()) > 1e-3, moved  # training changed every matrix far beyond the tolerance
    batch = next(iter(validation))
    batch = batch.get("student_inputs", batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    student.eval()
    with torch.no_grad():
        logits_one = student(**inputs).logits
        student.load_state_dict(two, strict=False)
        logits_two = student(**inputs).logits
    assert (logits_two - logits_one).abs().max().item() <= TOLERANCE

    # Only the main process wrote: one metrics log with each step once, one checkpoint, no leftovers.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 17))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000008", "step-0000016"]
    leftovers = [p.name for p in out.rglob(".*") if p.name != STUDENT_FILES]  # the manifest is no leftover
    assert not leftovers, "temporary files were left behind"
    assert sorted(p.name for p in tmp_path.rglob("metrics.jsonl")) == ["metrics.jsonl", "metrics.jsonl"]

    # The logged loss is the mean over both processes, i.e. the loss of the global batch.
    expected = [r for r in result.history if r["kind"] == "train"]
    for logged, reference in zip(train, expected):
        for key in ("loss", "soft", "hard_label", "lr"):
            assert logged[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-7), (logged["step"], key)

    # Effective batch = per-process batch × processes × grad_accum, in the summary and the result.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["stages"][0]["effective_batch_size"] == 2 * B == result.effective_batch_size
    assert summary["stages"][0]["steps"] == result.steps == 16

    # Evaluation ran on half the validation batches per process and was gathered: the metrics equal
    # one process's evaluation of the same student on all 16 reviews (eval batch 3 leaves a
    # remainder, so the repeated examples Accelerate pads with must have been dropped).
    from kdistill.train import evaluate_classifier

    whole = evaluate_classifier(student, validation, inputs_key="student_inputs")
    gathered = [r for r in records if r["kind"] == "eval"][-1]
    assert gathered["step"] == 16
    assert gathered["accuracy"] == pytest.approx(whole["accuracy"], abs=1e-12)
    assert gathered["macro_f1"] == pytest.approx(whole["macro_f1"], abs=1e-12)


def test_two_processes_share_one_teacher_cache_written_by_the_main_process(tmp_path):
    """`cache: teacher` under 2 processes: the main process fills the cache once before training,
    both read it, and the losses equal the live-teacher reference to float16 precision."""
    out = tmp_path / "two"
    config = write_config(tmp_path, out, cache="teacher")
    launched = start_kdistill("run", str(config), "--processes", "2")
    try:
        result, _, _, _ = reference_run(write_config(tmp_path, tmp_path / "one", name="live.yaml"), tmp_path / "one")
        stdout, stderr = launched.communicate(timeout=300)
    finally:
        launched.kill()
    assert launched.returncode == 0, stdout[-3000:] + stderr[-5000:]
    folders = list((out / "teacher-cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()  # one complete cache, no temporary ones
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    expected = [r for r in result.history if r["kind"] == "train"]
    assert len(train) == len(expected) == 8
    for logged, reference in zip(train, expected):
        assert logged["soft"] == pytest.approx(reference["soft"], rel=5e-3, abs=1e-5), logged["step"]
