"""On-policy distillation (GKD, Agarwal et al. 2024): the student learns on its own samples.

    on_policy: {lmbda: 0.5, temperature: 0.9, max_new_tokens: 32}    # in a causal-lm run's YAML

With probability λ (``lmbda``, TRL's name) a training batch's completions are replaced by the student's
own: each example's prompt — its tokens before the first token that carries loss — is continued by
the student (sampled at ``temperature``, no top-k or top-p cut, at most ``max_new_tokens`` tokens, in
eval mode and without gradients), and the batch becomes prompt + sample, right-padded, the loss on
the sampled tokens up to and including the first eos. Teacher and student then both run on that
batch, so a logits match (``token_jsd`` with ``beta`` is GKD's generalized JSD) compares the two
models' next-token distributions on text the student wrote. λ = 0 is plain supervised KD (nothing
is drawn or sampled: the run is the one without the key), λ = 1 fully on-policy.

The draw and the sampling seed come from (seed, epoch, batch of the epoch) alone, and sampling runs
on its own RNG stream: a resumed run draws and samples exactly what the uninterrupted one did, and
the dropout masks of training are those of a run without sampling.

Where it differs from TRL's GKDTrainer: the sampled batch is right-padded with positions counted
from each prompt's first token (TRL keeps the prompts left-padded and gives no position ids); the
prompt of a chat is everything before its *first* assistant turn (TRL: before the last); the
hard-label loss is left out on sampled batches (TRL's GKD has none at all; the student's own
samples are no labels); the generation settings are applied over the student's generation config
(TRL replaces it); the draw is seeded per batch (TRL: Python's global ``random``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from kdistill.lm_data import IGNORE

ON_POLICY_KINDS = ("prompt_completion", "chat")


@dataclass(frozen=True)
class OnPolicy:
    """The settings of on-policy batches (``on_policy`` in a config) with the tokenizer's pad and eos ids."""

    lmbda: float
    temperature: float
    max_new_tokens: int
    seed: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]

    def draw(self, epoch: int, batch: int) -> tuple[bool, int]:
        """Whether batch ``batch`` of ``epoch`` is sampled from the student, and the seed to sample it with."""
        state = np.random.SeedSequence([self.seed, epoch, batch]).generate_state(2)
        uniform = float(state[0]) / 2**32
        return uniform < self.lmbda, int(state[1])


def describe(spec: Any) -> str:
    """One line for the plan: what a config's ``on_policy`` does."""
    if spec.lmbda == 0:
        return "on_policy: lmbda 0: every batch is the data's own (plain supervised KD); nothing is sampled"
    return (f"on_policy (GKD): with probability {spec.lmbda:g} a batch's completions are the student's samples "
            f"(temperature {spec.temperature:g}, at most {spec.max_new_tokens} new tokens, until eos); the teacher "
            "scores those tokens, the hard-label loss is left out on them")


def on_policy_settings(config: Any, tokenizer: Any, student: nn.Module) -> OnPolicy | None:
    """The run's :class:`OnPolicy` (``config.on_policy``), or None when there is none or λ is 0."""
    from kdistill.lm_data import pad_choice

    spec = config.on_policy
    if spec is None or spec.lmbda == 0:
        return None
    if not callable(getattr(student, "generate", None)):
        from kdistill.errors import ConfigError

        raise ConfigError(f"on_policy: the student ({type(student).__name__}) cannot generate text; on-policy "
                          "distillation needs a Hugging Face causal language model as the student.")
    pad, _ = pad_choice(tokenizer)
    eos = [getattr(tokenizer, "eos_token_id", None)]
    own = getattr(getattr(student, "generation_config", None), "eos_token_id", None)
    eos += list(own) if isinstance(own, (list, tuple)) else [own]
    stops = tuple(dict.fromkeys(int(token) for token in eos if token is not None))
    seed = spec.seed if spec.seed is not None else config.train_seed()
    return OnPolicy(spec.lmbda, spec.temperature, spec.max_new_tokens, seed, pad, stops)


def maybe_sampled(settings: OnPolicy, student: nn.Module, batch: Mapping, *, epoch: int,
                  batch_index: int) -> tuple[Mapping, bool]:
    """``batch`` or, when this batch draws it, the batch of the student's own completions; and whether it did."""
    sampled, seed = settings.draw(epoch, batch_index)
    if not sampled:
        return batch, False
    return sampled_batch(student, batch, settings, seed=seed), True


def prompts_of(batch: Mapping) -> list[list[int]]:
    """Each example's prompt: its tokens before the first one that carries loss. ``batch``: a causal-LM
    batch with shifted targets (``loss_mask[t]`` = 1 where token ``t + 1`` carries loss)."""
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    first = loss_mask.int().argmax(dim=1)  # every example has a loss token (lm_data leaves out those without)
    return [input_ids[row, : int(first[row]) + 1].tolist() for row in range(input_ids.shape[0])]


@torch.no_grad()
def sampled_batch(student: nn.Module, batch: Mapping, settings: OnPolicy, *, seed: int) -> dict[str, Any]:
    """The student's continuation of each prompt of ``batch``, as a batch: ``input_ids`` (prompt + sample,
    right-padded), ``attention_mask``, shifted ``labels`` and ``loss_mask`` on the sampled tokens (through
    the first eos). Sampled in eval mode with the torch RNG seeded by ``seed`` (the global stream is left
    as it was); the student's mode is restored."""
    from kdistill.generate import continue_prompts

    prompts = prompts_of(batch)
    device = batch["input_ids"].device
    was_training = student.training
    student.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            samples = continue_prompts(student, prompts, pad_token_id=settings.pad_token_id,
                                       eos_token_ids=settings.eos_token_ids, max_new_tokens=settings.max_new_tokens,
                                       do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
    finally:
        student.train(was_training)
    return completion_batch(prompts, samples, settings.pad_token_id, device)


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_token_id: int,
                     device: torch.device) -> dict[str, Any]:
    """Prompt + completion per example, right-padded, with targets shifted as :class:`kdistill.lm_data.NextTokenTargets`
    makes them: ``labels[t]`` is token ``t + 1`` where that is a completion token, else -100."""
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE, dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        tokens = prompt + completion
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        labels[row, len(prompt) - 1: len(tokens) - 1] = torch.tensor(completion)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "loss_mask": (labels != IGNORE).long()}
    return {key: value.to(device) for key, value in batch.items()}


def on_policy_problems(spec: Any, *, teacher: Any, data: Any, matches: list, top: Any, training: Any,
                       capture: Any = None) -> list[str]:
    """What a config's ``on_policy`` asks that the rest of the config cannot give (at validate)."""
    if spec is None:
        return []
    problems = []
    if teacher is not None and teacher.task != "causal-lm":
        problems.append(f"on_policy: samples completions from a causal language model; teacher.task is "
                        f"'{teacher.task}': set teacher.task: causal-lm, or remove on_policy.")
    if data is not None:
        if data.kind not in ON_POLICY_KINDS:
            problems.append(f"on_policy: the student continues each example's prompt, so the data needs prompts: "
                            f"data.kind is {data.kind or 'text'!r}; use {' or '.join(ON_POLICY_KINDS)}.")
        if data.student_tokenizer is not None:
            problems.append("on_policy: the teacher scores the student's sampled tokens, so both read one tokenizer; "
                            "remove data.student_tokenizer.")
    reads_logits = any(m is not None and m.teacher == "logits" and m.student in (None, "logits") for m in matches)
    if not reads_logits:
        problems.append("on_policy: needs a match of the two models' logits in 'matches' (GKD: {teacher: logits, "
                        "student: logits, loss: token_jsd, args: {beta: 0.5}}); without it nothing compares the "
                        "teacher with the student on the sampled tokens.")
    if top is not None and top.cache is not None:
        problems.append(f"on_policy: sampled batches hold new tokens the teacher must score, so cache: "
                        f"'{top.cache}' cannot serve them; remove cache.")
    if capture is not None:
        problems.append("on_policy: sampled batches hold new tokens the teacher must score, which a capture of "
                        "the data's own tokens does not hold; remove capture (or on_policy).")
    if training is not None and training.unpad:
        problems.append("on_policy: the student generates with a key-value cache, which training.unpad does not "
                        "support; set training.unpad: false.")
    return problems


__all__ = ["ON_POLICY_KINDS", "OnPolicy", "completion_batch", "describe", "maybe_sampled", "on_policy_problems",
           "on_policy_settings", "prompts_of", "sampled_batch"]
