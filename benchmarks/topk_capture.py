"""Live teacher vs a top-k capture: training tokens/s and held-out loss of the same student, one process.

The packaged causal-LM demo (``kdistill/configs/demo-lm.yaml``: SmolLM2-135M-Instruct teaching 10 of its
30 blocks on movie-review text, ``token_kl`` + next-token CE), two ways, by ``kdistill run`` itself:

- ``live``: the config as shipped — the teacher runs on every batch, full-vocabulary ``token_kl``;
- ``capture``: the same config with ``capture: {path, k, loss}`` — the teacher's top-k captured once
  (``kdistill capture``'s code, before the rounds, its seconds printed apart), the match read as
  ``token_topk_kl``; the teacher does not run in training.

Each round runs both (A B, then B A in the next round) into fresh output folders, same seed, same
student init; a stage's ``tokens_per_second`` (real tokens over the stage's own seconds, from
summary.json) and the held-out student loss (validation and test, next-token CE) are printed per round
and as medians, with the capture's bytes per token and size on disk. No baseline is trained.

    PYTHONPATH=src .venv/bin/python benchmarks/topk_capture.py                 # the demo, 2 rounds
    PYTHONPATH=src .venv/bin/python benchmarks/topk_capture.py --k 16 --loss renormalised
    PYTHONPATH=src .venv/bin/python benchmarks/topk_capture.py --quick         # smoke: tiny random Llama
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama_teacher(folder: Path) -> Path:
    """A tiny random Llama (2 blocks, 32 wide) with the repository's tiny tokenizer, saved in ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "data" / "tiny_tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_review_texts(count: int, offset: int = 0) -> list[str]:
    """Review sentences of the repository's tiny training CSV (``examples/data/reviews_train.csv``)."""
    import csv

    with open(ROOT / "examples" / "data" / "reviews_train.csv", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)][offset:offset + count]


def _quick_raw(folder: Path) -> dict:
    """A tiny random Llama (2 blocks, 32 wide) on the repository's tiny review texts, for a smoke run."""
    teacher = tiny_llama_teacher(folder / "teacher")
    texts = tiny_review_texts(48)
    (folder / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return {"teacher": {"path": str(teacher), "task": "causal-lm"},
            "student": {"from_teacher": {"layers": [1]}},
            "matches": [{"teacher": "logits", "student": "logits", "loss": "token_kl", "name": "kd"}],
            "hard_label_weight": 0.5,
            "data": {"path": str(folder / "text.jsonl"), "kind": "text", "split": [0.5, 0.25, 0.25],
                     "max_length": 32, "batch_size": 4, "eval_batch_size": 8},
            "training": {"lr": 1e-3, "max_steps": 4, "log_every": 2, "progress": False, "tensorboard": False}}


def _demo_raw() -> dict:
    from kdistill.demo import demo_raw

    return demo_raw(["baseline=false", "training.tensorboard=false"], task="causal-lm")


def _run(raw: dict, output: Path) -> dict:
    from kdistill.config import config_from_dict
    from kdistill.run import run

    shutil.rmtree(output, ignore_errors=True)
    summary = run(config_from_dict({**raw, "output_dir": str(output)}, import_from_base=False))
    metrics = summary["metrics"]
    return {"tokens_per_second": summary["stages"][0]["tokens_per_second"],
            **{f"{split}_loss": metrics[split]["student"]["loss"]
               for split in ("validation", "test") if split in metrics}}


def make_capture(raw: dict, build_dir: Path, *, progress: bool = True) -> dict:
    """The top-k capture ``raw["capture"]`` asks for, made once by ``kdistill capture``'s code (the teacher
    over the training data); its record with the seconds it took (loading included) and its MiB on disk."""
    from kdistill.capture import Capture, capture_stage, run_capture
    from kdistill.config import config_from_dict
    from kdistill.run_build import build

    started = time.perf_counter()
    parts = build(config_from_dict({**raw, "output_dir": str(build_dir)}, import_from_base=False))
    record = run_capture(parts, capture_stage(parts), progress=progress)
    seconds = time.perf_counter() - started
    on_disk = sum(f.stat().st_size for f in Path(Capture(raw["capture"]["path"]).path).iterdir() if f.is_file())
    return {**record, "seconds": seconds, "mib_on_disk": on_disk / 2**20}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (each runs both ways)")
    parser.add_argument("--k", type=int, default=128, help="teacher tokens kept per position (kdistill's default)")
    parser.add_argument("--loss", choices=("tail", "renormalised"), default="tail")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", default="runs/topk-capture", help="folder of the runs and the capture")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny random Llama, 1 round, k 8")
    args = parser.parse_args(argv)
    if args.quick:
        args.k = min(args.k, 8)  # the tiny tokenizer has 35 tokens

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    scratch = Path(tempfile.mkdtemp(prefix="topk-capture-")) if args.quick else None
    rounds = 1 if args.quick else args.rounds
    live = _quick_raw(scratch) if args.quick else _demo_raw()
    captured = {**live, "capture": {"path": str(output / f"capture-k{args.k}"), "k": args.k, "loss": args.loss}}

    made = make_capture(captured, output / "build")
    print(f"capture: k {args.k}, {made['tokens']:,} loss tokens, {made['bytes_per_token']} bytes per token "
          f"predicted, {made['mib_on_disk']:.2f} MiB on disk, {made['seconds']:.1f} s with loading (not part of the rounds)")

    results: dict[str, list[dict]] = {"live": [], "capture": []}
    for number in range(rounds):
        order = ("live", "capture") if number % 2 == 0 else ("capture", "live")
        for name in order:
            results[name].append(_run(live if name == "live" else captured, output / f"{name}-{number}"))
            print(f"round {number + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name][-1].items()))
    summary = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
               for name, rows in results.items()}
    ratio = summary["capture"]["tokens_per_second"] / summary["live"]["tokens_per_second"]
    print(f"median tokens/s: live {summary['live']['tokens_per_second']:.1f}, capture "
          f"{summary['capture']['tokens_per_second']:.1f} (x{ratio:.2f}); held-out loss: " +
          ", ".join(f"{key} live {summary['live'][key]:.4f} / capture {summary['capture'][key]:.4f}"
                    for key in summary["live"] if key.endswith("_loss")))
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"capture": made, "rounds": results, "median": summary, "ratio": ratio}


if __name__ == "__main__":
    main()
