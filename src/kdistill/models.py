"""Models without adaptors or downloads: load offline, find the block list, build students.

Every Hugging Face load passes ``local_files_only=True``; a model is a folder on disk (or an
entry already in the local Hugging Face cache), never a download.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from kdistill.errors import ConfigError, unknown_choice
from kdistill.model_files import folder_contents, missing_tokenizer
from kdistill.registry import import_object

logger = logging.getLogger(__name__)

TASKS = ("base", "causal-lm", "embedding", "masked-lm", "question-answering", "sequence-classification",
         "token-classification")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers")
INTERMEDIATE_KEYS = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim")


# ---------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; kdistill logs its own summary."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_folder(path: str | Path, what: str, needed: str | None) -> str:
    """A local folder must exist and hold ``needed``; another string may name a cached hub model."""
    folder = Path(path)
    if folder.is_dir():
        if needed is not None and not (folder / needed).is_file():
            raise ConfigError(f"{what}: the folder '{folder}' has no {needed} (it holds: {folder_contents(folder)}).")
    elif folder.exists():
        raise ConfigError(f"{what}: '{folder}' is a file; give the folder that holds {needed or 'the model'}.")
    return str(path)


def _summarise_loading(path: str, info: dict[str, Any]) -> None:
    new = sorted(info.get("missing_keys") or ())
    unused = sorted(info.get("unexpected_keys") or ())
    resized = sorted(str(key) for key in info.get("mismatched_keys") or ())
    if new:
        logger.info("%s: %d weights newly initialised (%s)", path, len(new), ", ".join(new[:6]) + (" …" if len(new) > 6 else ""))
    if unused:
        logger.info("%s: %d checkpoint weights unused (%s)", path, len(unused), ", ".join(unused[:6]) + (" …" if len(unused) > 6 else ""))
    if resized:
        logger.warning("%s: re-initialised because their shapes differ from the checkpoint: %s", path, ", ".join(resized))


def load_hf_model(
    path: str | Path,
    *,
    num_labels: int | None = None,
    task: str = "sequence-classification",
    attn_implementation: str | None = None,
) -> nn.Module:
    """Load a Hugging Face model offline.

    ``task``: ``sequence-classification`` (a checkpoint without a head, such as the
    sentence-transformers MiniLM, gets a new classifier), ``base``, ``masked-lm``, ``causal-lm``
    (a decoder-only language model: Llama, Qwen2, Mistral, Gemma, GPT-2) or ``token-classification``
    (one tag per token: a new head on a checkpoint without one, as for sequence classification),
    ``question-answering`` (start and end logits of an answer span; a new head likewise) or
    ``embedding`` (the encoder alone, as ``base``: a sentence-transformers folder loads as its transformer).
    ``num_labels`` sets the classifier size; a head of another size in the checkpoint is
    re-initialised (logged as a warning). Newly initialised weights are summarised in one
    ``kdistill.models`` log line instead of transformers' table.
    """
    import transformers

    if task not in TASKS:
        raise unknown_choice("model.task", "task", task, TASKS)
    auto = {
        "base": transformers.AutoModel,
        "embedding": transformers.AutoModel,  # the encoder; kdistill.embedding pools its last hidden state
        "masked-lm": transformers.AutoModelForMaskedLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "token-classification": transformers.AutoModelForTokenClassification,
        "question-answering": transformers.AutoModelForQuestionAnswering,  # start/end logits (kdistill.qa_spans)
    }[task]
    name = _check_folder(path, "model.path", "config.json")
    kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    if num_labels is not None:
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _quiet_transformers():
            model, info = auto.from_pretrained(name, **kwargs)
    except pickle.UnpicklingError as exc:
        raise ConfigError(_refused_pickle(Path(name), exc)) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = f"the folder '{name}'" if Path(name).is_dir() else f"'{name}' (not a folder, nor in the local Hugging Face cache)"
        raise ConfigError(f"model.path: cannot load {task} model from {where}: {_first_line(exc)}") from None
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise
        # transformers' own defaults can disagree with the weights (a BART classifier saved with 2
        # labels reloads as BART's default 3): say which key fixes it instead of a traceback.
        raise ConfigError(
            f"model.path: some weights in '{name}' have other shapes than its config.json gives (often the "
            "classifier: transformers' default label count for this architecture "
            "differs from the checkpoint's). Set num_labels in this model's section to the size of the "
            "checkpoint's head, or fix config.json.") from None
    _summarise_loading(name, info)
    return model


def _refused_pickle(folder: Path, exc: BaseException) -> str:
    """A .bin checkpoint that pickles more than tensors: name the file, the object and the way out."""
    files = sorted(p.name for p in folder.glob("*.bin")) if folder.is_dir() else []
    where = (f"'{folder / files[0]}'" if len(files) == 1 else
             f"the .bin files in '{folder}' ({', '.join(files)})" if files else f"the weights in '{folder}'")
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    what = f" (it refers to {found.group(1)})" if found else ""
    return (f"model.path: {where} holds a pickled Python object{what} that torch refuses to load: transformers "
            "reads .bin weights with weights_only=True, which unpickles tensors only. Save the model as "
            "safetensors (model.save_pretrained(folder) writes model.safetensors), where you trust the file "
            "enough to load it once.")


def load_tokenizer(path: str | Path, *, where: str = "tokenizer.path") -> Any:
    """Load a tokenizer offline from a model folder (or the local Hugging Face cache).

    A folder without a vocabulary file (``model_files.TOKENIZER_FILES``) is refused: transformers
    would build a tokenizer of the special tokens only, turning every word into ``[UNK]``.
    """
    import transformers

    name = _check_folder(path, where, None)
    missing = missing_tokenizer(name, where)
    if missing:
        raise ConfigError(missing)
    try:
        with _quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: cannot load a tokenizer from '{name}': {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".") + "."


def load_factory(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model with a user factory named ``"pkg.module:function"``, called with ``kwargs``.

    The keyword arguments are checked against the factory's signature first, so a typo is a
    ConfigError naming the factory rather than a TypeError from deep inside it.
    """
    factory = import_object(spec, path="model.factory")
    if not callable(factory):
        raise ConfigError(f"model.factory: '{spec}' is a {type(factory).__name__}, not a function.")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.factory: '{spec}' cannot take the arguments {sorted(kwargs)}: {exc}.") from None
    except ValueError:
        pass  # builtins without a signature: let the call decide
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory: '{spec}' returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


# ---------------------------------------------------------------------------------------------
# The block list
#
# One rule, used by every method and tool that copies, drops, replaces or counts blocks:
# 1. a list named in the config (``teacher.blocks``/``student.blocks``, recorded by
#    :func:`name_blocks`) is the block list;
# 2. else the candidates are the ``nn.ModuleList``\ s of identical blocks not nested in another;
#    a model whose config declares shared-weight layers (ALBERT's layer groups) is refused, and
#    so is an encoder-decoder (two stacks: which one is meant cannot be guessed);
# 3. of the candidates, the one whose length is the config's layer count for its stack (or, for
#    a model without a config, the only one) is the block list; none or several is refused.

BLOCKS_ATTRIBUTE = "_kdistill_blocks"
SHARED_LAYER_KEYS = ("num_hidden_groups",)  # ALBERT: one group of weights reused by many layers
DECODER_COUNT_KEYS = ("num_decoder_layers", "decoder_layers")
_PATH_PART = re.compile(r"^[A-Za-z_]\w*$|^\d+$")


def block_candidates(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The ``nn.ModuleList``\\ s whose children all share one class, leaving out those nested in
    another candidate (per-layer expert or sub-layer lists), in registration order."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(child) for child in module}) == 1
    ]
    return [
        (name, module)
        for name, module in candidates
        if not any(other != name and (other == "" or name.startswith(other + ".")) for other, _ in candidates)
    ]


def describe_lists(lists: list[tuple[str, nn.ModuleList]]) -> str:
    """``encoder.block (2 of T5Block), decoder.block (2 of T5Block)``."""
    return ", ".join(f"{name} ({len(blocks)} of {type(blocks[0]).__name__})" for name, blocks in lists) or "none"


def name_blocks(model: nn.Module, path: str, *, where: str = "blocks") -> None:
    """Make the ``nn.ModuleList`` at the dotted ``path`` the block list of ``model`` (see the rule above).

    A path that is not a module of ``model``, or not a non-empty ``nn.ModuleList``, is a ConfigError
    naming ``where`` and the model's candidate lists. Copies of ``model`` (students built from it)
    keep the name.
    """
    lists = describe_lists(block_candidates(model))
    if not isinstance(path, str) or not all(_PATH_PART.match(part) for part in path.split(".")):
        raise ConfigError(f"{where}: {path!r} is not a dotted module path such as 'encoder.block'; "
                          f"the block lists of {type(model).__name__}: {lists}.")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"{where}: '{path}' is not a module of {type(model).__name__}; "
                          f"its block lists: {lists}.") from None
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        raise ConfigError(f"{where}: '{path}' is a {type(module).__name__}, not a non-empty nn.ModuleList of blocks; "
                          f"the block lists of {type(model).__name__}: {lists}.")
    model.__dict__[BLOCKS_ATTRIBUTE] = path


def named_blocks(model: nn.Module) -> str | None:
    """The block list path given to :func:`name_blocks`, or None."""
    return model.__dict__.get(BLOCKS_ATTRIBUTE)


def layer_count_keys(config: Any, path: str | None) -> tuple[str, ...]:
    """The config keys that count the blocks of the list at ``path``: a decoder stack's own, else the usual ones."""
    on_decoder = path is not None and "decoder" in path.split(".")
    if on_decoder and any(isinstance(getattr(config, key, None), int) for key in DECODER_COUNT_KEYS):
        return DECODER_COUNT_KEYS
    return LAYER_COUNT_KEYS


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The block list and its dotted path (``bert.encoder.layer``, ``transformer.h`` …), by the rule above.

    Raises a ConfigError naming the candidate lists when the rule picks none.
    """
    named = named_blocks(model)
    if named is not None:
        return named, model.get_submodule(named)
    name = type(model).__name__
    candidates = block_candidates(model)
    if not candidates:
        raise ConfigError(
            f"{name} has no nn.ModuleList of identical blocks, so its layers cannot be "
            "found; name the modules explicitly (refs like 'module:<path>')."
        )
    lists = describe_lists(candidates)
    config = getattr(model, "config", None)
    shared = {key: getattr(config, key) for key in SHARED_LAYER_KEYS if isinstance(getattr(config, key, None), int)}
    if shared:
        settings = ", ".join(f"{key}={value}" for key, value in shared.items())
        raise ConfigError(
            f"{name} has shared-weight layers ({settings} for num_hidden_layers={num_layers_of_config(config)}; "
            f"its block lists: {lists}): its layers reuse the same weights, so they cannot be copied, dropped or "
            "replaced one by one. Build the student from a config ('from_teacher: {num_layers: N}') or give one "
            "('student: {path: …}'), and use a method that needs no teacher blocks."
        )
    several = (f"{name} has several block lists ({lists}); kdistill does not guess which one is meant: name it "
               f"in the config with 'blocks: <path>' under teacher (or student), e.g. 'blocks: {candidates[0][0]}'.")
    if is_encoder_decoder(model):
        raise ConfigError(several)
    if config is None:
        if len(candidates) > 1:
            raise ConfigError(several)
        return candidates[0]
    matching = [(path, blocks) for path, blocks in candidates
                if len(blocks) == num_layers_of_config(config, layer_count_keys(config, path))]
    if len(matching) > 1:
        raise ConfigError(several)
    if not matching:
        raise ConfigError(
            f"{name}: none of its block lists ({lists}) holds the {num_layers_of_config(config)} layers its config "
            "declares; name the block list in the config with 'blocks: <path>' under teacher (or student)."
        )
    return matching[0]


def describe_blocks(model: nn.Module) -> str:
    """One line naming the block list methods act on (``blocks: bert.encoder.layer (2 of BertLayer, found)``),
    or why there is none."""
    try:
        path, blocks = find_layer_list(model)
    except ConfigError as exc:
        return f"blocks: none usable: {exc}"
    how = "named in the config" if named_blocks(model) else "found"
    return f"blocks: {path} ({len(blocks)} of {type(blocks[0]).__name__}, {how})"


def block_count(model: nn.Module) -> int:
    """The blocks that ``hidden.N``/``attn.N`` refs and the methods count: a Hugging Face model's
    config count (ALBERT: how often its shared layer runs; an encoder-decoder: its named stack),
    else the length of the block list (:func:`find_layer_list`). A ConfigError when it has none."""
    from kdistill.adapters.hf import hf_num_layers, is_hf_model

    count = hf_num_layers(model) if is_hf_model(model) else None
    return count if count is not None else num_layers(model)


def num_layers(model: nn.Module) -> int:
    """How many transformer blocks ``model`` has (see :func:`find_layer_list`)."""
    return len(find_layer_list(model)[1])


# ---------------------------------------------------------------------------------------------
# Students


def _layer_configs(config: Any, count: int, keys: tuple[str, ...]) -> list[Any]:
    """The config objects that describe a block list of ``count`` layers (the top config or a sub-config)."""
    found = []
    for candidate in [config] + [getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {}]:
        if candidate is None:
            continue
        values = {key: getattr(candidate, key, None) for key in keys}
        if any(value == count for value in values.values()):
            found.append(candidate)
    return found


def _set_layer_count(config: Any, kept: list[int], old_count: int,
                     keys: tuple[str, ...] = LAYER_COUNT_KEYS) -> None:
    """Set the layer count (under ``keys``) and cut every per-layer list (``layer_types`` …) to the kept layers."""
    for key in keys:
        if key in config.to_dict() or key in getattr(config, "attribute_map", {}):
            setattr(config, key, len(kept))
    for key, value in list(vars(config).items()):
        if "layer" in key and isinstance(value, list) and len(value) == old_count and key not in keys:
            setattr(config, key, [value[i] for i in kept])
    # GPT-Neo keeps a compressed form ([[pattern, repeats]]) that regenerates attention_layers.
    if isinstance(getattr(config, "attention_types", None), list) and isinstance(getattr(config, "attention_layers", None), list):
        config.attention_types = [[[kind], 1] for kind in config.attention_layers]


def _renumber_blocks(blocks: nn.ModuleList) -> None:
    """Blocks remember their position (``layer_idx``, for KV caches); make it their new one."""
    for position, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position


def student_from_teacher(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` keeping only the blocks ``layers`` (in that order): DistilBERT/TinyBERT init.

    Embeddings, heads and everything outside the block list are copied unchanged; block ``i`` of
    the student holds the weights of teacher block ``layers[i]``. The config's layer count and
    per-layer lists are updated, so the student saves and reloads with ``save_pretrained``.
    The teacher is not modified; the student is trainable even when the
    teacher was frozen.
    """
    path, blocks = find_layer_list(teacher)
    count = len(blocks)
    if not layers:
        raise ConfigError("student.from_teacher.layers: give at least one teacher layer to keep.")
    for position, index in enumerate(layers):
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise ConfigError(
                f"student.from_teacher.layers[{position}]: {index!r} is out of range: the teacher has {count} layers "
                f"(0–{count - 1})."
            )
    # Copy everything but the blocks, then each kept block through the same memo, so that
    # objects they share with the rest of the model (the config) stay shared in the student.
    memo: dict[int, Any] = {id(block): None for block in blocks}
    student = copy.deepcopy(teacher, memo)
    for block in blocks:
        del memo[id(block)]
    # A fresh copy of the memo per block: a layer listed twice gets two independent copies.
    kept = [copy.deepcopy(blocks[index], dict(memo)) for index in layers]
    parent_path, _, attr = path.rpartition(".")
    new_blocks = nn.ModuleList(kept)
    _renumber_blocks(new_blocks)
    setattr(student.get_submodule(parent_path) if parent_path else student, attr, new_blocks)

    config = getattr(student, "config", None)
    if config is not None:
        keys = layer_count_keys(config, path)
        configs = _layer_configs(config, count, keys)
        if not configs:
            logger.warning("%s: no layer count equal to %d found in its config; left unchanged", type(teacher).__name__, count)
        for layer_config in configs:
            _set_layer_count(layer_config, list(layers), count, keys)
    # A student is trained: undo a frozen teacher's requires_grad=False (the Trainer sets train mode).
    student.requires_grad_(True)
    return student


def student_from_config(
    teacher: nn.Module,
    *,
    num_layers: int,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
) -> nn.Module:
    """A randomly initialised model of the teacher's class with a smaller config.

    Sizes left ``None`` keep the teacher's value. Per-layer lists (``layer_types``) are cut (or
    cycled) to ``num_layers``; ``head_dim`` and key/value heads follow the new width and heads.
    On an encoder-decoder, ``num_layers`` applies to the stack named by :func:`name_blocks` (the
    student keeps the name); without one it is a ConfigError, as in :func:`find_layer_list`.
    """
    config = getattr(teacher, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ConfigError(f"student_from_config needs a Hugging Face model; {type(teacher).__name__} has no config.")
    if num_layers < 1:
        raise ConfigError(f"student.from_teacher.num_layers: {num_layers} must be at least 1.")
    # Shared-weight layers (ALBERT) are fine here: a fresh model of fewer layers shares its own.
    path = find_layer_list(teacher)[0] if is_encoder_decoder(teacher) else named_blocks(teacher)
    count_keys = layer_count_keys(config, path)
    config = copy.deepcopy(config)
    old_count = num_layers_of_config(config, count_keys)
    old_heads = getattr(config, "num_attention_heads", None)
    for key in count_keys:
        if key in config.to_dict() or key in getattr(config, "attribute_map", {}):
            setattr(config, key, num_layers)
    if old_count is not None:
        for key, value in list(vars(config).items()):
            if "layer" in key and isinstance(value, list) and len(value) == old_count and value:
                setattr(config, key, [value[i % len(value)] for i in range(num_layers)])
    if hidden_size is not None:
        config.hidden_size = hidden_size
    if num_attention_heads is not None:
        config.num_attention_heads = num_attention_heads
    if intermediate_size is not None:
        keys = [key for key in INTERMEDIATE_KEYS if key in config.to_dict()]
        if not keys:
            raise ConfigError(f"student.from_teacher.intermediate_size: {type(config).__name__} has no feed-forward size to set.")
        setattr(config, keys[0], intermediate_size)
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "hidden_size", None)
    if heads and width and width % heads:
        raise ConfigError(
            f"student.from_teacher.hidden_size: {width} is not divisible by num_attention_heads={heads}; pick sizes that divide."
        )
    if "head_dim" in config.to_dict() and (hidden_size is not None or num_attention_heads is not None):
        config.head_dim = width // heads
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads is not None and num_attention_heads is not None:
        if kv_heads == old_heads:
            config.num_key_value_heads = heads
        elif heads % kv_heads:
            raise ConfigError(
                f"student.from_teacher.num_attention_heads: {heads} is not a multiple of num_key_value_heads={kv_heads}."
            )
    builder = getattr(type(teacher), "_from_config", None)
    student = builder(config) if builder is not None else type(teacher)(config)
    if path is not None:
        name_blocks(student, path)
    return student


def num_layers_of_config(config: Any, keys: tuple[str, ...] = LAYER_COUNT_KEYS) -> int | None:
    """The layer count a Hugging Face config declares, under whichever of ``keys`` it uses."""
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; tied weights count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "count_parameters",
    "describe_blocks",
    "block_candidates",
    "find_layer_list",
    "layer_count_keys",
    "name_blocks",
    "named_blocks",
    "load_factory",
    "load_hf_model",
    "load_tokenizer",
    "block_count",
    "num_layers",
    "num_layers_of_config",
    "student_from_config",
    "student_from_teacher",
]


def save_pretrained(model: nn.Module, path: str | Path) -> None:
    """``model.save_pretrained(path)``, also when its config asks for attentions under SDPA.

    transformers 5 refuses to save a config with ``output_attentions=True`` and SDPA attention
    (the seed article's configs ask for it; kdistill computes attentions from hooks instead): the
    flag is saved as False and restored on the live model.
    """
    config = model.config
    blocked = bool(getattr(config, "output_attentions", False)) and getattr(
        config, "_attn_implementation", "eager") not in ("eager", None)
    with _quiet_transformers():
        if not blocked:
            model.save_pretrained(path)
            return
        config.output_attentions = False
        try:
            model.save_pretrained(path)
        finally:
            # The public setter refuses True under SDPA; the constructor accepted it: restore as stored.
            config._output_attentions = True


def save_model_folder(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Save a Hugging Face model (and tokenizer) into ``folder`` atomically (:func:`kdistill.files.atomic_folder`),
    so a crash never leaves a half-written model folder."""
    from kdistill.files import atomic_folder

    with atomic_folder(folder) as tmp:
        save_pretrained(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(folder)
