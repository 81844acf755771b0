"""``kdistill generate CONFIG``: the teacher's answers to the run's prompts, as a dataset a run trains on.

    kdistill generate lm.yaml --output data/teacher-answers              # greedy
    kdistill generate lm.yaml --output data/sampled --sample --temperature 0.7 --top-p 0.9
    kdistill run lm.yaml data.path=data/teacher-answers                  # sequence-level KD

Sequence-level distillation (Kim & Rush 2016): the student learns the teacher's own outputs instead
of the data's references. The config names the teacher (``task: causal-lm``) and the data
(``kind: prompt_completion`` or ``chat``). For each record of the chosen splits (default ``train``)
the teacher continues the prompt — a prompt_completion record's prompt (tokenised as the run does,
cut to ``data.max_length`` tokens), a chat record's turns before its last assistant turn (rendered
with the chat template and its generation prompt) — and its answer replaces the completion (the last
assistant turn); every other column stays. The other splits are copied as they are, so validation
and test keep their references. The output is a ``DatasetDict`` saved with ``save_to_disk``
(``datasets.load_from_disk`` reads it; ``data.path`` takes it), with ``kdistill-generation.json``
beside it: the settings, the teacher, the data and the counts.

Generation runs in chunks of prompts, each chunk in length-sorted batches padded on the left,
greedy or sampled (temperature, top-p) with a seed drawn per chunk, so an interrupted run resumes
from its finished chunks (``<output>.partial/``) and ends with the same dataset as an uninterrupted
one. Settings that differ from a partial or finished output are refused, naming what differs
(``--overwrite`` starts again). Answers stop at the eos token or after ``--max-new-tokens``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kdistill.errors import ConfigError, DataError
from kdistill.files import atomic_write_text

SETTINGS_FILE = "kdistill-generation.json"
KINDS = ("prompt_completion", "chat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("config", metavar="CONFIG", help="a causal-LM run's YAML (its teacher and data)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="changes to the config, as for run")
    parser.add_argument("--output", required=True, help="the dataset folder to write (a DatasetDict)")
    parser.add_argument("--splits", default="train", help="splits whose completions the teacher writes (default train)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed (a chunk's is drawn from it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=64, help="prompts per resumable chunk")
    parser.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")


def main(args: argparse.Namespace) -> int:
    from kdistill.config import load_config

    config = load_config(args.config, args.overrides)
    settings = _settings(config, args)
    result = generate(config, Path(args.output), settings, overwrite=args.overwrite)
    print(f"done: {result['generated']:,} answers by the teacher in {args.output} "
          f"(splits {', '.join(result['splits'])}); train on it with data.path={args.output}")
    return 0


def _settings(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings (recorded with the output; a resume must match them)."""
    for name, value, low in (("--max-new-tokens", args.max_new_tokens, 1), ("--batch-size", args.batch_size, 1),
                             ("--chunk", args.chunk, 1)):
        if value < low:
            raise ConfigError(f"{name}: {value} must be at least {low}.")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature: {args.temperature} must be above 0.")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: {args.top_p} must be in (0, 1].")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if config.teacher.task != "causal-lm":
        raise ConfigError(f"teacher.task: '{config.teacher.task}'; kdistill generate needs a causal-lm teacher.")
    if config.lm_kind() not in KINDS:
        raise ConfigError(f"data.kind: '{config.lm_kind()}' has no prompts to answer; kdistill generate reads "
                          f"{' or '.join(KINDS)} data.")
    return {"splits": splits, "max_new_tokens": args.max_new_tokens, "do_sample": bool(args.sample),
            "temperature": args.temperature if args.sample else None, "top_p": args.top_p if args.sample else None,
            "seed": args.seed, "batch_size": args.batch_size, "chunk": args.chunk, "kind": config.lm_kind(),
            "max_prompt_tokens": config.data.max_length, "teacher": str(config.teacher.path),
            "data": _data_source(config)}


def _data_source(config: Any) -> dict[str, Any]:
    spec = config.data
    keys = ("builtin", "path", "train", "validation", "test", "split", "split_seed", "prompt", "completion",
            "messages", "limit")
    return {key: getattr(spec, key) for key in keys if getattr(spec, key) is not None} | {"seed": config.split_seed()}


def generate(config: Any, output: Path, settings: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """Write the teacher's answers for ``settings['splits']`` as a DatasetDict in ``output``."""
    from kdistill.run_data import lm_split_records

    per_split, _sources = lm_split_records(config)
    per_split = {split: rows[: config.limit_of(split)] for split, rows in per_split.items()}
    unknown = [split for split in settings["splits"] if split not in per_split]
    if unknown:
        raise ConfigError(f"--splits: the data has no {', '.join(unknown)} split; it has {', '.join(per_split)}.")
    from kdistill import models
    from kdistill.cache_keys import teacher_fingerprint
    from kdistill.run_build import load_model

    tokenizer = models.load_tokenizer(config.data.tokenizer or config.teacher.path,
                                      where="data.tokenizer" if config.data.tokenizer else "teacher.path")
    teacher = load_model(config.teacher, "teacher", config).eval()
    # The answers depend on the teacher's weights and the records themselves, not only on their names.
    records = hashlib.sha256(json.dumps(per_split, sort_keys=True, default=str).encode()).hexdigest()[:24]
    settings = {**settings, "teacher_weights": teacher_fingerprint(teacher)[:24], "records": records}
    partial = output.with_name(f"{output.name}.partial")
    if _finished(output, settings, overwrite):
        return json.loads((output / SETTINGS_FILE).read_text(encoding="utf-8"))["result"]
    _open_partial(partial, settings, overwrite)
    answered = {}
    for split in settings["splits"]:
        answered[split] = _answer_split(teacher, tokenizer, per_split[split], split, partial, settings, config.data)
    result = {"splits": settings["splits"], "generated": sum(len(rows) for rows in answered.values()),
              "examples": {split: len(rows) for split, rows in per_split.items()}}
    _save(output, {**per_split, **answered}, {**settings, "result": result})
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _finished(output: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Whether ``output`` already holds these answers (then nothing is done); refused if other settings made it."""
    file = output / SETTINGS_FILE
    if not output.exists():
        return False
    if not file.is_file():
        if any(output.iterdir()):
            raise ConfigError(f"--output: '{output}' exists and is not a kdistill generate output; choose another "
                              "folder (nothing of yours is replaced).")
        return False
    recorded = json.loads(file.read_text(encoding="utf-8"))
    differs = _differences(recorded, settings)
    if not differs:
        return True
    if not overwrite:
        raise ConfigError(f"--output: '{output}' holds answers made with other settings ({differs}); choose another "
                          "folder, or --overwrite to replace them.")
    return False


def _open_partial(partial: Path, settings: dict[str, Any], overwrite: bool) -> None:
    file = partial / SETTINGS_FILE
    if file.is_file():
        differs = _differences(json.loads(file.read_text(encoding="utf-8")), settings)
        if differs and not overwrite:
            raise ConfigError(f"--output: an interrupted generation in '{partial}' used other settings ({differs}); "
                              "give the same settings to resume it, or --overwrite to start again.")
        if differs:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not file.is_file():
        atomic_write_text(file, json.dumps(settings, indent=2, default=str))


def _differences(recorded: dict[str, Any], settings: dict[str, Any]) -> str:
    plain = json.loads(json.dumps(settings, default=str))
    keys = [key for key in plain if recorded.get(key) != plain[key]]
    return "; ".join(f"{key}: {recorded.get(key)!r} then, {plain[key]!r} now" for key in keys)


def _answer_split(teacher: torch.nn.Module, tokenizer: Any, rows: list[dict], split: str, partial: Path,
                  settings: dict[str, Any], spec: Any) -> list[dict]:
    """The split's records with the teacher's answers, chunk by chunk (finished chunks read back)."""
    chunk = settings["chunk"]
    out: list[dict] = []
    bar = tqdm(total=len(rows), desc=f"generate ({split})", unit="prompt")
    for number, start in enumerate(range(0, len(rows), chunk)):
        file = partial / f"{split}-{number:05d}.jsonl"
        if file.is_file():
            answers = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
        else:
            prompts = [_prompt_ids(tokenizer, row, settings, spec, f"{split} record {start + i}")
                       for i, row in enumerate(rows[start:start + chunk])]
            torch.manual_seed(settings["seed"] * 1_000_003 + number)
            answers = _generate(teacher, tokenizer, prompts, settings)
            atomic_write_text(file, "".join(json.dumps(a) + "\n" for a in answers))
        out += [_with_answer(row, answer, settings["kind"], spec) for row, answer in zip(rows[start:start + chunk], answers)]
        bar.update(len(answers))
    bar.close()
    return out


def _prompt_ids(tokenizer: Any, row: dict, settings: dict[str, Any], spec: Any, where: str) -> list[int]:
    if settings["kind"] == "prompt_completion":
        ids = tokenizer(row[spec.prompt], add_special_tokens=True)["input_ids"]
    else:
        turns = row[spec.messages]
        last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
        if last == 0:
            raise DataError(f"{where}: the conversation opens with its assistant turn, so there is no prompt to answer.")
        conversation = [{"role": m["role"], "content": m["content"]} for m in turns[:last]]
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = list(ids["input_ids"])
    return ids[: settings["max_prompt_tokens"]]


@torch.no_grad()
def _generate(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], settings: dict[str, Any]) -> list[str]:
    """The decoded answers to ``prompts`` (token ids), in length-sorted batches padded on the left."""
    from kdistill.lm_data import pad_choice

    pad, _ = pad_choice(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    size = settings["batch_size"]
    sampling = {"do_sample": True, "temperature": settings["temperature"], "top_p": settings["top_p"]} \
        if settings["do_sample"] else {"do_sample": False}
    for start in range(0, len(order), size):
        batch = [prompts[i] for i in order[start:start + size]]
        rows = continue_prompts(model, batch, pad_token_id=pad, eos_token_ids=(tokenizer.eos_token_id,),
                                max_new_tokens=settings["max_new_tokens"], **sampling)
        for i, row in zip(order[start:start + size], rows):
            answers[i] = tokenizer.decode(_until_eos(row, tokenizer.eos_token_id), skip_special_tokens=True)
    return answers


@torch.no_grad()
def continue_prompts(model: torch.nn.Module, prompts: list[list[int]], *, pad_token_id: int,
                     eos_token_ids: tuple[int | None, ...], max_new_tokens: int, **sampling: Any) -> list[list[int]]:
    """The tokens ``model`` adds to each of ``prompts`` (token ids; one batch padded on the left), each
    through its first eos token inclusive (``eos_token_ids``; all ``max_new_tokens`` when none comes).

    ``sampling``: ``model.generate``'s decoding settings (``do_sample``, ``temperature``, ``top_k``, ``top_p``),
    over the model's own generation config; a sampled continuation draws from the global torch RNG.
    """
    device = next(model.parameters()).device
    longest = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_token_id] * (longest - len(ids)) + list(ids) for ids in prompts], device=device)
    mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    stops = [int(eos) for eos in eos_token_ids if eos is not None]
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                         eos_token_id=stops or None, **sampling)
    rows = []
    for row in out[:, longest:].tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:end])
    return rows


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def _with_answer(row: dict, answer: str, kind: str, spec: Any) -> dict:
    if kind == "prompt_completion":
        return {**row, spec.completion: answer}
    turns = row[spec.messages]
    last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
    return {**row, spec.messages: [*turns[:last], {"role": "assistant", "content": answer}]}


def _save(output: Path, splits: dict[str, list[dict]], record: dict[str, Any]) -> None:
    """Every split as a DatasetDict in ``output`` (a temporary folder, then renamed) with the record."""
    try:
        import datasets
    except ImportError:
        from kdistill.errors import MissingDependencyError

        raise MissingDependencyError("kdistill generate writes a Hugging Face dataset: pip install datasets "
                                     "(or pip install 'kdistill[datasets]').") from None
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in splits.items()}).save_to_disk(str(tmp))
    atomic_write_text(tmp / SETTINGS_FILE, json.dumps(record, indent=2, default=str))
    if output.exists():
        shutil.rmtree(output)  # a kdistill output with other settings, replaced on --overwrite
    os.replace(tmp, output)


__all__ = ["add_arguments", "continue_prompts", "generate", "main"]
