"""Config fuzz: mutated example configs, random nested data and random overrides all either validate
or end in a :class:`ConfigError` whose every problem starts with a config path — never another
exception.

    PYTHONPATH=src .venv/bin/python -m pytest tests/reliability/test_config_fuzz.py -q
    KDISTILL_FUZZ_EXAMPLES=20000 PYTHONPATH=src .venv/bin/python -m pytest tests/reliability/test_config_fuzz.py -q

The first line runs 1,500 cases (750 per test, the CI budget); KDISTILL_FUZZ_EXAMPLES sets the
cases *per test*. ``-s`` prints how many configs validated and how many were errors.
Validation loads no weights (it reads config.json and tokenizer files, the data files, and imports the
factories a config names), so this checks the whole validator quickly.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdistill.config import TOP_KEYS, RunConfig, config_from_dict, parse_yaml
from kdistill.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_CONFIGS = {path.name: parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
                   for path in sorted(EXAMPLES.glob("*.yaml"))}
PER_TEST = int(os.environ.get("KDISTILL_FUZZ_EXAMPLES", "750"))
FUZZ = settings(max_examples=PER_TEST, deadline=None, derandomize="KDISTILL_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OUTCOMES: Counter = Counter()

# Words the validator reacts to, so mutations reach deep checks rather than stopping at a type error.
KNOWN_KEYS = sorted(set(TOP_KEYS) | {
    "path", "task", "num_labels", "factory", "args", "from_teacher", "layers", "num_layers", "hidden_size",
    "intermediate_size", "num_attention_heads", "teacher", "student", "loss", "weight", "projection",
    "teacher_name", "name", "start", "stop", "builtin", "train", "validation", "test", "split", "text", "label",
    "format", "max_length", "batch_size", "eval_batch_size", "tokenizer", "student_tokenizer", "unlabelled",
    "bucket", "limit", "lr", "epochs", "max_steps", "warmup", "grad_accum", "freeze", "save_every",
    "on_nonfinite", "schedule", "start_value", "end_value", "temperature", "alpha", "t2_scale",
})
KNOWN_WORDS = [
    "logits", "hidden.2", "hidden.-1", "hidden.99", "attn.1", "attn.*", "hidden.*", "pooled", "module:embed",
    "module:", "kl", "hinton", "tinybert", "hidden_mse", "attention_mse", "soft_ce", "linear", "cosine", "auto",
    "none", "mlp", "uniform", "last", "skip", "teacher", "ensemble", "csv", "jsonl", "hf", "digits",
    "movie_reviews", "sequence-classification", "stop", "bf16", "tiny_models:tiny_bert", "pkg.mod:fn",
    "not a factory", "data/reviews_train.csv", "data/reviews_test.csv", "data/tiny_tokenizer",
    "data/reviews_unlabelled.txt", "data", "/nonexistent/file.csv", "~", "", " ", "a\x00b", "3e-5", "1e400",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(KNOWN_WORDS),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8),
                 st.integers(-2, 5), st.none(), st.booleans())
schedules = st.fixed_dictionaries(
    {"schedule": st.one_of(st.sampled_from(["linear", "cosine", "constant", "step", "bogus"]), scalars)},
    optional={"start_value": scalars, "end_value": scalars, "warmup": scalars, "steps": scalars})
values = st.recursive(scalars | schedules, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
overrides = st.one_of(
    st.builds(lambda path, value: f"{path}={value}",
              st.lists(st.one_of(st.sampled_from(KNOWN_KEYS), st.sampled_from(["0", "1", "-1", "9"]),
                                 st.text(max_size=4)), min_size=1, max_size=4).map(".".join),
              st.one_of(st.sampled_from(["", "3e-5", "[a, b]", "{x: 1}", "null", "- 1", "[", "'a", "!!python/name:os.x",
                                         "{schedule: linear}", "hidden.*", "1e400"]), st.text(max_size=10))),
    st.text(max_size=12),
)


def _locations(node, trail=()):
    """Every (container, key) in a nested config, including the root's keys."""
    if isinstance(node, dict):
        for key in list(node):
            yield node, key
            yield from _locations(node[key], trail + (key,))
    elif isinstance(node, list):
        for index in range(len(node)):
            yield node, index
            yield from _locations(node[index], trail + (index,))


def _retype(value):
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return {}


def _same_type(value):
    """Another value of the same type (so the config often stays valid and reaches the deep checks)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 100)
    if isinstance(value, float):
        return st.floats(-1.0, 10.0) | st.sampled_from([0.0, 1.0, 0.5, 1e-9])
    if isinstance(value, str):
        return st.sampled_from(KNOWN_WORDS) | st.text(max_size=10)
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=len(value) + 1) if value else st.just([])
    return st.just(value)


@st.composite
def mutated_examples(draw):
    """An example config with 1–4 random edits: another value of the same type, delete, replace,
    re-type, rename (typo), add a key, or wrap a value."""
    raw = copy.deepcopy(EXAMPLE_CONFIGS[draw(st.sampled_from(sorted(EXAMPLE_CONFIGS)))])
    for _ in range(draw(st.integers(1, 4))):
        places = list(_locations(raw))
        container, key = draw(st.sampled_from(places)) if places else (raw, None)
        edit = draw(st.sampled_from(["same_type", "same_type", "delete", "replace", "retype", "rename", "add",
                                     "wrap"]))
        if key is not None and edit == "same_type":
            container[key] = draw(_same_type(container[key]))
        elif key is None or edit == "add":
            target = container if isinstance(container, dict) else raw
            target[draw(keys)] = draw(values)
        elif edit == "delete":
            del container[key]
        elif edit == "replace":
            container[key] = draw(values)
        elif edit == "retype":
            container[key] = _retype(container[key])
        elif edit == "wrap":
            container[key] = [container[key]] if draw(st.booleans()) else {"value": container[key]}
        elif isinstance(container, dict):  # rename: a typo or another known key
            text = str(key)
            new = draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.just(text[1:]), st.just(text + "s"), keys))
            container[new] = container.pop(key)
        else:
            container.insert(key, copy.deepcopy(container[key]))
    return raw, draw(st.lists(overrides, max_size=2))


random_configs = st.tuples(
    st.one_of(st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS), keys), values, max_size=8), values),
    st.lists(overrides, max_size=3),
)


def _problems(message: str) -> list[str]:
    lines = message.split("\n")
    if re.match(r"invalid config( \S+)? \(\d+ problems?\):$", lines[0]):
        items, current = [], None
        for line in lines[1:]:
            if line.startswith("  - "):
                current = line[4:]
                items.append(current)
            else:  # a problem that spans lines (e.g. a multi-line value shown in it)
                items[-1] += "\n" + line
        return items
    return [message]


def _starts_with_a_path(problem: str, raw, extra) -> bool:
    """The problem opens with a config path: a top-level key (of the schema, the config or an
    override's KEY), ``override '…'``, or ``config`` for a config that is not a mapping."""
    roots = {"config", "override '"} | set(TOP_KEYS)
    if isinstance(raw, dict):
        roots |= {str(key) for key in raw}
    roots |= {str(item).partition("=")[0].strip().split(".")[0] for item in extra} - {""}
    for root in roots:
        if not problem.startswith(root):
            continue
        if root == "override '" or problem[len(root):][:1] in (":", ".", "["):
            return True
    return False


def _check(raw, extra) -> None:
    try:
        config = config_from_dict(raw, extra, base_dir=EXAMPLES)
    except ConfigError as exc:
        OUTCOMES["ConfigError"] += 1
        message = str(exc)
        problems = _problems(message)
        assert problems and all(problems), message
        unplaced = [p for p in problems if not _starts_with_a_path(p, raw, extra)]
        assert not unplaced, f"problems without a config path: {unplaced}\nconfig: {raw!r}\noverrides: {extra!r}"
    else:
        OUTCOMES["valid"] += 1
        assert isinstance(config, RunConfig)
        assert config.teacher is not None and config.data is not None
        # What validated also builds: every weight (a number or a schedule) gives a number.
        from kdistill.schedules import maybe_schedule, value_at

        weights = [(f"matches[{i}].weight", m.weight) for i, m in enumerate(config.matches)]
        weights += [(f"matches[{i}].args.{k}", v) for i, m in enumerate(config.matches) for k, v in m.args.items()
                    if isinstance(v, dict)]
        if config.hard_label_weight is not None:
            weights.append(("hard_label_weight", config.hard_label_weight))
        for where, value in weights:
            for step in (0, 3, 10):
                assert isinstance(value_at(maybe_schedule(value, path=where), step, 10), float), where


def test_every_example_config_is_valid_as_it_stands():
    for name, raw in EXAMPLE_CONFIGS.items():
        assert isinstance(config_from_dict(raw, base_dir=EXAMPLES), RunConfig), name


def _cnn_example(weight) -> dict:
    raw = copy.deepcopy(EXAMPLE_CONFIGS["cnn_module_hooks.yaml"])
    raw["matches"][1]["weight"] = weight
    return raw


# Crashes the fuzz found (each was fixed in kdistill/config.py), kept as fixed cases.
@FUZZ
@given(mutated_examples())
@example(({**EXAMPLE_CONFIGS["cnn_module_hooks.yaml"]}, [".alpha="]))  # a problem without a path
@example((_cnn_example({"schedule": ["linear"], "start_value": 1.0, "end_value": 0.0}), []))  # TypeError
@example((_cnn_example({"schedule": "linear", "start_value": "high", "end_value": 0.0}), []))  # validated, failed later
def test_mutated_example_configs_validate_or_name_a_path(case):
    _check(*case)


@FUZZ
@given(random_configs)
@example(({"method_args": []}, ["method_args.alpha="]))  # TypeError in the override code
@example(({"training": []}, ["training.lr=1"]))
def test_random_configs_validate_or_name_a_path(case):
    _check(*case)


def test_report_the_cases_tried():
    """Runs last in this file: prints how many configs were tried (visible with -s)."""
    total = sum(OUTCOMES.values())
    print(f"\nconfig fuzz: {total} cases ({OUTCOMES['valid']} valid, {OUTCOMES['ConfigError']} ConfigError)")
    if total:
        assert OUTCOMES["ConfigError"] > 0
