"""Tiny random models, batches and a recipe runner shared by the method tests."""

from __future__ import annotations

import math

import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader

from kdistill import Distiller
from kdistill.data import Collator
from kdistill.methods import Stage
from kdistill.train import TrainConfig, Trainer

VOCAB = 100


def tiny_bert(layers: int = 4, hidden: int = 32, heads: int = 2, *, num_labels: int = 3, mlm: bool = False,
              seed: int = 0) -> nn.Module:
    """A random BERT (eval mode, no dropout so numbers are reproducible)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=2 * hidden,
        vocab_size=VOCAB, max_position_embeddings=32, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    cls = transformers.BertForMaskedLM if mlm else transformers.BertForSequenceClassification
    return cls(config).eval()


def tiny_gpt2(layers: int = 4, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_distilbert(layers: int = 4, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(n_layers=layers, dim=32, n_heads=2, hidden_dim=64, vocab_size=VOCAB,
                                           num_labels=3, dropout=0.0, attention_dropout=0.0)
    return transformers.DistilBertForSequenceClassification(config).eval()


def make_batch(*, batch: int = 4, length: int = 8, num_labels: int | None = 3, seed: int = 0) -> dict:
    """Token ids with right padding (rows of lengths length, length−2, …) and class labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    lengths = [max(length - 2 * i, 3) for i in range(batch)]
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = input_ids.masked_fill(mask == 0, 0)
    out = {"input_ids": input_ids, "attention_mask": mask}
    if num_labels is not None:
        out["labels"] = torch.randint(num_labels, (batch,), generator=generator)
    return out


def stage_distiller(stage: Stage, teacher, student: nn.Module, *, batch: dict | None = None, **kwargs) -> Distiller:
    """The Distiller a runner builds for one recipe stage, prepared on a first batch (projections made)."""
    distiller = Distiller(teacher, student, stage.matches, hard_label_weight=stage.hard_label_weight, **kwargs)
    distiller.prepare(batch if batch is not None else make_batch())
    return distiller


def forward_backward(distiller: Distiller, batch: dict, *, step: int = 0, total_steps: int | None = 10):
    """One training forward and backward; the loss must be finite and reach the student's parameters."""
    distiller.train()
    if not distiller.prepared:
        distiller.prepare(batch)
    out = distiller(batch, step=step, total_steps=total_steps)
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), out.parts
    out.loss.backward()
    grads = [p.grad for p in distiller.student.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    return out


def loader_of(batch: dict, copies: int = 8, batch_size: int = 4) -> DataLoader:
    """A DataLoader over ``copies`` × the examples of ``batch`` (lists, as TokenizedDataset yields)."""
    examples = []
    for _ in range(copies):
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            example = {"input_ids": batch["input_ids"][row, :length].tolist(), "attention_mask": [1] * length}
            if "labels" in batch:
                example["labels"] = int(batch["labels"][row])
            examples.append(example)
    return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=Collator(0))


def train_history(distiller: Distiller, loader: DataLoader, *, steps: int, lr: float = 3e-3) -> list[dict]:
    """Run the Trainer for ``steps`` steps; the logged training records (loss and parts), one per step."""
    config = TrainConfig(lr=lr, max_steps=steps, warmup=0, weight_decay=0.0, log_every=1, progress=False,
                         tensorboard=False, lr_schedule="constant", max_grad_norm=None)
    result = Trainer(distiller, loader, config=config).train()
    return [record for record in result.history if record["kind"] == "train"]
