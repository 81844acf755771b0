"""Supervised KD, sequence-level KD and on-policy GKD beside the baseline, on the SmolLM2 demo task:
held-out perplexity (kdistill's, and an independent recount of each saved student) and greedy
generations side by side. Every row goes through kdistill's own command line, as a user runs it.

The task is the language-model demo's (``kdistill demo --task causal-lm``): its teacher
(SmolLM2-135M-Instruct), its student (every other block, 15 of 30) and its movie-review sentences,
framed as prompt / completion so that a teacher can answer the prompts: the first ``--prompt-words``
words of a sentence are the prompt, the rest its completion (``lm.review_pairs``). The pairs are
shuffled once (seed 0, whatever ``--seed``) and cut into ``--train`` / 200 / 400 pairs for training,
validation and test. Every run: one epoch of batches of 8 (300 steps at the default 2,400 pairs),
lr 2e-4 with 10% warm-up then linear decay, 48 tokens at most, the loss on completion tokens only.

- ``baseline``: the student trained on the real completions alone (next-token cross-entropy); the
  ``baseline: true`` stage of the supervised-KD run, so it shares that run's data and seed.
- ``supervised KD``: forward KL to the teacher's next-token distributions (``token_kl``, T = 1) +
  0.5 × cross-entropy on the real completions (the demo's loss).
- ``sequence-level KD`` (Kim & Rush 2016): ``kdistill generate`` writes the teacher's greedy answers
  to the training prompts (at most ``--max-new-tokens``), and the student is trained on them with
  cross-entropy alone (``matches: []``, ``hard_label_weight: 1``): no teacher in the training loop.
- ``on-policy GKD`` (Agarwal et al. 2024): ``on_policy: {lmbda: 0.5, temperature: 1.0,
  max_new_tokens}``, generalized JSD with β = 0.5 (``token_jsd``) + 0.5 × cross-entropy on the data's
  own batches (sampled batches carry no labels).

Perplexity is over the completion tokens (and eos) of the 400 test pairs — the real sentences, also
for the sequence-level run, whose ``kdistill generate`` keeps the other splits' references. Each
figure is kdistill's (``summary.json``) and is recounted here by :func:`recount_perplexity`, which
tokenises the pairs itself with the tokenizer and runs the saved student folder through plain
``transformers``. Generations: each model continues the first ``--prompts`` test prompts greedily.

    PYTHONPATH=src .venv/bin/python benchmarks/lm_methods.py                  # SmolLM2, ≈ 35 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/lm_methods.py --quick          # smoke: tiny random Llama

Results: ``<output>/lm_methods.json`` and ``<output>/lm_methods.md`` (the table and the generations).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if (ROOT / "src").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

from lm import review_pairs  # noqa: E402

DEMO_LAYERS = list(range(1, 30, 2))  # the LM demo's student: blocks 1, 3, …, 29
ROWS = ("baseline", "supervised KD", "sequence-level KD", "on-policy GKD")


def log(message: str) -> None:
    print(f"lm_methods: {message}", file=sys.stderr, flush=True)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def prepare(args: argparse.Namespace, work: Path) -> tuple[str, list[int], dict[str, str]]:
    """The teacher, the student's blocks and the three pair files."""
    if args.quick:
        from topk_capture import tiny_llama_teacher, tiny_review_texts

        teacher, layers, texts = str(tiny_llama_teacher(work / "teacher")), [1], tiny_review_texts(10**6)
        counts = (args.train, 8, 8)
    else:
        from kdistill.packaged import movie_reviews

        teacher, layers = "builtin:SmolLM2-135M-Instruct", DEMO_LAYERS
        texts = [text for text, _ in movie_reviews()]
        counts = (args.train, 200, 400)
    pairs = review_pairs(texts, args.prompt_words)
    random.Random(0).shuffle(pairs)
    if len(pairs) < sum(counts):
        raise SystemExit(f"{len(pairs)} pairs, fewer than the {sum(counts)} asked for; lower --train.")
    files, start = {}, 0
    for split, count in zip(("train", "validation", "test"), counts):
        files[split] = write_jsonl(work / f"{split}.jsonl", pairs[start:start + count])
        start += count
    return teacher, layers, files


def base_raw(args: argparse.Namespace, teacher: str, layers: list[int], files: dict[str, str]) -> dict:
    steps = {"max_steps": 4} if args.quick else {"epochs": 1}
    return {"teacher": {"path": teacher, "task": "causal-lm"},
            "student": {"from_teacher": {"layers": layers}},
            "data": {**files, "kind": "prompt_completion", "max_length": 48, "batch_size": 8, "eval_batch_size": 16},
            "training": {"lr": 2e-4, "warmup": 0.1, "log_every": 10, "tensorboard": False, **steps},
            "seed": args.seed}


def configs(args: argparse.Namespace, base: dict, work: Path) -> dict[str, dict]:
    """The three runs (the baseline is the first one's ``baseline: true`` stage)."""
    kd = {"teacher": "logits", "student": "logits", "loss": "token_kl", "args": {"temperature": 1.0}, "name": "kd"}
    jsd = {"teacher": "logits", "student": "logits", "loss": "token_jsd", "args": {"beta": 0.5}, "name": "gkd"}
    answers = work / "teacher-answers"
    return {
        "supervised KD": {**base, "matches": [kd], "hard_label_weight": 0.5, "baseline": True,
                          "output_dir": str(work / "supervised")},
        "sequence-level KD": {**base, "data": {**{k: v for k, v in base["data"].items()
                                                  if k not in ("train", "validation", "test")},
                                               "path": str(answers)},
                              "matches": [], "hard_label_weight": 1.0, "output_dir": str(work / "sequence")},
        "on-policy GKD": {**base, "matches": [jsd], "hard_label_weight": 0.5,
                          "on_policy": {"lmbda": 0.5, "temperature": 1.0, "max_new_tokens": args.max_new_tokens},
                          "output_dir": str(work / "on-policy")},
    }


def kdistill(*arguments: str) -> float:
    """``kdistill ARGS`` in a fresh process (as a user runs it); its seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdistill", *arguments], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return time.perf_counter() - start


def recount_perplexity(model_folder: str, tokenizer_folder: str, pairs: list[dict], max_length: int) -> dict:
    """Perplexity over the completion tokens (+ eos) of ``pairs``, counted here: the prompt tokenised
    with the tokenizer's default special tokens, the completion without, eos appended (if the tokenizer
    has one), cut to
    ``max_length`` from the end of the completion; one pair at a time, no padding."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for pair in pairs:
            prompt = tokenizer(pair["prompt"])["input_ids"][:max_length]
            eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
            completion = (tokenizer(pair["completion"], add_special_tokens=False)["input_ids"]
                          + eos)[: max_length - len(prompt)]
            if not completion:
                continue
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
            total += float(F.cross_entropy(logits.float(), ids[0, len(prompt):], reduction="sum"))
            tokens += len(completion)
    return {"perplexity": math.exp(total / tokens), "tokens": tokens}


def generations(folders: dict[str, str], tokenizer_folder: str, prompts: list[str], new_tokens: int) -> dict:
    """Each model's greedy continuation of each prompt (exactly ``new_tokens`` tokens unless eos)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    out = {}
    for name, folder in folders.items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        texts = []
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
            with torch.no_grad():
                made = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=tokenizer.eos_token_id)
            texts.append(tokenizer.decode(made[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        out[name] = texts
    return out


def table(result: dict) -> str:
    lines = ["| row | test perplexity (kdistill) | recounted | top-1 agreement with the teacher | "
             "training seconds |", "|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        agreement = "—" if row.get("agreement") is None else f"{100 * row['agreement']:.1f}%"
        seconds = "—" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        lines.append(f"| {name} | {row['perplexity']:,.1f} | {row['recounted']:,.1f} | {agreement} | {seconds} |")
    lines += ["", "Generations (greedy):", ""]
    for number, prompt in enumerate(result["prompts"]):
        lines.append(f"- prompt: {prompt!r}")
        for name, texts in result["generations"].items():
            lines.append(f"  - {name}: {texts[number]!r}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny random Llama, a few steps")
    parser.add_argument("--train", type=int, default=None, help="training pairs (default 2,400; quick: 32)")
    parser.add_argument("--prompt-words", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="teacher answers and on-policy samples")
    parser.add_argument("--prompts", type=int, default=4, help="test prompts whose generations are shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/lm-methods")
    args = parser.parse_args(argv)
    args.train = args.train or (32 if args.quick else 2400)
    if args.quick:
        args.max_new_tokens = min(args.max_new_tokens, 8)
    work = Path(args.output).resolve()
    work.mkdir(parents=True, exist_ok=True)

    teacher, layers, files = prepare(args, work)
    base = base_raw(args, teacher, layers, files)
    runs = configs(args, base, work)
    for name, raw in runs.items():
        (work / f"{Path(raw['output_dir']).name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    seconds = {}
    log("supervised KD (and the baseline)")
    seconds["supervised KD"] = kdistill("run", str(work / "supervised.yaml"), "--overwrite")
    log("the teacher's answers to the training prompts (kdistill generate)")
    seconds["generate"] = kdistill("generate", str(work / "supervised.yaml"), "--output", str(work / "teacher-answers"),
                                   "--max-new-tokens", str(args.max_new_tokens), "--overwrite")
    log("sequence-level KD")
    seconds["sequence-level KD"] = kdistill("run", str(work / "sequence.yaml"), "--overwrite")
    log("on-policy GKD")
    seconds["on-policy GKD"] = kdistill("run", str(work / "on-policy.yaml"), "--overwrite")

    summaries = {name: json.loads((Path(raw["output_dir"]) / "summary.json").read_text()) for name, raw in runs.items()}
    supervised = summaries["supervised KD"]
    teacher_folder = teacher
    if teacher.startswith("builtin:"):
        from kdistill.packaged import smollm2_teacher_path

        teacher_folder = str(smollm2_teacher_path())
    folders = {"teacher": teacher_folder, "baseline": supervised["baseline"]["student"],
               **{name: str(Path(runs[name]["output_dir"]) / "student") for name in runs}}
    test_pairs = [json.loads(line) for line in Path(files["test"]).read_text().splitlines()]
    rows = {"teacher": {"perplexity": supervised["metrics"]["test"]["teacher"]["perplexity"]},
            "baseline": {"perplexity": supervised["baseline"]["metrics"]["test"]["perplexity"],
                         "agreement": supervised["baseline"]["metrics"]["test"]["agreement"]}}
    for name, summary in summaries.items():
        test = summary["metrics"]["test"]
        rows[name] = {"perplexity": test["student"]["perplexity"], "agreement": test.get("agreement"),
                      "seconds": sum(stage["seconds"] for stage in summary["stages"]),
                      "teacher_perplexity": test["teacher"]["perplexity"]}
    for name, folder in folders.items():
        log(f"recounting the test perplexity of {name}")
        rows[name]["recounted"] = recount_perplexity(folder, teacher_folder, test_pairs, 48)["perplexity"]
    prompts = [pair["prompt"] for pair in test_pairs[: args.prompts]]
    log("generations")
    result = {"args": vars(args), "teacher": teacher, "layers": layers, "rows": rows, "seconds": seconds,
              "prompts": prompts, "generations": generations(folders, teacher_folder, prompts, 24),
              "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    (work / "lm_methods.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (work / "lm_methods.md").write_text(table(result), encoding="utf-8")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
