"""Ship a student: a Hugging Face folder, ONNX, ONNX Runtime int8 or PyTorch int8 — each one checked.

::

    result = export("runs/demo", "runs/demo/export/onnx-int8", fmt="onnx-int8")
    result.check  # {"max_abs_diff": 0.03, "agreement": 0.996, "examples": 512, "source": "test split …"}

The input is a run folder (holding ``student/``, a ``save_pretrained`` folder with its tokenizer)
or a Hugging Face model folder itself. Formats:

- ``hf``: ``save_pretrained`` + tokenizer; loads with the ``Auto*`` classes.
- ``onnx``: ``model.onnx`` with dynamic batch and sequence axes; inputs ``input_ids``,
  ``attention_mask`` (and ``token_type_ids`` when the model takes them), output ``logits``. Written
  by PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it needs only
  ``onnx``, takes under a second for a small BERT and gives the same logits as the dynamo
  exporter, which would also need ``onnxscript`` (``exporter="dynamo"`` selects it).
- ``onnx-int8``: the ONNX model through ONNX Runtime's ``quantize_dynamic``: 8-bit weights of the
  MatMuls (uint8, one scale per output channel — see :func:`quantize_onnx`), activations quantised
  on the fly; the first block's feed-forward MatMuls (``KEEP_FP32``) and the embedding tables stay
  fp32 unless told otherwise.
- ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``. Saved as the
  quantised state dict (``model-int8.pt``, loadable with ``torch.load(weights_only=True)``: packed
  int8 weights are quantised tensors, which the safe unpickler accepts, but safetensors cannot
  hold) beside ``config.json`` and the tokenizer; :func:`load_torch_int8` rebuilds the module
  structure from the config and loads the exact int8 weights (no re-quantisation drift).

Every export is compared with the PyTorch fp32 model it came from on held-out batches (the run's
test data when it can be found, else seeded random token ids): the largest absolute logit
difference and the share of equal predictions are printed and written to ``export.json`` inside
the export folder. The folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import inspect
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdistill.errors import ConfigError, KdistillError, MissingDependencyError, unknown_choice
from kdistill.files import atomic_folder
from kdistill.held_out import (  # noqa: F401 - re-exported
    DATA_EXTENSIONS,
    HeldOut,
    check_batches_for,
    held_out,
    random_batches,
    text_batches,
)

FORMATS = ("hf", "onnx", "onnx-int8", "torch-int8")
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
ONNX_INSTALL = "pip install 'kdistill[onnx]'   (or: pip install onnx onnxruntime)"
ONNX_FILE = "model.onnx"
TORCH_INT8_FILE = "model-int8.pt"
REPORT_FILE = "export.json"
DEFAULT_OPSET = 17
WEIGHT_TYPES = ("uint8", "int8")
# MatMul nodes left in fp32 by default: the first block's feed-forward pair (BERT / RoBERTa /
# ELECTRA / XLM-R names, then DistilBERT's). On the demo student (3 MiniLM blocks) they hold the
# activation outliers that per-batch activation scales lose: with them in fp32 int8 agrees with
# fp32 PyTorch on 99.4 % of test predictions at batch 32 (98.6 % with every MatMul quantised),
# for 2.63× instead of 2.83× the fp32 PyTorch speed at batch 1.
KEEP_FP32 = ("*layer.0/intermediate/*", "*layer.0/output/dense/*", "*layer.0/ffn/*")

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Runner = Callable[[Mapping[str, torch.Tensor]], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Optional dependencies


def require_onnx(what: str, *, runtime_only: bool = False) -> tuple[Any, Any]:
    """``(onnx, onnxruntime)`` modules, or a :class:`MissingDependencyError` naming the install command."""
    names = ("onnxruntime",) if runtime_only else ("onnx", "onnxruntime")
    modules, missing = {}, []
    for name in names:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed "
            f"(an optional extra of kdistill). Install with: {ONNX_INSTALL}"
        )
    return modules.get("onnx"), modules["onnxruntime"]


def onnx_available() -> bool:
    try:
        require_onnx("ONNX")
    except MissingDependencyError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Where the model is, loading it


def resolve_source(path: str | Path) -> tuple[Path, Path | None]:
    """``(model folder, run folder or None)`` for a run folder (with ``student/``) or a model folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path, None
    if (path / "student" / "config.json").is_file():
        return path / "student", path
    if not path.exists():
        raise ConfigError(f"'{path}' does not exist; give a run folder (holding student/) or a Hugging Face model folder.")
    present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) if path.is_dir() else "a file"
    raise ConfigError(
        f"'{path}' is neither a run folder (no student/config.json) nor a Hugging Face model folder "
        f"(no config.json); it holds: {present or 'nothing'}."
    )


def model_class(config: Any) -> type:
    """The transformers class named in ``config.architectures`` (else ``AutoModel``'s choice)."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel._model_mapping[type(config)]


def load_model(model_dir: str | Path) -> nn.Module:
    """The model saved in ``model_dir`` (offline), of the class its config names, in eval mode."""
    import transformers

    from kdistill.models import _quiet_transformers

    model_dir = Path(model_dir)
    try:
        with _quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
            model, info = model_class(config).from_pretrained(model_dir, local_files_only=True,
                                                              output_loading_info=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load a model from '{model_dir}': {str(exc).splitlines()[0]}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # an export of freshly initialised weights is almost never what was meant
        logger.warning("%s: %d weights are not in the checkpoint and were initialised at random (%s)",
                       model_dir, len(missing), ", ".join(missing[:4]) + (" …" if len(missing) > 4 else ""))
    return model.eval()


def load_tokenizer(model_dir: str | Path) -> Any:
    from kdistill.models import load_tokenizer as _load

    return _load(model_dir)


def model_input_names(model: nn.Module) -> tuple[str, ...]:
    """The inputs of :data:`INPUT_NAMES` the model's ``forward`` takes (``token_type_ids`` only if it does)."""
    parameters = inspect.signature(model.forward).parameters
    names = tuple(name for name in INPUT_NAMES if name in parameters)
    if "input_ids" not in names:
        raise ConfigError(f"{type(model).__name__}.forward takes no input_ids; only token-id models can be exported.")
    return names


def folder_size(path: Path, patterns: Sequence[str] = ("*.safetensors", "*.bin", "*.onnx", "*.onnx.data", "*.pt")) -> int:
    """Bytes of the weight files of a model folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    files = {f for pattern in patterns for f in path.glob(pattern)}
    return sum(f.stat().st_size for f in files)


# ---------------------------------------------------------------------------------------------
# Runners: one batch of inputs -> logits as a numpy array


def _main_output(output: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


def torch_runner(model: nn.Module) -> Runner:
    """Run ``model`` (eval, inference mode) on a batch dict; returns its logits as float32 numpy."""
    model.eval()

    def run(batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return _main_output(model(**batch)).float().numpy()

    return run


class OrtRunner:
    """An ONNX Runtime session as a runner; feeds the inputs the graph declares."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        _, ort = require_onnx("Running an ONNX model", runtime_only=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> np.ndarray:
        feed = {name: batch[name].numpy().astype(np.int64, copy=False) for name in self.input_names}
        return self.session.run(None, feed)[0]


# ---------------------------------------------------------------------------------------------
# The formats


class _ExportWrapper(nn.Module):
    """Positional inputs → the main output tensor (the exporters want tensors in, tensors out)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return _main_output(self.model(**dict(zip(self.input_names, inputs))))


def _example_inputs(model: nn.Module, input_names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    # Batch 2, length 8, the second row padded: the trace must go through the masked path.
    batch = random_batches(model, input_names, count=1, batch_size=2, max_length=8, seed=1)[0]
    batch["attention_mask"][1, 5:] = 0
    return tuple(batch[name] for name in input_names)


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> str:
    """Write ``model`` to ``path`` as ONNX with dynamic batch and sequence axes; returns the output name."""
    require_onnx("ONNX export")
    if exporter not in EXPORTERS:
        raise unknown_choice("--exporter", "exporter", exporter, EXPORTERS)
    input_names = model_input_names(model)
    wrapper = _ExportWrapper(model, input_names).eval()
    example = _example_inputs(model, input_names)
    with torch.inference_mode():
        sample = wrapper(*example)
    output_name = "logits" if hasattr(model(**dict(zip(input_names, example))), "logits") else "last_hidden_state"
    output_axes = {0: "batch"} if sample.dim() == 2 else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about code paths that do not apply
        if exporter == "torchscript":
            torch.onnx.export(
                wrapper, example, str(path), input_names=list(input_names), output_names=[output_name],
                dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in input_names}, output_name: output_axes},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        else:
            try:
                importlib.import_module("onnxscript")
            except ImportError:
                raise MissingDependencyError(
                    "The dynamo ONNX exporter needs onnxscript; run 'pip install onnxscript' or use --exporter torchscript."
                ) from None
            from torch.export import Dim

            batch, sequence = Dim("batch"), Dim("sequence")
            program = torch.onnx.export(
                wrapper, example, input_names=list(input_names), output_names=[output_name],
                dynamic_shapes=tuple({0: batch, 1: sequence} for _ in input_names), opset_version=max(opset, 18),
                dynamo=True, verbose=False,
            )
            program.save(str(path))
    return output_name


def quantize_onnx(source: str | Path, target: str | Path, *, weight_type: str = "uint8", per_channel: bool = True,
                  embeddings: bool = False, keep_fp32: Sequence[str] = KEEP_FP32) -> list[str]:
    """ONNX Runtime dynamic quantisation: 8-bit weights of every MatMul, activations quantised at run time.

    ``weight_type``: ``uint8`` (default) or ``int8``. Activations are always uint8; with int8 weights
    ONNX Runtime uses the u8s8 kernel, which on x86 CPUs with AVX2 but no VNNI can saturate
    (ONNX Runtime's quantisation docs): on the demo student that cost 2 % of predictions (97.8 %
    agreement with fp32) against 99.4 % for uint8 weights, which were still 2.8× faster than
    PyTorch fp32 at batch 1. ``per_channel`` (default): one weight scale per output column instead
    of per tensor (98.6 % vs 98.4 % agreement on the demo student, same speed).

    ``keep_fp32``: glob patterns over MatMul node names (``/model/bert/encoder/layer.0/intermediate/
    dense/MatMul``) left unquantised; returns the names it matched. Activations are quantised with
    one scale per batch, so a layer whose inputs have a few huge values loses the rest of them: in
    BERT-style models that is the first block's feed-forward pair, hence the default. Measured on
    the demo student (test split, batch 32): every MatMul quantised 98.6 % agreement, first block's
    FFN kept 99.4 %, the whole first block kept 99.3 % (and slower).

    ``embeddings``: also store the embedding tables (Gather) in 8 bits. It makes the file ~3× smaller
    and nothing faster (a lookup is no computation); on the demo student it cost agreement (98.8 %
    vs 99.2 % at batch 1), so by default the tables stay fp32.
    """
    onnx, _ = require_onnx("int8 ONNX export")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in WEIGHT_TYPES:
        raise unknown_choice("--weight-type", "weight type", weight_type, WEIGHT_TYPES)
    quant_type = QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8
    kept = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node
            if node.op_type == "MatMul" and any(fnmatch.fnmatchcase(node.name, p) for p in keep_fp32)]
    # The quantiser advises (on the root logger) to pre-process first; its symbolic shape inference
    # fails on transformer graphs with dynamic axes, and measured speed is the same without it.
    advice = _DropMessages("Please consider to run pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=quant_type, per_channel=per_channel,
                             op_types_to_quantize=["MatMul", "Gather"] if embeddings else ["MatMul"],
                             nodes_to_exclude=kept)
    finally:
        logging.getLogger().removeFilter(advice)
    return kept


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quantize_torch(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (torch.ao), one scale
    per output channel (on the demo student: 97.6 % agreement with fp32 against 96.6 % per tensor)."""
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao; still works
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear: per_channel_dynamic_qconfig})


def load_torch_int8(folder: str | Path) -> nn.Module:
    """Load a ``torch-int8`` export: the module structure from ``config.json``, the int8 weights from
    ``model-int8.pt`` with ``torch.load(weights_only=True)`` (no pickled code runs)."""
    import transformers

    from kdistill.models import _quiet_transformers

    folder = Path(folder)
    file = folder / TORCH_INT8_FILE
    if not file.is_file():
        raise ConfigError(f"'{folder}' is not a torch-int8 export: it has no {TORCH_INT8_FILE}.")
    with _quiet_transformers():
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        skeleton = model_class(config)._from_config(config)
    quantized = quantize_torch(skeleton)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(file, weights_only=True, map_location="cpu")
    quantized.load_state_dict(state, strict=True)
    return quantized.eval()


# ---------------------------------------------------------------------------------------------
# The check


def compare(reference: Runner, candidate: Runner, batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Largest absolute logit difference and share of equal argmax predictions over ``batches``.

    Token-level outputs (B, T, C) count only positions where ``attention_mask`` is 1.
    """
    max_diff, agree, total = 0.0, 0, 0
    for batch in batches:
        expected, got = reference(batch), candidate(batch)
        if expected.shape != got.shape:
            raise KdistillError(f"the export returned logits of shape {got.shape}, the PyTorch model {expected.shape}.")
        if expected.ndim == 3 and "attention_mask" in batch:
            keep = batch["attention_mask"].numpy().astype(bool)
            expected, got = expected[keep], got[keep]
        max_diff = max(max_diff, float(np.abs(expected - got).max()) if expected.size else 0.0)
        agree += int((expected.argmax(-1) == got.argmax(-1)).sum())
        total += int(np.prod(expected.shape[:-1]))
    return {"max_abs_diff": max_diff, "agreement": agree / total if total else float("nan"), "compared": total}


def format_check(fmt: str, check: Mapping[str, Any]) -> str:
    return (f"{fmt}: max |logit difference| {check['max_abs_diff']:.2e}, predictions agree "
            f"{check['agreement']:.2%} ({check['compared']} predictions; {check['source']})")


# ---------------------------------------------------------------------------------------------
# The export


@dataclass
class ExportResult:
    """What :func:`export` wrote and how well it agrees with the PyTorch model."""

    format: str
    path: Path
    source: str
    check: dict[str, Any]
    files: dict[str, int] = field(default_factory=dict)
    keep_layers: list[int] | None = None
    exporter: str | None = None
    weight_type: str | None = None
    per_channel: bool | None = None
    quantize_embeddings: bool | None = None
    fp32_nodes: list[str] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def default_output(source: Path, fmt: str) -> Path:
    model_dir, run_dir = resolve_source(source)
    return run_dir / "export" / fmt if run_dir is not None else model_dir.with_name(f"{model_dir.name}-{fmt}")


def _versions() -> dict[str, str]:
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return found


def export(
    source: str | Path,
    out_dir: str | Path | None = None,
    fmt: str = "hf",
    *,
    check_batches: Sequence[Mapping[str, torch.Tensor]] | None = None,
    check_source: str | None = None,
    data: HeldOut | None = None,
    keep_layers: str | Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    weight_type: str = "uint8",
    per_channel: bool = True,
    quantize_embeddings: bool = False,
    keep_fp32: Sequence[str] = KEEP_FP32,
    log: Callable[[str], None] | None = print,
) -> ExportResult:
    """Export the model of ``source`` (a run folder or a model folder) to ``out_dir`` as ``fmt``.

    ``check_batches``: input dicts to compare on; by default held-out batches from ``data`` or the
    run's test data (:func:`held_out`), else random token ids. ``keep_layers``: prune to these
    blocks first (``"0,2,4"``, ``[0, 2, 4]``, ``"every_other"``); the check then compares with the
    pruned PyTorch model. The check is logged and written to ``<out_dir>/export.json``.
    """
    if fmt not in FORMATS:
        raise unknown_choice("--format", "format", fmt, FORMATS)
    if fmt.startswith("onnx"):
        require_onnx(f"--format {fmt}")
    started = time.perf_counter()
    model_dir, run_dir = resolve_source(source)
    out_dir = Path(out_dir) if out_dir is not None else default_output(Path(source), fmt)
    if out_dir.resolve() == model_dir.resolve():
        raise ConfigError(f"the output folder '{out_dir}' is the model folder itself; choose another.")
    model = load_model(model_dir)
    tokenizer = _maybe_tokenizer(model_dir)
    kept = None
    if keep_layers is not None:
        from kdistill.layerdrop import keep_layers as prune
        from kdistill.layerdrop import parse_keep_layers
        from kdistill.models import num_layers

        kept = parse_keep_layers(keep_layers, num_layers(model))
        model = prune(model, kept).eval()
    input_names = model_input_names(model)
    if check_batches is None:
        if data is None and run_dir is not None:
            data = held_out(run_dir)
        check_batches, check_source = check_batches_for(model, tokenizer, data, input_names)
    check_source = check_source or "given batches"
    reference = torch_runner(model)

    with atomic_folder(out_dir) as tmp:
        candidate, used_exporter, fp32_nodes = _write_format(
            model, tmp, fmt, opset=opset, exporter=exporter, weight_type=weight_type, per_channel=per_channel,
            quantize_embeddings=quantize_embeddings, keep_fp32=keep_fp32)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        check = compare(reference, candidate, check_batches)
        check["source"] = check_source
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        result = ExportResult(format=fmt, path=out_dir, source=str(model_dir), check=check, files=files,
                              keep_layers=kept, exporter=used_exporter,
                              weight_type=weight_type if fmt == "onnx-int8" else None,
                              per_channel=per_channel if fmt == "onnx-int8" else None,
                              quantize_embeddings=quantize_embeddings if fmt == "onnx-int8" else None,
                              fp32_nodes=fp32_nodes)
        result.seconds = time.perf_counter() - started
        report = {**result.to_json(), "versions": _versions(), "weights_bytes": folder_size(tmp)}
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        del candidate  # release the ONNX Runtime session before the folder moves
    if log is not None:
        log(format_check(fmt, check))
        log(f"{fmt}: written to {out_dir} ({folder_size(out_dir) / 1e6:.1f} MB of weights)")
    return result


def _write_format(model: nn.Module, tmp: Path, fmt: str, *, opset: int, exporter: str, weight_type: str,
                  per_channel: bool, quantize_embeddings: bool,
                  keep_fp32: Sequence[str]) -> tuple[Runner, str | None, Any]:
    """Write ``model`` into ``tmp`` as ``fmt``; a runner of what was written (to check against
    PyTorch), the ONNX exporter used and the MatMul nodes kept in fp32 (onnx-int8)."""
    from kdistill.models import _quiet_transformers

    used_exporter = None
    fp32_nodes = None
    if fmt == "hf":
        with _quiet_transformers():
            model.save_pretrained(tmp)
        return torch_runner(load_model(tmp)), None, None
    model.config.save_pretrained(tmp)
    if fmt in ("onnx", "onnx-int8"):
        used_exporter = exporter
        if fmt == "onnx":
            export_onnx(model, tmp / ONNX_FILE, opset=opset, exporter=exporter)
        else:
            fp32 = tmp / "model-fp32.onnx"
            export_onnx(model, fp32, opset=opset, exporter=exporter)
            fp32_nodes = quantize_onnx(fp32, tmp / ONNX_FILE, weight_type=weight_type, per_channel=per_channel,
                                       embeddings=quantize_embeddings, keep_fp32=keep_fp32)
            fp32.unlink()
            for extra in tmp.glob("model-fp32.onnx*"):
                extra.unlink()
        return OrtRunner(tmp / ONNX_FILE, threads=torch.get_num_threads()), used_exporter, fp32_nodes
    torch.save(quantize_torch(model).state_dict(), tmp / TORCH_INT8_FILE)  # torch-int8
    return torch_runner(load_torch_int8(tmp)), None, None


def _maybe_tokenizer(model_dir: Path) -> Any:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
    if not any((model_dir / name).is_file() for name in names):
        return None
    return load_tokenizer(model_dir)


# ---------------------------------------------------------------------------------------------
# CLI


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="labelled CSV/TSV/JSONL file to check/measure on (default: the run's test data)")
    parser.add_argument("--text-column", default="text", help="text column of --data (default: text)")
    parser.add_argument("--label-column", default="label", help="label column of --data (default: label)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``kdistill export RUN``."""
    parser.add_argument("source", help="a run folder (holding student/) or a Hugging Face model folder")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="hf, onnx, onnx-int8 or torch-int8 (default: hf)")
    parser.add_argument("--output", "-o", default=None, help="output folder (default: RUN/export/FORMAT)")
    parser.add_argument("--keep-layers", default=None,
                        help="prune to these blocks first: '0,2,4' or 'every_other' (best after LayerDrop training)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--exporter", default="torchscript", choices=EXPORTERS,
                        help="ONNX exporter: torchscript (default, needs only onnx) or dynamo (needs onnxscript)")
    parser.add_argument("--weight-type", default="uint8", choices=WEIGHT_TYPES,
                        help="onnx-int8 weights: uint8 (default; no u8s8 saturation on AVX2-only CPUs) or int8")
    parser.add_argument("--per-tensor", action="store_true",
                        help="onnx-int8: one weight scale per tensor instead of per output column")
    parser.add_argument("--keep-fp32", action="append", default=None, metavar="PATTERN",
                        help="onnx-int8: MatMul nodes left in fp32, glob over node names (repeatable; default: "
                             f"the first block's feed-forward, {', '.join(KEEP_FP32)}); --keep-fp32 none quantises all")
    parser.add_argument("--quantize-embeddings", action="store_true",
                        help="onnx-int8: store the embedding tables in 8 bits too (~3x smaller file, not faster)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="exit with status 1 when fewer predictions agree with PyTorch (default: 0.99)")
    add_data_arguments(parser)


def export_main(args: argparse.Namespace) -> int:
    """``kdistill export``: returns 0, or 1 when the check falls below ``--min-agreement``."""
    model_dir, run_dir = resolve_source(args.source)
    data = None
    if args.data is not None:
        from kdistill.run_folder import model_label_names

        data = held_out(None, data=args.data, text_column=args.text_column, label_column=args.label_column,
                        max_length=args.max_length, label_names=model_label_names(model_dir))
    elif run_dir is not None:
        data = held_out(run_dir, max_length=args.max_length)
    result = export(args.source, args.output, args.format, data=data, keep_layers=args.keep_layers,
                    opset=args.opset, exporter=args.exporter, weight_type=args.weight_type,
                    per_channel=not args.per_tensor, quantize_embeddings=args.quantize_embeddings,
                    keep_fp32=_keep_fp32(args.keep_fp32))
    agreement = result.check["agreement"]
    if args.min_agreement is not None and not agreement >= args.min_agreement:
        print(f"{args.format}: only {agreement:.2%} of predictions agree with the PyTorch model "
              f"(--min-agreement {args.min_agreement:.2%}); the export is kept in {result.path} for inspection.")
        return 1
    return 0


def _keep_fp32(values: Sequence[str] | None) -> tuple[str, ...]:
    if values is None:
        return KEEP_FP32
    return tuple(v for v in values if v.lower() != "none")


# The CLI's plugin protocol (``kdistill.cli.PLUGIN_VERBS``): ``add_arguments`` and ``main``.
add_arguments = add_export_arguments
main = export_main

__all__ = [
    "FORMATS",
    "ExportResult",
    "HeldOut",
    "MissingDependencyError",
    "OrtRunner",
    "add_export_arguments",
    "compare",
    "export",
    "export_main",
    "export_onnx",
    "held_out",
    "load_model",
    "load_torch_int8",
    "onnx_available",
    "quantize_onnx",
    "quantize_torch",
    "require_onnx",
    "torch_runner",
]
