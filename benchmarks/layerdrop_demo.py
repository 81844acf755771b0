"""LayerDrop on the demo task: does a student trained with it survive losing blocks at export?

    PYTHONPATH=src python benchmarks/layerdrop_demo.py --p 0,0.5 --epochs 1

For each LayerDrop probability p, distils the demo's 3-block student ([1, 3, 5] of the fine-tuned,
cached MiniLM teacher; Hinton T=2, α=0.5 on the stored teacher logits, labelled sentences only, the
demo's optimiser settings: the demo config through ``kdistill run``, ``training.layerdrop=p``) and measures test accuracy of the whole student and of every 2-block
cut made by :func:`kdistill.layerdrop.keep_layers` (what ``kdistill export RUN --keep-layers``
does), without retraining. Accuracies are on the demo's 1,057 test sentences (±1.1 points of
standard error each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT / "src", ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


import _demo_task  # noqa: E402
from kdistill.layerdrop import keep_layers  # noqa: E402

CUTS = ([0, 2], [0, 1], [1, 2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p", default="0,0.5", help="comma list of LayerDrop probabilities")
    _demo_task.add_arguments(parser)
    args = parser.parse_args(argv)
    rows = []
    for p in (float(v) for v in args.p.split(",")):
        _, teacher, student, _, loaders = _demo_task.run_demo_task(args, f"layerdrop-{p:g}", f"training.layerdrop={p}")
        row = {"p": p, "all 3 blocks": _demo_task.accuracy(teacher, student, loaders["test"])}
        for cut in CUTS:
            row[f"blocks {cut}"] = _demo_task.accuracy(teacher, keep_layers(student, cut), loaders["test"])
        rows.append(row)
        print(row, flush=True)
    header = list(rows[0])
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join([f"{row['p']:g}"] + [f"{row[k]:.2%}" for k in header[1:]]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
