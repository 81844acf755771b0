"""Speed and memory, side by side: kdistill vs a hand-written loop vs TextBrewer and KnowledgeDistillation.

One command, sections picked with ``--section`` (default: all), each with a ``--quick`` smoke mode
and a full default bounded to about 10 minutes on two cores:

- ``peers``: the seed's TextBrewer example config (see ``_common``) per step — the raw loop,
  kdistill (eager attention, the same work as raw; and with its default hooked attention),
  TextBrewer 0.2.1.post1 and KnowledgeDistillation 1.0.4. Each method runs in its own subprocess
  (the peers in a scratch venv the benchmark makes: ``python -m venv /tmp/kdistill-peers``, then pip
  installs the peer and this venv's torch/transformers versions), alternated in rounds (A B C D,
  then D C B A …). Reported: steps/s as a ratio to the raw loop within each round (median), peak RSS.
  Each peer is also tried *as the seed article wrote it*; what fails on today's transformers is
  printed with its error, and the shim that made it run is named.
- ``attention``: attention features from hooked queries/keys (SDPA kept) vs eager attention, in
  one process — the faster is kdistill's ``attention="auto"``.
- ``cache``: the teacher cache on movie-review sentences: epoch 1 (fill) and epoch 2 (read) over an
  uncached epoch, alternated; time to first step uncached / cold cache / warm cache; disk use.
- ``fastpaths``: bf16 autocast, frozen word embeddings, torch.compile (``--compile``: minutes of
  compilation), teacher under inference_mode vs no_grad, length bucketing; each against the
  plain step in one process, alternated; plus the memory that freeing unread hidden states saves.
- ``e2e``: 3 epochs on movie-review sentences (MiniLM tokenizer, ≤ 64 tokens, ``--subset N``),
  kdistill with its best settings (at an equal or better final loss: word embeddings trained,
  random batches, the teacher cache filled in one length-sorted pass, ``unpad``; ``--e2e-*``
  flags switch each) vs TextBrewer with its best settings, each in a subprocess:
  wall-clock, peak RSS, and the final distillation loss of both students on the same held-out
  sentences, computed by the same code.

    PYTHONPATH=src .venv/bin/python benchmarks/speed.py --quick            # every section, smoke
    PYTHONPATH=src .venv/bin/python benchmarks/speed.py --section peers    # one section, full
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import _common as common

SECTIONS = ("peers", "attention", "cache", "fastpaths", "e2e")
PEER_VENV = Path("/tmp/kdistill-peers")
TEXTBREWER = "textbrewer==0.2.1.post1"
KNOWLEDGE_DISTILLATION = "knowledgedistillation==1.0.4"
MAIN_METHODS = ("raw", "kdistill", "kdistill-hooks")
PEER_METHODS = ("textbrewer", "knowledgedistillation")


# =============================================================================================
# Workers: one method in one process. Peer workers import only torch, transformers and the peer.


def _stamps(optimizer) -> list[float]:
    """Timestamps after every optimizer step (how every method is timed, whoever runs the loop)."""
    stamps: list[float] = []
    optimizer.register_step_post_hook(lambda *_: stamps.append(common.clock()))
    return stamps


def _rate(stamps: list[float], warmup: int) -> float:
    timed = stamps[warmup - 1:] if warmup else stamps
    return (len(timed) - 1) / (timed[-1] - timed[0])


def _adamw(params):
    import torch

    return torch.optim.AdamW(params, lr=common.LR, weight_decay=common.WEIGHT_DECAY)


def worker_raw(args) -> dict:
    teacher, student = common.build_models(attention="eager")
    batches = common.synthetic_batches(4)
    optimizer = _adamw(student.parameters())
    stamps = _stamps(optimizer)
    for i in range(args.warmup + args.steps):
        common.raw_step(teacher, student, optimizer, batches[i % len(batches)])
    return {"rate": _rate(stamps, args.warmup)}


def worker_kdistill(args) -> dict:
    from kdistill import Distiller

    attention = "eager" if args.method == "kdistill" else "auto"
    teacher, student = common.build_models(attention="eager" if attention == "eager" else "sdpa")
    distiller = Distiller(teacher, student, common.kdistill_matches(), attention=attention)
    batches = common.synthetic_batches(4)
    optimizer = _adamw(distiller.parameters())
    stamps = _stamps(optimizer)
    for i in range(args.warmup + args.steps):
        out = distiller(batches[i % len(batches)])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"rate": _rate(stamps, args.warmup), "attention": attention}


def _seed_textbrewer_adaptor(batch, model_outputs):
    """The seed article's adaptor, verbatim (4-tuple unpacking of the model output)."""
    last_hidden_state, pooler_output, hidden_states, attentions = model_outputs
    hidden_states = list(hidden_states)
    hidden_states.append(pooler_output)
    return {"inputs_mask": batch["attention_mask"], "attention": attentions, "hidden": hidden_states}


def _shim_textbrewer_adaptor(batch, model_outputs):
    """Shim: read the ModelOutput by name (today's transformers returns a dict-like ModelOutput)."""
    hidden_states = list(model_outputs.hidden_states) + [model_outputs.pooler_output]
    return {"inputs_mask": batch["attention_mask"], "attention": model_outputs.attentions, "hidden": hidden_states}


def _textbrewer_distiller(teacher, student, out_dir: Path, adaptor):
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    matches = [{"layer_T": t, "layer_S": s, "feature": feature, "weight": 1,
                "loss": "hidden_mse" if feature == "hidden" else "attention_mse"}
               for feature, t, s in common.SEED_MATCHES]
    train_config = TrainingConfig(device="cpu", log_dir=None, output_dir=str(out_dir), ckpt_frequency=1,
                                  ckpt_epoch_frequency=1, ckpt_steps=10**9)
    distill_config = DistillationConfig(intermediate_matches=matches)
    return GeneralDistiller(train_config=train_config, distill_config=distill_config, model_T=teacher,
                            model_S=student, adaptor_T=adaptor, adaptor_S=adaptor)


def _as_seed_models():
    """The seed's models: output flags in the BertConfig, today's default (SDPA) attention."""
    return common.build_models(attention=None, output_flags=True)


def _eager_models():
    """The shim's models: output flags in the config and eager attention (SDPA returns no weights)."""
    return common.build_models(attention="eager", output_flags=True)


def _try(fn) -> str | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to report whatever breaks
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return None


def worker_textbrewer(args) -> dict:
    out_dir = Path(tempfile.mkdtemp(prefix="kd-textbrewer-"))
    batches = [common.model_inputs(b) for b in common.synthetic_batches(4)]
    result = {}
    # 1. As the seed wrote it.
    teacher, student = _as_seed_models()
    distiller = _textbrewer_distiller(teacher, student, out_dir, _seed_textbrewer_adaptor)
    result["as_is"] = _try(lambda: distiller.train(_adamw(student.parameters()), batches, num_steps=1))
    # 2. With the seed's adaptor but eager attention (so attentions are not empty).
    teacher, student = _eager_models()
    distiller = _textbrewer_distiller(teacher, student, out_dir, _seed_textbrewer_adaptor)
    result["as_is_eager"] = _try(lambda: distiller.train(_adamw(student.parameters()), batches, num_steps=1))
    # 3. The shim's adaptor but SDPA (attentions come back empty).
    teacher, student = _as_seed_models()
    distiller = _textbrewer_distiller(teacher, student, out_dir, _shim_textbrewer_adaptor)
    result["shim_sdpa"] = _try(lambda: distiller.train(_adamw(student.parameters()), batches, num_steps=1))
    # 4. Shimmed: adaptor reads the ModelOutput by name; eager attention.
    teacher, student = _eager_models()
    result["shim"] = ("adaptor reads ModelOutput.hidden_states/.attentions/.pooler_output by name "
                      "(not 4-tuple unpacking); attn_implementation='eager' (SDPA returns no attentions)")
    distiller = _textbrewer_distiller(teacher, student, out_dir, _shim_textbrewer_adaptor)
    optimizer = _adamw(student.parameters())
    stamps = _stamps(optimizer)
    distiller.train(optimizer, batches, num_steps=args.warmup + args.steps, max_grad_norm=-1.0)
    result["rate"] = _rate(stamps, args.warmup)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _kd_config():
    config = []
    for feature, t, s in common.SEED_MATCHES:
        if feature == "hidden":
            tl = "embedding_layer" if t == 0 else f"bert_layer{t}"
            sl = "embedding_layer" if s == 0 else f"bert_layer{s}"
            name = "embedding" if t == 0 else "hidden_states"
            config.append({"teacher_layer_name": tl, "teacher_layer_output_name": name,
                           "student_layer_name": sl, "student_layer_output_name": name,
                           "loss": {"loss_function": "mse_with_mask", "args": {}}, "weight": 1.0})
        else:  # attention of block t (0-based) lives in bert_layer{t+1}
            config.append({"teacher_layer_name": f"bert_layer{t + 1}", "teacher_layer_output_name": "attention",
                           "student_layer_name": f"bert_layer{s + 1}", "student_layer_output_name": "attention",
                           "loss": {"loss_function": "attention_mse_with_mask", "args": {}}, "weight": 1.0})
    return config


def _seed_kd_adaptor(model_output):
    """The seed article's KnowledgeDistillation output adaptor, verbatim (4-tuple unpacking)."""
    last_hidden_state, pooler_output, hidden_states, attentions = model_output
    output = {"embedding_layer": {"embedding": hidden_states[0]}}
    for idx in range(len(attentions)):
        output["bert_layer" + str(idx + 1)] = {"hidden_states": hidden_states[idx + 1], "attention": attentions[idx]}
    output["pred_layer"] = {"pooler_output": pooler_output}
    return output


def _shim_kd_adaptor(model_output):
    """Shim: the same dict, read from the ModelOutput by name."""
    hidden_states, attentions = model_output.hidden_states, model_output.attentions
    output = {"embedding_layer": {"embedding": hidden_states[0]}}
    for idx in range(len(attentions)):
        output["bert_layer" + str(idx + 1)] = {"hidden_states": hidden_states[idx + 1], "attention": attentions[idx]}
    output["pred_layer"] = {"pooler_output": model_output.pooler_output}
    return output


def worker_knowledgedistillation(args) -> dict:
    from knowledge_distillation import KnowledgeDistiller, MultiLayerBasedDistillationLoss
    from knowledge_distillation.Evaluator.multi_layer_based_distillation_evaluator import (
        MultiLayerBasedDistillationEvaluator,
    )

    out_dir = Path(tempfile.mkdtemp(prefix="kd-kd-"))
    batches = [common.model_inputs(b) for b in common.synthetic_batches(4)]

    def data_adaptor(device, batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        return batch, batch

    def run(teacher, student, adaptor, steps):
        loss_model = MultiLayerBasedDistillationLoss(distill_config=_kd_config(), teacher_output_adaptor=adaptor,
                                                     student_output_adaptor=adaptor)
        optimizer = _adamw(student.parameters())
        stamps = _stamps(optimizer)
        evaluator = MultiLayerBasedDistillationEvaluator(save_dir=str(out_dir), save_step=None, print_loss_step=10**9)
        distiller = KnowledgeDistiller(teacher_model=teacher, student_model=student,
                                       train_dataloader=[batches[i % len(batches)] for i in range(steps)],
                                       dev_dataloader=None, device="cpu", loss_model=loss_model,
                                       optimizer=optimizer, evaluator=evaluator, num_epoch=1,
                                       train_data_adaptor=data_adaptor, dev_data_adaptor=None)
        distiller.distillate()
        return stamps

    result = {}
    teacher, student = _as_seed_models()
    result["as_is"] = _try(lambda: run(teacher, student, _seed_kd_adaptor, 1))
    teacher, student = _eager_models()
    result["as_is_eager"] = _try(lambda: run(teacher, student, _seed_kd_adaptor, 1))
    teacher, student = _as_seed_models()
    result["shim_sdpa"] = _try(lambda: run(teacher, student, _shim_kd_adaptor, 1))
    teacher, student = _eager_models()
    result["shim"] = ("installed with --no-deps (its setup requires a package named 'python>=3.6'); output "
                      "adaptor reads ModelOutput by name; attn_implementation='eager'")
    stamps = run(teacher, student, _shim_kd_adaptor, args.warmup + args.steps)
    result["rate"] = _rate(stamps, args.warmup)
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------
# End-to-end workers


def _load_e2e_data(path: Path) -> dict:
    import numpy as np

    data = np.load(path)
    return {k: data[k] for k in data.files}


def _e2e_batches_for_textbrewer(data: dict, batch_size: int, seed: int):
    """Random batches padded to their own longest example (better than the seed's fixed 64)."""
    import torch

    ids, offsets, types = data["input_ids"], data["offsets"], data["token_type_ids"]
    examples = [(ids[offsets[i]:offsets[i + 1]], types[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]

    def collate(items):
        longest = max(len(x[0]) for x in items)
        out = {"input_ids": torch.zeros(len(items), longest, dtype=torch.long),
               "attention_mask": torch.zeros(len(items), longest, dtype=torch.long),
               "token_type_ids": torch.zeros(len(items), longest, dtype=torch.long)}
        for row, (x, t) in enumerate(items):
            out["input_ids"][row, :len(x)] = torch.as_tensor(x, dtype=torch.long)
            out["attention_mask"][row, :len(x)] = 1
            out["token_type_ids"][row, :len(x)] = torch.as_tensor(t, dtype=torch.long)
        return out

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(examples, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                       generator=generator)


def worker_e2e_textbrewer(args) -> dict:
    import torch
    from transformers import get_linear_schedule_with_warmup

    out = Path(args.out)
    data = _load_e2e_data(Path(args.data))
    teacher, student = _eager_models()
    start = common.clock()
    loader = _e2e_batches_for_textbrewer(data, common.BATCH, seed=0)
    distiller = _textbrewer_distiller(teacher, student, out / "textbrewer", _shim_textbrewer_adaptor)
    optimizer = _adamw(student.parameters())
    total = len(loader) * args.epochs
    losses = []
    original = distiller.train_on_batch

    def train_on_batch(batch, extra):
        loss, parts = original(batch, extra)
        losses.append(float(loss))
        return loss, parts

    distiller.train_on_batch = train_on_batch
    stamps = _stamps(optimizer)
    distiller.train(optimizer, loader, num_epochs=args.epochs, scheduler_class=get_linear_schedule_with_warmup,
                    scheduler_args={"num_warmup_steps": int(0.1 * total), "num_training_steps": total},
                    max_grad_norm=1.0)
    wall = common.clock() - start
    torch.save(student.state_dict(), out / "textbrewer-student.pt")
    per_epoch = len(loader)
    return {"wall_s": wall, "steps": len(stamps), "first_step_s": stamps[0] - start,
            "train_loss_last_epoch": statistics.mean(losses[-per_epoch:]),
            "settings": "eager attention (needed), random batches padded per batch, all parameters trained, "
                        "no TensorBoard, checkpoint once per epoch, AdamW + linear warm-up/decay, clip 1.0"}


def worker_e2e_kdistill(args) -> dict:
    import torch

    from kdistill import Distiller, TrainConfig, Trainer
    from kdistill.cache import TeacherCache, cached_loader
    from kdistill.data import TokenizedDataset, make_loader
    from kdistill.models import load_tokenizer
    from kdistill.packaged import minilm_teacher_path
    from kdistill.train import Callback

    out = Path(args.out)
    texts = json.loads(Path(args.texts).read_text())["train"]
    teacher, student = common.build_models(attention="sdpa")
    start = common.clock()
    tokenizer = load_tokenizer(minilm_teacher_path())
    dataset = TokenizedDataset(texts, None, tokenizer, max_length=common.SEQ)
    distiller = Distiller(teacher, student, common.kdistill_matches())  # attention auto: hooks
    loader = make_loader(dataset, common.BATCH, shuffle=True, seed=0, bucket=not args.no_bucket,
                         bucket_size_multiplier=args.bucket_multiplier)
    if not args.no_cache:
        cache = TeacherCache(out / "cache", distiller, dataset=dataset)
        if args.fill_sorted:  # one teacher pass over length-sorted batches: no padding, then any batches
            cache.fill(make_loader(dataset, args.fill_batch, shuffle=False))
        loader = cached_loader(loader, cache)

    class Stamps(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_step(self, state) -> None:
            self.times.append(common.clock())
            self.losses.append(state.parts["loss"])

    stamps = Stamps()
    freeze = [] if args.train_embeddings else ["*word_embeddings*"]
    config = TrainConfig(epochs=args.epochs, lr=common.LR, weight_decay=common.WEIGHT_DECAY, warmup=0.1,
                         max_grad_norm=1.0, freeze=freeze, progress=False, tensorboard=False, unpad=args.unpad)
    Trainer(distiller, loader, config=config, output_dir=out / "kdistill", callbacks=[stamps]).train()
    wall = common.clock() - start
    torch.save(student.state_dict(), out / "kdistill-student.pt")
    per_epoch = len(loader)
    epoch_rates = []
    for e in range(args.epochs):
        times = stamps.times[e * per_epoch:(e + 1) * per_epoch]
        if len(times) > 1:
            epoch_rates.append((len(times) - 1) / (times[-1] - times[0]))
    return {"wall_s": wall, "steps": len(stamps.times), "first_step_s": stamps.times[0] - start,
            "train_loss_last_epoch": statistics.mean(stamps.losses[-per_epoch:]), "epoch_steps_per_s": epoch_rates,
            "settings": "attention from hooked q/k (SDPA kept), "
                        + ("no cache, " if args.no_cache else
                           f"teacher cache (filled first, length-sorted batches of {args.fill_batch}), " if args.fill_sorted
                           else "teacher cache (filled in epoch 1), ")
                        + ("word embeddings trained, " if args.train_embeddings else "frozen word embeddings, ")
                        + ("random batches padded per batch, " if args.no_bucket else "length-bucketed batches, ")
                        + ("linears on real tokens only (unpad), " if args.unpad else "")
                        + "AdamW + linear warm-up/decay, clip 1.0, checkpoint once per epoch"}


WORKERS = {
    "raw": worker_raw, "kdistill": worker_kdistill, "kdistill-hooks": worker_kdistill,
    "textbrewer": worker_textbrewer, "knowledgedistillation": worker_knowledgedistillation,
    "e2e-textbrewer": worker_e2e_textbrewer, "e2e-kdistill": worker_e2e_kdistill,
}


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True, choices=sorted(WORKERS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--texts", default=None)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--train-embeddings", action="store_true")
    parser.add_argument("--no-bucket", action="store_true")
    parser.add_argument("--bucket-multiplier", type=int, default=50)
    parser.add_argument("--fill-sorted", action="store_true")
    parser.add_argument("--unpad", action="store_true")
    parser.add_argument("--fill-batch", type=int, default=64)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    common.use_clock(args.clock)
    import logging

    logging.disable(logging.WARNING)
    anon = common.AnonPeak()
    result = WORKERS[args.method](args)
    result["peak_rss_mb"] = common.peak_rss_mb()
    result["peak_anon_mb"] = anon.stop()
    common.print_json("worker", result)


# =============================================================================================
# The driver


def peer_python(venv: Path, log) -> tuple[str | None, dict[str, str]]:
    """The scratch venv's python with the peers installed; and, per peer, why it is unavailable."""
    import torch
    import transformers

    problems: dict[str, str] = {}
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating the scratch venv {venv} ...")
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode:
            return None, {p: f"python -m venv failed: {made.stderr.strip()[-300:]}" for p in PEER_METHODS}
    torch_version = torch.__version__.split("+")[0]
    steps = [
        ("textbrewer", ["install", "-q", f"torch=={torch_version}", f"transformers=={transformers.__version__}",
                        TEXTBREWER]),
        ("knowledgedistillation", ["install", "-q", "--no-deps", KNOWLEDGE_DISTILLATION]),
    ]
    for peer, pip_args in steps:
        module = "textbrewer" if peer == "textbrewer" else "knowledge_distillation"
        if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0:
            continue
        log(f"pip {' '.join(pip_args)} (into {venv}) ...")
        done = subprocess.run([str(python), "-m", "pip", *pip_args], capture_output=True, text=True)
        if done.returncode:
            problems[peer] = f"pip install failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
            continue
        check = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
        if check.returncode:
            problems[peer] = f"installed but 'import {module}' fails: {check.stderr.strip().splitlines()[-1]}"
    versions = subprocess.run([str(python), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                              capture_output=True, text=True).stdout.strip()
    log(f"scratch venv: torch/transformers {versions}; this venv: {torch.__version__} {transformers.__version__}")
    return str(python), problems


def run_worker(python: str, method: str, extra: list[str], *, timeout: int = 900) -> dict:
    return common.run_script_worker(python, Path(__file__).resolve(), ["--method", method, *extra], timeout=timeout)


def section_peers(args, log) -> dict:
    steps, rounds = (3, 1) if args.quick else (args.steps or 10, args.rounds or 3)
    threads = (["--threads", str(args.threads)] if args.threads else []) + ["--clock", args.clock]
    pythons = {m: sys.executable for m in MAIN_METHODS}
    python, problems = (None, {}) if args.no_peers else peer_python(Path(args.peer_venv), log)
    if args.no_peers:
        problems = {p: "skipped (--no-peers)" for p in PEER_METHODS}
    for peer in PEER_METHODS:
        if peer not in problems and python:
            pythons[peer] = python
    methods = list(pythons)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    log(f"peers: {rounds} round(s) x {steps} steps per method, each in its own process, alternated")
    for r in range(rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        for method in order:
            res = run_worker(pythons[method], method, ["--steps", str(steps), "--warmup", "2", *threads])
            results[method].append(res)
            log(f"  round {r + 1}: {method}: " + (f"{res['rate']:.3f} steps/s, peak RSS {res['peak_rss_mb']:.0f} MiB"
                                                 if "rate" in res else f"FAILED: {res.get('error')}"))
    rows, summary = [], {}
    for method in methods + [p for p in PEER_METHODS if p in problems]:
        runs = results.get(method, [])
        ok = [r for r in runs if "rate" in r]
        if method in problems or not ok:
            reason = problems.get(method) or (runs[0].get("error") if runs else "not run")
            rows.append([method, "—", "—", "—", "—", f"unavailable: {reason}"])
            summary[method] = {"unavailable": reason}
            continue
        paired = [r["rate"] / b["rate"] for r, b in zip(runs, results["raw"]) if "rate" in r and "rate" in b]
        ratio = statistics.median(paired) if paired else float("nan")
        rss = max(r["peak_rss_mb"] for r in ok)
        anon = max(r["peak_anon_mb"] for r in ok)
        note = ""
        if "as_is" in ok[0]:
            note = (f"as the seed wrote it: {ok[0]['as_is'] or 'runs'}; + eager attention: "
                    f"{ok[0]['as_is_eager'] or 'runs'}; shim adaptor + SDPA: {ok[0]['shim_sdpa'] or 'runs'}; "
                    f"measured with shim: {ok[0]['shim']}")
        elif method.startswith("kdistill"):
            note = f"attention {ok[0]['attention']}"
        rows.append([method, f"{statistics.mean(r['rate'] for r in ok):.3f}", f"{ratio:.3f}", f"{rss:.0f}",
                     f"{anon:.0f}", note])
        summary[method] = {"ratio_to_raw": ratio, "peak_rss_mb": rss, "peak_anon_mb": anon, **{k: ok[0][k] for k in ("as_is", "as_is_eager", "shim_sdpa", "shim") if k in ok[0]}}
    print(common.table(rows, ["method", "steps/s", "ratio to raw", "peak RSS MiB", "peak anonymous MiB", "notes"]))
    return summary


def _alternate_steps(steppers: dict, steps: int | dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    counts = steps if isinstance(steps, dict) else {name: steps for name in steppers}
    return common.alternate({name: (lambda fn=fn, n=counts[name]: common.steps_per_second(fn, n, warmup=warmup))
                             for name, fn in steppers.items()}, rounds)


def _distiller_stepper(distiller, batches, *, autocast: bool = False, params=None):
    import contextlib

    import torch

    optimizer = _adamw(params if params is not None else [p for p in distiller.parameters() if p.requires_grad])

    def step(i: int) -> None:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            out = distiller(batches[i % len(batches)])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def section_attention(args, log) -> dict:
    from kdistill import Distiller
    from kdistill.adapters import make_adapter

    steps, rounds = (2, 1) if args.quick else (args.steps or 6, args.rounds or 6)
    teacher_e, student = common.build_models(attention="eager")
    batches = common.synthetic_batches(4)

    def sdpa_copy(model):
        model = copy.deepcopy(model)
        model.set_attn_implementation("sdpa")
        return model

    eager = Distiller(teacher_e, student, common.kdistill_matches(), attention="eager")
    hooks = Distiller(sdpa_copy(teacher_e), sdpa_copy(student), common.kdistill_matches(), attention="hooks")
    # Teacher by hooks (3 of its 12 blocks read), student eager (all 3 of its blocks read).
    mixed = Distiller(sdpa_copy(teacher_e), copy.deepcopy(student), common.kdistill_matches(), attention="hooks")
    mixed.student_adapter = make_adapter(mixed.student, [r for b in mixed.bound for r in b.student_refs],
                                         attention="eager", where="student")
    log(f"attention: kdistill step, attention maps from hooked q/k (SDPA kept) vs eager attention, "
        f"{rounds} x {steps} steps")
    rates = _alternate_steps({"eager": _distiller_stepper(eager, batches), "hooks": _distiller_stepper(hooks, batches),
                              "teacher hooks + student eager": _distiller_stepper(mixed, batches)}, steps, rounds)
    step_ratios = common.ratios(rates, "eager")

    inputs = batches[0]
    forward = {"eager": lambda i: eager.teacher_features(inputs), "hooks": lambda i: hooks.teacher_features(inputs)}
    forward_rates = _alternate_steps(forward, max(steps, 3), rounds)
    teacher_ratio = common.ratios(forward_rates, "eager")["hooks"]
    rows = [[k, f"{statistics.mean(v):.3f}", f"{step_ratios[k]:.3f}"] for k, v in rates.items()]
    print(common.table(rows, ["attention (step)", "steps/s", "ratio to eager"]))
    print(f"teacher forward alone (3 of 12 blocks read), hooks/eager: {teacher_ratio:.3f}")
    best = max(step_ratios, key=step_ratios.get)
    print(f"fastest step: {best}; attention='auto' uses hooks for BERT-like encoders")
    return {"step_ratios_to_eager": step_ratios, "teacher_forward_hooks_over_eager": teacher_ratio, "fastest": best}


def _movie_texts(count: int, *, offset: int = 0, seed: int = 0) -> list[str]:
    import numpy as np

    from kdistill.packaged import movie_reviews

    reviews = movie_reviews()
    order = np.random.default_rng(seed).permutation(len(reviews))
    return [reviews[i][0] for i in order[offset:offset + count]]


def _minilm_dataset(texts):
    from kdistill.data import TokenizedDataset
    from kdistill.models import load_tokenizer
    from kdistill.packaged import minilm_teacher_path

    return TokenizedDataset(texts, None, load_tokenizer(minilm_teacher_path()), max_length=common.SEQ)


def section_cache(args, log) -> dict:
    from kdistill import Distiller
    from kdistill.cache import TeacherCache, cached_loader
    from kdistill.data import make_loader
    from kdistill.train.optim import freeze_parameters

    examples = 64 if args.quick else (args.cache_examples or 512)
    rounds = 1 if args.quick else (args.rounds or 2)
    teacher, student = common.build_models(attention="sdpa")
    dataset = _minilm_dataset(_movie_texts(examples))
    root = Path(tempfile.mkdtemp(prefix="kdistill-cache-bench-"))
    log(f"cache: {examples} movie-review sentences (mean {dataset.teacher.lengths.mean():.1f} tokens), "
        f"batch {common.BATCH}, {rounds} round(s); an epoch is one pass; AdamW on the trainable parameters")

    def epoch(distiller, loader, optimizer) -> float:
        count = 0
        start = common.clock()
        for batch in loader:
            out = distiller(batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            count += 1
        return count / (common.clock() - start)

    summary = {}
    variants = {"frozen word embeddings": ["*word_embeddings*"], "all parameters": []}
    last_cache = None
    for variant, freeze in variants.items():
        rates = {"uncached": [], "cached epoch 1 (fill)": [], "cached epoch 2 (read)": []}
        for r in range(rounds):
            model = copy.deepcopy(student)
            if freeze:
                freeze_parameters(model, freeze)
            distiller = Distiller(teacher, model, common.kdistill_matches())
            optimizer = _adamw([p for p in distiller.parameters() if p.requires_grad])
            plain = make_loader(dataset, common.BATCH, shuffle=True, seed=r)
            last_cache = TeacherCache(root / f"{len(summary)}-{r}", distiller, dataset=dataset)
            cached = cached_loader(plain, last_cache)
            distiller(next(iter(plain)))  # prepare outside the timing
            for kind in (["uncached", "cached"] if r % 2 == 0 else ["cached", "uncached"]):
                if kind == "uncached":
                    rates["uncached"].append(epoch(distiller, plain, optimizer))
                else:
                    rates["cached epoch 1 (fill)"].append(epoch(distiller, cached, optimizer))
                    rates["cached epoch 2 (read)"].append(epoch(distiller, cached, optimizer))
            log(f"  {variant}, round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} steps/s" for k, v in rates.items()))
        result = common.ratios(rates, "uncached")
        rows = [[k, f"{statistics.mean(v):.3f}", f"{result[k]:.3f}"] for k, v in rates.items()]
        print(f"{variant}:")
        print(common.table(rows, ["epoch", "steps/s", "ratio to uncached"]))
        summary[variant] = result
    disk = last_cache.disk_bytes()

    # Time to first step: build the Distiller (+ cache: hash weights and data), one step. Models exist.
    def first_step(with_cache: bool, folder: Path) -> float:
        start = time.perf_counter()
        distiller = Distiller(teacher, copy.deepcopy(student), common.kdistill_matches())
        loader = make_loader(dataset, common.BATCH, shuffle=True, seed=0)
        if with_cache:
            loader = cached_loader(loader, TeacherCache(folder, distiller, dataset=dataset))
        optimizer = _adamw(distiller.parameters())
        out = distiller(next(iter(loader)))
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    first_step(False, root / "none")  # warm-up: first-time allocations go to no one
    first = {"uncached": first_step(False, root / "none"), "cold cache": first_step(True, root / "cold"),
             "warm cache (complete)": first_step(True, last_cache.directory)}
    print("time to first step (wall): " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items()))
    per_example = disk / examples
    print(f"disk: {disk / 2**20:.1f} MiB for {examples} sentences ({per_example / 1024:.0f} KiB each; "
          f"~{per_example * 10568 / 2**30:.2f} GiB for all 10,568)")
    shutil.rmtree(root, ignore_errors=True)
    return {"ratios": summary, "first_step_s": first, "disk_bytes": disk, "examples": examples}


def section_fastpaths(args, log) -> dict:
    import torch

    from kdistill import Distiller
    from kdistill.data import make_loader, padding_fraction
    from kdistill.train.optim import freeze_parameters

    steps, rounds = (2, 1) if args.quick else (args.steps or 8, args.rounds or 3)
    teacher, student = common.build_models(attention="sdpa")
    batches = common.synthetic_batches(4)

    def variant(freeze: bool = False, compile_models: bool = False):
        model = copy.deepcopy(student)
        teach = copy.deepcopy(teacher) if compile_models else teacher
        if freeze:
            freeze_parameters(model, ["*word_embeddings*"])
        if compile_models:
            model.compile()
            teach.compile()
        return Distiller(teach, model, common.kdistill_matches())

    steppers = {
        "plain": _distiller_stepper(variant(), batches),
        "bf16 autocast": _distiller_stepper(variant(), batches, autocast=True),
        "frozen word embeddings": _distiller_stepper(variant(freeze=True), batches),
    }
    if args.compile:
        log("compiling student and teacher (torch.compile; takes minutes on CPU) ...")
        start = time.perf_counter()
        compiled = _distiller_stepper(variant(compile_models=True), batches)
        compiled(0)
        log(f"  first compiled step took {time.perf_counter() - start:.0f} s")
        steppers["torch.compile"] = compiled
    counts = {name: steps for name in steppers}
    counts["bf16 autocast"] = max(1, steps // 4)  # ~10x slower on CPUs without native bf16
    log(f"fastpaths: kdistill steps (attention auto), {rounds} rounds of {counts} steps, alternated")
    rates = _alternate_steps(steppers, counts, rounds)
    result = {"step_ratios": common.ratios(rates, "plain")}
    rows = [[k, f"{statistics.mean(v):.3f}", f"{result['step_ratios'][k]:.3f}"] for k, v in rates.items()]
    print(common.table(rows, ["variant", "steps/s", "ratio to plain"]))

    # Teacher forward: no_grad vs inference_mode.
    inputs = common.model_inputs(batches[0])

    def forward(mode):
        def run(i):
            with mode():
                teacher(**inputs, output_hidden_states=True)
        return run

    teacher_rates = _alternate_steps({"no_grad": forward(torch.no_grad), "inference_mode": forward(torch.inference_mode)},
                                     max(steps, 3), rounds)
    result["inference_mode_over_no_grad"] = common.ratios(teacher_rates, "no_grad")["inference_mode"]
    print(f"teacher forward, inference_mode/no_grad: {result['inference_mode_over_no_grad']:.3f}")

    # The optimiser update alone on the student's parameters (word embeddings included): torch's
    # default for-loop AdamW, the foreach one, and the fused one the Trainer uses (make_adamw).
    from kdistill.train.optim import make_adamw

    params = [torch.nn.Parameter(p.detach().clone()) for p in student.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    updates = {"for-loop": torch.optim.AdamW(params, lr=common.LR, foreach=False),
               "foreach": torch.optim.AdamW(params, lr=common.LR, foreach=True),
               "fused (Trainer)": make_adamw([{"params": params, "lr": common.LR}])}
    update_rates = _alternate_steps({k: (lambda i, o=o: o.step()) for k, o in updates.items()},
                                    max(steps, 5), rounds)
    result["adamw_update_ratios"] = common.ratios(update_rates, "for-loop")
    print("AdamW update of the student's parameters, ratio to the for-loop one: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["adamw_update_ratios"].items()))

    # Freeing unread hidden states: what they hold per step.
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=True)
    read = {t for feature, t, _ in common.SEED_MATCHES if feature == "hidden"}
    unread = sum(h.numel() * h.element_size() for i, h in enumerate(out.hidden_states) if i not in read)
    result["unread_teacher_hidden_mb"] = unread / 2**20
    print(f"teacher hidden states no match reads: {unread / 2**20:.1f} MiB per batch (the student's are "
          f"saved for backward anyway); peak RSS of this process: {common.peak_rss_mb():.0f} MiB")

    # Length bucketing on real sentences: examples per second over one pass.
    count = 64 if args.quick else 320
    dataset = _minilm_dataset(_movie_texts(count))
    distiller = Distiller(teacher, copy.deepcopy(student), common.kdistill_matches())
    optimizer = _adamw(distiller.parameters())
    loaders = {"random batches": make_loader(dataset, common.BATCH, shuffle=True, seed=0, bucket=False),
               "length-bucketed": make_loader(dataset, common.BATCH, shuffle=True, seed=0, bucket=True)}

    def one_pass(loader):
        def run():
            start = common.clock()
            for batch in loader:
                out = distiller(batch)
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return count / (common.clock() - start)
        return run

    distiller(next(iter(loaders["random batches"])))
    pass_rates = common.alternate({k: one_pass(v) for k, v in loaders.items()}, rounds)
    result["bucketing_examples_ratio"] = common.ratios(pass_rates, "random batches")["length-bucketed"]
    padding = {k: padding_fraction(dataset.lengths, list(v.batch_sampler)) for k, v in loaders.items()}
    print(f"length bucketing: examples/s ratio {result['bucketing_examples_ratio']:.3f}; padding "
          + ", ".join(f"{k} {v:.0%}" for k, v in padding.items()))
    result["padding"] = padding
    return result


def section_e2e(args, log) -> dict:
    import numpy as np
    import torch

    from kdistill import Distiller
    from kdistill.data import make_loader

    subset = 96 if args.quick else args.subset
    epochs = 1 if args.quick else 3
    threads = (["--threads", str(args.threads)] if args.threads else []) + ["--clock", args.clock]
    python, problems = (None, {"textbrewer": "skipped (--no-peers)"}) if args.no_peers else peer_python(Path(args.peer_venv), log)
    work = Path(tempfile.mkdtemp(prefix="kdistill-e2e-"))
    train_texts = _movie_texts(subset)
    eval_texts = _movie_texts(64 if args.quick else 256, offset=subset)
    (work / "texts.json").write_text(json.dumps({"train": train_texts}))
    dataset = _minilm_dataset(train_texts)
    np.savez(work / "ids.npz", input_ids=dataset.teacher.input_ids, offsets=dataset.teacher.offsets,
             token_type_ids=dataset.teacher.token_type_ids)
    log(f"e2e: {subset} movie-review sentences (MiniLM tokenizer, ≤ {common.SEQ} tokens, mean "
        f"{dataset.teacher.lengths.mean():.1f}), {epochs} epoch(s), batch {common.BATCH}; held-out {len(eval_texts)}")
    runs = {}
    order = ["kdistill", "textbrewer"]
    for method in order:
        if method == "textbrewer" and "textbrewer" in problems:
            runs[method] = {"error": problems["textbrewer"]}
            continue
        out = work / method
        out.mkdir()
        extra = ["--epochs", str(epochs), "--out", str(work), *threads]
        if method == "kdistill":
            options = (["--train-embeddings"] if args.e2e_train_embeddings else []) + \
                      (["--no-cache"] if args.e2e_no_cache else []) + (["--no-bucket"] if args.e2e_no_bucket else []) + \
                      (["--fill-sorted", "--fill-batch", str(args.e2e_fill_batch)] if args.e2e_fill_sorted else []) + \
                      (["--unpad"] if args.e2e_unpad else []) + \
                      ["--bucket-multiplier", str(args.e2e_bucket_multiplier)]
            runs[method] = run_worker(sys.executable, "e2e-kdistill",
                                      [*extra, *options, "--texts", str(work / "texts.json")], timeout=1800)
        else:
            runs[method] = run_worker(python, "e2e-textbrewer", [*extra, "--data", str(work / "ids.npz")], timeout=1800)
        res = runs[method]
        log(f"  {method}: " + (f"{res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MiB "
                               f"(anonymous {res['peak_anon_mb']:.0f} MiB)" if "wall_s" in res
                               else f"FAILED: {res.get('error')}"))

    # The final distillation loss of both students, by the same code, on the same held-out sentences.
    teacher, _ = common.build_models(attention="sdpa")
    eval_set = _minilm_dataset(eval_texts)
    for method, res in runs.items():
        weights = work / f"{method}-student.pt"
        if "wall_s" not in res or not weights.exists():
            continue
        _, student = common.build_models(attention="sdpa")
        student.load_state_dict(torch.load(weights, weights_only=True))
        student.eval()
        distiller = Distiller(teacher, student, common.kdistill_matches())
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in make_loader(eval_set, 32, shuffle=False):
                total += float(distiller(batch).loss) * len(batch["input_ids"])
                count += len(batch["input_ids"])
        res["heldout_distillation_loss"] = total / count
    rows = []
    for method, res in runs.items():
        if "wall_s" not in res:
            rows.append([method, "—", "—", "—", "—", "—", f"unavailable: {res.get('error')}"])
            continue
        rows.append([method, f"{res['wall_s']:.1f}", f"{res['first_step_s']:.2f}", f"{res['peak_rss_mb']:.0f}",
                     f"{res['peak_anon_mb']:.0f}",
                     f"{res.get('heldout_distillation_loss', float('nan')):.4f}", res["settings"]])
    print(common.table(rows, ["method", f"time s ({args.clock})", "first step s", "peak RSS MiB",
                              "peak anonymous MiB", "held-out loss", "settings"]))
    summary = {"runs": runs, "subset": subset, "epochs": epochs}
    if all("wall_s" in runs.get(m, {}) for m in order):
        summary["speedup_over_textbrewer"] = runs["textbrewer"]["wall_s"] / runs["kdistill"]["wall_s"]
        print(f"kdistill is {summary['speedup_over_textbrewer']:.2f}x faster ({args.clock} clock) than TextBrewer (target >= 2); "
              f"held-out loss kdistill {runs['kdistill']['heldout_distillation_loss']:.4f} vs TextBrewer "
              f"{runs['textbrewer']['heldout_distillation_loss']:.4f}")
        if runs["kdistill"].get("epoch_steps_per_s"):
            rates = runs["kdistill"]["epoch_steps_per_s"]
            print("kdistill steps/s per epoch: " + ", ".join(f"{r:.2f}" for r in rates))
    shutil.rmtree(work, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        worker_main(argv[1:])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", action="append", choices=SECTIONS, help="run only these (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke test of every chosen section")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds")
    parser.add_argument("--subset", type=int, default=1024, help="e2e: training sentences (all: 10568)")
    # e2e: the defaults are kdistill's best settings at an equal or better final loss (docs/speed.md);
    # each flag pair switches one of them, the old flag names still work.
    parser.add_argument("--e2e-train-embeddings", dest="e2e_train_embeddings", action="store_true", default=True,
                        help="e2e: kdistill trains its word embeddings (default)")
    parser.add_argument("--e2e-frozen-embeddings", dest="e2e_train_embeddings", action="store_false",
                        help="e2e: kdistill freezes its word embeddings (faster, worse final loss)")
    parser.add_argument("--e2e-no-cache", action="store_true", help="e2e: kdistill without the teacher cache")
    parser.add_argument("--e2e-no-bucket", dest="e2e_no_bucket", action="store_true", default=True,
                        help="e2e: kdistill trains on random batches (default)")
    parser.add_argument("--e2e-bucket", dest="e2e_no_bucket", action="store_false",
                        help="e2e: kdistill trains on length-bucketed batches (faster, worse final loss on this job)")
    parser.add_argument("--e2e-fill-sorted", dest="e2e_fill_sorted", action="store_true", default=True,
                        help="e2e: kdistill fills its teacher cache in one pass over length-sorted batches "
                             "before training (default)")
    parser.add_argument("--e2e-fill-in-epoch-1", dest="e2e_fill_sorted", action="store_false",
                        help="e2e: kdistill fills its teacher cache during the first epoch, on the training batches")
    parser.add_argument("--e2e-fill-batch", type=int, default=64, help="e2e: batch size of the sorted teacher pass")
    parser.add_argument("--e2e-unpad", dest="e2e_unpad", action="store_true", default=True,
                        help="e2e: kdistill's linears skip the padding rows, TrainConfig(unpad=True) (default)")
    parser.add_argument("--e2e-no-unpad", dest="e2e_unpad", action="store_false",
                        help="e2e: kdistill's linears work on padded batches")
    parser.add_argument("--e2e-bucket-multiplier", type=int, default=50,
                        help="e2e: kdistill's length buckets hold this many batches")
    parser.add_argument("--cache-examples", type=int, default=None, help="cache: sentences per epoch")
    parser.add_argument("--compile", action="store_true", help="fastpaths: also measure torch.compile")
    parser.add_argument("--peer-venv", default=str(PEER_VENV), help="scratch venv for the peers")
    parser.add_argument("--no-peers", action="store_true", help="do not install or run TextBrewer/KnowledgeDistillation")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="per-step sections: wall time, or CPU time (steadier on a shared machine)")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    common.use_clock(args.clock)

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"speed: {common.machine()}; {args.clock} clock; {time.strftime('%Y-%m-%d %H:%M')}")
    summary = {}
    for name in args.section or SECTIONS:
        log(f"\n=== {name} ===")
        start = time.perf_counter()
        try:
            summary[name] = globals()[f"section_{name}"](args, log)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            traceback.print_exc()
            summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"({name}: {time.perf_counter() - start:.0f} s)")
        common.print_json(name, summary[name])
    return summary


if __name__ == "__main__":
    main()
