"""``kdistill generate``: the teacher's answers to a causal-LM run's prompts as a DatasetDict a run
trains on (sequence-level KD): exact batched greedy answers, resume to the same bytes, settings
recorded and checked, chat records, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from kdistill import generate as kgenerate
from kdistill.cli import main
from kdistill.errors import ConfigError

from tests.test_causal_lm import PAIRS, _raw, _tiny
from tests.test_lm_data import CONVERSATION, build_tokenizer, write_jsonl

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = build_tokenizer()
    _tiny("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(teacher, tmp_path, **data):
    raw = _raw(teacher, tmp_path)
    raw["data"].update(data)
    file = tmp_path / "lm.yaml"
    file.write_text(yaml.safe_dump(raw))
    return file


def _rows(folder, split):
    return [dict(row) for row in datasets.load_from_disk(str(folder))[split]]


def test_greedy_answers_in_left_padded_batches_equal_one_prompt_at_a_time(teacher, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "answers"
    assert main(["generate", str(_config(teacher, tmp_path)), "--output", str(out), "--max-new-tokens", "6",
                 "--batch-size", "4", "--chunk", "5"]) == 0
    train, test = _rows(out, "train"), _rows(out, "test")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(teacher).eval(), AutoTokenizer.from_pretrained(teacher)
    originals = {row["prompt"]: row["completion"] for row in PAIRS}
    for row in train:
        ids = torch.tensor([tokenizer(row["prompt"])["input_ids"]])
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in alone:
            alone = alone[: alone.index(tokenizer.eos_token_id)]
        assert row["completion"] == tokenizer.decode(alone, skip_special_tokens=True)
    assert all(row["completion"] == originals[row["prompt"]] for row in test)  # held-out references kept
    record = json.loads((out / kgenerate.SETTINGS_FILE).read_text())
    assert record["do_sample"] is False and record["max_new_tokens"] == 6 and record["result"]["generated"] == len(train)
    assert not (tmp_path / "answers.partial").exists()


def test_an_interrupted_sampled_generation_resumes_to_the_same_dataset(teacher, tmp_path, monkeypatch):
    config = _config(teacher, tmp_path)
    args = ["--max-new-tokens", "5", "--sample", "--temperature", "0.9", "--top-p", "0.95", "--chunk", "4"]
    whole = tmp_path / "whole"
    assert main(["generate", str(config), "--output", str(whole), *args]) == 0
    real, calls = kgenerate._generate, []

    def crash_on_the_third_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(kgenerate, "_generate", crash_on_the_third_chunk)
    assert main(["generate", str(config), "--output", str(resumed), *args]) == 130  # Ctrl-C
    assert len(list((tmp_path / "resumed.partial").glob("train-*.jsonl"))) == 2 and not resumed.exists()
    calls.clear()
    monkeypatch.setattr(kgenerate, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["generate", str(config), "--output", str(resumed), *args]) == 0
    assert len(calls) == 1  # only the unfinished chunk ran again
    assert _rows(resumed, "train") == _rows(whole, "train")
    assert [(p.name, p.read_bytes()) for p in sorted((resumed / "train").glob("*.arrow"))] == \
        [(p.name, p.read_bytes()) for p in sorted((whole / "train").glob("*.arrow"))]


def test_settings_are_checked_against_what_made_the_output(teacher, tmp_path, monkeypatch):
    config, out = _config(teacher, tmp_path), tmp_path / "answers"
    assert main(["generate", str(config), "--output", str(out), "--max-new-tokens", "3"]) == 0
    monkeypatch.setattr(kgenerate, "_generate", lambda *a, **k: pytest.fail("generated again"))
    assert main(["generate", str(config), "--output", str(out), "--max-new-tokens", "3"]) == 0  # nothing to do
    with pytest.raises(ConfigError, match="holds answers made with other settings \\(max_new_tokens: 3 then, 4 now\\)"):
        kgenerate.main(_args(config, out, "--max-new-tokens", "4"))
    monkeypatch.undo()
    assert main(["generate", str(config), "--output", str(out), "--max-new-tokens", "4", "--overwrite"]) == 0
    assert json.loads((out / kgenerate.SETTINGS_FILE).read_text())["max_new_tokens"] == 4
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a kdistill generate output"):
        kgenerate.main(_args(config, mine, "--overwrite"))
    assert (mine / "notes.txt").read_text() == "keep me"


def _args(config, out, *more):
    import argparse

    parser = argparse.ArgumentParser()
    kgenerate.add_arguments(parser)
    return parser.parse_args([str(config), "--output", str(out), *more])


def test_a_run_trains_on_the_teachers_answers(teacher, tmp_path):
    from kdistill.config import config_from_dict
    from kdistill.run import run

    out = tmp_path / "answers"
    assert main(["generate", str(_config(teacher, tmp_path)), "--output", str(out), "--max-new-tokens", "8"]) == 0
    raw = _raw(teacher, tmp_path, baseline=False)
    raw["data"] = {**raw["data"], "path": str(out)}
    del raw["data"]["split"]
    summary = run(config_from_dict(raw))
    assert summary["data"]["train"]["source"] == f"{out} [train]" and summary["metrics"]["test"]["tokens"] > 0


def test_chat_records_get_the_teachers_last_assistant_turn(teacher, tmp_path):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATION, "id": i} for i in range(6)])
    out = tmp_path / "answers"
    config = _config(teacher, tmp_path, path=str(chats), kind="chat", split=[0.5, 0.5])
    assert main(["generate", str(config), "--output", str(out), "--max-new-tokens", "4"]) == 0
    for row in _rows(out, "train"):
        assert row["messages"][:-1] == CONVERSATION[:-1] and row["messages"][-1]["role"] == "assistant"
        assert isinstance(row["id"], int)  # other columns stay
    assert [r["messages"] for r in _rows(out, "validation")] == [CONVERSATION] * 3


def test_plain_text_has_no_prompts_and_bad_settings_are_named(teacher, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"line {i}" for i in range(10)))
    with pytest.raises(ConfigError, match="data.kind: 'text' has no prompts to answer"):
        kgenerate.main(_args(_config(teacher, tmp_path, path=str(texts), kind="text"), tmp_path / "o"))
    config = _config(teacher, tmp_path)
    with pytest.raises(ConfigError, match="--top-p: 1.5 must be in"):
        kgenerate.main(_args(config, tmp_path / "o", "--sample", "--top-p", "1.5"))
    with pytest.raises(ConfigError, match="--splits: the data has no dev split; it has train, validation, test"):
        kgenerate.main(_args(config, tmp_path / "o", "--splits", "dev"))
