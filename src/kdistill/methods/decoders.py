"""What the published methods need that a decoder-only language model run (``teacher.task: causal-lm``)
may lack, found at validate, before any weight loads.

- MiniLM and TinyBERT's general stage distil on ``unlabelled`` text (``data.unlabelled``); a causal-LM
  run's training texts are already unlabelled text, so ``method_args.data: train`` (MiniLM) or
  ``stage: task`` (TinyBERT) uses them.
- TinyBERT compares pre-softmax attention scores by default; on rotary decoders (Llama, Qwen2,
  Mistral, Gemma …) they exist only inside the attention's forward (q/k are rotated after the
  projections a hook can see), so ``method_args.attention: probs`` (eager attention) is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def causal_lm_method_problems(method: str, args: Mapping, *, teacher_path: str | None,
                              has_unlabelled: bool) -> list[str]:
    """Sentences naming ``method_args`` keys a causal-LM run cannot honour, with the setting that works."""
    from kdistill.adapters.hf import HOOKABLE_DECODER_TYPES

    problems = []
    if method == "minilm" and args.get("data", "unlabelled") == "unlabelled" and not has_unlabelled:
        problems.append("method_args.data: MiniLM distils on 'unlabelled' text (data.unlabelled), which this "
                        "causal-lm run does not have; its training texts are unlabelled text already: set "
                        "method_args.data: train.")
    if method == "tinybert":
        if args.get("stage", "task") in ("general", "both") and not has_unlabelled:
            problems.append(f"method_args.stage: '{args['stage']}' has a general stage on 'unlabelled' text "
                            "(data.unlabelled), which this causal-lm run does not have; use stage: task (the "
                            "run's texts).")
        model_type = _model_type(teacher_path)
        if args.get("attention", "scores") == "scores" and model_type is not None \
                and model_type not in HOOKABLE_DECODER_TYPES:
            problems.append(f"method_args.attention: 'scores' (TinyBERT's pre-softmax attention scores) cannot be "
                            f"read from the '{model_type}' teacher: its queries and keys are rotated inside the "
                            "attention, after any hook can see them, and eager attention returns probabilities "
                            "only; set method_args.attention: probs.")
    return problems


def _model_type(folder: str | None) -> str | None:
    """The ``model_type`` of a Hugging Face folder's config.json; None when there is none to read."""
    path = Path(folder) / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # the model loader reports an unreadable config
    return value if isinstance(value, str) else None


__all__ = ["causal_lm_method_problems"]
