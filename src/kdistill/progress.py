"""Progress of a ``kdistill run`` that a person can plan around, on the screen and in ``run.log``.

    with run_progress(out / RUN_LOG, show=True) as progress:   # kdistill.run.run does this
        progress.plan({"distil": 300, "baseline": 300}, evaluation_batches=40)
        ...                                                    # every Trainer of the run reports to it

Each stage (teacher fine-tune, distil or each stage of a staged method, baseline, evaluation) has
its own bar named by the stage (the Trainer's bar; evaluation's own here). Lines say when each stage
starts and ends, and, from the ``FIRST_ESTIMATE``-th step of a stage on (then every
``ESTIMATE_EVERY`` seconds), how long the whole run has left:

    remaining = (steps left in this stage + steps planned for the stages still to come)
                × seconds per step measured on this stage since its first step
              + evaluation batches × a third of that (a forward pass of one batch against a
                training step's forward and backward pass; rough with grad_accum > 1)

During evaluation its own measured seconds per batch replace the guess. The stages still to come
are planned from their step counts (:func:`kdistill.run_build.estimated_steps`, as ``kdistill plan``
counts them); the teacher's fine-tune runs before the run can plan its stages (they are built on the
fine-tuned teacher), so its estimates cover the fine-tune alone and say so.

The same lines go, time-stamped, to ``output_dir/run.log`` (appended to: a resumed run adds its own;
--overwrite keeps it, a history of the runs in the folder), from the moment the run starts to write
its folder (the lines before are held till then, so a refused run leaves the folder as it was);
the screen shows them only when ``training.progress`` is on. Trainers outside a run report nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdistill.outputs import RUN_LOG
from kdistill.train.trainer import Callback

FIRST_ESTIMATE = 3  # the step of a stage at which its first estimate is made (steps measured: 2)
ESTIMATE_EVERY = 60.0  # seconds between later estimates
EVALUATION = "evaluation"
FORWARD_SHARE = 1 / 3  # an evaluation batch (forward only) against a training step (forward + backward)

_ACTIVE: ContextVar[RunProgress | None] = ContextVar("kdistill_run_progress", default=None)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunProgress:
    """The run's plan, its measured pace, and the lines it writes. ``clock``: seconds (injectable)."""

    def __init__(self, log_file: Path | None, *, show: bool = True, clock: Callable[[], float] = time.perf_counter):
        self.log_file = Path(log_file) if log_file else None
        self._held: list[str] | None = []  # lines held until the run may write its folder (open_log)
        self.show = show
        self.clock = clock
        self.to_come: dict[str, int] = {}  # stages not started yet: name -> planned steps
        self.evaluation_batches = 0
        self.planned = False
        self.stage: str | None = None
        self._total = self._first_step = self._step = 0
        self._first_time = self._last_estimate = 0.0

    # ------------------------------------------------------------------ lines
    def say(self, text: str) -> None:
        """One line: on the screen (when shown) and, time-stamped, appended to the run's log."""
        if self.show:
            tqdm.write(f"kdistill: {text}", file=sys.stderr)
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n"
        if self._held is not None:
            self._held.append(line)
        elif self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as handle:
                handle.write(line)

    def open_log(self) -> None:
        """From now on the lines go to the log file, the lines held so far first. Until then a run
        changes nothing in its folder (a refused --overwrite or --resume leaves it as it was)."""
        held, self._held = self._held or [], None
        if self.log_file is not None and held:
            with open(self.log_file, "a", encoding="utf-8") as handle:
                handle.write("".join(held))

    def plan(self, stages: Mapping[str, int], *, evaluation_batches: int = 0) -> None:
        """The stages still to come and their planned steps, and the evaluation's batches."""
        self.to_come = {name: steps for name, steps in stages.items() if steps > 0}
        self.evaluation_batches = evaluation_batches
        self.planned = True
        parts = [f"{name} {steps} steps" for name, steps in self.to_come.items()]
        parts.append(f"{EVALUATION} {evaluation_batches} batches" if evaluation_batches
                     else f"{EVALUATION} (its batches not counted ahead)")
        self.say(f"plan: {', '.join(parts)}")

    # ------------------------------------------------------------------ a stage
    def start(self, name: str, total: int, step: int = 0, unit: str = "steps") -> None:
        self.to_come.pop(name, None)
        if name == EVALUATION:
            self.evaluation_batches = 0
        self.stage, self._total, self._first_step, self._step = name, total, step, step
        self._first_time = self._last_estimate = 0.0
        counted = name != EVALUATION or total > 0  # (an evaluation may not be counted ahead)
        self.say(f"{name}: start" + (f" ({total} {unit}" + (f", from step {step})" if step else ")") if counted else ""))

    def step(self, step: int) -> None:
        """The stage reached ``step``; an estimate line at its ``FIRST_ESTIMATE``-th step and every so often."""
        now = self.clock()
        if self._step == self._first_step:  # the first step: the clock starts after it (it includes warm-up)
            self._first_time = now
        self._step = step
        done = step - self._first_step
        due = done == FIRST_ESTIMATE or (done > FIRST_ESTIMATE and now - self._last_estimate >= ESTIMATE_EVERY)
        if due:
            self._last_estimate = now
            self.say(self.estimate_line(now))

    def end(self, name: str, step: int, unit: str = "steps") -> None:
        self.say(f"{name}: end ({step} {unit})")
        self.stage = None

    # ------------------------------------------------------------------ the estimate
    def seconds_per_step(self, now: float) -> float | None:
        measured = self._step - self._first_step - 1  # steps timed since the first one ended
        return (now - self._first_time) / measured if measured > 0 else None

    def remaining(self, now: float) -> float | None:
        """Seconds the whole run has left (see the module docstring); None before two steps are timed."""
        pace = self.seconds_per_step(now)
        if pace is None:
            return None
        if self.stage == EVALUATION:  # (an evaluation whose batches are not counted ahead has no estimate)
            return (self._total - self._step) * pace if self._total > 0 else None
        steps = (self._total - self._step) + sum(self.to_come.values())
        return steps * pace + self.evaluation_batches * pace * FORWARD_SHARE

    def estimate_line(self, now: float) -> str:
        left = self.remaining(now)
        pace = self.seconds_per_step(now) or 0.0
        unit, units = ("batch", "batches") if self.stage == EVALUATION else ("step", "steps")
        then = [f"{name} {steps} steps" for name, steps in self.to_come.items()]
        if self.stage != EVALUATION and self.evaluation_batches:
            then.append(f"{EVALUATION} {self.evaluation_batches} batches at a third of a step each")
        if self.stage == EVALUATION and self._total <= 0:
            return f"estimate: {self.stage} at {pace:.3g} s/{unit}, {self._step} {units} read (how many to come is not counted)"
        line = (f"estimate: about {duration(left or 0)} left of the run ({self.stage} at {pace:.3g} s/{unit}, "
                f"{self._total - self._step} {units} left")
        line += f"; then {', '.join(then)})" if then else ")"
        if not self.planned:
            line += "; the later stages are planned once the teacher is fine-tuned, and not counted yet"
        return line

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluation(self, batches: int) -> Iterator[Callable[[Mapping[str, Any]], dict[str, Any]]]:
        """Evaluation as a stage with its own bar; yields ``counted(loaders)``: the loaders, each batch
        read ticking the bar (and the estimate)."""
        self.start(EVALUATION, batches, unit="batches")
        bar = tqdm(total=batches or None, desc=EVALUATION, disable=not self.show, dynamic_ncols=True)
        read = [0]

        def tick() -> None:
            read[0] += 1
            bar.update(1)
            self.step(read[0])

        try:
            yield lambda loaders: {name: _Counted(loader, tick) for name, loader in loaders.items()}
        finally:
            bar.close()
        self.end(EVALUATION, read[0], unit="batches")


class _Counted:
    """A loader whose every batch read calls ``tick``."""

    def __init__(self, loader: Iterable, tick: Callable[[], None]):
        self.loader, self.tick = loader, tick

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # the loader's own attributes (dataset, batch_size, …)
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.tick()


# ---------------------------------------------------------------------------------------------
# The run's progress, found by its Trainers


@contextlib.contextmanager
def run_progress(log_file: Path | None, *, show: bool = True) -> Iterator[RunProgress | None]:
    """The progress of the run under way: Trainers started inside report to it. ``log_file`` None (a
    process other than the main one): nothing is shown or written."""
    if log_file is None:
        yield None
        return
    progress = RunProgress(log_file, show=show)
    token = _ACTIVE.set(progress)
    progress.say("run: start")
    try:
        yield progress
    except BaseException as exc:
        progress.say(f"run: stopped ({type(exc).__name__}{f': {exc}' if str(exc) else ''})".splitlines()[0])
        raise
    else:
        progress.say("run: end")
    finally:
        _ACTIVE.reset(token)


def stage_callbacks(name: str) -> list[Any]:
    """The callbacks through which a Trainer named ``name`` reports to the run under way (none outside a run)."""
    progress = _ACTIVE.get()
    return [] if progress is None else [_StageObserver(progress, name)]


class _StageObserver(Callback):
    """A Trainer's steps as a stage of the run (start, steps, end)."""

    def __init__(self, progress: RunProgress, name: str):
        self.progress, self.name = progress, name

    def on_train_start(self, state) -> None:
        self.progress.start(self.name, state.total_steps, state.step)

    def on_step(self, state) -> None:
        self.progress.step(state.step)

    def on_train_end(self, state) -> None:
        self.progress.end(self.name, state.step)


__all__ = ["RUN_LOG", "RunProgress", "duration", "run_progress", "stage_callbacks"]
