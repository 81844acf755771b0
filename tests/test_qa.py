"""Extractive question answering: SQuAD-shaped data checked before weights load, windows with a stride and the
answer's token positions, span_kl against a float64 loop and its mask, SQuAD exact match / F1 against
hand-computed cases, and a tiny run from YAML whose scores a re-evaluation of the saved student reproduces.

No extractive QA set ships inside a package: every test uses data made here or in examples/data
(examples/data/make_qa_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.config import config_from_dict, load_config
from kdistill.errors import ConfigError, DataError
from kdistill.losses import span_kl
from kdistill.qa_spans import (QADataset, answer_positions, best_span, exact_match, f1_score, normalize_answer,
                               span_logits, squad_scores)
from kdistill.squad import read_squad

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QA_TOKENIZER = EXAMPLES / "data" / "qa_tokenizer"


def _record(id_: str = "q1", question: str = "Where was Ada born?", context: str = "Ada was born in Leeds.",
            text: str = "Leeds", start: int | None = None) -> dict:
    start = context.index(text) if start is None else start
    return {"id": id_, "question": question, "context": context, "answers": {"text": [text], "answer_start": [start]}}


def _jsonl(tmp_path: Path, rows: list, name: str = "qa.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QA_TOKENIZER))


def _config(tmp_path: Path, data: dict, **top) -> object:
    raw = {"teacher": {"task": "question-answering", "factory": "tiny_models:tiny_bert_qa"},
           "student": {"from_teacher": {"layers": [0]}}, "method": "hinton",
           "data": {"tokenizer": "data/qa_tokenizer", "max_length": 32, "stride": 8, **data},
           "output_dir": str(tmp_path / "out"), **top}
    return config_from_dict(raw, base_dir=EXAMPLES)


# ---------------------------------------------------------------------------------------------
# Data checks


def test_an_answer_not_at_its_start_names_the_file_line_and_id(tmp_path):
    context = "Ada was born in Leeds. Bruno was born in Oslo."
    path = _jsonl(tmp_path, [_record(), _record("q2", "Where was Bruno born?", context, "Oslo", start=17)])
    with pytest.raises(DataError, match=rf"^{path}:2 \(id 'q2'\): answer 'Oslo' is not in its context at 17: the "
                                        r"context there reads 'eeds' \(it occurs at 41\)\."):
        read_squad(path)


def test_a_missing_key_names_the_line(tmp_path):
    row = _record()
    del row["context"]
    path = _jsonl(tmp_path, [_record(), "", row])
    with pytest.raises(DataError, match=rf"^{path}:3: the record lacks 'context'"):
        read_squad(path)


def test_other_bad_records_are_named(tmp_path):
    bad_answers = {**_record(), "answers": {"text": ["Leeds"], "answer_start": []}}
    with pytest.raises(DataError, match=r":1 \(id 'q1'\): answers has 1 texts but 0 answer_start"):
        read_squad(_jsonl(tmp_path, [bad_answers]))
    no_answer = {**_record(), "answers": {"text": [], "answer_start": []}}
    with pytest.raises(DataError, match="has no answer; extractive QA here needs at least one"):
        read_squad(_jsonl(tmp_path, [no_answer]))
    with pytest.raises(DataError, match=r":2: id 'q1' is used again \(first at .*:1\)"):
        read_squad(_jsonl(tmp_path, [_record(), _record()]))
    with pytest.raises(DataError, match=r":1: not a JSON record"):
        read_squad(_jsonl(tmp_path, ["{oops"]))


def test_squads_own_nesting_and_a_json_list_read_as_the_same_records(tmp_path):
    nested = {"data": [{"title": "t", "paragraphs": [{"context": "Ada was born in Leeds.", "qas": [
        {"id": "q1", "question": "Where was Ada born?", "answers": [{"text": "Leeds", "answer_start": 16}]}]}]}]}
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    (tmp_path / "flat.json").write_text(json.dumps([_record()]))
    first, second = read_squad(tmp_path / "nested.json"), read_squad(tmp_path / "flat.json")
    assert [(r.id, r.question, r.context, r.answers, r.starts) for r in first] == \
           [(r.id, r.question, r.context, r.answers, r.starts) for r in second]
    broken = {"data": [{"paragraphs": [{"context": "Ada was born in Leeds.", "qas": [
        {"id": "q1", "question": "Where?", "answers": [{"text": "Leeds", "answer_start": 3}]}]}]}]}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"broken\.json article 1, paragraph 1, question 1 \(id 'q1'\): answer "
                                        "'Leeds' is not in its context at 3"):
        read_squad(tmp_path / "broken.json")


def test_validation_names_a_bad_record_before_any_weight_loads(tmp_path, monkeypatch):
    from kdistill import models

    monkeypatch.setattr(models, "load_hf_model", lambda *a, **k: pytest.fail("weights loaded"))
    bad = _jsonl(tmp_path, [_record(), _record("q2", text="Leeds", start=3)])
    with pytest.raises(DataError, match=rf"{bad}:2 \(id 'q2'\): answer 'Leeds' is not in its context at 3"):
        _config(tmp_path, {"train": str(bad)})


def test_what_question_answering_does_not_do_is_refused_with_the_choices(tmp_path):
    train = str(EXAMPLES / "data" / "qa_train.jsonl")
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"train": train, "kind": "text", "label": "y", "stride": 40}, cache="logits")
    text = str(caught.value)
    assert "data.kind: a question-answering teacher reads SQuAD-shaped records: kind 'squad'" in text
    assert "data.label: does not apply to question-answering data" in text
    assert ("data.stride: 40 context tokens shared by consecutive windows must be fewer than data.max_length (32)"
            in text)
    assert "cache: 'logits' stores per-example class scores or per-token features" in text
    with pytest.raises(ConfigError, match="data.builtin: no extractive question-answering set ships in a package"):
        _config(tmp_path, {"builtin": "movie_reviews"})
    with pytest.raises(ConfigError, match="training.metric: 'accuracy' is not a figure a question-answering run's "
                                          "validation gives, so the best step would never be kept; choose one of "
                                          "exact_match, f1."):
        _config(tmp_path, {"train": train}, training={"metric": "accuracy"})
    with pytest.raises(ConfigError, match="method: 'tinybert' is not available for question answering yet"):
        _config(tmp_path, {"train": train}, method="tinybert")
    with pytest.raises(ConfigError, match=r"matches\[0\]\.loss: 'kl' compares one distribution per example or per "
                                          "token; .* use loss: span_kl"):
        _config(tmp_path, {"train": train}, method=None, matches=[{"teacher": "logits", "student": "logits",
                                                                  "loss": "kl"}])
    with pytest.raises(ConfigError, match="data.kind: 'squad' data holds questions on contexts; it needs teacher.task: "
                                          "question-answering"):
        config_from_dict({"teacher": {"factory": "tiny_models:tiny_bert"}, "method": "hinton",
                          "data": {"train": train, "kind": "squad", "tokenizer": "data/tiny_tokenizer"}},
                         base_dir=EXAMPLES)


# ---------------------------------------------------------------------------------------------
# Windows and answer positions


def test_a_long_context_is_cut_into_windows_and_each_holding_the_answer_points_at_it(tokenizer):
    filler = " ".join(["The river runs through the middle of the town."] * 3)
    context = f"{filler} Ada was born in Leeds. {filler}"
    record = read_squad_rows([_record(context=context)])[0]
    data = QADataset([record], tokenizer, max_length=24, stride=8)
    assert len(data) > 3 and set(data.feature_record) == {0}
    holding = []
    for feature, item in enumerate(data.items):
        start, end = item["labels"]
        offsets = data.offsets[feature]
        question_length = item["token_type_ids"].index(1) if 1 in item["token_type_ids"] else len(offsets)
        # the mask: CLS and the context tokens, never the question or [SEP]
        assert item["loss_mask"][0] == 1 and not any(item["loss_mask"][1:question_length])
        assert [i for i, keep in enumerate(item["loss_mask"]) if keep][1:] == \
               [i for i, o in enumerate(offsets) if o is not None]
        if start:
            holding.append(feature)
            assert context[offsets[start][0]: offsets[end][1]] == "Leeds"
        else:
            assert (start, end) == (0, 0)
    assert holding  # the stride makes some window hold the whole answer


def test_an_answer_split_across_two_windows_is_labelled_in_the_window_that_holds_it_whole(tokenizer):
    """Windows of 24 tokens: a 6-token question + 3 specials leave 15 context tokens; stride 8 starts the next
    window 7 tokens later. An answer over context tokens 13-16 is cut by the first window and whole in the second."""
    words = [f"w{i}" for i in range(30)]
    context = " ".join(words)
    answer = " ".join(words[13:17])
    record = read_squad_rows([_record(question="Where was Ada born now ?", context=context, text=answer)])[0]
    data = QADataset([record], tokenizer, max_length=24, stride=8)
    first, second = data.offsets[0], data.offsets[1]
    assert context[first[[i for i, o in enumerate(first) if o][-1]][0]:].startswith("w14")  # the cut: w13, w14 only
    assert data.items[0]["labels"] == [0, 0]
    start, end = data.items[1]["labels"]
    assert context[second[start][0]: second[end][1]] == answer


def test_answer_positions_on_hand_made_offsets():
    offsets = [None, None, (0, 3), (4, 7), (8, 12), (13, 17), None]
    assert answer_positions(offsets, 4, 12) == (3, 4)
    assert answer_positions(offsets, 5, 6) == (3, 3)  # inside one token
    assert answer_positions(offsets, 13, 20) == (0, 0)  # runs past the window
    assert answer_positions(offsets, 4, 7, cls_index=6) == (3, 3)


def read_squad_rows(rows: list[dict]) -> list:
    from kdistill.squad import check_record

    return [check_record(row, f"row {i}") for i, row in enumerate(rows, start=1)]


def test_a_question_too_long_for_its_window_is_named(tokenizer):
    record = read_squad_rows([_record(question="Where was Ada born " * 6)])[0]
    with pytest.raises(DataError, match=r"row 1 \(id 'q1'\): the question is \d+ tokens; with data.stride 8"):
        QADataset([record], tokenizer, max_length=24, stride=8)


# ---------------------------------------------------------------------------------------------
# span_kl and the hard-label loss


def _naive_span_kl(student, teacher, mask, temperature):
    total, rows = 0.0, 0
    for b in range(student.shape[0]):
        allowed = [t for t in range(student.shape[2]) if mask[b, t]]
        for r in range(2):
            s = torch.tensor([float(student[b, r, t]) / temperature for t in allowed], dtype=torch.float64)
            q = torch.tensor([float(teacher[b, r, t]) / temperature for t in allowed], dtype=torch.float64)
            log_s = s - torch.logsumexp(s, 0)
            log_t = q - torch.logsumexp(q, 0)
            total += float(sum(log_t[i].exp() * (log_t[i] - log_s[i]) for i in range(len(allowed))))
            rows += 1
    return total / rows * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_span_kl_equals_a_float64_loop_over_the_allowed_positions(temperature):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 2, 7, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(3, 2, 7, generator=generator, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 0, 0, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    value = span_kl(student, teacher, temperature=temperature, mask=mask)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(_naive_span_kl(student, teacher, mask, temperature), rel=1e-12)
    no_t2 = span_kl(student, teacher, temperature=temperature, mask=mask, t2_scale=False)
    assert float(no_t2) * temperature**2 == pytest.approx(float(value), rel=1e-12)
    assert float(span_kl(teacher, teacher, temperature=temperature, mask=mask)) == pytest.approx(0.0, abs=1e-12)


def test_masked_out_positions_never_change_span_kl_or_its_gradient():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 2, 6, generator=generator)
    teacher = torch.randn(2, 2, 6, generator=generator)
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]])
    changed_student, changed_teacher = student.clone(), teacher.clone()
    off = (mask == 0)[:, None, :].expand_as(student)
    changed_student[off] = 1e4
    changed_teacher[off] = -1e4
    first = student.clone().requires_grad_(True)
    second = changed_student.clone().requires_grad_(True)
    a = span_kl(first, teacher, mask=mask, temperature=2.0)
    b = span_kl(second, changed_teacher, mask=mask, temperature=2.0)
    a.backward()
    b.backward()
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    assert torch.allclose(first.grad, second.grad, atol=1e-7) and torch.isfinite(second.grad).all()
    assert float(second.grad[off].abs().max()) == 0.0


def _tiny_qa(layers: int, seed: int):
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        from tiny_models import tiny_bert_qa
    finally:
        sys.path.remove(str(EXAMPLES))
    return tiny_bert_qa(num_layers=layers, hidden_size=32, num_heads=2, seed=seed).eval()


def test_padding_never_reaches_the_loss_a_batch_equals_the_mean_of_its_examples(tokenizer):
    """The KD and hard-label terms of two windows of different lengths, batched (the shorter one padded), are
    the mean of each window's terms alone: neither the padding nor the other window's length enters."""
    from kdistill.data import collate
    from kdistill.distiller import Distiller
    from kdistill.matches import Match

    records = read_squad_rows([_record(), _record("q2", "Where does Bruno live now?",
                                                  "Bruno now lives in Oslo. The river runs through the town.", "Oslo")])
    data = QADataset(records, tokenizer, max_length=48, stride=8)
    assert len(set(data.lengths.tolist())) == 2
    distiller = Distiller(_tiny_qa(2, 0), _tiny_qa(1, 1), [Match("logits", "logits", "span_kl", 1.0,
                                                                   args={"temperature": 2.0}, name="soft")],
                          hard_label_weight=1.0)
    distiller.eval()
    both = distiller(collate([data[0], data[1]]))
    alone = [distiller(collate([data[i]])) for i in range(2)]
    for part in ("soft", "hard_label"):
        expected = (float(alone[0].parts[part]) + float(alone[1].parts[part])) / 2
        assert float(both.parts[part]) == pytest.approx(expected, rel=1e-5), part


def test_the_hard_label_loss_is_hugging_faces_qa_loss(tokenizer):
    from kdistill.data import collate
    from kdistill.losses import hard_ce

    records = read_squad_rows([_record()])
    batch = collate([QADataset(records, tokenizer, max_length=48, stride=8)[0]])
    model = _tiny_qa(1, 2)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    output = model(**inputs, start_positions=batch["labels"][:, 0], end_positions=batch["labels"][:, 1])
    ours = hard_ce(span_logits(output, batch["attention_mask"]), labels=batch["labels"])
    assert float(ours.detach()) == pytest.approx(float(output.loss.detach()), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Best span, exact match and F1


def test_best_span_keeps_to_context_tokens_order_and_the_length_limit():
    offsets = [None, None, (0, 3), (4, 7), (8, 12), (13, 17)]
    start = torch.tensor([9.0, 8.0, 0.0, 1.0, 0.0, 5.0])
    end = torch.tensor([9.0, 0.0, 0.0, 4.0, 3.0, 0.0])
    # start 5 is best but no end follows it except 5 itself (5 + 0); start 3, end 3 scores 5, start 5 end 5 also 5:
    # the first maximum wins; CLS and the question (positions 0, 1) are never chosen.
    score, first, last = best_span(start, end, offsets, max_answer_length=30)
    assert (score, first, last) == (5.0, 3, 3)
    end[5] = 1.0
    assert best_span(start, end, offsets, max_answer_length=30)[1:] == (5, 5)
    start[5], end[5], end[4] = 0.0, 0.0, 10.0
    assert best_span(start, end, offsets, max_answer_length=30)[1:] == (3, 4)
    assert best_span(start, end, offsets, max_answer_length=1)[1:] == (4, 4)
    assert best_span(start, end, [None] * 6, max_answer_length=30) is None


def test_squad_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("  The Cat,  sat!  ") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert exact_match("the Leeds.", "Leeds") == 1.0 and exact_match("Leeds city", "Leeds") == 0.0
    # 'the cat sat' -> [cat, sat]; 'cat sat down' -> [cat, sat, down]: precision 1, recall 2/3, F1 0.8
    assert f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert f1_score("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # the common count is clipped
    assert f1_score("dog", "cat") == 0.0 and f1_score("", "cat") == 0.0 and f1_score("the", "a") == 1.0
    scores = squad_scores(["Leeds", "in Oslo", ""], [["Leeds"], ["Oslo", "Oslo city"], ["Riga"]])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 * 0.5 * 1 / 1.5 + 0) / 3)


# ---------------------------------------------------------------------------------------------
# A tiny run


def test_a_tiny_qa_run_from_yaml_scores_equal_a_re_evaluation_of_the_saved_student(tmp_path, capsys):
    import yaml
    from transformers import AutoModelForQuestionAnswering

    from kdistill.cli import main
    from kdistill.qa_spans import qa_metrics
    from kdistill.run import evaluate_run, run

    out = tmp_path / "qa"
    config = load_config(EXAMPLES / "qa_squad.yaml", ["training.max_steps=3", "training.eval_every=1",
                                                      "training.progress=false", "training.tensorboard=false",
                                                      f"output_dir={out}"])
    summary = run(config)
    test = summary["metrics"]["test"]
    assert set(test["student"]) == {"exact_match", "f1"} and test["examples"] == 12 and test["windows"] > 12
    # the data section counts questions (as the scores do), the windows apart
    assert summary["data"]["test"]["examples"] == 12 and summary["data"]["test"]["windows"] == test["windows"]
    assert f"| test | 12 ({test['windows']:,} windows) |" in (out / "report.md").read_text()
    assert set(summary["baseline"]["metrics"]["test"]) == {"exact_match", "f1", "agreement"}
    again = evaluate_run(out, split="test")
    for role in ("teacher", "student"):
        assert again[role] == test[role]
    assert {k: v for k, v in again["baseline"].items()} == summary["baseline"]["metrics"]["test"]
    # independently of kdistill's loader of run folders: transformers reads the saved student
    from kdistill.evaluation import load_run

    _config, _teacher, _student, _data, loaders = load_run(out)
    saved = AutoModelForQuestionAnswering.from_pretrained(out / "student")
    assert qa_metrics(saved, loaders["test"]) == test["student"]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals and all({"exact_match", "f1"} <= set(record) for record in evals)
    report = (out / "report.md").read_text()
    assert "## Answers" in report and "## Accuracy" not in report
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"  student  {test['student']['exact_match']:>11.4f} {test['student']['f1']:>9.4f}" in printed
    assert "12 questions in" in printed
    # export reads no held-out sentences from QA records (random ids check the copy), not a traceback
    assert main(["export", str(out), "--format", "hf", "-o", str(tmp_path / "exported")]) == 0
    assert "predictions agree 100.00%" in capsys.readouterr().out
    front = yaml.safe_load((out / "student" / "README.md").read_text().split("---")[1])
    assert front["pipeline_tag"] == "question-answering"
    scores = {(r["dataset"]["split"], m["type"]): m["value"] for r in front["model-index"][0]["results"]
              for m in r["metrics"]}
    assert scores[("test", "exact_match")] == test["student"]["exact_match"]
    assert scores[("test", "f1")] == test["student"]["f1"]


def test_kdistill_plan_describes_the_windows_the_mask_and_the_scores():
    from kdistill.planning import make_plan

    text = make_plan(load_config(EXAMPLES / "qa_squad.yaml")).render()
    assert "train: 48 questions in 83 windows (35 extra from long contexts)" in text
    assert "consecutive windows of a long context share 16 tokens (data.stride)" in text
    assert "KD (span_kl) over the window's context tokens and CLS ('not in this window') only" in text
    assert "SQuAD exact match and F1" in text
    assert "span_kl" in text and "hard_ce" in text


def test_a_pretrained_base_is_fine_tuned_as_a_question_answerer_then_distilled(tmp_path, monkeypatch):
    import shutil

    from transformers import BertConfig, BertModel

    from kdistill.run import run

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(base)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(QA_TOKENIZER / name, base / name)
    out = tmp_path / "run"
    config = config_from_dict({
        "teacher": {"path": str(base), "task": "question-answering", "finetune": {"max_steps": 2, "lr": 1e-3}},
        "student": {"from_teacher": {"layers": [0]}},
        "data": {"train": "data/qa_train.jsonl", "test": "data/qa_test.jsonl", "max_length": 48, "stride": 16,
                 "batch_size": 8, "limit": 16},
        "method": "hinton", "training": {"max_steps": 2, "progress": False, "tensorboard": False},
        "output_dir": str(out)}, base_dir=EXAMPLES)
    summary = run(config)
    saved = json.loads((out / "teacher" / "config.json").read_text())
    assert saved["architectures"] == ["BertForQuestionAnswering"]
    assert set(summary["metrics"]["test"]["teacher"]) == {"exact_match", "f1"}
