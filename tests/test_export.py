"""Export to hf / onnx / onnx-int8 / torch-int8, each checked against PyTorch; atomic; optional onnx."""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from kdistill import export as export_module
from kdistill.errors import ConfigError
from kdistill.export import (
    MissingDependencyError,
    OrtRunner,
    add_export_arguments,
    compare,
    export,
    export_main,
    held_out,
    load_torch_int8,
    resolve_source,
    torch_runner,
)

POSITIVE = ["good", "great", "fun", "superb"]
NEGATIVE = ["bad", "awful", "dull", "boring"]
FILLER = ["the", "movie", "plot", "actor", "scene", "was", "a", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

onnx_installed = pytest.mark.skipif(not export_module.onnx_available(), reason="needs onnx and onnxruntime")


# ---------------------------------------------------------------------------------------------
# A tiny run: a 2-layer, 32-wide BERT trained a few steps on a word-polarity task


def synthetic(count: int, seed: int) -> tuple[list[str], list[int]]:
    """One polarity word among 2–10 fillers; the label is the word's polarity."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def make_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n", encoding="utf-8")
    # transformers 5: the argument is `vocab` (a path or a dict); `vocab_file=` is silently ignored.
    return transformers.BertTokenizerFast(vocab=str(vocab))


def tiny_bert(vocab_size: int, layers: int = 2, seed: int = 0) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=37, num_labels=2,
                                     max_position_embeddings=32)
    return transformers.BertForSequenceClassification(config)


def train_steps(model, tokenizer, texts, labels, steps: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(steps):
        start = (step * 32) % len(texts)
        batch = tokenizer(texts[start : start + 32], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels[start : start + 32])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def write_csv(path: Path, texts: list[str], labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


def make_run(root: Path, *, layers: int = 2, steps: int = 20) -> Path:
    """``root/student`` (model + tokenizer, trained ``steps`` steps) and ``root/data/test.csv``."""
    tokenizer = make_tokenizer(root / "vocab")
    model = tiny_bert(tokenizer.vocab_size, layers)
    texts, labels = synthetic(320, seed=0)
    train_steps(model, tokenizer, texts, labels, steps)
    model.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    write_csv(root / "data" / "test.csv", *synthetic(120, seed=1))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


def pytorch_logits(folder: Path, batch: dict) -> np.ndarray:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    return torch_runner(model)(batch)


def test_the_tiny_run_is_trained(run_dir):
    # The agreement assertions below are meaningful only if logits have real margins.
    data = held_out(run_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "student", local_files_only=True)
    batch = dict(tokenizer(data.texts, padding=True, return_tensors="pt"))
    predictions = pytorch_logits(run_dir / "student", batch).argmax(-1)
    assert (predictions == np.array(data.labels)).mean() >= 0.9


# ---------------------------------------------------------------------------------------------
# Formats


def test_hf_export_loads_with_auto_classes_and_matches(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    result = export(run_dir, out, "hf")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    batch = dict(tokenizer(["good movie", "the plot was dull"], padding=True, return_tensors="pt"))
    np.testing.assert_array_equal(torch_runner(model)(batch), pytorch_logits(run_dir / "student", batch))
    report = json.loads((out / "export.json").read_text())
    assert report["format"] == "hf" and report["check"]["max_abs_diff"] == 0.0
    assert report["check"]["agreement"] == 1.0 and report["check"]["compared"] == 120
    assert "test file" in report["check"]["source"] and result.check == report["check"]
    printed = capsys.readouterr().out
    assert "hf: max |logit difference| 0.00e+00, predictions agree 100.00% (120 predictions" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left behind


@onnx_installed
def test_onnx_export_has_dynamic_axes_and_matches_pytorch(run_dir, tmp_path):
    out = tmp_path / "onnx"
    result = export(run_dir, out, "onnx", log=None)
    assert result.check["max_abs_diff"] < 1e-4 and result.check["agreement"] == 1.0
    runner = OrtRunner(out / "model.onnx")
    assert runner.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in runner.session.get_outputs()] == ["logits"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    # Batch sizes and lengths other than the traced ones (2 × 8), with padding.
    for texts in (["good"], ["the movie was very very boring and the plot dull", "fun", "a scene", "bad", "great"]):
        batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        got, expected = runner(batch), pytorch_logits(run_dir / "student", batch)
        assert got.shape == (len(texts), 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def matmul_weight_types(graph) -> set[int]:
    """Element types of the weights fed to MatMulInteger (embeddings, quantised for Gather, stay uint8)."""
    weights = {node.input[1] for node in graph.node if node.op_type == "MatMulInteger"}
    return {t.data_type for t in graph.initializer if t.name in weights}


@onnx_installed
def test_onnx_int8_is_quantised_and_agrees(run_dir, tmp_path):
    import onnx

    out = tmp_path / "int8"
    result = export(run_dir, out, "onnx-int8", log=None)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.node}
    assert matmul_weight_types(graph) == {onnx.TensorProto.UINT8}  # the default weight type
    assert result.weight_type == "uint8"
    gathers = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    tables = {t.name: t.data_type for t in graph.initializer if t.name in gathers}
    assert tables and set(tables.values()) == {onnx.TensorProto.FLOAT}  # embeddings stay fp32 by default
    assert not list(out.glob("model-fp32*"))
    # A trained model has margins: int8 keeps ≥ 99 % of the predictions while the logits do move.
    assert result.check["agreement"] >= 0.99
    assert 0 < result.check["max_abs_diff"] < 0.5
    assert json.loads((out / "export.json").read_text())["exporter"] == "torchscript"


def test_torch_int8_loads_back_with_weights_only(run_dir, tmp_path):
    out = tmp_path / "tint8"
    result = export(run_dir, out, "torch-int8", log=None)
    state = torch.load(out / "model-int8.pt", weights_only=True)  # the safe unpickler accepts it
    packed = [key for key in state if key.endswith("_packed_params._packed_params")]
    assert len(packed) == 2 * 6 + 2  # 6 Linear per BERT layer, pooler, classifier
    model = load_torch_int8(out)
    quantized = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == len(packed)
    assert result.check["agreement"] >= 0.99 and 0 < result.check["max_abs_diff"] < 0.5
    assert not list(out.glob("*.safetensors"))


def test_keep_layers_prunes_before_export(tmp_path):
    run = make_run(tmp_path / "run", layers=4, steps=5)
    result = export(run, tmp_path / "pruned", "hf", keep_layers="0,2", log=None)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert result.keep_layers == [0, 2] and result.check["agreement"] == 1.0
    original = transformers.AutoModelForSequenceClassification.from_pretrained(run / "student")
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight,
                               original.bert.encoder.layer[2].output.dense.weight)
    with pytest.raises(ConfigError, match="layer 7 is out of range: the model has 4 layers"):
        export(run, tmp_path / "bad", "hf", keep_layers="0,7", log=None)


# ---------------------------------------------------------------------------------------------
# Atomic writes, sources, held-out data


def test_export_replaces_old_folder_and_failure_keeps_it(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export(run_dir, out, "hf", log=None)
    assert not (out / "stale.txt").exists() and (out / "export.json").exists()

    def broken(model, tmp):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "quantize_torch", lambda model: broken(model, None))
    with pytest.raises(RuntimeError, match="disk full"):
        export(run_dir, out, "torch-int8", log=None)
    assert json.loads((out / "export.json").read_text())["format"] == "hf"  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resolve_source_accepts_run_or_model_folder(run_dir, tmp_path):
    assert resolve_source(run_dir) == (run_dir / "student", run_dir)
    assert resolve_source(run_dir / "student") == (run_dir / "student", None)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="neither a run folder .* it holds: notes.txt"):
        resolve_source(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source(tmp_path / "missing")


def test_held_out_reads_the_runs_own_split(tmp_path):
    """A kdistill run folder: the split is rebuilt by the run's rules (its config's path and split)."""
    from kdistill.config import config_from_dict
    from kdistill.run import run

    texts, labels = synthetic(50, seed=3)
    write_csv(tmp_path / "all.csv", texts, labels)
    examples = Path(__file__).resolve().parents[1] / "examples"
    config = config_from_dict({
        "teacher": {"factory": "tiny_models:tiny_bert", "args": {"num_layers": 2, "hidden_size": 32}},
        "student": {"from_teacher": {"layers": [1]}},
        "data": {"path": str(tmp_path / "all.csv"), "split": [0.6, 0.2, 0.2], "max_length": 16,
                 "tokenizer": str(examples / "data" / "tiny_tokenizer")},
        "method": "hinton", "training": {"max_steps": 1, "progress": False, "tensorboard": False},
        "output_dir": str(tmp_path / "run"),
    }, base_dir=examples)
    run(config)
    data = held_out(tmp_path / "run")
    assert len(data.texts) == 10 and data.max_length == 16 and "test split of the run" in data.source
    assert all(text in texts for text in data.texts)
    assert [labels[texts.index(t)] for t in data.texts] == data.labels


def test_export_without_data_checks_on_random_tokens(run_dir, tmp_path):
    result = export(run_dir / "student", tmp_path / "m", "hf", log=None)
    assert result.check["source"].startswith("random token ids") and result.check["compared"] == 64


def test_compare_counts_only_unmasked_tokens():
    expected = np.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])
    got = np.array([[[1.0, 0.0], [0.5, 0.2], [0.0, 9.0]]])  # last position is padding
    batch = {"attention_mask": torch.tensor([[1, 1, 0]])}
    check = compare(lambda b: expected, lambda b: got, [batch])
    assert check == {"max_abs_diff": pytest.approx(0.8), "agreement": 0.5, "compared": 2}


# ---------------------------------------------------------------------------------------------
# Without onnx, and the CLI


def test_onnx_formats_say_how_to_install_when_missing(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError) as caught:
        export(run_dir, tmp_path / "x", "onnx-int8", log=None)
    message = str(caught.value)
    assert "needs onnxruntime, which is not installed" in message
    assert "pip install 'kdistill[onnx]'" in message
    assert not (tmp_path / "x").exists()
    export(run_dir, tmp_path / "hf", "hf", log=None)  # the other formats do not need it


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(argv)


def test_cli_export_default_folder_and_min_agreement(run_dir, capsys):
    assert export_main(_cli([str(run_dir), "--format", "torch-int8"])) == 0
    assert (run_dir / "export" / "torch-int8" / "export.json").exists()
    assert "torch-int8: max |logit difference|" in capsys.readouterr().out
    assert export_main(_cli([str(run_dir), "--format", "hf", "--min-agreement", "1.01"])) == 1
    assert "only 100.00% of predictions agree" in capsys.readouterr().out


@onnx_installed
def test_dynamo_exporter_without_onnxscript_says_what_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingDependencyError, match="dynamo ONNX exporter needs onnxscript; run 'pip install onnxscript'"):
        export(run_dir, tmp_path / "d", "onnx", exporter="dynamo", log=None)
    assert not (tmp_path / "d").exists()


@onnx_installed
def test_onnx_int8_weight_type_int8(run_dir, tmp_path):
    import onnx

    result = export(run_dir, tmp_path / "s8", "onnx-int8", weight_type="int8", log=None)
    graph = onnx.load(str(tmp_path / "s8" / "model.onnx")).graph
    assert matmul_weight_types(graph) == {onnx.TensorProto.INT8}
    assert result.check["agreement"] >= 0.95
    assert json.loads((tmp_path / "s8" / "export.json").read_text())["weight_type"] == "int8"
    small = export(run_dir, tmp_path / "e8", "onnx-int8", quantize_embeddings=True, log=None)
    graph = onnx.load(str(tmp_path / "e8" / "model.onnx")).graph
    gathers = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    assert any(name.endswith("word_embeddings.weight_quantized") for name in gathers)
    assert small.files["model.onnx"] < result.files["model.onnx"]
    with pytest.raises(ConfigError, match="unknown weight type 'int4'"):
        export(run_dir, tmp_path / "s4", "onnx-int8", weight_type="int4", log=None)


@onnx_installed
def test_onnx_int8_keeps_the_first_blocks_feed_forward_in_fp32_unless_told(run_dir, tmp_path):
    import onnx

    kept = export(run_dir, tmp_path / "kept", "onnx-int8", log=None)
    assert [name.split("/encoder/")[1] for name in kept.fp32_nodes] == [
        "layer.0/intermediate/dense/MatMul", "layer.0/output/dense/MatMul"]
    graph = onnx.load(str(tmp_path / "kept" / "model.onnx")).graph
    plain = {node.name for node in graph.node if node.op_type == "MatMul"}
    assert set(kept.fp32_nodes) <= plain and kept.per_channel is True
    assert json.loads((tmp_path / "kept" / "export.json").read_text())["fp32_nodes"] == kept.fp32_nodes

    everything = export(run_dir, tmp_path / "all", "onnx-int8", keep_fp32=(), per_channel=False, log=None)
    assert everything.fp32_nodes == []
    graph = onnx.load(str(tmp_path / "all" / "model.onnx")).graph
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(weight_matmuls) == len([n for n in onnx.load(str(tmp_path / "kept" / "model.onnx")).graph.node
                                       if n.op_type == "MatMulInteger"]) + 2
