"""The student's model card (student/README.md): the Hub's front matter and every figure equal to
summary.json, for a tiny classifier run and a tiny causal-LM run; no machine path leaks; a user's
README is left alone; a benchmark updates the card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kdistill.model_card import hub_name, model_card, read_front_matter, write_model_card
from kdistill.run import run

from tests.test_run import hf_config, teacher_folder  # noqa: F401 - the fixture

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?%?$")


def _tables(text: str) -> list[dict[str, str]]:
    """Every markdown table row of ``text`` as {header: cell}."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= {"-"}:
            rows.append(dict(zip(header, cells)))
    return rows


def _number(cell: str) -> tuple[float, float]:
    """A table cell as a number and the half-unit of its last shown digit (``31.25%`` -> 0.3125, 5e-5)."""
    assert NUMBER.match(cell), cell
    plain = cell.replace(",", "").rstrip("%")
    decimals = len(plain.partition(".")[2])
    scale = 100 if cell.endswith("%") else 1
    return float(plain) / scale, 0.5 * 10 ** -decimals / scale


def _equal(cell: str, value: float) -> None:
    shown, tolerance = _number(cell)
    assert abs(shown - value) <= tolerance + 1e-12, (cell, value)


def _check_card(out: Path, tmp_path: Path, *, language: bool) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "student" / "README.md").read_text()
    meta = read_front_matter(text)
    assert meta == yaml.safe_load(text.split("---\n")[1])  # valid YAML between the first two --- lines
    assert meta["tags"] == ["kdistill", "knowledge-distillation"] and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == ("text-generation" if language else "text-classification")
    assert "base_model" not in meta  # a local teacher folder is no Hub name
    results = meta["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == list(summary["metrics"])
    for result in results:
        student = summary["metrics"][result["dataset"]["split"]]["student"]
        got = {m["type"]: m["value"] for m in result["metrics"]}
        want = ({"perplexity": student["perplexity"]} if language
                else {"accuracy": student["accuracy"], "f1": student["macro_f1"]})
        assert got == want  # numbers as summary.json holds them
    rows = _tables(text)
    figures = [r for r in rows if "model" in r and "split" in r]
    assert {r["model"] for r in figures} == {"teacher", "student", "baseline"}
    for row in figures:
        split, role = row["split"], row["model"]
        result = summary["metrics"][split]
        values = summary["baseline"]["metrics"][split] if role == "baseline" else result[role]
        if language:
            _equal(row["perplexity"], values["perplexity"])
            _equal(row["next-token loss"], values["loss"])
        else:
            _equal(row["accuracy"], values["accuracy"])
            _equal(row["macro-F1"], values["macro_f1"])
        if role != "teacher":
            agreement = values["agreement"] if role == "baseline" else result["agreement"]
            _equal(row["agrees with the teacher" if not language else "top-1 agrees with the teacher"], agreement)
    sizes = {r["model"]: r for r in rows if "parameters" in r}
    for role in ("teacher", "student"):
        _equal(sizes[role]["parameters"], summary["parameters"][role])
    _equal(sizes["student"]["of the teacher"], summary["parameters"]["student"] / summary["parameters"]["teacher"])
    data = {r["split"]: r for r in rows if "examples" in r}
    assert {split: _number(r["examples"])[0] for split, r in data.items()} == \
        {split: part["examples"] for split, part in summary["data"].items()}
    # No folder of this machine outside the config's own paths: the run folder's student/, summary,
    # checkpoints are never named.
    config_text = text.split("## The resolved config")[1]
    before = text.split("## The resolved config")[0]
    for path in re.findall(re.escape(str(tmp_path)) + r"[^\s`|]*", before):
        assert path in config_text, path
    assert str(out / "student") not in text and str(out / "baseline") not in text
    return meta


def test_a_classifier_run_writes_a_card_whose_figures_equal_the_summary(teacher_folder, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run(hf_config(teacher_folder, out, baseline=True))
    _check_card(out, tmp_path, language=False)
    assert "README.md" in json.loads((out / "student" / ".kdistill-files.json").read_text())
    # The Hub's own reader sees the same figures.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "student" / "README.md")
    summary = json.loads((out / "summary.json").read_text())
    hub = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert hub[("test", "accuracy")] == summary["metrics"]["test"]["student"]["accuracy"]


def test_a_causal_lm_run_writes_a_card_with_perplexity(tmp_path):
    from tests.test_causal_lm import _raw, _tiny
    from tests.test_lm_data import build_tokenizer

    from kdistill.config import config_from_dict

    teacher = tmp_path / "teacher"
    tokenizer = build_tokenizer()
    _tiny("llama", tokenizer).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    run(config_from_dict(_raw(teacher, tmp_path)))
    _check_card(tmp_path / "run", tmp_path, language=True)
    assert "AutoModelForCausalLM.from_pretrained" in (tmp_path / "run" / "student" / "README.md").read_text()


def test_a_users_readme_is_left_alone_and_a_benchmark_updates_kdistills_card(teacher_folder, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    config = hf_config(teacher_folder, out)
    run(config)
    generation = {"measured_at": "then", "threads": 1, "repeats": 3, "tokens_per_second": {"teacher": 10.0,
                  "student": 25.0}, "speedup": {"student": 2.5}}
    (out / "generation.json").write_text(json.dumps(generation))
    write_model_card(out)  # what bench_lm does after writing generation.json
    rows = {r["model"]: r for r in _tables((out / "student" / "README.md").read_text()) if "tokens/s" in r}
    assert _number(rows["student"]["tokens/s"])[0] == 25.0
    (out / "student" / "README.md").unlink()
    (out / "student" / ".kdistill-files.json").write_text(json.dumps(["config.json", "model.safetensors"]))
    (out / "student" / "README.md").write_text("my own card\n")
    assert write_model_card(out) is None
    run(config)  # the same config again: the student saved again; the user's card carried over
    assert (out / "student" / "README.md").read_text() == "my own card\n"


def test_an_image_student_card_loads_safetensors_and_names_a_hub_teacher(tmp_path):
    snapshot = tmp_path / "hub" / "models--google--vit-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_name(str(snapshot)) == "google/vit-base"
    assert hub_name(str(tmp_path)) is None  # a plain local folder: no Hub name guessed
    (tmp_path / "config.json").write_text('{"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}')
    assert hub_name(str(tmp_path)) is None  # the model it was loaded from before it was saved: not itself
    summary = {"method": "hinton", "stages": [{"stage": "distil", "data": "train", "steps": 5}],
               "parameters": {"teacher": 1000, "student": 250}, "data": {"test": {"examples": 30, "source": "x"}},
               "metrics": {"test": {"examples": 30, "agreement": 0.9, "teacher": {"accuracy": 0.9, "macro_f1": 0.8},
                                    "student": {"accuracy": 0.8, "macro_f1": 0.7}}}}
    resolved = {"output_dir": str(tmp_path / "digits"), "teacher": {"path": str(snapshot), "task": "sequence-classification"},
                "student": {"factory": "my_models:small_cnn", "args": {"width": 8}}, "data": {"builtin": "digits"}}
    text = model_card(summary, resolved, hf_folder=False)
    meta = read_front_matter(text)
    assert meta["pipeline_tag"] == "image-classification" and "library_name" not in meta
    assert meta["base_model"] == "google/vit-base"
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "digits", "type": "digits", "split": "test"}
    assert "from my_models import small_cnn" in text and "student.safetensors" in text


def test_the_packaged_teachers_are_named_by_their_hub_ids(tmp_path):
    """A packaged teacher resolves to a local folder; the card names the model it is (and base_model)."""
    from kdistill import packaged

    smol = tmp_path / "cache" / "models" / "smollm2-135m-instruct-0123abcd"
    assert hub_name(str(smol)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_name(str(tmp_path / "elsewhere" / "smollm2-135m-instruct-0123abcd")) is None
    assert hub_name(str(tmp_path / "my-model")) is None
    summary = {"method": "matches", "metrics": {}, "stages": []}
    card = model_card(summary, {"teacher": {"path": str(smol), "task": "causal-lm"}})
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "packaged as `builtin:SmolLM2-135M-Instruct`" in card and "de-quantised" in card
    from kdistill.errors import DataError

    try:
        minilm = packaged.minilm_teacher_path()
    except DataError:
        pytest.skip("the packaged MiniLM teacher is not installed")
    assert hub_name(str(minilm)) == "sentence-transformers/all-MiniLM-L6-v2"
