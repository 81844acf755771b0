"""Greedy generations and generation speed of a causal-LM run: teacher, student and baseline side by side.

    result = bench_lm("runs/demo-lm")     # writes generation.json and a section of report.md

The prompts are the first tokens of the run's first test examples (held-out text of the kind the
models were distilled on). Each model continues each prompt greedily for ``max_new_tokens`` tokens
(``min_new_tokens`` too, so every model generates the same count); the timings are per token at batch
1, on ``threads`` intra-op threads, the models alternated in every repeat, the median kept.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.files import atomic_write_text

BENCH_FILE = "generation.json"


def training_tokens_per_second(loader: Any, steps: int, grad_accum: int, seconds: float) -> float | None:
    """Real (unpadded) tokens a stage trained on per second: the mean real tokens of the loader's
    batches times the batches of ``steps`` optimiser steps, over ``seconds``. None for data without
    token lengths (images) or a stage that took no time."""
    import numpy as np

    lengths = getattr(getattr(loader, "dataset", None), "lengths", None)
    if lengths is None or not len(loader) or seconds <= 0:
        return None
    per_batch = float(np.sum(lengths)) / len(loader)
    return per_batch * min(steps * grad_accum, 10**12) / seconds


def bench_lm(run_dir: str | Path, *, prompts: int = 3, prompt_tokens: int = 8, max_new_tokens: int = 24,
             repeats: int = 3, threads: int = 1) -> dict[str, Any]:
    """Generations and tokens/s of the run's teacher, student and (when trained) baseline."""
    from kdistill.evaluation import load_run

    run_dir = Path(run_dir)
    config, teacher, student, data, _loaders = load_run(run_dir)
    models = {"teacher": teacher, "student": student}
    if (run_dir / "baseline" / "student").is_dir():
        import copy

        from kdistill.finetune import load_baseline

        models["baseline"] = copy.deepcopy(student)
        load_baseline(models["baseline"], run_dir)
    split = data.datasets.get("test") or data.datasets.get("validation") or data.datasets["train"]
    starts = [torch.tensor(split[i]["input_ids"][:prompt_tokens]).unsqueeze(0) for i in range(min(prompts, len(split)))]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        texts = {name: [_generate(model, ids, max_new_tokens)[0] for ids in starts] for name, model in models.items()}
        seconds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                started = time.perf_counter()
                for ids in starts:
                    _generate(model, ids, max_new_tokens)
                seconds[name].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    tokenizer = _tokenizer(config)
    per_token = {name: statistics.median(v) / (len(starts) * max_new_tokens) for name, v in seconds.items()}
    result = {
        "threads": threads, "repeats": repeats, "max_new_tokens": max_new_tokens,
        "prompts": [tokenizer.decode(ids[0]) for ids in starts],
        "generations": {name: [tokenizer.decode(out) for out in outs] for name, outs in texts.items()},
        "tokens_per_second": {name: 1.0 / value for name, value in per_token.items()},
        "speedup": {name: per_token["teacher"] / value for name, value in per_token.items() if name != "teacher"},
        "blocks": {name: _blocks(model) for name, model in models.items()},
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(run_dir / BENCH_FILE, json.dumps(result, indent=2) + "\n")
    from kdistill.report import put_section

    put_section(run_dir / "report.md", markdown_section(result))
    from kdistill.model_card import write_model_card

    write_model_card(run_dir)  # the student's model card shows the generation speed too
    return result


@torch.no_grad()
def _generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int) -> list[torch.Tensor]:
    model.eval()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=getattr(model.config, "pad_token_id", None) or getattr(model.config, "eos_token_id", 0))
    return [row[ids.shape[1]:] for row in out]


def _tokenizer(config: Any) -> Any:
    from kdistill.models import load_tokenizer

    return load_tokenizer(config.data.tokenizer or config.teacher.path)


def _blocks(model: nn.Module) -> int | None:
    from kdistill.run_build import layer_count

    return layer_count(model)


def markdown_section(result: dict[str, Any]) -> str:
    """The report's generation section (between the benchmark markers, so a later one replaces it)."""
    from kdistill.report import BENCH_END, BENCH_START, markdown_table

    rows = [[name, str(result["blocks"].get(name) or "?"), f"{speed:.1f}",
             f"{result['speedup'][name]:.2f}×" if name in result["speedup"] else "1.00×"]
            for name, speed in result["tokens_per_second"].items()]
    lines = [BENCH_START, "## Generation", "",
             f"Measured {result['measured_at']}: greedy decoding at batch 1, {result['max_new_tokens']} new tokens per "
             f"prompt, {result['threads']} thread(s), models alternated over {result['repeats']} repeats (median).", "",
             markdown_table(["model", "blocks", "tokens/s", "speed-up over the teacher"], rows), ""]
    for i, prompt in enumerate(result["prompts"]):
        lines.append(f"**Prompt {i + 1}:** `{prompt.strip()}`")
        lines += [f"- {name}: {texts[i].strip()!r}" for name, texts in result["generations"].items()]
        lines.append("")
    lines.append(BENCH_END)
    return "\n".join(lines)


__all__ = ["bench_lm", "markdown_section"]
