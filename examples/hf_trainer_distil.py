"""Distil with the Hugging Face Trainer: a plain fine-tuning script, four lines changed.

    python examples/hf_trainer_distil.py [output_dir]

This file is a standard ``transformers`` fine-tuning script turned into a distillation script. The
whole difference from the fine-tuning version (tests/integrations/test_hf_trainer.py rebuilds that
version from this diff and runs both):

    -from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
    +from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments
    +from kdistill.integrations.hf_trainer import DistillationTrainer
    ...
    +    teacher = tiny_bert(num_layers=4, hidden_size=64, num_heads=4)  # your fine-tuned model
    ...
    -    trainer = Trainer(
    +    trainer = DistillationTrainer(teacher=teacher, method="hinton",

Everything else (TrainingArguments, evaluation, checkpoints, ``save_model``) is the Trainer's. The
models are tiny random BERTs built from configs (examples/tiny_models.py) so this runs in seconds
on a CPU; with real models, load them with ``from_pretrained``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments
from kdistill.integrations.hf_trainer import DistillationTrainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_models import tiny_bert  # noqa: E402


def read_reviews(path: Path, tokenizer) -> list[dict]:
    """One tokenised example per CSV row: input_ids, attention_mask, token_type_ids, labels."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{**tokenizer(row["text"], truncation=True, max_length=32), "labels": int(row["label"])} for row in rows]


def main(output_dir: str = "runs/hf_trainer_distil", max_steps: int = 4) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(HERE / "data" / "tiny_tokenizer")
    train = read_reviews(HERE / "data" / "reviews_train.csv", tokenizer)
    validation = read_reviews(HERE / "data" / "reviews_validation.csv", tokenizer)
    model = tiny_bert(num_layers=2, hidden_size=32, num_heads=2, seed=1)
    teacher = tiny_bert(num_layers=4, hidden_size=64, num_heads=4)  # your fine-tuned model
    args = TrainingArguments(output_dir, max_steps=max_steps, per_device_train_batch_size=16, learning_rate=1e-3,
                             logging_steps=1, eval_strategy="steps", eval_steps=2, save_steps=2,
                             report_to=[], use_cpu=True, seed=0)
    trainer = DistillationTrainer(teacher=teacher, method="hinton",
        model=model, args=args, train_dataset=train, eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    return trainer.evaluate()


if __name__ == "__main__":
    print(main(*sys.argv[1:2]))
