"""The ``kdistill`` command: ``run``, ``plan``, ``eval``, ``validate``, ``losses``, ``methods``
(and ``demo`` / ``export`` / ``bench``, each imported only when it runs).

Every error kdistill raises on purpose (a :class:`~kdistill.errors.KdistillError`) is printed as
``error: <message>`` on stderr with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence

from kdistill.errors import KdistillError

# Verbs that live in their own module, added when the module exists. Each module exposes
# ``add_arguments(parser)`` and ``main(args) -> int | None``; it is imported only when its verb runs.
PLUGIN_VERBS = {
    "demo": ("kdistill.demo", "distil a real pretrained model on real data, end to end"),
    "export": ("kdistill.export", "export a trained student (Hugging Face folder, ONNX, int8)"),
    "bench": ("kdistill.bench", "latency, size and accuracy: teacher vs student, PyTorch vs ONNX Runtime"),
    "generate": ("kdistill.generate", "the teacher's answers to a causal-LM run's prompts, as a dataset to train on"),
    "capture": ("kdistill.capture", "the teacher's top-k next-token log-probabilities, stored once for many runs"),
}

EXAMPLES = {
    "run": "examples:\n  kdistill run examples/hinton_classifier.yaml\n"
           "  kdistill run examples/hinton_classifier.yaml training.lr=3e-5 matches.0.weight=2\n"
           "  kdistill run examples/hinton_classifier.yaml --resume\n"
           "  kdistill run examples/hinton_classifier.yaml --processes 2",
    "plan": "example:\n  kdistill plan examples/tinybert_matches.yaml data.max_length=64",
    "eval": "example:\n  kdistill eval runs/hinton_classifier --split test",
    "validate": "example:\n  kdistill validate examples/cnn_module_hooks.yaml training.epochs=5",
    "losses": "example:\n  kdistill losses",
    "methods": "example:\n  kdistill methods",
}

OVERRIDES_HELP = ("KEY=VALUE changes to the config, by dotted path (list items by number), "
                  "values read as YAML: training.lr=3e-5 matches.0.weight=2 data.text=[question,sentence]")


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else "(no description)"


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdistill",
        description="Knowledge distillation from one YAML file: check it, see the plan, run it, evaluate it.",
        epilog="example:\n  kdistill plan examples/hinton_classifier.yaml\n  kdistill run examples/hinton_classifier.yaml\n\n"
               "Run `kdistill VERB --help` for the options of a verb.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from kdistill import __version__

    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=description, epilog=EXAMPLES.get(name),
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    sub = verb("run", "train a student as the config says and write the output folder",
               "Validate the config, check the output folder, load the models and data, distil, and write "
               "config.resolved.yaml, metrics.jsonl, checkpoints, student/ and summary.json.")
    sub.add_argument("config", metavar="CONFIG", help="the run's YAML file")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in the output folder from its last checkpoint (also with a changed config)")
    mode.add_argument("--overwrite", action="store_true", help="replace the results in the output folder")
    sub.add_argument("--processes", type=int, default=1, metavar="N",
                     help="run in N processes on this machine (one per GPU; gloo on the CPU without GPUs). "
                          "For several machines use `accelerate launch` (docs/scale.md)")
    sub.set_defaults(handler=_run)

    sub = verb("plan", "print what a run will do (matches with shapes, projections, sizes); trains nothing",
               "Load the models, run one batch through every match and print the data, each match with its "
               "tensor shapes, the layer map, inserted projections, parameter counts, what the adapters ask "
               "the models for, the method's expansion and the number of steps.")
    sub.add_argument("config", metavar="CONFIG")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    sub.add_argument("--json", action="store_true", help="print the plan as JSON (kdistill.planning.Plan), for tools")
    sub.set_defaults(handler=_plan)

    sub = verb("eval", "accuracy and macro-F1 of teacher and student of a finished run, and their agreement",
               "Reload the teacher, the trained student and the data of a run folder and compare them on a split.")
    sub.add_argument("run_dir", metavar="RUN_DIR", help="a run's output folder (it holds config.resolved.yaml)")
    sub.add_argument("--split", default="test", help="validation or test (default: test)")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.set_defaults(handler=_eval)

    sub = verb("validate", "check a config whole (no weights load) and list every problem",
               "Check types, unknown keys, loss/method/ref names, loss and method arguments against their "
               "ranges, schedules, data files and their columns, model folders. Loads no weights. A config "
               "is code: every 'module:function' it names is imported (never from the standard library) and "
               "listed with its file.")
    sub.add_argument("config", metavar="CONFIG")
    sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    sub.set_defaults(handler=_validate)

    sub = verb("losses", "list the registered losses, one line each",
               "Every loss a match can name (loss: NAME), with the first line of its documentation.")
    sub.set_defaults(handler=_losses)
    sub = verb("methods", "list the registered methods, one line each",
               "Every method a config can name (method: NAME), with the first line of its documentation.")
    sub.set_defaults(handler=_methods)

    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in PLUGIN_VERBS.items():
        if not _module_exists(module_name):
            continue
        sub = verbs.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=_plugin(module_name))
        if chosen == name:
            module = importlib.import_module(module_name)
            add_arguments = getattr(module, "add_arguments", None)
            if add_arguments is not None:
                add_arguments(sub)
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _plugin(module_name: str):
    def handler(args: argparse.Namespace) -> int | None:
        return importlib.import_module(module_name).main(args)

    return handler


# ---------------------------------------------------------------------------------------------
# Verbs


def _check_overrides(overrides: Sequence[str]) -> None:
    from kdistill.errors import ConfigError

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"'{bad[0]}' is not an override: write KEY=VALUE (e.g. training.lr=3e-5); "
                          "options such as --resume go after the verb.")


def _load(args: argparse.Namespace):
    from kdistill.config import load_config

    _check_overrides(args.overrides)
    config = load_config(args.config, args.overrides)
    if config.conversion_note:
        print(f"note: {args.config}: {config.conversion_note}", file=sys.stderr)
    return config


def _run(args: argparse.Namespace) -> int:
    from kdistill.launch import is_main_process, leave_process_group, relaunch, strip_processes

    config = _load(args)  # a bad config fails here, once, before any process starts
    if args.processes != 1:
        return relaunch(strip_processes(args.argv), args.processes)
    from kdistill.run import run

    summary = run(config, resume=args.resume, overwrite=args.overwrite)
    leave_process_group()
    if not is_main_process():
        return 0
    print(f"done: student in {summary['student']}")
    baseline = (summary.get("baseline") or {}).get("metrics") or {}
    for split, result in summary.get("metrics", {}).items():
        if "student" in result:
            key = ("f1" if "f1" in result["student"] else "accuracy" if "accuracy" in result["student"]
                   else "knn_accuracy" if "knn_accuracy" in result["student"] else "perplexity")
            also = f", baseline {key} {baseline[split][key]:.4f}" if split in baseline else ""
            print(f"  {split}: teacher {key} {result['teacher'][key]:.4f}, student {key} "
                  f"{result['student'][key]:.4f}{also}{_agreement(result['agreement'])}")
    for task, entry in (summary.get("tasks") or {}).items():  # several tasks (kdistill.multitask): a line each
        for split, result in entry["metrics"].items():
            print(f"  {task} {split}: teacher accuracy {result['teacher']['accuracy']:.4f}, student accuracy "
                  f"{result['student']['accuracy']:.4f}{_agreement(result['agreement'])}")
    print(f"  summary: {config.output_dir}/summary.json; report: {config.output_dir}/report.md")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from kdistill.planning import make_plan

    made = make_plan(_load(args))
    print(json.dumps(made.to_dict(), indent=2, default=str) if args.json else made.render(), end="\n" if args.json else "")
    return 0


def _validate(args: argparse.Namespace) -> int:
    config = _load(args)
    what = f"method {config.method}" if config.method else ""
    if config.matches:
        what += (" + " if what else "") + f"{len(config.matches)} match{'es' if len(config.matches) != 1 else ''}"
    from kdistill.factories import describe

    print(f"ok: {args.config} is valid ({what}; output_dir {config.output_dir}).")
    print("\n".join(describe(config.imports)))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kdistill.run import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "tasks" in result:  # a multi-task run (kdistill.multitask): a line per task and model
        print(f"{args.run_dir}: split '{result['split']}', {len(result['tasks'])} tasks")
        for task, figures in result["tasks"].items():
            for role in ("teacher", "student", "baseline"):
                if role in figures:
                    print(f"  {task} {role}: accuracy {figures[role]['accuracy']:.4f}, macro-F1 "
                          f"{figures[role]['macro_f1']:.4f} ({figures['examples']} examples)")
        return 0
    print(f"{args.run_dir}: split '{result['split']}', {result['examples']} examples")
    if "exact_match" in result["student"]:  # extractive question answering (kdistill.qa_spans)
        _print_answer_scores(result)
    elif "f1" in result["student"]:  # a token classifier: entity scores
        _print_entity_scores(result)
    elif "knn_accuracy" in result["student"]:  # sentence embeddings (kdistill.embedding)
        _print_embedding_scores(result)
        return 0
    else:
        first, second = ("accuracy", "macro_f1") if "accuracy" in result["student"] else ("perplexity", "loss")
        width = len(first) + 1
        print(f"  {'':<8} {first:>{width}} {second:>9}")
        for role in ("teacher", "student", "baseline"):
            if role in result:
                print(f"  {role:<8} {result[role][first]:>{width}.4f} {result[role][second]:>9.4f}")
        # Several teachers (kdistill.teachers): each one, and their ensemble, below the primary's row.
        rows = {f"teacher '{name}'": values for name, values in (result.get("teachers") or {}).items() if values}
        if "ensemble" in result:
            rows["ensemble"] = result["ensemble"]
        for role, values in rows.items():
            print(f"  {role}: {first} {values[first]:.4f}, {second} {values[second]:.4f}")
    if result["agreement"] is None:
        print("  agreement: none (the student has its own tokenizer; each perplexity is over its own tokens)")
    else:
        print(f"  agreement (same prediction): {result['agreement']:.4f}"
              + (f" (baseline: {result['baseline']['agreement']:.4f})" if "baseline" in result else ""))
    return 0


def _print_embedding_scores(result: dict) -> None:
    """``kdistill eval`` of an embedding run: the table of report.md, the train split as the neighbours' index."""
    from kdistill.embedding import embedding_table
    from kdistill.report import markdown_table

    split = result["split"]
    baseline = {split: result["baseline"]} if "baseline" in result else {}
    print(f"  nearest neighbours (k={result['k']}, cosine) among the {result['index_examples']:,} train texts")
    print("\n".join("  " + line for line in markdown_table(*embedding_table({split: result}, baseline)).splitlines()))


def _print_answer_scores(result: dict) -> None:
    """``kdistill eval`` of a question answerer: SQuAD exact match and F1 of the best span per question."""
    print(f"  {'':<8} {'exact_match':>11} {'f1':>9}  (SQuAD, fractions; best span over each question's windows)")
    for role in ("teacher", "student", "baseline"):
        if role in result:
            print(f"  {role:<8} {result[role]['exact_match']:>11.4f} {result[role]['f1']:>9.4f}")
    print(f"  {result['examples']:,} questions in {result['windows']:,} windows")


def _print_entity_scores(result: dict) -> None:
    """``kdistill eval`` of a token classifier: entity precision/recall/F1 (seqeval's default spans), word accuracy."""
    columns = ("precision", "recall", "f1", "accuracy")
    print(f"  {'':<8} " + " ".join(f"{name:>9}" for name in columns) + "  (entities; accuracy of word tags)")
    for role in ("teacher", "student", "baseline"):
        if role in result:
            print(f"  {role:<8} " + " ".join(f"{result[role][name]:>9.4f}" for name in columns))
    print(f"  {result['student']['entities']:,} entities in {result['words']:,} words")


def _agreement(value: float | None) -> str:
    """', agreement 0.1234', or nothing where there is none (a student with its own tokenizer)."""
    return "" if value is None else f", agreement {value:.4f}"


def _registry_lines(items) -> list[str]:
    width = max((len(name) for name, _ in items), default=0)
    return [f"  {name:<{width}}  {_first_line(obj)}" for name, obj in items]


def _losses(args: argparse.Namespace) -> int:
    from kdistill.losses import LOSSES

    print("losses (use as `loss: NAME` in a match):")
    print("\n".join(_registry_lines(LOSSES.items())))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from kdistill.methods import METHODS

    print("methods (use as `method: NAME`; `kdistill plan` prints what one expands to):")
    print("\n".join(_registry_lines(METHODS.items())))
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kdistill`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        status = args.handler(args)
    except KdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
