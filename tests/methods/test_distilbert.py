"""DistilBERT: every other teacher layer copied, L_ce with T², L_mlm on masked tokens, L_cos; the MLM collator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from kdistill.errors import ConfigError
from kdistill.methods import expand
from kdistill.methods.distilbert import mlm_collator
from kdistill.models import find_layer_list, student_from_teacher

from ._helpers import VOCAB, forward_backward, make_batch, stage_distiller, tiny_bert


def test_student_is_every_other_teacher_layer_with_identical_weights():
    teacher = tiny_bert(6, mlm=True)
    recipe = expand("distilbert", teacher)
    assert recipe.student_init == {"from_teacher": {"layers": [0, 2, 4]}}
    student = student_from_teacher(teacher, recipe.student_init["from_teacher"]["layers"])
    _, teacher_blocks = find_layer_list(teacher)
    _, student_blocks = find_layer_list(student)
    assert len(student_blocks) == 3 and student.config.num_hidden_layers == 3
    for position, index in enumerate([0, 2, 4]):
        for (name, s), (_, t) in zip(student_blocks[position].state_dict().items(),
                                     teacher_blocks[index].state_dict().items()):
            assert torch.equal(s, t), (position, name)
    # Not the skipped ones.
    assert not torch.equal(student_blocks[1].output.dense.weight, teacher_blocks[1].output.dense.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert expand("distilbert", teacher, layers=[0, 2, 5]).student_init == {"from_teacher": {"layers": [0, 2, 5]}}
    assert expand("distilbert", teacher_layers=12).student_init["from_teacher"]["layers"] == [0, 2, 4, 6, 8, 10]
    assert expand("distilbert", teacher, student).student_init is None


def test_task_is_detected_from_the_teacher():
    general = expand("distilbert", tiny_bert(4, mlm=True)).stages
    assert [(s.name, s.data, s.hard_label_weight) for s in general] == [("general", "unlabelled", 2.0)]
    task = expand("distilbert", tiny_bert(4)).stages
    assert [(s.name, s.data) for s in task] == [("task", "train")]
    assert {m.name: (m.loss_name, m.weight, m.teacher) for m in task[0].matches} == {
        "ce": ("kl", 5.0, "logits"), "cos": ("cosine", 1.0, "hidden.-1")}
    with pytest.raises(ConfigError, match="cannot tell whether the teacher BertModel is a masked LM"):
        expand("distilbert", transformers.BertModel(tiny_bert(2).config))
    with pytest.raises(ConfigError, match=r"method_args.layers\[1\]: 9 is not a layer of the teacher \(0–3\)"):
        expand("distilbert", tiny_bert(4), layers=[0, 9])


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_each_term_against_a_manual_computation(temperature):
    teacher = tiny_bert(4, mlm=True, seed=1)
    recipe = expand("distilbert", teacher, temperature=temperature)
    student = student_from_teacher(teacher, recipe.student_init["from_teacher"]["layers"])
    with torch.no_grad():  # move the student away from the teacher so every term is non-zero
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(num_labels=None)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 1] = batch["input_ids"][:, 1]
    batch["labels"] = labels
    distiller = stage_distiller(recipe.stages[0], teacher, student)
    with torch.no_grad():
        parts = distiller(batch, step=0).parts
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        t_out = teacher(**inputs, output_hidden_states=True)
        s_out = student(**inputs, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    t_logits, s_logits = t_out.logits[real].double(), s_out.logits[real].double()
    p_t = torch.softmax(t_logits / temperature, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s_logits / temperature, -1))).sum(-1).mean()
    assert float(parts["ce"]) == pytest.approx(5.0 * temperature**2 * float(kl), rel=1e-4)
    cos = F.cosine_similarity(s_out.hidden_states[-1][real].double(), t_out.hidden_states[-1][real].double(), dim=-1)
    assert float(parts["cos"]) == pytest.approx(float((1 - cos).mean()), rel=1e-4)
    mlm = F.cross_entropy(s_out.logits[:, 1].double(), batch["input_ids"][:, 1])
    assert float(parts["hard_label"]) == pytest.approx(2.0 * float(mlm), rel=1e-4)


@pytest.mark.parametrize("mlm", [True, False])
def test_forward_backward(mlm):
    teacher = tiny_bert(4, mlm=mlm, seed=1)
    recipe = expand("distilbert", teacher)
    student = student_from_teacher(teacher, recipe.student_init["from_teacher"]["layers"])
    batch = make_batch(num_labels=None if mlm else 3)
    if mlm:
        batch["labels"] = torch.where(torch.rand(batch["input_ids"].shape) < 0.3, batch["input_ids"], -100)
    out = forward_backward(stage_distiller(recipe.stages[0], teacher, student), batch)
    assert set(out.parts) == {"ce", "cos", "hard_label"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]))
    return transformers.BertTokenizer(str(path))


def test_mlm_collator_masks_80_10_10_and_labels_only_chosen_tokens(tokenizer):
    collate = mlm_collator(tokenizer, 0.15, seed=0)
    length = 60
    examples = [{"input_ids": [2] + list(range(5 + i % 7, 5 + i % 7 + length - 2 - i % 5)) + [3], "labels": 1}
                for i in range(400)]
    batch = collate(examples)
    original = collate.__class__(tokenizer, 0.15, seed=0)  # same seed: same draws
    assert torch.equal(original(examples)["input_ids"], batch["input_ids"])
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(e["input_ids"]) for e in examples], batch_first=True)
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    chosen = labels != -100
    assert torch.equal(labels[chosen], padded[chosen])  # labels hold the original ids
    special = (padded == 2) | (padded == 3) | (mask == 0)
    assert not chosen[special].any() and torch.equal(ids[special], padded[special])
    assert torch.equal(ids[~chosen], padded[~chosen])  # unchosen tokens untouched
    eligible = int((~special).sum())
    n = int(chosen.sum())
    assert abs(n / eligible - 0.15) < 4 * (0.15 * 0.85 / eligible) ** 0.5
    masked = int((ids[chosen] == 4).sum())
    kept = int((ids[chosen] == padded[chosen]).sum())
    assert abs(masked / n - 0.8) < 0.05 and abs(kept / n - 0.1 - 0.1 / VOCAB) < 0.04
    other = collate(examples)  # the generator moves on: a new draw
    assert not torch.equal(other["labels"], labels)


def test_mlm_collator_accepts_a_padded_batch_and_needs_a_mask_token(tokenizer):
    batch = make_batch(num_labels=3)
    out = mlm_collator(tokenizer, 0.5, seed=1)(batch)
    assert out["labels"].shape == batch["input_ids"].shape
    assert (out["labels"][batch["attention_mask"] == 0] == -100).all()
    assert torch.equal(batch["input_ids"], make_batch(num_labels=3)["input_ids"])  # input not modified
    tokenizer_without_mask = type("T", (), {"mask_token_id": None})()
    with pytest.raises(ConfigError, match="the tokenizer has no mask token"):
        mlm_collator(tokenizer_without_mask)
