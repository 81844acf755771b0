"""What model folders say without loading weights, and what `validate` checks with it.

The folders here hold only config.json (and tokenizer files): validate must never need weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from kdistill.config import config_from_dict
from kdistill.errors import ConfigError
from kdistill.model_files import (
    TOKENIZER_FILES,
    missing_tokenizer,
    read_model_folder,
    tokenizer_files,
    vocabulary_difference,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data"
TOKENIZER = DATA / "tiny_tokenizer"
WORDS = (TOKENIZER / "vocab.txt").read_text(encoding="utf-8").split()  # 35 tokens


def bert_folder(folder: Path, *, layers: int = 2, vocab_size: int = len(WORDS), heads: int = 2,
                tokenizer: list[str] | None = None) -> Path:
    """A BERT folder with config.json only (no weights), and a vocab.txt when ``tokenizer`` is given."""
    transformers.BertConfig(num_hidden_layers=layers, hidden_size=32, num_attention_heads=heads,
                            intermediate_size=64, vocab_size=vocab_size).save_pretrained(folder)
    if tokenizer is not None:
        (folder / "vocab.txt").write_text("\n".join(tokenizer) + "\n", encoding="utf-8")
        shutil.copy(TOKENIZER / "tokenizer_config.json", folder / "tokenizer_config.json")
    return folder


def raw(teacher: Path, student: dict | None = None, **changes) -> dict:
    config = {
        "teacher": {"path": str(teacher)},
        "student": student or {"from_teacher": {"layers": [1]}},
        "data": {"train": str(DATA / "reviews_train.csv"), "max_length": 16},
        "method": "hinton",
    }
    config.update(changes)
    return config


def problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(config, source="run.yaml")
    return [line.removeprefix("  - ") for line in str(info.value).splitlines()[1:]]


@pytest.fixture
def teacher(tmp_path) -> Path:
    return bert_folder(tmp_path / "teacher", tokenizer=WORDS)


# ---------------------------------------------------------------------------------------------
# The folder, read without weights


def test_read_model_folder_fills_in_what_config_json_leaves_out(tmp_path):
    # older transformers wrote only values that differ from the defaults: 12 layers go unsaid
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 48,
                                                    "num_attention_heads": 4, "vocab_size": 50}))
    facts = read_model_folder(folder)
    assert (facts.num_layers, facts.hidden_size, facts.num_heads, facts.vocab_size) == (12, 48, 4, 50)
    transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=70).save_pretrained(tmp_path / "gpt2")
    facts = read_model_folder(tmp_path / "gpt2")
    assert (facts.num_layers, facts.hidden_size, facts.num_heads, facts.vocab_size) == (3, 32, 4, 70)
    assert read_model_folder(tmp_path / "nowhere") is None


def test_tokenizer_files_and_the_message_for_a_folder_without_them(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert tokenizer_files(tmp_path) == []
    assert missing_tokenizer(tmp_path, "data.tokenizer", "Do this.") == (
        f"data.tokenizer: the folder '{tmp_path}' has no tokenizer files (expected one of "
        f"{', '.join(TOKENIZER_FILES)}); it holds: config.json, tokenizer_config.json. Do this.")
    (tmp_path / "spiece.model").write_bytes(b"")
    assert tokenizer_files(tmp_path) == ["spiece.model"]
    assert missing_tokenizer(tmp_path, "data.tokenizer") is None


def test_vocabulary_difference_shows_sizes_and_the_first_ids_that_differ():
    teacher = {"[PAD]": 0, ".": 1, "the": 2, "a": 3}
    assert vocabulary_difference(teacher, dict(teacher)) is None
    student = {"[PAD]": 0, "the": 1, ".": 2}
    assert vocabulary_difference(teacher, student) == (
        "the teacher's has 4 tokens, the student's 3, and 3 ids differ (id 1: teacher '.' vs student 'the'; "
        "id 2: teacher 'the' vs student '.'; id 3: teacher 'a' vs student none)")
    assert vocabulary_difference(teacher, {}, examples=1).endswith("(id 0: teacher '[PAD]' vs student none; … 3 more)")


# ---------------------------------------------------------------------------------------------
# Item 6: a teacher folder without tokenizer files


def test_a_teacher_folder_without_tokenizer_files_is_refused_and_data_tokenizer_points_elsewhere(tmp_path):
    folder = bert_folder(tmp_path / "teacher")
    (folder / "model.safetensors").write_bytes(b"")  # never read
    assert problems(raw(folder)) == [
        f"teacher.path: the folder '{folder}' has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
        "it holds: config.json, model.safetensors. Point data.tokenizer at the folder of the tokenizer the teacher "
        "was trained with."]
    config = raw(folder)
    config["data"]["tokenizer"] = str(TOKENIZER)
    assert config_from_dict(config).data.tokenizer == str(TOKENIZER)


def test_images_need_no_tokenizer(tmp_path):
    folder = bert_folder(tmp_path / "teacher")
    config = raw(folder, data={"builtin": "digits"})
    assert config_from_dict(config).data.builtin == "digits"


def test_a_teacher_whose_vocabulary_is_smaller_than_its_tokenizer(tmp_path):
    folder = bert_folder(tmp_path / "teacher", vocab_size=20)
    config = raw(folder)
    config["data"]["tokenizer"] = str(TOKENIZER)
    assert problems(config) == [
        f"teacher: its vocabulary has 20 tokens (vocab_size in '{folder}/config.json') but the tokenizer that feeds it "
        f"('{TOKENIZER}') gives ids up to 34, which its embeddings cannot look up. Point data.tokenizer at the folder "
        "of the tokenizer the teacher was trained with."]


# ---------------------------------------------------------------------------------------------
# Item 7: a student with another tokenizer, or a smaller vocabulary


def test_a_student_with_its_own_different_tokenizer_needs_student_tokenizer(teacher, tmp_path):
    swapped = list(WORDS)
    swapped[10], swapped[11] = swapped[11], swapped[10]
    student = bert_folder(tmp_path / "student", layers=1, tokenizer=swapped)
    assert problems(raw(teacher, {"path": str(student)})) == [
        f"student.path: the student's folder '{student}' holds its own tokenizer, which differs from the teacher's "
        f"('{teacher}'): the teacher's has 35 tokens, the student's 35, and 2 ids differ (id 10: teacher "
        f"'{WORDS[10]}' vs student '{WORDS[11]}'; id 11: teacher '{WORDS[11]}' vs student '{WORDS[10]}'). Without "
        "data.student_tokenizer the student would read the teacher's token ids. Set data.student_tokenizer: "
        f"{student} (each model then reads its own tokens; for language models with the logits matched by loss uld, "
        "the one token loss that needs no common vocabulary), or use a student trained with the teacher's tokenizer."]
    config = raw(teacher, {"path": str(student)})
    config["data"]["student_tokenizer"] = str(student)
    assert config_from_dict(config).data.student_tokenizer == str(student)


def test_a_student_with_the_same_tokenizer_or_none_reads_the_teachers_tokens(teacher, tmp_path):
    same = bert_folder(tmp_path / "same", layers=1, tokenizer=WORDS)
    bare = bert_folder(tmp_path / "bare", layers=1)
    for student in (same, bare):
        assert config_from_dict(raw(teacher, {"path": str(student)})).data.student_tokenizer is None


def test_a_student_vocabulary_smaller_than_the_tokenizer_that_feeds_it(teacher, tmp_path):
    student = bert_folder(tmp_path / "student", layers=1, vocab_size=10)
    too_small = (f"student: its vocabulary has 10 tokens (vocab_size in '{student}/config.json') but the tokenizer "
                 "that feeds it ('{}') gives ids up to 34, which its embeddings cannot look up. Point "
                 "data.student_tokenizer at the folder of the tokenizer the student was trained with.")
    assert problems(raw(teacher, {"path": str(student)})) == [too_small.format(teacher)]
    config = raw(teacher, {"path": str(student)})
    config["data"]["student_tokenizer"] = str(TOKENIZER)  # set, but as large as the teacher's
    assert problems(config) == [too_small.format(TOKENIZER)]
    small = bert_folder(tmp_path / "small_tokenizer", vocab_size=10, tokenizer=WORDS[:10])
    config["data"]["student_tokenizer"] = str(small)
    assert config_from_dict(config).data.student_tokenizer == str(small)


# ---------------------------------------------------------------------------------------------
# Layers, sizes and refs against the folders' layer counts


def test_from_teacher_layers_and_sizes_are_checked_against_the_teacher(teacher):
    assert problems(raw(teacher, {"from_teacher": {"layers": [0, 2, 5]}})) == [
        f"student.from_teacher.layers[1]: 2 is out of range: the teacher '{teacher}' has 2 layers (0–1).",
        f"student.from_teacher.layers[2]: 5 is out of range: the teacher '{teacher}' has 2 layers (0–1).",
    ]
    assert problems(raw(teacher, {"from_teacher": {"num_layers": 1, "hidden_size": 33}})) == [
        "student.from_teacher.hidden_size: hidden_size=33 is not divisible by num_attention_heads=2 (the teacher's); "
        "pick sizes that divide (each head gets hidden_size / num_attention_heads dimensions)."]
    assert problems(raw(teacher, {"from_teacher": {"num_layers": 1, "num_attention_heads": 3}})) == [
        "student.from_teacher.num_attention_heads: hidden_size=32 (the teacher's) is not divisible by "
        "num_attention_heads=3; pick sizes that divide (each head gets hidden_size / num_attention_heads dimensions)."]


def test_refs_and_the_layer_map_are_checked_against_both_layer_counts(tmp_path):
    teacher = bert_folder(tmp_path / "teacher", layers=6, tokenizer=WORDS)
    matches = [{"teacher": "hidden.9", "student": "hidden.1", "loss": "hidden_mse"},
               {"teacher": "attn.-1", "student": "attn.2", "loss": "attention_mse"},
               {"teacher": "hidden.*", "loss": "hidden_mse"}]
    student = {"from_teacher": {"num_layers": 2}}
    assert problems(raw(teacher, student, method=None, matches=matches, layer_map=[[0, 0], [9, 1], [6, 3]])) == [
        "matches[0].teacher: 'hidden.9' is out of range: valid are hidden states 0–6 (0 = embeddings; the model has "
        "6 layers).",
        "matches[1].student: 'attn.2' is out of range: valid are layers 0–1 (the model has 2 layers).",
        "layer_map[1] (teacher): 'hidden.9' is out of range: valid are hidden states 0–6 (0 = embeddings; the model "
        "has 6 layers).",
        "layer_map[2] (student): 'hidden.3' is out of range: valid are hidden states 0–2 (0 = embeddings; the model "
        "has 2 layers).",
    ]
    assert problems(raw(teacher, {"from_teacher": {"num_layers": 8}}, method=None, matches=matches[2:],
                        layer_map="last")) == [
        "layer_map: 'last' with a 6-layer teacher and a 8-layer student: the student has more layers than the teacher."]


def test_a_factory_model_is_not_read(tmp_path):
    # refs on a factory teacher are checked once it is built (run); validate cannot know its size
    config = raw(tmp_path, method=None, matches=[{"teacher": "hidden.99", "student": "logits", "loss": "kl"}],
                 python_path=[str(EXAMPLES)])
    config["teacher"] = {"factory": "tiny_models:tiny_bert"}
    config["data"]["tokenizer"] = str(TOKENIZER)
    assert config_from_dict(config).matches[0].teacher == "hidden.99"
