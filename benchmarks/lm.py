"""kdistill side by side with TRL's GKDTrainer on one causal-LM distillation job, and kdistill's top-k
capture against its live teacher: training tokens/s, peak memory and held-out loss, alternated in one run.

The job is defined once (:class:`Job`): a teacher, a student made of some of its blocks (kdistill's
``from_teacher`` copy; TRL gets the same copy, made by the same function), prompt/completion pairs cut
from review sentences (the first ``--prompt-words`` words are the prompt, the rest the completion; loss
on the completion and its eos only), ``--steps`` optimiser steps of ``--batch-size`` pairs (the training
set holds steps × batch pairs: one epoch, every pair once, each library shuffling with its own sampler),
AdamW at ``--lr`` with linear decay to 0, no warm-up, no weight decay, gradient norm clipped at 1, float32,
and GKD's generalized JSD with ``--beta`` on the next-token distributions at T = 1, with ``--lmbda`` the
share of batches whose completions the student samples (λ = 0: supervised KD on the data's completions,
deterministic; the default). The same pairs are tokenised once by kdistill's ``prompt_completion`` and
handed to TRL as ``input_ids`` + ``completion_mask`` (its collator's pre-tokenised form), so both train on
the same token ids.

- ``trl``: ``trl.experimental.gkd.GKDTrainer`` with :func:`gkd_config`. Against TRL's own defaults, bf16
  and gradient (activation) checkpointing are switched off (kdistill runs neither: float32 on a CPU without bf16 units);
  ``disable_dropout`` stays on (these Llamas have no dropout); one checkpoint is written at the last step
  (TRL's default ``save_strategy``; kdistill's Trainer always writes one), inside the timed call on both
  sides. Its loss (``generalized_jsd_loss``) is summed over the vocabulary and averaged over the batch's
  completion tokens, without T²; its ``temperature`` only samples (the loss runs at T = 1). With λ > 0 it
  divides a sampled batch's summed loss by the *data* batch's completion tokens (the Trainer counts
  ``num_items_in_batch`` before GKD samples); kdistill averages over the sampled tokens.
- ``kdistill``: ``kdistill.run.run`` on :func:`kdistill_raw`: ``token_jsd`` with ``beta`` (``token_kl`` when
  β = 0: the same forward KL, and the one loss a capture serves), T = 1 without T², the same reduction,
  ``hard_label_weight: 0``; λ > 0 adds ``on_policy: {lmbda, temperature, max_new_tokens}``. kdistill's
  default length-bucketed batches are kept (``--no-bucket``: random batches, as TRL's sampler).
- ``kdistill-capture``: the same kdistill run with ``capture: {path, k}``: the teacher's top-k made once
  before the rounds (``benchmarks/topk_capture.py``'s ``make_capture``; its seconds printed apart), read as
  ``token_topk_kl``; only for β = 0 and λ = 0 (a capture holds forward-KL targets of the data's tokens).

Batch order: each library draws its own (TRL: a seeded random sampler; kdistill: its seeded, by default
length-bucketed batches), from ``--data-seed`` (default ``--seed``; other values: other orders of the
same pairs). ``--same-order`` hands TRL kdistill's batches in kdistill's order (a sequential sampler over
the pairs reordered by :func:`kdistill_order`): the same job to the last batch, so any difference left in
the held-out loss is the libraries'.

Before the rounds, a check: the loss of both libraries' own code on the same first pairs (kdistill's
Distiller on its batch, TRL's ``compute_loss`` on its collator's batch) with the same models; they agree
to float rounding (TRL pads on the left, kdistill on the right: with rotary positions that changes
nothing but rounding).

Each run is a fresh process (``_worker``), the runs alternated A B C, then C B A, for ``--repeats`` rounds.
Per run: training tokens/s = the job's real tokens (steps × batch × mean real tokens of a training pair:
prompt + completion, no padding; the data's tokens also when λ > 0) over the library's training call
(``Trainer.train`` of the stage, from kdistill's summary; ``GKDTrainer.train()``, timed around the call);
peak RSS = ``VmHWM`` of the worker process (the kernel's high-water mark of resident memory, loading
included) and the sampled peak of ``RssAnon`` (``_common.AnonPeak``), the same for every run; the
held-out loss of the saved student, computed afterwards in this process by ONE function,
:func:`heldout_losses` (generalized JSD(β) to the teacher, and next-token cross-entropy, per completion
token of the held-out pairs). Ratios are taken within a round, then the median over rounds.

    PYTHONPATH=src .venv/bin/python benchmarks/lm.py --threads 2                 # SmolLM2 job, 2 rounds
    PYTHONPATH=src .venv/bin/python benchmarks/lm.py --threads 2 --beta 0.5      # JSD(0.5): no capture row
    PYTHONPATH=src .venv/bin/python benchmarks/lm.py --threads 2 --lmbda 0.5 --beta 0.5   # on-policy rows
    PYTHONPATH=src .venv/bin/python benchmarks/lm.py --threads 2 --libraries kdistill kdistill-capture --k 256
    PYTHONPATH=src .venv/bin/python benchmarks/lm.py --quick                     # smoke: tiny random Llama
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as common

SCRIPT = Path(__file__).resolve()
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKDTrainer lives in trl.experimental, and says so
LIBRARIES = ("trl", "kdistill", "kdistill-capture")
SMOLLM2_LAYERS = [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]  # 10 of 30 blocks (the demo keeps 15; fewer: a shorter job)


@dataclasses.dataclass(frozen=True)
class Job:
    """One causal-LM distillation job, written to ``job.json`` and read by every worker."""

    teacher: str  # a Hugging Face folder (causal LM with its tokenizer)
    layers: list[int]  # the teacher's blocks the student keeps
    train: str  # JSONL of {prompt, completion}
    heldout: str
    max_length: int
    batch_size: int
    lr: float
    steps: int
    beta: float
    lmbda: float
    temperature: float  # sampling temperature of on-policy batches (λ > 0)
    max_new_tokens: int
    seed: int
    threads: int | None
    k: int  # top-k of the capture
    capture: str  # the capture's folder
    bucket: bool | int  # kdistill's length-bucketed batches (an int: batches per length-sorted chunk)
    data_seed: int | None = None  # the seed both libraries draw their batches with (None: ``seed``)
    same_order: bool = False  # TRL trains on kdistill's batches, in kdistill's order

    def order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def has_capture(self) -> bool:
        return self.beta == 0 and self.lmbda == 0


# ---------------------------------------------------------------------------------------------
# The job: data, models, and its two mappings


def review_pairs(texts: list[str], prompt_words: int) -> list[dict]:
    """Each sentence of more than ``prompt_words`` + 1 words as ``{prompt: first words, completion: " " + rest}``."""
    pairs = []
    for text in texts:
        words = text.split()
        if len(words) >= prompt_words + 2:
            pairs.append({"prompt": " ".join(words[:prompt_words]), "completion": " " + " ".join(words[prompt_words:])})
    return pairs


def _write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def prepare_job(args: argparse.Namespace, work: Path) -> Job:
    """The teacher folder and the train/held-out pair files of this run (quick: a tiny random Llama)."""
    import random

    train_count = args.steps * args.batch_size
    if args.quick:
        from topk_capture import tiny_llama_teacher, tiny_review_texts

        teacher, layers = str(tiny_llama_teacher(work / "teacher")), [1]
        texts = tiny_review_texts(10**6)
    else:
        from kdistill.packaged import movie_reviews, smollm2_teacher_path

        teacher, layers = str(smollm2_teacher_path()), list(args.layers or SMOLLM2_LAYERS)
        texts = [text for text, _ in movie_reviews()]
    pairs = review_pairs(texts, args.prompt_words)
    random.Random(args.seed).shuffle(pairs)
    if len(pairs) < train_count + args.heldout:
        raise SystemExit(f"{len(pairs)} pairs, fewer than {train_count} for training + {args.heldout} held out; "
                         "lower --steps, --batch-size or --heldout.")
    return Job(teacher=teacher, layers=layers,
               train=_write_jsonl(work / "train.jsonl", pairs[:train_count]),
               heldout=_write_jsonl(work / "heldout.jsonl", pairs[train_count:train_count + args.heldout]),
               max_length=args.max_length, batch_size=args.batch_size, lr=args.lr, steps=args.steps, beta=args.beta,
               lmbda=args.lmbda, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
               threads=args.threads, k=args.k, capture=str(work / f"capture-k{args.k}"),
               bucket=args.bucket_chunk if args.bucket and args.bucket_chunk else args.bucket,
               data_seed=args.data_seed, same_order=args.same_order)


def kdistill_raw(job: Job, output_dir: Path, *, capture: bool = False) -> dict:
    """The job as a kdistill run config (``kdistill.run.run``)."""
    if job.beta == 0:  # forward KL(p_t ‖ p_s): what GKD's JSD is at β = 0, and what a capture serves
        match = {"loss": "token_kl", "args": {"temperature": 1.0, "t2_scale": False}}
    else:
        match = {"loss": "token_jsd", "args": {"beta": job.beta, "temperature": 1.0, "t2_scale": False}}
    raw = {"teacher": {"path": job.teacher, "task": "causal-lm"},
           "student": {"from_teacher": {"layers": list(job.layers)}},
           "matches": [{"teacher": "logits", "student": "logits", "name": "kd", **match}],
           "hard_label_weight": 0.0,
           "data": {"train": job.train, "kind": "prompt_completion", "max_length": job.max_length,
                    "batch_size": job.batch_size, "bucket": job.bucket, "seed": job.order_seed()},
           "training": {"lr": job.lr, "max_steps": job.steps, "warmup": 0, "weight_decay": 0.0,
                        "lr_schedule": "linear", "max_grad_norm": 1.0, "log_every": 10, "progress": False,
                        "tensorboard": False},
           "seed": job.seed, "output_dir": str(output_dir)}
    if job.lmbda > 0:
        raw["on_policy"] = {"lmbda": job.lmbda, "temperature": job.temperature, "max_new_tokens": job.max_new_tokens}
    if capture:
        raw["capture"] = {"path": job.capture, "k": job.k}
    return raw


def gkd_config(job: Job, output_dir: Path):
    """The job as TRL's ``GKDConfig``: optimiser, schedule and precision aligned with :func:`kdistill_raw`;
    one checkpoint at the last step, as kdistill's Trainer writes (TRL's default ``save_strategy``)."""
    from trl.experimental.gkd import GKDConfig

    return GKDConfig(
        output_dir=str(output_dir), per_device_train_batch_size=job.batch_size, gradient_accumulation_steps=1,
        learning_rate=job.lr, max_steps=job.steps, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch_fused", max_grad_norm=1.0, seed=job.seed, data_seed=job.order_seed(),
        lmbda=job.lmbda, beta=job.beta, temperature=job.temperature, max_new_tokens=job.max_new_tokens,
        max_length=job.max_length, bf16=False, fp16=False, activation_checkpointing=False,
        eval_strategy="no", save_strategy="steps", save_steps=job.steps, report_to="none", use_cpu=True, logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0)


def tokenizer_of(job: Job):
    """The teacher's tokenizer, padding as kdistill pads (its pad token, else its eos token)."""
    from kdistill.lm_data import pad_choice
    from kdistill.models import load_tokenizer

    tokenizer = load_tokenizer(job.teacher)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad_choice(tokenizer)[0]
    return tokenizer


def tokenized(job: Job, file: str, tokenizer):
    """The pairs of ``file`` tokenised by kdistill's ``prompt_completion`` (what a kdistill run trains on)."""
    from kdistill.lm_data import prompt_completion, read_lm_records

    return prompt_completion(read_lm_records(file, "prompt_completion"), tokenizer, job.max_length, source=file)


def trl_records(job: Job, tokenizer) -> list[dict]:
    """The training pairs in TRL's pre-tokenised form: ``input_ids`` and ``completion_mask`` (1 on the
    completion), the same token ids kdistill trains on; ``prompt`` (text) only keeps the collator from
    looking for chat ``messages``."""
    from kdistill.lm_data import IGNORE, read_lm_records

    dataset = tokenized(job, job.train, tokenizer)
    kept = [r for row, r in enumerate(read_lm_records(job.train, "prompt_completion")) if row not in set(dataset.skipped)]
    records = []
    for index, record in enumerate(kept):
        item = dataset[index]
        records.append({"prompt": record["prompt"], "input_ids": item["input_ids"],
                        "completion_mask": [int(label != IGNORE) for label in item["labels"]]})
    return records


def kdistill_order(job: Job, tokenizer) -> list[int]:
    """The training pairs in the order a kdistill run of ``job`` draws them (its first epoch's batches, one
    after another), from kdistill's own loader over the same tokenised pairs."""
    from kdistill.config import config_from_dict
    from kdistill.data import make_loader
    from kdistill.run_data import bucket_chunks

    config = config_from_dict(kdistill_raw(job, Path(job.train).parent / "order-probe"), import_from_base=False)
    loader = make_loader(tokenized(job, job.train, tokenizer), job.batch_size, shuffle=True, seed=config.data_seed(),
                         bucket=bool(job.bucket), bucket_size_multiplier=bucket_chunks(config))
    loader.batch_sampler.set_epoch(0)
    return [index for batch in loader.batch_sampler.batches() for index in batch]


def gkd_trainer(job: Job, student, teacher, tokenizer, output_dir: Path):
    """TRL's trainer of ``job``: its own random sampler, or with ``job.same_order`` kdistill's batches in
    kdistill's order (the records reordered, read in sequence)."""
    import datasets
    from trl.experimental.gkd import GKDTrainer

    records = trl_records(job, tokenizer)
    trainer_class = GKDTrainer
    if job.same_order:
        from torch.utils.data import SequentialSampler

        class InKdistillOrder(GKDTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return SequentialSampler(self.train_dataset)

        records, trainer_class = [records[i] for i in kdistill_order(job, tokenizer)], InKdistillOrder
    return trainer_class(model=student, teacher_model=teacher, args=gkd_config(job, output_dir),
                         train_dataset=datasets.Dataset.from_list(records), processing_class=tokenizer)


def job_tokens(job: Job, tokenizer) -> float:
    """The real tokens the job trains on: steps × batch × mean tokens of a training pair (no padding)."""
    lengths = tokenized(job, job.train, tokenizer).lengths
    return float(lengths.mean()) * job.steps * job.batch_size


# ---------------------------------------------------------------------------------------------
# Workers: one training run per process


def _train_trl(job: Job, out: Path) -> dict:
    import trl

    from kdistill.models import load_hf_model, student_from_teacher

    tokenizer = tokenizer_of(job)
    teacher = load_hf_model(job.teacher, task="causal-lm")
    trainer = gkd_trainer(job, student_from_teacher(teacher, list(job.layers)), teacher, tokenizer, out / "trl")
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trainer.model.save_pretrained(out / "student")
    return {"seconds": seconds, "steps": result.global_step,
            "settings": f"trl {trl.__version__}: GKDTrainer, bf16 {trainer.args.bf16}, activation checkpointing "
                        f"{trainer.args.activation_checkpointing}, optim {getattr(trainer.args.optim, 'value', trainer.args.optim)}, "
                        "random batches"}


def _train_kdistill(job: Job, out: Path, *, capture: bool) -> dict:
    import kdistill
    from kdistill.config import config_from_dict
    from kdistill.run import run

    summary = run(config_from_dict(kdistill_raw(job, out / "run", capture=capture), import_from_base=False))
    stage = summary["stages"][0]
    student = out / "run" / "student"
    settings = (f"kdistill {kdistill.__version__}: run, fp32, {_batching(job)} batches"
                + (f", top-k capture k {job.k}" if capture else ""))
    return {"seconds": stage["seconds"], "steps": stage["steps"], "student": str(student),
            "kdistill_tokens_per_second": stage.get("tokens_per_second"), "settings": settings}


def _batching(job: Job) -> str:
    if not job.bucket:
        return "random"
    return "length-bucketed" + (f" ({job.bucket} batches per sorted chunk)" if type(job.bucket) is int else "")


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", required=True, choices=LIBRARIES)
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    job = Job(**json.loads(Path(args.job).read_text()))
    common.set_threads(job.threads)
    import logging

    logging.disable(logging.WARNING)
    anon = common.AnonPeak()
    out = Path(args.out)
    if args.library == "trl":
        result = {"student": str(out / "student"), **_train_trl(job, out)}
    else:
        result = _train_kdistill(job, out, capture=args.library == "kdistill-capture")
    result["peak_rss_mb"] = common.peak_rss_mb()
    result["peak_anon_mb"] = anon.stop()
    result["folder"] = str(out)
    result["tokens"] = job_tokens(job, tokenizer_of(job))
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    common.print_json("worker", result)


# ---------------------------------------------------------------------------------------------
# The check and the shared evaluation (in the driver)


def same_loss_check(job: Job, work: Path):
    """Both libraries' own loss code on the job's first ``batch_size`` training pairs, same models:
    kdistill's Distiller on its collated batch, TRL's ``GKDTrainer.compute_loss`` on its collator's.
    Returns ``(result, teacher)``: the two losses, and the teacher for the evaluation."""
    import torch

    from kdistill.config import config_from_dict
    from kdistill.run_build import build

    parts = build(config_from_dict(kdistill_raw(job, work / "check"), import_from_base=False))
    dataset = parts.datasets["train"]
    examples = [dataset[i] for i in range(min(job.batch_size, len(dataset)))]
    with torch.no_grad():
        kdistill_loss = float(parts.distiller(parts.loaders["train"].collate_fn(examples)).loss)
    tokenizer = tokenizer_of(job)
    trainer = gkd_trainer(dataclasses.replace(job, same_order=False), parts.student, parts.teacher, tokenizer,
                          work / "check-trl")  # both read the pairs in file order here
    inputs = trainer.data_collator(trainer.train_dataset.select(range(len(examples))).to_list())
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, inputs))
    result = {"kdistill": kdistill_loss, "trl": trl_loss, "pairs": len(examples),
              "relative_difference": abs(kdistill_loss - trl_loss) / max(abs(trl_loss), 1e-12)}
    return result, parts.teacher.eval()


def heldout_batches(job: Job, teacher) -> list[tuple[dict, object]]:
    """The held-out pairs as right-padded batches with shifted targets, each with the teacher's logits
    at its loss positions (N, V), computed once for every student."""
    import torch

    from kdistill.lm_data import NextTokenTargets

    dataset = tokenized(job, job.heldout, tokenizer_of(job))
    collate = NextTokenTargets(dataset.collator())
    batches = []
    with torch.no_grad():
        for start in range(0, len(dataset), 16):
            batch = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
            logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            batches.append((batch, logits[batch["loss_mask"].bool()]))
    return batches


def heldout_losses(student, batches: list[tuple[dict, object]], *, beta: float) -> dict[str, float]:
    """The one evaluation of every trained student: generalized JSD(β) to the teacher (forward KL at
    β = 0; summed over the vocabulary) and next-token cross-entropy, each a mean over all completion
    tokens of the held-out pairs."""
    import torch
    import torch.nn.functional as F

    from kdistill.losses import token_jsd

    student.eval()
    jsd = ce = 0.0
    tokens = 0
    with torch.no_grad():
        for batch, teacher_logits in batches:
            mask = batch["loss_mask"].bool()
            logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
            count = int(mask.sum())
            jsd += float(token_jsd(logits, teacher_logits, beta=beta, t2_scale=False)) * count
            ce += float(F.cross_entropy(logits, batch["labels"][mask], reduction="sum"))
            tokens += count
    return {"heldout_loss": jsd / tokens, "heldout_ce": ce / tokens, "heldout_tokens": tokens}


def _load_student(folder: str):
    from kdistill.models import load_hf_model

    return load_hf_model(folder, task="causal-lm")


# ---------------------------------------------------------------------------------------------
# The driver


def _rounds(job_file: Path, work: Path, libraries: list[str], repeats: int, evaluate, log) -> dict[str, list[dict]]:
    """Every library once per round, A B C then C B A; each run in a fresh process, its student
    evaluated by ``evaluate(result)`` between runs (nothing else runs meanwhile)."""
    runs: dict[str, list[dict]] = {name: [] for name in libraries}
    for number in range(repeats):
        for name in libraries if number % 2 == 0 else libraries[::-1]:
            out = work / f"{name}-{number}"
            result = common.run_script_worker(sys.executable, SCRIPT,
                                              ["--library", name, "--job", str(job_file), "--out", str(out)],
                                              timeout=3600)
            if "tokens_per_second" in result:
                evaluate(result)
            runs[name].append(result)
            log(f"  round {number + 1}: {name}: " + (
                f"{result['tokens_per_second']:.1f} tokens/s, peak RSS {result['peak_rss_mb']:.0f} MiB, "
                f"held-out loss {result['heldout_loss']:.5g}"
                if "tokens_per_second" in result else f"FAILED: {result.get('error')}"))
    return runs


def _median_ratio(runs: dict[str, list[dict]], name: str, baseline: str, key: str) -> float | None:
    pairs = [(r[key], b[key]) for r, b in zip(runs[name], runs[baseline]) if key in r and key in b]
    return statistics.median(v / w for v, w in pairs) if pairs else None


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per library and the within-round ratios kdistill/TRL and capture/live."""
    keys = ("tokens_per_second", "peak_rss_mb", "peak_anon_mb", "heldout_loss", "heldout_ce")
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in keys if all(key in r for r in rows)}
               for name, rows in runs.items() if rows and all("tokens_per_second" in r for r in rows)}
    ratios = {}
    for name, baseline in (("kdistill", "trl"), ("kdistill-capture", "kdistill")):
        if name in medians and baseline in medians:
            ratios[f"{name}/{baseline}"] = {key: _median_ratio(runs, name, baseline, key) for key in keys}
    return {"median": medians, "ratios": ratios}


def targets(ratios: dict) -> dict[str, bool]:
    """Issue 19's targets on the median within-round ratios: kdistill ≥ 1.0× TRL's tokens/s at ≤ its peak
    RSS and an equal or better held-out loss; the capture ≥ 1.5× the live teacher's tokens/s at a held-out
    loss within 2%."""
    def holds(pair: str, key: str, test) -> bool:
        value = ratios[pair].get(key)
        return value is not None and bool(test(value))

    met = {}
    if "kdistill/trl" in ratios:
        met["kdistill tokens/s >= 1.0x TRL"] = holds("kdistill/trl", "tokens_per_second", lambda r: r >= 1.0)
        met["kdistill peak RSS <= TRL"] = holds("kdistill/trl", "peak_rss_mb", lambda r: r <= 1.0)
        met["kdistill held-out loss <= TRL"] = holds("kdistill/trl", "heldout_loss", lambda r: r <= 1.0)
    if "kdistill-capture/kdistill" in ratios:
        pair = "kdistill-capture/kdistill"
        met["capture tokens/s >= 1.5x live"] = holds(pair, "tokens_per_second", lambda r: r >= 1.5)
        met["capture held-out loss within 2% of live"] = holds(pair, "heldout_loss", lambda r: abs(r - 1.0) <= 0.02)
    return met


def print_tables(summary: dict) -> None:
    rows = [[name, f"{m['tokens_per_second']:.1f}", f"{m['peak_rss_mb']:.0f}", f"{m['peak_anon_mb']:.0f}",
             f"{m.get('heldout_loss', float('nan')):.5g}", f"{m.get('heldout_ce', float('nan')):.5g}"]
            for name, m in summary["median"].items()]
    print(common.table(rows, ["library", "tokens/s", "peak RSS MiB", "peak anon MiB", "held-out loss",
                              "held-out CE"]))
    rows = [[pair, *(f"{r[key]:.3f}" if r.get(key) is not None else "—"
                     for key in ("tokens_per_second", "peak_rss_mb", "peak_anon_mb", "heldout_loss", "heldout_ce"))]
            for pair, r in summary["ratios"].items()]
    if rows:
        print(common.table(rows, ["ratio (median over rounds)", "tokens/s", "peak RSS", "peak anon",
                                  "held-out loss", "held-out CE"]))
    for name, rows in summary["runs"].items():
        settings = next((r["settings"] for r in rows if "settings" in r), "failed")
        print(f"{name}: {settings}")
    for target, met in summary["targets"].items():
        print(f"target {target}: {'met' if met else 'NOT met'}")


def _make_capture(job: Job, work: Path, log) -> dict | None:
    """The capture of the job's training data (before the rounds), or None where a capture cannot serve it."""
    if not job.has_capture():
        log("no capture row: a capture serves forward KL (β = 0) on the data's own tokens (λ = 0)")
        return None
    from topk_capture import make_capture

    build_dir = work / "capture-build"
    capture = make_capture(kdistill_raw(job, build_dir, capture=True), build_dir, progress=False)
    log(f"capture: k {job.k}, {capture['tokens']:,} loss tokens, {capture['mib_on_disk']:.2f} MiB on disk, "
        f"{capture['seconds']:.1f} s with loading (not part of the rounds)")
    return capture


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny random Llama, 1 round of a few steps")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds (each runs every library)")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES),
                        help="the rows to run (default all; a ratio needs both of its rows)")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps (the training set: steps × batch pairs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=48, help="tokens per pair at most")
    parser.add_argument("--prompt-words", type=int, default=4, help="words of each sentence that make the prompt")
    parser.add_argument("--heldout", type=int, default=100, help="held-out pairs of the shared evaluation")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="the teacher blocks the student keeps (default: the demo's 10 of 30)")
    parser.add_argument("--beta", type=float, default=0.0, help="GKD's β: 0 forward KL, 0.5 JSD, 1 reverse KL")
    parser.add_argument("--lmbda", type=float, default=0.0, help="GKD's λ: share of on-policy (student-sampled) batches")
    parser.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of on-policy batches")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="sampled tokens per on-policy completion")
    parser.add_argument("--k", type=int, default=128,
                        help="capture: teacher tokens kept per position (kdistill's default)")
    parser.add_argument("--no-bucket", dest="bucket", action="store_false",
                        help="kdistill trains on random batches (default: its length-bucketed batches)")
    parser.add_argument("--bucket-chunk", type=int, default=None,
                        help="kdistill's batches per length-sorted chunk (data.bucket: N; default 50): smaller is "
                             "more random, with more padding")
    parser.add_argument("--seed", type=int, default=0, help="draws the training and held-out pairs (and, by default, "
                        "the batch order)")
    parser.add_argument("--data-seed", type=int, default=None,
                        help="the seed both libraries draw their batch order with (default: --seed): other orders of "
                             "the same pairs")
    parser.add_argument("--same-order", action="store_true",
                        help="TRL trains on kdistill's batches in kdistill's order (its sampler replaced by a "
                             "sequential one over the reordered pairs): the same job to the last batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every run (default: torch's)")
    parser.add_argument("--output", default="runs/lm-bench", help="folder of the runs and lm.json")
    parser.add_argument("--keep", action="store_true", help="keep every run's folder (default: removed once evaluated)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        worker_main(argv[1:])
        return {}
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.repeats, args.heldout, args.k = 3, 4, 1, 8, 8
        args.lr, args.max_length, args.prompt_words = 1e-3, 32, 3
    common.set_threads(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"lm: {common.machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    output = Path(args.output)
    work = Path(tempfile.mkdtemp(prefix="lm-bench-")) if args.quick else output
    work.mkdir(parents=True, exist_ok=True)
    job = prepare_job(args, work)
    job_file = work / "job.json"
    job_file.write_text(json.dumps(dataclasses.asdict(job), indent=2))
    log(f"job: teacher {job.teacher}, student blocks {job.layers}, {job.steps} steps × {job.batch_size} pairs, "
        f"lr {job.lr}, β {job.beta}, λ {job.lmbda}, seed {job.seed}, batch order seed {job.order_seed()}"
        + (", TRL in kdistill's batch order" if job.same_order else ""))

    check, teacher = same_loss_check(job, work)
    log(f"same loss on the first {check['pairs']} pairs, same models: kdistill {check['kdistill']:.6f}, "
        f"TRL {check['trl']:.6f} (relative difference {check['relative_difference']:.1e}; both: Σ over the "
        "vocabulary, mean over the batch's completion tokens, T = 1, no T²)")
    capture = _make_capture(job, work, log) if "kdistill-capture" in args.libraries else None
    libraries = [name for name in LIBRARIES if name in args.libraries
                 and (name != "kdistill-capture" or capture is not None)]
    batches = heldout_batches(job, teacher)

    def evaluate(result: dict) -> None:
        result.update(heldout_losses(_load_student(result["student"]), batches, beta=job.beta))
        if not args.keep:  # a SmolLM2 run leaves ~1 GB (student, checkpoint)
            shutil.rmtree(result["folder"], ignore_errors=True)

    runs = _rounds(job_file, work, libraries, args.repeats, evaluate, log)
    summary = {"job": dataclasses.asdict(job), "check": check, "capture": capture, "runs": runs, **summarise(runs)}
    summary["targets"] = targets(summary["ratios"])
    print_tables(summary)
    (output / "lm.json").parent.mkdir(parents=True, exist_ok=True)
    (output / "lm.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"wrote {output / 'lm.json'}")
    if args.quick:
        shutil.rmtree(work, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
