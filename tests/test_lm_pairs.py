"""A causal-LM student with its own tokenizer: each record tokenised twice, Universal Logit
Distillation (``loss: uld``) between the two vocabularies, and every other match refused before
any weights load."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from kdistill.cli import main
from kdistill.config import config_from_dict
from kdistill.errors import ConfigError

from tests.test_causal_lm import PAIRS, _raw, _tiny
from tests.test_lm_data import CORPUS, build_tokenizer

ULD = [{"teacher": "logits", "student": "logits", "loss": "uld", "name": "uld"}]


def _other_tokenizer():
    """A second BPE with other special tokens, a smaller vocabulary and other merges: other ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    texts = [p["prompt"] + p["completion"] for p in PAIRS] + CORPUS
    model.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", "</s>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama teacher with the test tokenizer and a tiny GPT-2 student with another one."""
    root = tmp_path_factory.mktemp("cross")
    teacher_tokenizer, student_tokenizer = build_tokenizer(), _other_tokenizer()
    assert teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab()
    made = {}
    for role, kind, tokenizer in (("teacher", "llama", teacher_tokenizer), ("student", "gpt2", student_tokenizer)):
        made[role] = root / role
        model = _tiny(kind, tokenizer)
        if kind == "gpt2":
            model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(made[role])
        tokenizer.save_pretrained(made[role])
    return made


def _cross(folders, tmp_path, **changes):
    raw = _raw(folders["teacher"], tmp_path, student={"path": str(folders["student"]), "task": "causal-lm"},
               matches=copy.deepcopy(ULD))
    raw["data"]["student_tokenizer"] = str(folders["student"])
    raw.update(changes)
    return raw


def test_a_student_with_its_own_tokenizer_distils_with_uld_end_to_end(folders, tmp_path, capsys):
    import yaml

    config_file = tmp_path / "cross.yaml"
    config_file.write_text(yaml.safe_dump(_cross(folders, tmp_path)))
    assert main(["plan", str(config_file)]) == 0
    plan = capsys.readouterr().out
    assert "tokenised twice: teacher" in plan and "uld" in plan
    assert main(["run", str(config_file)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    test = summary["metrics"]["test"]
    assert test["agreement"] is None and test["tokens"] > 0 and test["teacher_tokens"] > 0
    assert test["tokens"] != test["teacher_tokens"]  # each model is scored on its own tokens
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["uld"] > 0 and "hard_label" in r for r in steps if r["kind"] == "train")
    assert "## Perplexity" in (tmp_path / "run" / "report.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["student"]["perplexity"] == pytest.approx(test["student"]["perplexity"], rel=1e-4)
    assert again["baseline"]["perplexity"] == pytest.approx(
        summary["baseline"]["metrics"]["test"]["perplexity"], rel=1e-4)
    assert main(["eval", str(tmp_path / "run")]) == 0
    assert "agreement: none (the student has its own tokenizer" in capsys.readouterr().out


def test_each_tokenisation_marks_the_same_completion_for_its_model(folders, tmp_path):
    from kdistill.run import build

    parts = build(config_from_dict(_cross(folders, tmp_path)))
    batch = next(iter(parts.loaders["train"]))
    own = batch["student_inputs"]
    for tokenizer, side in ((parts.tokenizer, batch), (parts.student_tokenizer, own)):
        for row in range(side["labels"].shape[0]):
            targets = side["labels"][row][side["loss_mask"][row].bool()]
            text = tokenizer.decode(targets, skip_special_tokens=True)
            assert text.startswith("The answer is") and "Question" not in text
    teacher_text = [parts.tokenizer.decode(r[m.bool()], skip_special_tokens=True)
                    for r, m in zip(batch["labels"], batch["loss_mask"])]
    student_text = [parts.student_tokenizer.decode(r[m.bool()], skip_special_tokens=True)
                    for r, m in zip(own["labels"], own["loss_mask"])]
    assert teacher_text == student_text  # the same completions, in the same rows


def test_uld_pairs_the_kth_completion_token_of_each_model(folders, tmp_path):
    """The Distiller's uld equals the loss over each model's own completion positions (the oracle),
    and the hard-label loss is the student's next-token cross-entropy on its own tokens."""
    import torch.nn.functional as F

    from kdistill.losses import get_loss
    from kdistill.run import build

    parts = build(config_from_dict(_cross(folders, tmp_path)))
    distiller = parts.stage_distiller(0)
    batch = next(iter(parts.loaders["train"]))
    distiller.student.eval()
    out = distiller(batch)
    with torch.no_grad():
        teacher_logits = parts.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        own = batch["student_inputs"]
        student_logits = distiller.student(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
    rows_s, rows_t = [], []
    for b in range(len(own["input_ids"])):
        s = own["loss_mask"][b].nonzero().flatten()
        t = batch["loss_mask"][b].nonzero().flatten()
        count = min(len(s), len(t))
        rows_s.append(student_logits[b, s[:count]])
        rows_t.append(teacher_logits[b, t[:count]])
    expected = get_loss("uld")(torch.cat(rows_s), torch.cat(rows_t))
    assert out.parts["uld"].item() == pytest.approx(expected.item(), rel=1e-5)
    keep = own["loss_mask"].bool()
    cross_entropy = F.cross_entropy(student_logits[keep], own["labels"][keep])
    weight = parts.config.hard_label_weight
    assert out.parts["hard_label"].item() == pytest.approx(weight * cross_entropy.item(), rel=1e-5)


def test_uld_with_one_tokenizer_compares_the_completion_positions_of_both(folders, tmp_path):
    """With one tokenizer the teacher's side of uld is its loss mask too (not every real token): a
    student that is the teacher has a zero loss."""
    from kdistill.run import build

    raw = _raw(folders["teacher"], tmp_path, student={"from_teacher": {"layers": [0, 1, 2, 3]}},
               matches=copy.deepcopy(ULD), hard_label_weight=0)
    parts = build(config_from_dict(raw))
    distiller = parts.stage_distiller(0)
    distiller.student.eval()
    out = distiller(next(iter(parts.loaders["train"])))
    assert out.parts["uld"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"matches": [{"teacher": "logits", "student": "logits", "loss": "token_kl"}]},
     r"matches\[0\]: loss 'token_kl' on logits -> logits needs both models to read the same tokens"),
    ({"matches": ULD + [{"teacher": "hidden.1", "student": "hidden.1", "loss": "hidden_mse"}]},
     r"matches\[1\]: loss 'hidden_mse' on hidden.1 -> hidden.1 needs both models"),
    ({"method": "hinton", "matches": []}, "method: 'hinton' compares the two models token by token"),
    ({"data_pack": True}, "data.pack: packed blocks cut the token stream"),
])
def test_what_two_tokenizers_cannot_do_is_refused_before_weights_load(folders, tmp_path, monkeypatch, change,
                                                                      message):
    from kdistill import models

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(models, "load_hf_model", no_weights)
    raw = _cross(folders, tmp_path)
    if change.pop("data_pack", False):
        raw["data"].update(kind="text", pack=True, path=str(tmp_path / "texts.txt"))
        (tmp_path / "texts.txt").write_text("\n".join(CORPUS))
    raw.update(change)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_the_logits_cache_is_refused_for_language_models_and_the_teacher_cache_serves_them(folders, tmp_path):
    """``cache: logits`` keeps whole (tokens x vocabulary) rows: refused at validate for a causal LM.
    ``cache: teacher`` trains the same student as the live teacher (float16 storage)."""
    from kdistill.run import run

    with pytest.raises(ConfigError, match="cache: 'logits' stores each example's logits whole"):
        config_from_dict(_cross(folders, tmp_path, cache="logits"))
    live = run(config_from_dict(_cross(folders, tmp_path, baseline=False, output_dir=str(tmp_path / "live"))))
    cached = run(config_from_dict(_cross(folders, tmp_path, baseline=False, cache="teacher",
                                         output_dir=str(tmp_path / "cached"))))
    assert cached["metrics"]["test"]["student"]["loss"] == pytest.approx(
        live["metrics"]["test"]["student"]["loss"], rel=1e-3)
