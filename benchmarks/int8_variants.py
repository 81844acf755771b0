"""Which dynamic-int8 settings keep the student's predictions? Agreement, accuracy and batch-1 speed.

    PYTHONPATH=src python benchmarks/int8_variants.py runs/demo            # a demo or run folder

Exports the student to fp32 ONNX once, quantises it with each variant of
:func:`kdistill.export.quantize_onnx` (weight type, per tensor / per channel, which MatMuls stay
fp32) and measures, on the run's test split: agreement of predictions with fp32 PyTorch at batch
32 and at batch 1, accuracy, and the batch-1 latency of fp32 PyTorch and of the int8 model
measured back to back (their ratio is the speed-up; absolute times on a shared machine are noise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kdistill.export import (KEEP_FP32, OrtRunner, compare, export_onnx, held_out, load_model,  # noqa: E402
                             load_tokenizer, model_input_names, quantize_onnx, resolve_source, text_batches,
                             torch_runner)

FIRST_BLOCK = ("*layer.0/attention/self/query/*", "*layer.0/attention/self/key/*", "*layer.0/attention/self/value/*",
               "*layer.0/attention/output/*", *KEEP_FP32)
VARIANTS = {
    "every MatMul, per tensor": dict(per_channel=False, keep_fp32=()),
    "every MatMul, per channel": dict(per_channel=True, keep_fp32=()),
    "per channel, first block's FFN fp32 (default)": dict(per_channel=True, keep_fp32=KEEP_FP32),
    "per channel, first block fp32": dict(per_channel=True, keep_fp32=FIRST_BLOCK),
    "int8 weights, per channel, every MatMul": dict(weight_type="int8", per_channel=True, keep_fp32=()),
}


def latency_ms(runner, batches) -> float:
    runner(batches[0])
    started = time.perf_counter()
    for batch in batches:
        runner(batch)
    return (time.perf_counter() - started) / len(batches) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (holding student/) or a model folder with a test split to find")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-examples", type=int, default=150, help="batch-1 examples timed per model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir, run_dir = resolve_source(args.run)
    model, tokenizer, data = load_model(model_dir), load_tokenizer(model_dir), held_out(run_dir)
    names = model_input_names(model)
    batch32 = text_batches(tokenizer, data.texts, names, batch_size=32, max_length=data.max_length)
    batch1 = text_batches(tokenizer, data.texts[: args.latency_examples], names, batch_size=1,
                          max_length=data.max_length)
    reference = torch_runner(model)
    labels = np.asarray(data.labels) if data.labels is not None else None
    print(f"{data.source}: {len(data.texts)} examples; fp32 PyTorch accuracy "
          f"{np.mean(np.concatenate([reference(b).argmax(-1) for b in batch32]) == labels):.2%}" if labels is not None
          else data.source)
    print("| variant | agreement, batch 32 | agreement, batch 1 | accuracy | fp32 nodes | speed-up at batch 1 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        fp32 = Path(folder) / "fp32.onnx"
        export_onnx(model, fp32)
        for name, options in VARIANTS.items():
            target = Path(folder) / "int8.onnx"
            kept = quantize_onnx(fp32, target, **options)
            runner = OrtRunner(target, threads=args.threads)
            at32, at1 = compare(reference, runner, batch32), compare(reference, runner, batch1)
            accuracy = (f"{np.mean(np.concatenate([runner(b).argmax(-1) for b in batch32]) == labels):.2%}"
                        if labels is not None else "-")
            speedup = latency_ms(reference, batch1) / latency_ms(runner, batch1)
            print(f"| {name} | {at32['agreement']:.2%} | {at1['agreement']:.2%} | {accuracy} | {len(kept)} | "
                  f"{speedup:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
