"""The runner: config -> models -> data -> method/matches -> Distiller -> Trainer -> outputs.

    config = load_config("run.yaml")
    print(plan(config))        # loads the models, runs one batch, trains nothing
    summary = run(config)      # trains and writes the output folder

The output folder (what is in it, what kdistill owns there, what --overwrite removes and when):
:mod:`kdistill.outputs`. A folder holding results of a *different* config is refused unless
``resume`` (continue it with this config) or ``overwrite`` (replace its results, once the new run
is built and checked). The same config again continues the run.

Under a launcher (``kdistill run --processes N``, ``accelerate launch``) every process trains and
only the main process writes the folder (docs/scale.md).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdistill.config import RunConfig, dump_yaml
from kdistill.distiller import Distiller
from kdistill.errors import ConfigError, KdistillError, ShapeError
from kdistill.evaluation import (  # noqa: F401 - re-exported
    _logits_are_classes,
    compare,
    evaluate_run,
    evaluate_splits,
    evaluation_during_training,
    load_run,
)
from kdistill.files import atomic_write_text
from kdistill.launch import distributed_world_size, processes_use_cpu
from kdistill.logits_cache import reads_only_logits
from kdistill.lora import merge_lora
from kdistill.on_policy import on_policy_settings
from kdistill.outputs import (  # noqa: F401  (re-exported: the run folder's names and helpers)
    RESOLVED_NAME,
    RESULT_NAMES,
    STAGE_DONE,
    STAGE_STUDENT,
    check_output_dir,
    config_differences,
    prepare_output_dir,
    save_student,
    start_run_folder,
)
from kdistill.run_build import (  # noqa: F401 - re-exported
    RunParts,
    StageParts,
    build,
    check_refs,
    config_matches,
    count_parameters,
    estimated_steps,
    layer_count,
    load_model,
    make_recipe,
    resolve_layer_map,
    stage_train_config,
    student_from_init,
)
from kdistill.run_data import DataParts, ImageDataset, build_data, make_loaders, training_loader  # noqa: F401

# ---------------------------------------------------------------------------------------------
# run


def split_entry(dataset: Any, source: str) -> dict:
    """A split in ``summary.json``: its examples (questions of a QA set, whose long contexts are cut into
    several windows: those are counted apart) and where they came from."""
    records = getattr(dataset, "records", None)
    if records is not None and len(records) != len(dataset):
        return {"examples": len(records), "windows": len(dataset), "source": source}
    return {"examples": len(dataset), "source": source}


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every stage and write the output folder; returns the summary (also in summary.json).

    The folder is checked before any weight loads, but changed only once the models are built and
    every stage about to train has run its first batch (refs, shapes, projections): an --overwrite
    whose config does not fit the models leaves the old run as it was.
    """
    # Under a launcher (several processes) only the main process checks and writes the output
    # folder; the others wait for its answer (or its error).
    out, continuing = on_main_process(check_output_dir, config, resume=resume, overwrite=overwrite)
    if config.baseline and distributed_world_size() > 1:
        raise ConfigError("baseline: trained in one process for now; run without --processes, or set baseline: false.")
    from kdistill.launch import is_main_process
    from kdistill.progress import RUN_LOG, run_progress

    # The stages' lines and estimates, on the screen and in run.log (the main process's).
    with run_progress(out / RUN_LOG if is_main_process() else None, show=config.training.progress) as progress:
        return _run(config, out, progress, continuing=continuing, resume=resume, overwrite=overwrite)


def _run(config: RunConfig, out: Path, progress: Any, *, continuing: bool, resume: bool,
         overwrite: bool) -> dict[str, Any]:
    """``run`` once the output folder is checked: build, train every stage, write the results."""
    from safetensors.torch import load_model as load_weights_into

    if config.tasks is not None:  # several tasks into one student (kdistill.multitask)
        from kdistill.multitask import run_tasks

        if distributed_world_size() > 1:
            raise ConfigError("tasks: a multi-task run trains in one process for now; run without --processes.")
        return on_main_process(run_tasks, config, out, progress, continuing=continuing, overwrite=overwrite)
    started = time.time()
    parts = build(config, finetune=True)
    kept, reopened = _finished_stages(parts, continuing=continuing, resume=resume)
    _check_sharding(parts)
    if progress is not None:
        _plan_progress(progress, parts, kept, out)
    for part in parts.stages:  # a chain's stage taught by the assistant is checked when it starts (see below)
        if part.index not in kept and (parts.assistant is None or part.teacher is not parts.assistant):
            if config.capture is not None:  # batches from the capture (made now if absent): the teacher never trains
                from kdistill.capture import use_capture

                use_capture(parts, part)
            _prepare_stage(parts, part)
    on_main_process(start_run_folder, config, overwrite=overwrite, reopened=tuple(p.directory for p in reopened))
    if progress is not None:
        progress.open_log()  # the run now writes its folder
    released = _release_teacher(parts, kept)
    stage_summaries = []
    for part in parts.stages:
        if part.index in kept:
            load_weights_into(part.student, str(part.directory / STAGE_STUDENT))
            stage_summaries.append(kept[part.index])
        else:
            stage_summaries.append(_train_stage(parts, part, out, continuing))
    baseline = _train_baseline(parts, out)
    if released:  # the evaluation compares the teacher with the student: loaded again from its folder
        parts.teacher = load_model(config.teacher, "teacher", config)

    def write_results() -> dict[str, Any]:
        final_model = (parts.trained.export() if hasattr(parts.trained, "export") and parts.trained is not parts.student
                       else parts.trained)
        final_model = merge_lora(final_model)  # student.lora: a plain Hugging Face student is saved and evaluated
        student_dir = save_student(parts, final_model, out)
        with _evaluation_progress(progress, parts) as counted:
            loaders = counted(parts.loaders)
            metrics = evaluate_splits(parts.teacher, final_model, loaders)
            labels_only = _labels_only_results(parts, baseline, out, loaders)
            from kdistill.teachers import run_teachers_summary

            labels_only.update(run_teachers_summary(parts, final_model, loaders, metrics, out))  # teachers: each one
        summary = {
            "config": str(out / RESOLVED_NAME),
            "student": str(student_dir),
            "method": parts.recipe.method,
            "stages": stage_summaries,
            "parameters": {"teacher": count_parameters(parts.teacher), "student": count_parameters(final_model)},
            "data": {split: split_entry(dataset, parts.data.sources.get(split, split))
                     for split, dataset in parts.data.datasets.items()},
            "metrics": metrics,
            "processes": distributed_world_size(),
            "seconds": round(time.time() - started, 2),
            **labels_only,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        from kdistill.report import bench_section, run_report

        kept = bench_section(out / "report.md")  # a benchmark of an earlier save stays in the report
        run_report(out, summary, dump_yaml(config.resolved()), keep=[kept] if kept else [])
        from kdistill.model_card import write_model_card

        write_model_card(out, summary, config.resolved(), measured=kept is not None)  # and in the card
        return summary

    return on_main_process(write_results)


def stage_name(parts: RunParts, part: StageParts) -> str:
    """What the progress bar, the progress lines and run.log call a stage."""
    return "distil" if len(parts.stages) == 1 else f"stage {part.index + 1}/{len(parts.stages)} '{part.stage.name}'"


def _plan_progress(progress: Any, parts: RunParts, kept: dict[int, dict], out: Path) -> None:
    """Tell the run's progress the steps of the stages still to train, of the baseline and the
    evaluation's batches (``kdistill.progress``)."""
    from kdistill.embedding import is_embedding_model
    from kdistill.finetune import baseline_finished

    steps = {stage_name(parts, part): estimated_steps(stage_train_config(parts.config, part), part.loader,
                                                      distributed_world_size())
             for part in parts.stages if part.index not in kept}
    if parts.baseline is not None:
        planned = estimated_steps(baseline_train_config(parts), parts.loaders["train"])
        untrained = is_embedding_model(parts.baseline)  # an embedding run's baseline is not trained
        steps["baseline"] = 0 if untrained or baseline_finished(out, planned) else planned
    progress.plan(steps, evaluation_batches=_evaluation_batches(parts))


def _evaluation_batches(parts: RunParts) -> int:
    """Batches the run's final evaluation reads: each split's batches once per model it runs over
    them (teacher and student for classifiers; once for causal LMs), again for the baseline."""
    from kdistill.evaluation import is_causal_lm, is_token_classifier
    from kdistill.qa_spans import is_qa_model

    if is_causal_lm(parts.teacher):
        passes = 1
    elif _logits_are_classes(parts.teacher) and _logits_are_classes(parts.student):
        passes = 2
    elif is_qa_model(parts.teacher) and is_qa_model(parts.student):  # teacher and student answer each window
        passes = 2
    elif is_token_classifier(parts.teacher) and is_token_classifier(parts.student):  # each tags every sentence
        passes = 2
    else:
        return 0
    batches = sum(len(parts.loaders[split]) for split in ("validation", "test") if split in parts.loaders)
    # Several teachers: each other one against the student (two passes), and the ensemble (one).
    others = 2 * (len(parts.teachers) - 1) + 1 if len(parts.teachers) > 1 else 0
    return batches * (passes * (2 if parts.baseline is not None else 1) + others)


def _evaluation_progress(progress: Any, parts: RunParts):
    """The evaluation as a stage of the run's progress (a bar of its own); without one, the loaders as they are."""
    import contextlib

    if progress is None:
        return contextlib.nullcontext(lambda loaders: loaders)
    return progress.evaluation(_evaluation_batches(parts))


def _train_stage(parts: RunParts, part: StageParts, out: Path, continuing: bool) -> dict[str, Any]:
    """Train one stage through the Trainer (from its checkpoint when ``continuing``), save its student
    and its record (``stage_done.json``); the record."""
    from kdistill.train import Trainer, save_weights

    config = parts.config
    # Made only now for a stage taught by a chain's assistant: making its Distiller freezes the
    # assistant, which the stage before trains.
    distiller = _prepare_stage(parts, part)
    train_config = stage_train_config(config, part)
    eval_loader, metric_fn = evaluation_during_training(part.student, parts.loaders.get("validation"),
                                                        classes=bool(parts.data.num_classes))
    loader = part.loader
    if config.cache == "teacher":
        loader = teacher_cached_loader(part, distiller, out)
    elif config.cache == "logits" and reads_only_logits(distiller):
        loader = logits_loader(parts, part, distiller)
    trainer = Trainer(distiller, loader, config=train_config, eval_data=eval_loader, metric_fn=metric_fn,
                      output_dir=part.directory, name=stage_name(parts, part),
                      on_policy=on_policy_settings(config, parts.tokenizer, distiller.student))
    started = time.perf_counter()
    result = trainer.train(resume=continuing)
    seconds = time.perf_counter() - started
    distiller.remove_hooks()
    record = {"stage": part.stage.name, "data": part.data_name, "steps": result.steps,
              "total_steps": result.total_steps, "best_metric": result.best_metric, "best_step": result.best_step,
              "final_metrics": result.final_metrics, "skipped_steps": result.skipped_steps,
              "effective_batch_size": getattr(result, "effective_batch_size", None), "seconds": round(seconds, 2)}
    if config.lm_kind() is not None and not continuing:  # a resumed stage trained only part of its steps now
        from kdistill.lm_bench import training_tokens_per_second

        record["tokens_per_second"] = training_tokens_per_second(part.loader, result.steps, train_config.grad_accum,
                                                                 seconds)

    if result.student_state is not None:  # FSDP: the student is sharded; the main process holds it whole
        parts.trained = _whole_student(parts, result.student_state)

    def finish_stage() -> None:
        save_weights(part.student, part.directory / STAGE_STUDENT, state=result.student_state)
        atomic_write_text(part.directory / STAGE_DONE, json.dumps(record, indent=2))
        if len(parts.stages) > 1:
            _append_stage_metrics(out, part)

    on_main_process(finish_stage)
    return record


def _release_teacher(parts: RunParts, kept: Mapping[int, Any]) -> bool:
    """When every stage still to train reads the teacher's top-k from ``capture``, the teacher's weights
    are freed for the training (each tensor emptied; the teacher never runs) and the teacher is loaded
    again for the evaluation; whether that happened."""
    from kdistill.capture import stage_reads_capture

    if parts.config.capture is None:
        return False
    to_train = [part for part in parts.stages if part.index not in kept]
    if not to_train or not all(stage_reads_capture(parts.config, part, parts.teacher)[0] for part in to_train):
        return False
    for tensor in [*parts.teacher.parameters(), *parts.teacher.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return True


def _check_sharding(parts: RunParts) -> None:
    """Under FSDP ``kdistill run`` trains one stage of a plain student (its sharded student is gathered
    whole once, at the end); a chain of stages or a wrapped student (Theseus, LayerDrop) is refused."""
    from kdistill.train.sharding import fsdp_requested

    if fsdp_requested() and parts.config.on_policy is not None:
        raise ConfigError("on_policy: the student samples completions whole, which a sharded (FSDP) student "
                          "cannot; use DDP (`--processes N`) for on-policy distillation.")
    if fsdp_requested() and (len(parts.stages) > 1 or parts.trained is not parts.student):
        raise ConfigError(f"method: '{parts.recipe.method}' trains {len(parts.stages)} stage(s) of a "
                          f"{'wrapped ' if parts.trained is not parts.student else ''}student; under FSDP kdistill "
                          "run trains one stage of a plain student for now. Use DDP (`--processes N`, or an "
                          "`accelerate launch` multi-GPU config without FSDP) for this method.")


def _whole_student(parts: RunParts, state: dict) -> nn.Module:
    """A fresh copy of the student, built as the run built it, holding the gathered ``state`` (main process)."""
    from kdistill.run_build import _student

    student, _recipe, _source = _student(parts.config, parts.teacher, parts.teachers)
    student.load_state_dict(state)
    return student


def baseline_train_config(parts: RunParts):
    """``baseline: true``'s settings: the last stage's when it trains on the labelled data, else the
    run's ``training``; the same seed."""
    from kdistill.train import TrainConfig, run_length

    last = parts.stages[-1]
    if last.stage.data == "train" and last.loader is parts.loaders["train"]:
        return stage_train_config(parts.config, last)
    fields = {**parts.config.training.model_dump(), "seed": parts.config.train_seed()}
    fields["epochs"], fields["max_steps"] = run_length(fields["epochs"], fields["max_steps"],
                                                       len(parts.loaders["train"]), fields["grad_accum"])
    return TrainConfig(**fields)


def _train_baseline(parts: RunParts, out: Path) -> dict | None:
    """The student as built, trained on the labels alone (``baseline: true``); an embedding run's baseline is
    the student as built, untrained (:mod:`kdistill.embedding`)."""
    if parts.baseline is None:
        return None
    from kdistill.embedding import is_embedding_model, save_untrained_baseline
    from kdistill.finetune import train_baseline

    if is_embedding_model(parts.baseline):  # no labels to train an encoder on: the student as built
        return save_untrained_baseline(parts.baseline, out, parts.student_tokenizer or parts.tokenizer)
    train_config = baseline_train_config(parts)
    return train_baseline(parts.baseline, parts.loaders, train_config, out, parts.student_tokenizer or parts.tokenizer,
                          planned=estimated_steps(train_config, parts.loaders["train"]))


def _labels_only_results(parts: RunParts, baseline: dict | None, out: Path,
                         loaders: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary's entries for the teacher's fine-tune and the baseline (none when not asked for);
    ``loaders``: the run's, as the evaluation reads them."""
    extra: dict[str, Any] = {}
    if parts.finetuned is not None:
        from kdistill.finetune import copy_into_run

        extra["teacher_finetune"] = {"folder": str(copy_into_run(parts.finetuned, out)),
                                     "cache": str(parts.finetuned.folder), "cached": parts.finetuned.cached,
                                     "settings": parts.finetuned.settings}
    if baseline is not None:
        metrics = evaluate_splits(parts.teacher, parts.baseline, loaders or parts.loaders)
        extra["baseline"] = {"student": str(out / "baseline" / "student"), "steps": baseline["steps"],
                             "tokens_per_second": baseline.get("tokens_per_second"),
                             "parameters": count_parameters(parts.baseline),
                             "metrics": {split: {**result["student"], "agreement": result["agreement"]}
                                         for split, result in metrics.items() if "student" in result}}
    return extra


def _prepare_stage(parts: RunParts, part: StageParts) -> Distiller:
    """The stage's Distiller, prepared on its first batch (shapes checked, projections inserted)."""
    distiller = parts.stage_distiller(part.index)
    if not distiller.prepared:
        try:
            distiller.prepare(next(iter(part.loader)))
        except ShapeError as exc:
            raise _name_match(exc, distiller, part) from None
    return distiller


def _finished_stages(parts: RunParts, *, continuing: bool, resume: bool) -> tuple[dict[int, dict], list[StageParts]]:
    """Of a continued run: the finished stages kept as they are (index -> their record), and those
    that train on because ``--resume`` gave them a larger length. Says which, changes nothing.

    A stage that has not finished must have a usable checkpoint if it has any (CheckpointError).
    A finished stage is kept when its planned length is the same. With --resume: a larger one
    continues from its last checkpoint to the new end (only when no later stage has trained on its
    result); a smaller one is refused (kdistill does not shorten a finished stage).
    """
    from kdistill.errors import CheckpointError
    from kdistill.train import latest_good_checkpoint, list_checkpoints
    from kdistill.train.logging import notice

    kept: dict[int, dict] = {}
    reopened: list[StageParts] = []
    if not continuing:
        return kept, reopened
    single = len(parts.stages) == 1
    out = parts.config.output_dir
    for part in parts.stages:
        done = part.directory / STAGE_DONE
        if not done.is_file():
            with warnings.catch_warnings():  # the Trainer reports a fallback when it resumes
                warnings.simplefilter("ignore")
                latest_good_checkpoint(part.directory / "checkpoints")  # none usable: refused before any change
            continue
        record = json.loads(done.read_text(encoding="utf-8"))
        ran = int(record.get("steps") or 0)
        before = int(record.get("total_steps") or ran)
        train_config = stage_train_config(parts.config, part)
        planned = estimated_steps(train_config, part.loader, distributed_world_size())
        what = f"the run in '{out}'" if single else f"stage '{part.stage.name}' of the run in '{out}'"
        setting = "training.max_steps" if train_config.max_steps else "training.epochs"
        if not resume or planned == before:
            kept[part.index] = record
            continue
        if planned < before:
            raise ConfigError(f"{setting}: this config plans {planned} steps for {what}, fewer than the {before} it "
                              "was trained for; kdistill does not shorten a finished run. Pass --overwrite to train "
                              f"again with {planned} steps, or choose another output_dir.")
        later = [p.stage.name for p in parts.stages[part.index + 1:]
                 if (p.directory / STAGE_DONE).is_file() or list_checkpoints(p.directory / "checkpoints")]
        if later:
            raise ConfigError(f"{setting}: this config plans {planned} steps for {what}, which finished at step {ran}, "
                              f"but the later stage '{later[0]}' has trained on its result and would be left stale. "
                              "Pass --overwrite to train every stage again with the new length.")
        if not list_checkpoints(part.directory / "checkpoints"):
            raise CheckpointError(f"resume: {what} finished at step {ran} and this config plans {planned} steps, but "
                                  f"'{part.directory / 'checkpoints'}' holds no checkpoint to continue from. Pass "
                                  "--overwrite to train again from step 0.")
        notice(f"{what} finished at step {ran}; this config plans {planned} steps ({setting}): continuing from step "
               f"{ran} to {planned}, the learning-rate schedule spread over the {planned} steps.")
        reopened.append(part)
    steps = ", ".join(f"'{parts.stages[i].stage.name}' {record.get('steps')}" for i, record in kept.items())
    if len(kept) == len(parts.stages):
        notice(f"the run in '{out}' is already complete (steps: {steps}): nothing to train; the student is saved "
               "again and evaluated (summary.json rewritten).")
    elif kept:
        notice(f"finished stages kept as they are (steps: {steps}); the run continues with the others.")
    return kept, reopened


CACHE_DIR = "teacher-cache"


def stage_cache(part: StageParts, distiller: Distiller, out: Path):
    """The teacher cache of a stage (``cache: teacher``), or ``(None, why)`` when the stage reads
    nothing from a teacher (a Theseus stage, a labels-only stage)."""
    from kdistill.cache import TeacherCache

    if not distiller.teachers or not any(b.teacher_refs for b in distiller.bound):
        return None, "no match of this stage reads a teacher feature"
    return TeacherCache(out / CACHE_DIR, distiller, dataset=part.loader.dataset), ""


def teacher_cached_loader(part: StageParts, distiller: Distiller, out: Path) -> DataLoader:
    """``part.loader`` whose batches carry the cached teacher features (``cache: teacher``).

    One process: the first epoch fills the cache as it goes. Several processes: the main process
    fills it completely first (the teacher over the whole training set), the others then open it
    read-only, so it is written once.
    """
    from kdistill.cache import cached_loader

    cache, _ = stage_cache(part, distiller, out)
    if cache is None:
        return part.loader
    if distributed_world_size() > 1:
        on_main_process(lambda: cache.fill(cached_loader(part.loader, cache)) and None)
        if not cache.complete:  # the main process filled it: reopen what it wrote
            cache, _ = stage_cache(part, distiller, out)
    return cached_loader(part.loader, cache)


def logits_loader(parts: RunParts, part: StageParts, distiller: Distiller) -> DataLoader:
    """``part.loader``'s batches with the teacher's stored logits (``cache: logits``; computed once, by
    the main process under a launcher)."""
    from kdistill import logits_cache
    from kdistill.run_data import tokenized

    key = logits_cache.teacher_key(part.teacher)
    size = parts.config.data.eval_batch_size or parts.config.data.batch_size
    wrapped = []
    for dataset in part.datasets:
        base = tokenized(dataset)
        name = "unlabelled" if base is parts.datasets.get("unlabelled") else part.stage.data
        logits = on_main_process(logits_cache.cached_logits, distiller, key, base, size, name=name)
        wrapped.append(logits_cache.WithTeacherLogits(dataset, logits))
    collate = logits_cache.LogitsCollator(tokenized(part.datasets[0]).collator())
    return training_loader(parts.config, parts.data, wrapped, collate)


def on_main_process(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in the main process only; every process gets its result.

    One process (no launcher): just the call. Under a launcher the others wait for the main
    process and receive its result, or raise the error it raised, so no process is left waiting.
    """
    if distributed_world_size() <= 1:
        return function(*args, **kwargs)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=processes_use_cpu())
    box: list[Any] = [None]
    failure = None
    if state.is_main_process:
        try:
            box = [(True, function(*args, **kwargs))]
        except KdistillError as exc:
            box = [(False, exc)]
        except Exception as exc:  # the others get a readable error; the main process re-raises the original
            failure = exc
            box = [(False, KdistillError(f"the main process failed: {type(exc).__name__}: {exc}"))]
    broadcast_object_list(box)
    if failure is not None:
        raise failure
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _append_stage_metrics(out: Path, part: StageParts) -> None:
    from kdistill.train import read_metrics

    source = part.directory / "metrics.jsonl"
    if not source.is_file():
        return
    target = out / "metrics.jsonl"
    lines = target.read_text(encoding="utf-8").splitlines() if target.is_file() else []
    lines = [line for line in lines if json.loads(line).get("stage") != part.stage.name]
    lines += [json.dumps({"stage": part.stage.name, **record}) for record in read_metrics(source)]
    atomic_write_text(target, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# plan


def plan(config: RunConfig) -> str:
    """What the run will do, as text (:class:`kdistill.planning.Plan`); loads the models and runs one
    batch, trains nothing."""
    from kdistill.planning import make_plan

    return make_plan(config).render()  # a config with tasks: kdistill.multitask.MultiTaskPlan


def _name_match(exc: ShapeError, distiller: Distiller, part: StageParts) -> ShapeError:
    text = str(exc)
    for bound, origin in zip(distiller.bound, part.origins):
        if text.startswith(bound.name):
            return ShapeError(f"{origin}: {text}")
    return exc


__all__ = [
    "DataParts", "RunParts", "StageParts", "build", "build_data", "compare", "evaluate_run", "load_run",
    "make_loaders", "on_main_process", "plan", "prepare_output_dir", "run", "save_student",
]
