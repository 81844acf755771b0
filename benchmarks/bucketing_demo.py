"""Length bucketing on the demo task: does sorting batches by length cost the student accuracy?

    PYTHONPATH=src python benchmarks/bucketing_demo.py --multipliers 50,4,1 --epochs 1 --threads 1

Distils the demo's 3-block student ([1, 3, 5] of the fine-tuned, cached MiniLM teacher; Hinton T=2,
α=0.5 on the cached teacher logits, labelled sentences only, the demo's optimiser settings) once per
``bucket_size_multiplier``: each chunk of multiplier × 32 shuffled sentences is sorted by length and
cut into batches (1 = plain random batches; 50 = the demo's default). Prints the test and
validation accuracy and the wall time of each; one accuracy on the 1,057 test sentences carries
±1.1 points of standard error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT / "src", ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import _demo_task  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multipliers", default="50,4,1", help="comma list of bucket_size_multiplier values")
    _demo_task.add_arguments(parser)
    args = parser.parse_args(argv)
    rows = []
    for multiplier in (int(v) for v in args.multipliers.split(",")):
        started = time.perf_counter()
        _, teacher, student, _, loaders = _demo_task.run_demo_task(args, f"bucket-{multiplier}",
                                                                   f"data.bucket={multiplier}")
        row = (multiplier, _demo_task.accuracy(teacher, student, loaders["test"]),
               _demo_task.accuracy(teacher, student, loaders["validation"]), time.perf_counter() - started)
        rows.append(row)
        print(f"multiplier {row[0]}: test {row[1]:.2%}, validation {row[2]:.2%}, {row[3]:.0f} s", flush=True)
    print("\n| bucket_size_multiplier | test accuracy | validation accuracy | wall s |\n|---|---|---|---|")
    for multiplier, test, validation, seconds in rows:
        print(f"| {multiplier} | {test:.2%} | {validation:.2%} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
