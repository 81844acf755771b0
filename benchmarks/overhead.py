"""kdistill's overhead per step: the same distillation as a hand-written PyTorch loop and through kdistill.

The seed's TextBrewer example (teacher BERT 12 layers, student 3, hidden 256, 4 heads, intermediate
1024, random init; seq 64, batch 16; hidden 0↔0, 4↔1, 8↔2, 12↔3 + 12↔3 hidden_mse and attention
3↔0, 7↔1, 11↔2 attention_mse), three ways in one process, alternated A B C / C B A per round:

- ``raw``: a hand-written loop — teacher under no_grad, both models asked for every hidden state and
  attention map, masked MSE terms written by hand, AdamW step;
- ``distiller``: ``kdistill.Distiller`` + the same AdamW step;
- ``trainer``: ``kdistill.Trainer`` (Accelerate, parameter groups, LR schedule; clipping off as in raw).

Same work: both sides use **eager attention** (the raw loop reads ``outputs.attentions``, which SDPA
leaves empty; kdistill runs with ``attention="eager"``), the same weights and batches. Before timing,
the two losses are computed on one batch in eval mode and must agree.

    PYTHONPATH=src .venv/bin/python benchmarks/overhead.py            # full: 5 rounds x 20 steps
    PYTHONPATH=src .venv/bin/python benchmarks/overhead.py --quick    # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import copy

import _common as common


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-trainer", action="store_true", help="skip the Trainer variant")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 rounds of 3 steps")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared machine)")
    args = parser.parse_args(argv)
    common.use_clock(args.clock)
    if args.quick:
        args.steps, args.rounds = 3, 2

    import torch

    from kdistill import Distiller, TrainConfig, Trainer
    from kdistill.train import Callback

    threads = common.set_threads(args.threads)
    teacher, student = common.build_models(attention="eager")
    batches = common.synthetic_batches(8)
    print(f"overhead: {common.machine()}")
    print(f"config: teacher {common.TEACHER_LAYERS} layers, student {common.STUDENT_LAYERS}, hidden {common.HIDDEN}, "
          f"seq {common.SEQ}, batch {common.BATCH}, {len(common.SEED_MATCHES)} matches, eager attention in all, "
          f"{args.rounds} rounds x {args.steps} steps, {threads} threads, {args.clock} clock")

    raw_student = copy.deepcopy(student)
    distiller = Distiller(teacher, copy.deepcopy(student), common.kdistill_matches(), attention="eager")
    trainer_distiller = Distiller(teacher, copy.deepcopy(student), common.kdistill_matches(), attention="eager")

    # Same work: on one batch, in eval mode, both compute the same loss.
    raw_student.eval()
    distiller.student.eval()
    with torch.no_grad():
        inputs = common.model_inputs(batches[0])
        raw_loss = common.raw_seed_loss(teacher(**inputs, output_hidden_states=True, output_attentions=True),
                                        raw_student(**inputs, output_hidden_states=True, output_attentions=True),
                                        batches[0]["attention_mask"])
        kd_loss = distiller(batches[0]).loss
    raw_student.train()
    distiller.student.train()
    agree = abs(float(raw_loss) - float(kd_loss)) <= 1e-4 * abs(float(raw_loss))
    print(f"same loss on batch 0: raw {float(raw_loss):.6f}, kdistill {float(kd_loss):.6f} "
          f"({'agree' if agree else 'DIFFER'})")
    if not agree:
        raise SystemExit("the raw loop and kdistill compute different losses; the comparison would be unfair")

    raw_optimizer = torch.optim.AdamW(raw_student.parameters(), lr=common.LR, weight_decay=common.WEIGHT_DECAY)
    kd_optimizer = torch.optim.AdamW(distiller.parameters(), lr=common.LR, weight_decay=common.WEIGHT_DECAY)

    def raw(i: int) -> None:
        common.raw_step(teacher, raw_student, raw_optimizer, batches[i % len(batches)])

    def kdistill(i: int) -> None:
        out = distiller(batches[i % len(batches)])
        out.loss.backward()
        kd_optimizer.step()
        kd_optimizer.zero_grad(set_to_none=True)

    class Stamps(Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_step(self, state) -> None:
            self.times.append(common.clock())

    def trainer() -> float:
        stamps = Stamps()
        config = TrainConfig(max_steps=args.steps + 1, lr=common.LR, weight_decay=common.WEIGHT_DECAY, warmup=0,
                             lr_schedule="constant", max_grad_norm=None, progress=False, tensorboard=False,
                             log_every=10**9)
        data = [batches[i % len(batches)] for i in range(args.steps + 1)]
        Trainer(trainer_distiller, data, config=config, callbacks=[stamps]).train()
        return args.steps / (stamps.times[-1] - stamps.times[0])  # first step (setup) not timed

    methods = {
        "raw": lambda: common.steps_per_second(raw, args.steps),
        "kdistill": lambda: common.steps_per_second(kdistill, args.steps),
    }
    if not args.no_trainer:
        methods["trainer"] = trainer
    rates = common.alternate(methods, args.rounds)
    result = common.ratios(rates, "raw")
    rows = []
    for name in methods:
        low, high = common.spread(rates, "raw", name)
        rows.append([name, f"{sum(rates[name]) / len(rates[name]):.3f}", f"{result[name]:.3f}",
                     f"{low:.3f}–{high:.3f}"])
    print(common.table(rows, ["method", "steps/s (mean)", "ratio to raw (median)", "ratio range"]))
    print(f"kdistill/raw throughput: {result['kdistill']:.3f} (target >= 0.98)")
    if "trainer" in result:
        print(f"trainer/raw throughput:  {result['trainer']:.3f}")
    common.print_json("overhead", {"ratios": result, "rates": rates, "threads": threads,
                                   "steps": args.steps, "rounds": args.rounds})
    return result


if __name__ == "__main__":
    main()
