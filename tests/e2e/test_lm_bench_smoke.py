"""benchmarks/lm.py (kdistill side by side with TRL's GKDTrainer) on a tiny random Llama: the job maps
onto both libraries alike, both compute the same loss on one batch, and a quick run reports every
library's row and the ratios. Structure only: nothing here reads a timing."""

from __future__ import annotations

import json
import math

import pytest

from tests.e2e import benchmark_module


pytest.importorskip("trl")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def lm_bench():
    with benchmark_module("lm.py", "lm_benchmark") as module:
        yield module


def _job(lm_bench, tmp_path, **changes):
    fields = {"teacher": "t", "layers": [1], "train": "train.jsonl", "heldout": "heldout.jsonl", "max_length": 32,
              "batch_size": 4, "lr": 1e-3, "steps": 3, "beta": 0.0, "lmbda": 0.0, "temperature": 0.9,
              "max_new_tokens": 8, "seed": 7, "threads": 1, "k": 8, "capture": str(tmp_path / "capture"),
              "bucket": True}
    return lm_bench.Job(**{**fields, **changes})


def test_the_job_maps_onto_gkd_config_and_a_kdistill_run_alike(lm_bench, tmp_path):
    job = _job(lm_bench, tmp_path, beta=0.5, lmbda=0.5)
    raw = lm_bench.kdistill_raw(job, tmp_path / "run")
    gkd = lm_bench.gkd_config(job, tmp_path / "trl")
    assert raw["matches"][0]["loss"] == "token_jsd" and raw["matches"][0]["args"]["beta"] == gkd.beta == 0.5
    assert raw["on_policy"] == {"lmbda": gkd.lmbda, "temperature": gkd.temperature, "max_new_tokens": gkd.max_new_tokens}
    training = raw["training"]
    assert (training["lr"], training["max_steps"], training["warmup"], training["weight_decay"]) == \
           (gkd.learning_rate, gkd.max_steps, gkd.warmup_steps, gkd.weight_decay)
    assert (training["lr_schedule"], training["max_grad_norm"]) == (gkd.lr_scheduler_type.value, gkd.max_grad_norm)
    assert raw["data"]["batch_size"] == gkd.per_device_train_batch_size and raw["seed"] == gkd.seed == 7
    assert raw["hard_label_weight"] == 0.0 and raw["matches"][0]["args"]["temperature"] == 1.0
    # TRL's defaults (bf16, gradient checkpointing) switched off: kdistill runs neither.
    assert gkd.bf16 is False and gkd.activation_checkpointing is False and gkd.report_to == []
    assert not job.has_capture()
    # β = 0 is forward KL, written as token_kl: the loss a capture serves.
    forward = _job(lm_bench, tmp_path)
    assert forward.has_capture()
    raw = lm_bench.kdistill_raw(forward, tmp_path / "run", capture=True)
    assert raw["matches"][0]["loss"] == "token_kl" and raw["capture"]["k"] == 8 and "on_policy" not in raw


def test_review_pairs_cut_each_sentence_after_its_first_words(lm_bench):
    pairs = lm_bench.review_pairs(["one two three four five", "too short here"], 3)
    assert pairs == [{"prompt": "one two three", "completion": " four five"}]


def test_quick_run_reports_every_library_and_the_ratios(lm_bench, tmp_path):
    summary = lm_bench.main(["--quick", "--threads", "1", "--output", str(tmp_path / "out")])
    check = summary["check"]
    assert check["relative_difference"] < 1e-3 and math.isfinite(check["trl"])
    assert set(summary["runs"]) == {"trl", "kdistill", "kdistill-capture"}
    for name, rows in summary["runs"].items():
        assert len(rows) == 1, name
        row = rows[0]
        assert "error" not in row, row
        assert row["steps"] == 3 and row["tokens"] > 0 and row["tokens_per_second"] > 0
        assert row["peak_anon_mb"] <= row["peak_rss_mb"]
        assert math.isfinite(row["heldout_loss"]) and row["heldout_loss"] >= 0 and math.isfinite(row["heldout_ce"])
    assert set(summary["ratios"]) == {"kdistill/trl", "kdistill-capture/kdistill"}
    assert all(r["tokens_per_second"] > 0 for r in summary["ratios"].values())
    assert len(summary["targets"]) == 5 and all(isinstance(v, bool) for v in summary["targets"].values())
    written = json.loads((tmp_path / "out" / "lm.json").read_text())
    assert written["job"]["steps"] == 3 and set(written["median"]) == set(summary["runs"])


def test_in_kdistills_batch_order_trl_trains_the_same_student(lm_bench, tmp_path):
    """--same-order: TRL reads kdistill's batches in kdistill's order; then the two libraries' students
    are the same to float rounding (TRL pads on the left, kdistill on the right), so a held-out gap
    between them with their own samplers is the batch order's, not the training's."""
    summary = lm_bench.main(["--quick", "--threads", "1", "--same-order", "--data-seed", "3",
                             "--libraries", "trl", "kdistill", "--output", str(tmp_path / "out")])
    assert summary["job"]["same_order"] and summary["job"]["data_seed"] == 3
    trl, kdistill = summary["runs"]["trl"][0], summary["runs"]["kdistill"][0]
    assert math.isclose(trl["heldout_loss"], kdistill["heldout_loss"], rel_tol=1e-4), (trl, kdistill)
    assert math.isclose(trl["heldout_ce"], kdistill["heldout_ce"], rel_tol=1e-4)


def test_kdistill_order_is_the_order_a_kdistill_run_trains_in(lm_bench, tmp_path):
    from kdistill.config import config_from_dict
    from kdistill.run_build import build
    from topk_capture import tiny_llama_teacher, tiny_review_texts

    teacher = str(tiny_llama_teacher(tmp_path / "teacher"))
    pairs = lm_bench.review_pairs(tiny_review_texts(40), 3)[:24]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    for bucket in (True, False, 2):
        job = _job(lm_bench, tmp_path, teacher=teacher, train=str(train), heldout=str(train), steps=6, data_seed=5,
                   bucket=bucket)
        parts = build(config_from_dict(lm_bench.kdistill_raw(job, tmp_path / "run"), import_from_base=False))
        sampler = parts.loaders["train"].batch_sampler
        sampler.set_epoch(0)
        assert lm_bench.kdistill_order(job, lm_bench.tokenizer_of(job)) == [i for b in sampler.batches() for i in b]


def test_targets_read_the_within_round_ratios(lm_bench):
    ratios = {"kdistill/trl": {"tokens_per_second": 1.2, "peak_rss_mb": 0.9, "heldout_loss": 1.01},
              "kdistill-capture/kdistill": {"tokens_per_second": 1.6, "peak_rss_mb": 0.8, "heldout_loss": None}}
    assert lm_bench.targets(ratios) == {
        "kdistill tokens/s >= 1.0x TRL": True, "kdistill peak RSS <= TRL": True,
        "kdistill held-out loss <= TRL": False, "capture tokens/s >= 1.5x live": True,
        "capture held-out loss within 2% of live": False}
