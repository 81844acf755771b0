"""Peak memory of one forward + backward of a vocabulary loss: chunked ``token_*`` vs the full softmax.

A causal LM's logits at SmolLM2's vocabulary (49,152) for B·T = 2,048 tokens (batch 4 × 512), student
and teacher in float32 (384 MiB each) and in bfloat16 (192 MiB each), every token valid. Each
measurement runs in its own fresh subprocess: peak resident memory (``resource.getrusage``'s
``ru_maxrss``) after the loss's forward and backward, minus the peak after the inputs were made — what
the loss itself adds on top of the two logits tensors (the gradient w.r.t. the student's logits, as
large as they are, is included: every method must produce it). A first tiny call loads what the loss
imports lazily, so imports are not counted. Memory only; nothing is timed.

    PYTHONPATH=src .venv/bin/python benchmarks/vocab_memory.py
    PYTHONPATH=src .venv/bin/python benchmarks/vocab_memory.py --tokens 512 --vocab 8192   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (label, full-softmax loss of losses.logits, chunked loss of losses.vocab)
PAIRS = [
    ("forward KL", "kl", "token_kl"),
    ("reverse KL", "reverse_kl", "token_reverse_kl"),
    ("JSD (β = 0.5)", "jsd", "token_jsd"),
]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(loss_name: str, tokens: int, vocab: int, chunk_tokens: int | None, dtype: str) -> float:
    """In this process: MiB the loss's forward + backward adds to the peak (run in a fresh process)."""
    import torch

    from kdistill.losses import get_loss

    torch.set_num_threads(1)
    loss_fn = get_loss(loss_name)
    kwargs = {"chunk_tokens": chunk_tokens} if chunk_tokens else {}
    if "jsd" in loss_name:
        kwargs["t2_scale"] = False
    # A first tiny call loads what the call imports lazily, so that is not counted as the loss's memory.
    tiny = torch.zeros(1, 2, 8, requires_grad=True)
    loss_fn(tiny, tiny.detach(), mask=torch.ones(1, 2), **kwargs).backward()
    generator = torch.Generator().manual_seed(0)
    shape = (4, tokens // 4, vocab)
    student = torch.randn(shape, generator=generator).to(getattr(torch, dtype)).requires_grad_()
    teacher = torch.randn(shape, generator=generator).to(getattr(torch, dtype))
    mask = torch.ones(shape[:2])
    baseline = _peak_mib()
    loss_fn(student, teacher, mask=mask, **kwargs).backward()
    assert student.grad is not None
    return _peak_mib() - baseline


def run_fresh(loss_name: str, tokens: int, vocab: int, chunk_tokens: int | None, dtype: str) -> float:
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'benchmarks')!r}]; "
            f"import vocab_memory as v; print(v.measure({loss_name!r}, {tokens}, {vocab}, {chunk_tokens}, {dtype!r}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="B·T, valid tokens (batch 4)")
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="both", choices=["float32", "bfloat16", "both"])
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    print(f"B·T = {args.tokens} tokens (batch 4), vocabulary {args.vocab}, chunk_tokens = {args.chunk_tokens}; "
          f"peak RSS added by forward + backward, each in a fresh process (the student's gradient included)")
    print(f"{'logits':<10}{'loss':<16}{'full softmax':>16}{'chunked':>12}{'ratio':>8}")
    results = {}
    for dtype in ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,):
        for label, full, chunked in PAIRS:
            full_mib = run_fresh(full, args.tokens, args.vocab, None, dtype)
            chunked_mib = run_fresh(chunked, args.tokens, args.vocab, args.chunk_tokens, dtype)
            results[f"{dtype} {label}"] = {"full_mib": full_mib, "chunked_mib": chunked_mib,
                                           "ratio": full_mib / chunked_mib}
            print(f"{dtype:<10}{label:<16}{full_mib:>12.0f} MiB{chunked_mib:>8.0f} MiB{full_mib / chunked_mib:>7.1f}x")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
