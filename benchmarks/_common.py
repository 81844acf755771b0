"""What the benchmarks share: the seed's TextBrewer configuration, a hand-written loss, timing helpers.

The configuration is the seed article's TextBrewer example (``../shared/seed``, ~line 230): a BERT
teacher of 12 layers and a student of 3, both hidden 256 with 4 heads and intermediate 1024 (random
init from ``BertConfig``), sequences of 64 tokens, batches of 16, and the matches

    hidden 0↔0, 4↔1, 8↔2, 12↔3 (hidden_mse); attention 3↔0, 7↔1, 11↔2 (attention_mse); 12↔3 again.

This module imports neither kdistill nor the peers at the top, so a peer's scratch venv can use it.
Timing rules: methods are compared in one process, alternated (A B C, then C B A, …), and only the
ratio measured within a round is reported; never assert on time in tests.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

HIDDEN = 256
HEADS = 4
INTERMEDIATE = 1024
TEACHER_LAYERS = 12
STUDENT_LAYERS = 3
SEQ = 64
BATCH = 16
LR = 1e-4
WEIGHT_DECAY = 0.01

# (teacher, student) pairs of the seed's intermediate_matches, in its order.
SEED_MATCHES = [
    ("hidden", 0, 0), ("hidden", 4, 1), ("hidden", 8, 2), ("hidden", 12, 3),
    ("attention", 3, 0), ("attention", 7, 1), ("attention", 11, 2),
    ("hidden", 12, 3),
]


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def bert_config(layers: int, *, attention: str | None = "eager", vocab_size: int = 30522,
                output_flags: bool = False):
    """``attention=None`` keeps transformers' default (SDPA); ``output_flags`` puts
    ``output_hidden_states``/``output_attentions`` in the config, as the seed article does."""
    from transformers import BertConfig

    flags = {"output_hidden_states": True, "output_attentions": True} if output_flags else {}
    config = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=layers,
                        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, **flags)
    if attention is not None:
        config._attn_implementation = attention
    return config


def build_models(*, attention: str | None = "eager", seed: int = 0, vocab_size: int = 30522,
                 output_flags: bool = False):
    """Teacher (12 layers, eval) and student (3 layers), seeded: every process builds the same weights."""
    import torch
    from transformers import BertModel

    options = {"attention": attention, "vocab_size": vocab_size, "output_flags": output_flags}
    torch.manual_seed(seed)
    teacher = BertModel(bert_config(TEACHER_LAYERS, **options)).eval()
    torch.manual_seed(seed + 1)
    student = BertModel(bert_config(STUDENT_LAYERS, **options))
    teacher.requires_grad_(False)
    return teacher, student


def synthetic_batches(count: int, *, batch_size: int = BATCH, seq: int = SEQ, seed: int = 0) -> list[dict]:
    """The seed's data: random ids in [100, 1000), all-ones mask, zero token types; plus ``index``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        batches.append({
            "input_ids": torch.randint(100, 1000, (batch_size, seq), generator=generator),
            "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
            "token_type_ids": torch.zeros(batch_size, seq, dtype=torch.long),
            "index": torch.arange(b * batch_size, (b + 1) * batch_size),
        })
    return batches


def kdistill_matches():
    """The seed's matches as kdistill Matches."""
    from kdistill import Match

    matches = []
    for feature, t, s in SEED_MATCHES:
        if feature == "hidden":
            matches.append(Match(f"hidden.{t}", f"hidden.{s}", "hidden_mse"))
        else:
            matches.append(Match(f"attn.{t}", f"attn.{s}", "attention_mse"))
    return matches


# ---------------------------------------------------------------------------------------------
# The hand-written loop's loss: what a careful user writes (masked, same reductions as kdistill)


def masked_mse(student, teacher, mask):
    """Mean of squared differences over valid tokens × dims. (B, T, D), mask (B, T)."""
    m = mask[..., None].to(student.dtype)
    return ((student - teacher).square() * m).sum() / (m.sum() * student.shape[-1])


def masked_attention_mse(student, teacher, mask):
    """Mean of squared differences over valid (batch, head, query, key) entries. (B, H, T, T)."""
    m = (mask[:, None, :, None] * mask[:, None, None, :]).to(student.dtype)
    return ((student - teacher).square() * m).sum() / (m.sum() * student.shape[1])


def raw_seed_loss(teacher_out, student_out, mask):
    """The seed's eight terms from ``ModelOutput`` hidden_states / attentions."""
    total = 0.0
    for feature, t, s in SEED_MATCHES:
        if feature == "hidden":
            total = total + masked_mse(student_out.hidden_states[s], teacher_out.hidden_states[t], mask)
        else:
            total = total + masked_attention_mse(student_out.attentions[s], teacher_out.attentions[t], mask)
    return total


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def raw_step(teacher, student, optimizer, batch):
    """One step of the hand-written loop (eager attention, all hidden states and attentions)."""
    import torch

    inputs = model_inputs(batch)
    with torch.no_grad():
        teacher_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    student_out = student(**inputs, output_hidden_states=True, output_attentions=True)
    loss = raw_seed_loss(teacher_out, student_out, batch["attention_mask"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ---------------------------------------------------------------------------------------------
# Timing and reporting


class AnonPeak:
    """The peak of ``RssAnon`` (private, anonymous memory: tensors, Python objects), sampled every
    ``interval`` seconds by a daemon thread, MiB.

    ``VmHWM`` also counts file-backed pages mapped into the process: shared libraries and
    memory-mapped files such as a teacher cache. Those are clean page cache the kernel can drop
    and share, so a process that maps a 100 MB file shows 100 MB more ``VmHWM`` without needing
    it. The kernel keeps no high-water mark of ``RssAnon``, hence the sampling (a peak shorter
    than ``interval`` can be missed).
    """

    def __init__(self, interval: float = 0.02):
        import threading

        self.peak = _rss_anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, _rss_anon_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_mb())
        return self.peak


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MiB (None where there is no such file or field)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_anon_mb() -> float:
    value = _status_mb("RssAnon")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    ``VmHWM`` of /proc/self/status: ``ru_maxrss`` of a child started by fork + exec still counts the
    parent's memory at the fork, which would give every subprocess the driver's peak.
    """
    value = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value


_CLOCK = time.perf_counter


def use_clock(kind: str) -> None:
    """``wall`` (default: what a user waits) or ``cpu`` (this process's CPU time: steadier on a
    machine shared with other jobs; with several threads it sums them, so compare at equal threads)."""
    global _CLOCK
    _CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}[kind]


def clock() -> float:
    return _CLOCK()


def steps_per_second(step: Callable[[int], object], steps: int, *, warmup: int = 1) -> float:
    """Run ``warmup`` untimed steps, then ``steps`` timed ones; steps per second."""
    for i in range(warmup):
        step(i)
    start = clock()
    for i in range(steps):
        step(warmup + i)
    return steps / (clock() - start)


def alternate(methods: dict[str, Callable[[], float]], rounds: int, *, log: bool = True) -> dict[str, list[float]]:
    """Call every method once per round, A B C then C B A …; each returns a rate. Rates by method."""
    names = list(methods)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            rates[name].append(methods[name]())
        if log:
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:.3f}/s" for n in names), flush=True)
    return rates


def ratios(rates: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of (method rate / baseline rate) measured in the same round."""
    return {name: statistics.median(v / b for v, b in zip(values, rates[baseline]))
            for name, values in rates.items()}


def spread(rates: dict[str, list[float]], baseline: str, name: str) -> tuple[float, float]:
    values = [v / b for v, b in zip(rates[name], rates[baseline])]
    return min(values), max(values)


def run_script_worker(python: str, script: Path, args: Sequence[str], *, timeout: int = 900) -> dict:
    """``python script _worker ARGS`` in a fresh process (so its peak memory is its own); the dict the
    worker printed with :func:`print_json` (``RESULT worker {json}``), or ``{"error": why}``."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    command = [python, str(script), "_worker", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT worker "):
            return json.loads(line[len("RESULT worker "):])
    tail = (done.stderr or done.stdout).strip().splitlines()
    return {"error": tail[-1][:300] if tail else f"exit code {done.returncode}"}


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}")


def print_json(tag: str, payload: dict) -> None:
    """A machine-readable result line (``RESULT {json}``) after the human-readable table."""
    print(f"RESULT {tag} {json.dumps(payload, sort_keys=True)}", flush=True)


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
