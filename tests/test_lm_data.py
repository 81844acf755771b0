"""Causal-LM data: texts, prompt/completion pairs and chats to examples whose labels mark the loss tokens."""

from __future__ import annotations

import json

import pytest
import torch

from kdistill.data import make_loader
from kdistill.errors import DataError
from kdistill.lm_data import IGNORE, LossTokens, chat, plain_text, prompt_completion, read_lm_records

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = ["The cat sat on the mat.", "A dog ran in the park.", "What is two plus two?", "Two plus two is four.",
          "Hello there, how are you today?", "I am fine, thank you very much.", "Be brief and kind."]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MARKED_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}"
                   "{{ m['content'] }}<|end|>\n{% endgeneration %}{% else %}{{ m['content'] }}<|end|>\n{% endif %}"
                   "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CONVERSATION = [
    {"role": "system", "content": "Be brief and kind."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Two plus two is four."},
    {"role": "user", "content": "Hello there, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you very much."},
]
ASSISTANT_TEXT = "Two plus two is four.<|end|>\nI am fine, thank you very much.<|end|>\n"


def build_tokenizer(*, pad: bool = True, template: str | None = TEMPLATE):
    """A GPT-2-style byte-level BPE trained here on a few sentences (no download), eos <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token="<|endoftext|>",
                                   pad_token="<|pad|>" if pad else None, chat_template=template)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def labelled_text(tokenizer, item) -> str:
    """The text of the tokens an item's labels keep (the ones that carry loss, plus position 0 if labelled)."""
    return tokenizer.decode([label for label in item["labels"] if label != IGNORE])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Labels


def test_prompt_completion_labels_only_the_completion_and_eos(tokenizer):
    records = [{"prompt": "What is two plus two? ", "completion": "Two plus two is four."},
               {"prompt": "Hello there,", "completion": " how are you today?"}]
    dataset = prompt_completion(records, tokenizer, max_length=64)
    for record, item in zip(records, dataset):
        prompt_length = len(tokenizer(record["prompt"])["input_ids"])
        assert item["labels"][:prompt_length] == [IGNORE] * prompt_length
        assert item["labels"][prompt_length:] == item["input_ids"][prompt_length:]
        assert item["input_ids"][-1] == tokenizer.eos_token_id
        assert labelled_text(tokenizer, item) == record["completion"] + "<|endoftext|>"
        assert tokenizer.decode(item["input_ids"]) == record["prompt"] + record["completion"] + "<|endoftext|>"


def test_plain_text_labels_every_token_and_cuts_at_max_length(tokenizer):
    texts = ["The cat sat on the mat.", "A dog ran in the park."]
    dataset = plain_text(texts, tokenizer, max_length=5)
    for text, item in zip(texts, dataset):
        assert item["input_ids"] == tokenizer(text)["input_ids"][:5]
        assert item["labels"] == item["input_ids"]
    assert dataset.loss_tokens == LossTokens(mean=4.0, min=4, max=4, total=8)  # labels[0] never counts
    one_token = plain_text(["A", "A dog ran."], tokenizer, max_length=5)  # "A" alone has nothing to predict
    assert len(one_token) == 1 and one_token.skipped == (0,)
    assert "1 record left out: fewer than two tokens" in one_token.describe()


@pytest.mark.parametrize("template", [TEMPLATE, MARKED_TEMPLATE], ids=["prefix-diff", "generation-markers"])
def test_chat_labels_only_the_assistant_turns(template):
    tokenizer = build_tokenizer(template=template)
    dataset = chat([{"messages": CONVERSATION}], tokenizer, max_length=256)
    item = dataset[0]
    assert tokenizer.decode(item["input_ids"]) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert labelled_text(tokenizer, item) == ASSISTANT_TEXT
    labelled = [index for index, label in enumerate(item["labels"]) if label != IGNORE]
    assert all(item["labels"][index] == item["input_ids"][index] for index in labelled)  # not shifted
    assert dataset.loss_tokens.total == len(labelled)


def test_chat_both_ways_of_finding_assistant_tokens_agree():
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    by_prefix = chat(records, build_tokenizer(template=TEMPLATE), max_length=256)
    by_markers = chat(records, build_tokenizer(template=MARKED_TEMPLATE), max_length=256)
    assert [item["labels"] for item in by_prefix] == [item["labels"] for item in by_markers]


def test_a_chat_that_opens_with_the_assistant_labels_that_turn(tokenizer):
    opening = [{"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Hi"}]
    item = chat([{"messages": opening}], tokenizer, max_length=64)[0]
    assert labelled_text(tokenizer, item) == "<|assistant|>\nHello there<|end|>\n"  # no prefix: header included


def test_chat_template_that_rewrites_earlier_turns_is_refused():
    # Renders only the last assistant turn in full, as templates that drop earlier reasoning do.
    rewriting = ("{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' and not loop.last %}..."
                 "{% else %}{{ m['content'] }}{% endif %}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    with pytest.raises(DataError, match=r"train.jsonl: record 0: the chat template of .* does not render the "
                                        r"conversation prefix by prefix \(turn 2 .*\{% generation %\}"):
        chat([{"messages": CONVERSATION}], build_tokenizer(template=rewriting), 256, source="train.jsonl")


# ---------------------------------------------------------------------------------------------
# Packing and truncation


def test_packing_gives_equal_blocks_that_concatenate_to_the_eos_joined_stream(tokenizer):
    texts = CORPUS
    eos = tokenizer.eos_token_id
    stream = [token for text in texts for token in (*tokenizer(text)["input_ids"], eos)]
    dataset = plain_text(texts, tokenizer, max_length=8, pack=True)
    blocks = [item["input_ids"] for item in dataset]
    assert len(blocks) == len(stream) // 8 and {len(block) for block in blocks} == {8}
    assert [token for block in blocks for token in block] == stream[: len(blocks) * 8]
    assert all(item["labels"] == item["input_ids"] for item in dataset)
    dropped = len(stream) % 8
    assert dropped and f"the last {dropped} tokens (a short block) are dropped" in dataset.describe()


def test_packing_refuses_fewer_tokens_than_one_block(tokenizer):
    with pytest.raises(DataError, match=r"fewer than one block of max_length 512; lower max_length or set pack"):
        plain_text(["The cat sat."], tokenizer, max_length=512, pack=True)


def test_prompt_completion_truncation_keeps_the_prompt_start_and_cuts_the_completion_end(tokenizer):
    record = {"prompt": "What is two plus two?", "completion": " Two plus two is four."}
    prompt_ids = tokenizer(record["prompt"])["input_ids"]
    completion_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    max_length = len(prompt_ids) + 3
    item = prompt_completion([record], tokenizer, max_length=max_length)[0]
    assert item["input_ids"] == prompt_ids + completion_ids[:3]  # eos is cut first, with the completion's end
    assert item["labels"] == [IGNORE] * len(prompt_ids) + completion_ids[:3]


def test_a_completion_cut_to_nothing_is_skipped_and_counted(tokenizer):
    records = [{"prompt": "Hello there, how are you today?", "completion": " Fine."},
               {"prompt": "Hi", "completion": " Fine."}]
    long_prompt = len(tokenizer(records[0]["prompt"])["input_ids"])
    dataset = prompt_completion(records, tokenizer, max_length=long_prompt)
    assert len(dataset) == 1 and dataset.skipped == (0,)
    assert dataset.loss_tokens.min > 0
    assert f"1 record left out: the prompt fills max_length {long_prompt}" in dataset.describe()


def test_a_chat_cut_before_its_first_assistant_token_is_skipped(tokenizer):
    short = [{"messages": CONVERSATION[1:3]}]
    before_assistant = len(tokenizer.apply_chat_template(CONVERSATION[1:2], add_generation_prompt=True)["input_ids"])
    with pytest.raises(DataError, match=rf"chat.jsonl: all 1 records are left out \(no assistant token is left "
                                        rf"within max_length {before_assistant}\), so no token carries loss"):
        chat(short, tokenizer, max_length=before_assistant, source="chat.jsonl")
    cut = chat(short, tokenizer, max_length=before_assistant + 2)
    assert len(cut) == 1 and cut.loss_tokens.total == 2


def test_loss_tokens_count_labelled_tokens_per_example(tokenizer):
    records = [{"prompt": "Hi", "completion": " Two plus two is four."},
               {"prompt": "Hi", "completion": " Fine."}]
    dataset = prompt_completion(records, tokenizer, max_length=64)
    counts = [sum(label != IGNORE for label in item["labels"]) for item in dataset]
    assert dataset.loss_tokens == LossTokens(sum(counts) / 2, min(counts), max(counts), sum(counts))
    assert str(dataset.loss_tokens).startswith(f"{sum(counts) / 2:.1f} loss tokens per example")


# ---------------------------------------------------------------------------------------------
# Batches


def test_make_loader_batches_pad_right_with_pad_id_zero_mask_and_ignored_labels(tokenizer):
    texts = CORPUS + ["Two plus two.", "A cat."]
    dataset = plain_text(texts, tokenizer, max_length=16)
    batches = list(make_loader(dataset, 4, shuffle=True, bucket=True))
    assert sorted(len(batch["input_ids"]) for batch in batches) == [1, 4, 4]
    assert sorted(index for batch in batches for index in batch["index"].tolist()) == list(range(len(texts)))
    for batch in batches:
        rows, width = batch["input_ids"].shape
        assert batch["attention_mask"].shape == batch["labels"].shape == (rows, width)
        for row, index in enumerate(batch["index"].tolist()):
            length = int(dataset.lengths[index])
            assert width == max(int(dataset.lengths[i]) for i in batch["index"].tolist())
            assert batch["input_ids"][row, :length].tolist() == dataset[index]["input_ids"]
            assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
            assert (batch["attention_mask"][row, length:] == 0).all()
            assert (batch["labels"][row, length:] == IGNORE).all()
    assert not dataset.pads_with_eos


def test_a_tokenizer_without_pad_token_pads_with_eos_and_says_so():
    tokenizer = build_tokenizer(pad=False)
    dataset = plain_text(["The cat sat on the mat.", "A dog."], tokenizer, max_length=16)
    batch = dataset.collator()([dataset[0], dataset[1]])
    assert dataset.pads_with_eos and dataset.pad_token_id == tokenizer.eos_token_id
    assert batch["input_ids"][1, -1] == tokenizer.eos_token_id and batch["labels"][1, -1] == IGNORE
    assert "no pad token; batches pad with the eos token" in dataset.describe()


def test_a_tiny_llama_takes_the_batch_and_its_loss_is_the_masked_next_token_ce(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    dataset = chat(records, tokenizer, max_length=64)
    batch = dataset.collator()([dataset[0], dataset[1]])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    logits, labels = out.logits.double(), batch["labels"]
    losses = [-torch.log_softmax(logits[row, position - 1], -1)[labels[row, position]]
              for row in range(labels.shape[0]) for position in range(1, labels.shape[1])
              if labels[row, position] != IGNORE]
    assert len(losses) == dataset.loss_tokens.total
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input: DataErrors that name the file, the record and what is wrong


@pytest.mark.parametrize("records, message", [
    ([{"conversation": []}], r"chat.jsonl: record 0 has no 'messages' \(keys: conversation\)"),
    ([{"messages": [{"content": "hi"}]}], r"chat.jsonl: record 0, message 0 has no 'role' \(keys: content\)"),
    ([{"messages": [{"role": "user"}]}], r"chat.jsonl: record 0, message 0 has no 'content' \(keys: role\)"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
     r"chat.jsonl: record 0, message 1 has the role 'bot'; roles are system, user, assistant, tool"),
    ([{"messages": CONVERSATION}, {"messages": CONVERSATION[:2]}],
     r"chat.jsonl: record 1 has no assistant message, so nothing in it carries loss"),
    ([{"messages": "user: hi"}], r"chat.jsonl: record 0: 'messages' is str 'user: hi', not a non-empty list"),
])
def test_read_lm_records_refuses_bad_chat_records(tmp_path, records, message):
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    with pytest.raises(DataError, match=message):
        read_lm_records(path, "chat")


def test_read_lm_records_names_the_columns_a_prompt_completion_file_has(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,answer\nWhat?,This.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.csv: no column 'completion'.* Columns: answer, prompt\."):
        read_lm_records(path, "prompt_completion")


@pytest.mark.parametrize("name, content", [("empty.txt", ""), ("blank.txt", "\n  \n"), ("empty.jsonl", "\n")])
def test_read_lm_records_refuses_an_empty_text_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"'{path}' (is empty: it has no line with text|holds no records)"):
        read_lm_records(path, "text")


def test_read_lm_records_reads_a_text_file_line_by_line_and_checks_columns(tmp_path):
    (tmp_path / "a.txt").write_text("The cat sat.\n\nA dog ran.\n", encoding="utf-8")
    assert read_lm_records(tmp_path / "a.txt", "text") == [{"text": "The cat sat."}, {"text": "A dog ran."}]
    write_jsonl(tmp_path / "b.jsonl", [{"text": "fine"}, {"text": " "}])
    with pytest.raises(DataError, match=r"b.jsonl: record 1 has no text in 'text'"):
        read_lm_records(tmp_path / "b.jsonl", "text")
    with pytest.raises(DataError, match=r"a.txt' is a .txt file .*chat data needs a CSV, TSV, JSONL or JSON file"):
        read_lm_records(tmp_path / "a.txt", "chat")


def test_chat_data_with_a_tokenizer_without_chat_template_names_the_folder(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(template=None).save_pretrained(tmp_path / "base-model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base-model")
    with pytest.raises(DataError, match=rf"chat.jsonl: chat data needs a chat template, but the tokenizer at "
                                        rf"'{tmp_path / 'base-model'}' has none"):
        chat([{"messages": CONVERSATION}], tokenizer, 64, source="chat.jsonl")


def test_a_tool_message_needs_a_template_with_a_tool_role(tokenizer):
    records = [{"messages": [*CONVERSATION[1:3], {"role": "tool", "content": "4"},
                             {"role": "assistant", "content": "Four."}]}]
    with pytest.raises(DataError, match=r"chat.jsonl: record 0 has a 'tool' message, but the chat template .* "
                                        r"has no tool role"):
        chat(records, tokenizer, 64, source="chat.jsonl")
    assert len(chat(records, build_tokenizer(template=TEMPLATE + "{# tool #}"), 64)) == 1
