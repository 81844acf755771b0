"""What a model folder says without loading weights: its config's sizes and its tokenizer files.

    facts = read_model_folder("./my-bert")   # config.json through AutoConfig; no weights load
    facts.num_layers, facts.hidden_size, facts.vocab_size
    tokenizer_files("./my-bert")             # ['vocab.txt']

:func:`model_problems` is what ``kdistill validate`` checks with these before any weight loads:
``from_teacher`` layers and sizes against the teacher, layer refs and the layer map against both
layer counts, that the text's tokenizer exists and fits the teacher's vocabulary, and that the
student reads the tokens it was trained on. A model built by a ``factory`` is skipped: nothing
can be read of it without building it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdistill.errors import ConfigError, RefError
from kdistill.refs import LAYER_KINDS, Ref, parse_ref

if TYPE_CHECKING:
    from kdistill.config import DataSpec, MatchSpec, ModelSpec

# Files that hold a vocabulary (tokenizer_config.json alone does not: AutoTokenizer then builds a
# tokenizer of the special tokens only, and every word becomes [UNK]).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


@dataclass(frozen=True)
class ModelFacts:
    """The sizes a Hugging Face folder's config.json declares (None where it declares none)."""

    folder: str
    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    vocab_size: int | None


def read_model_folder(folder: str | Path) -> ModelFacts | None:
    """The folder's config through ``AutoConfig`` (defaults filled in; no weights load).

    None when the config cannot be read (no folder, unknown architecture …): the loader says why.
    """
    from transformers import AutoConfig

    from kdistill.models import _quiet_transformers, num_layers_of_config

    if not (Path(folder) / "config.json").is_file():
        return None
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - validate must not stop here; loading the model reports the cause
        return None

    def number(name: str) -> int | None:
        value = getattr(config, name, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return ModelFacts(str(folder), num_layers_of_config(config), number("hidden_size"), number("num_attention_heads"),
                      number("num_key_value_heads"), number("vocab_size"))


def folder_contents(folder: Path, limit: int = 12) -> str:
    """The first ``limit`` names in ``folder``, sorted and comma-separated (``"nothing"`` when empty)."""
    return ", ".join(sorted(p.name for p in folder.iterdir())[:limit]) or "nothing"


def tokenizer_files(folder: str | Path) -> list[str]:
    """The vocabulary files in ``folder`` (see ``TOKENIZER_FILES``)."""
    return [name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]


def missing_tokenizer(folder: str | Path, where: str, advice: str = "") -> str | None:
    """A sentence saying ``folder`` has no tokenizer files, or None when it has some (or is no folder)."""
    folder = Path(folder)
    if not folder.is_dir() or tokenizer_files(folder):
        return None
    return (f"{where}: the folder '{folder}' has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
            f"it holds: {folder_contents(folder)}.{' ' + advice if advice else ''}")


def vocabulary_difference(teacher: dict[str, int], student: dict[str, int], *, examples: int = 3) -> str | None:
    """How two vocabularies (token -> id) differ, in words; None when they are the same."""
    if teacher == student:
        return None
    teacher_words = {index: word for word, index in teacher.items()}
    student_words = {index: word for word, index in student.items()}
    differing = [i for i in sorted(set(teacher_words) | set(student_words))
                 if teacher_words.get(i) != student_words.get(i)]

    def word(words: dict[int, str], index: int) -> str:
        return repr(words[index]) if index in words else "none"

    shown = "; ".join(f"id {i}: teacher {word(teacher_words, i)} vs student {word(student_words, i)}"
                      for i in differing[:examples])
    more = f"; … {len(differing) - examples:,} more" if len(differing) > examples else ""
    return (f"the teacher's has {len(teacher):,} tokens, the student's {len(student):,}, and {len(differing):,} ids "
            f"differ ({shown}{more})")


def vocab_too_small(role: str, model_vocab: int, what: str, vocab: dict[str, int], tokenizer: str) -> str | None:
    """A sentence when a model's embedding table (``model_vocab`` rows) cannot look up every id of
    the tokenizer ``vocab`` (token -> id) that feeds it; ``role`` is "teacher" or "student"."""
    ids = max(vocab.values(), default=-1) + 1
    if ids <= model_vocab:
        return None
    key = "data.tokenizer" if role == "teacher" else "data.student_tokenizer"
    return (f"{role}: its vocabulary has {model_vocab:,} tokens ({what}) but the tokenizer that feeds it "
            f"('{tokenizer}') gives ids up to {ids - 1:,}, which its embeddings cannot look up. Point {key} at "
            f"the folder of the tokenizer the {role} was trained with.")


def teacher_tokenizer_reason(student: ModelSpec | None, method: str | None) -> str:
    """Why a (validated) student without ``data.student_tokenizer`` reads the teacher's tokens."""
    if student is None:
        return f"method '{method}' builds the student from the teacher"
    if student.from_teacher is not None:
        return "the student is built from the teacher"
    if student.path is None:
        return "the student comes from a factory; kdistill cannot see its tokenizer"
    if tokenizer_files(student.path):
        return "the student's folder holds the same vocabulary"
    return "the student's folder has no tokenizer files of its own"


# ---------------------------------------------------------------------------------------------
# The checks of `kdistill validate`


def model_problems(teacher: ModelSpec, student: ModelSpec | None, data: DataSpec, matches: list[MatchSpec],
                   layer_map: Any) -> list[str]:
    """Every problem the model folders show before weights load (paths already resolved and checked)."""
    from kdistill.config import IMAGE_DATA

    teacher_facts = read_model_folder(teacher.path) if teacher.path is not None else None
    student_facts = read_model_folder(student.path) if student is not None and student.path is not None else None
    problems = []
    if student is not None and student.from_teacher is not None and teacher_facts is not None:
        problems += _from_teacher_problems(student.from_teacher, teacher_facts, "student.from_teacher")
    if data.builtin not in IMAGE_DATA:
        problems += _tokenizer_problems(teacher, student, data, teacher_facts, student_facts)
    teacher_layers = teacher_facts.num_layers if teacher_facts is not None else None
    problems += _ref_problems(matches, layer_map, teacher_layers, _student_layers(student, student_facts))
    return problems


def _student_layers(student: ModelSpec | None, facts: ModelFacts | None) -> int | None:
    if student is None or student.factory is not None:
        return None  # built by the method or a factory: its size is known once built
    if student.from_teacher is not None:
        spec = student.from_teacher
        return len(spec.layers) if spec.layers is not None else spec.num_layers
    return facts.num_layers if facts is not None else None


def _from_teacher_problems(spec: Any, teacher: ModelFacts, where: str) -> list[str]:
    """``layers`` within the teacher's count; with ``num_layers``, sizes whose heads divide the width."""
    count = teacher.num_layers
    if spec.layers is not None:
        if count is None:
            return []
        return [f"{where}.layers[{i}]: {layer} is out of range: the teacher '{teacher.folder}' has {count} layers "
                f"(0–{count - 1})." for i, layer in enumerate(spec.layers) if layer >= count]
    width = spec.hidden_size or teacher.hidden_size
    heads = spec.num_attention_heads or teacher.num_heads
    if width is None or heads is None:
        return []
    if width % heads:
        sources = [f"hidden_size={width}" + ("" if spec.hidden_size else " (the teacher's)"),
                   f"num_attention_heads={heads}" + ("" if spec.num_attention_heads else " (the teacher's)")]
        key = "hidden_size" if spec.hidden_size else "num_attention_heads"
        return [f"{where}.{key}: {' is not divisible by '.join(sources)}; pick sizes that divide "
                f"(each head gets hidden_size / num_attention_heads dimensions)."]
    kv_heads = teacher.num_kv_heads
    if spec.num_attention_heads and kv_heads and kv_heads != teacher.num_heads and heads % kv_heads:
        return [f"{where}.num_attention_heads: {heads} is not a multiple of the teacher's num_key_value_heads="
                f"{kv_heads}."]
    return []


def _tokenizer_problems(teacher: ModelSpec, student: ModelSpec | None, data: DataSpec,
                        teacher_facts: ModelFacts | None, student_facts: ModelFacts | None) -> list[str]:
    """The text's tokenizer exists and fits the teacher; the student reads tokens it knows."""
    source = data.tokenizer or teacher.path
    if source is None:
        return []  # a factory teacher without data.tokenizer: reported by the config check
    if data.tokenizer is None:
        missing = missing_tokenizer(source, "teacher.path", "Point data.tokenizer at the folder of the tokenizer "
                                                            "the teacher was trained with.")
        if missing:
            return [missing]
    vocabularies = _Vocabularies()
    feeding = vocabularies.get(source, "data.tokenizer" if data.tokenizer else "teacher.path")
    if feeding is None:
        return vocabularies.problems
    found: list[str | None] = []
    if teacher_facts is not None and teacher_facts.vocab_size is not None:
        found.append(vocab_too_small("teacher", teacher_facts.vocab_size,
                                     f"vocab_size in '{teacher_facts.folder}/config.json'", feeding, source))
    student_vocab, what = _student_vocab(student, teacher_facts, student_facts)
    if data.student_tokenizer is not None:
        source = data.student_tokenizer
        feeding = vocabularies.get(source, "data.student_tokenizer")
    elif student is not None and student.path is not None and tokenizer_files(student.path):
        own = vocabularies.get(student.path, "student.path")
        difference = vocabulary_difference(feeding, own) if own is not None else None
        if difference:
            found.append(
                f"student.path: the student's folder '{student.path}' holds its own tokenizer, which differs from the "
                f"teacher's ('{source}'): {difference}. Without data.student_tokenizer the student would read the "
                f"teacher's token ids. Set data.student_tokenizer: {student.path} (each model then reads its own "
                "tokens; for language models with the logits matched by loss uld, the one token loss that needs no "
                "common vocabulary), or use a student trained with the teacher's tokenizer.")
            feeding = None
    shares_teacher_vocab = data.student_tokenizer is None and (student is None or student.from_teacher is not None)
    if feeding is not None and student_vocab is not None and not shares_teacher_vocab:
        found.append(vocab_too_small("student", student_vocab, what, feeding, source))
    return vocabularies.problems + [problem for problem in found if problem]


def _student_vocab(student: ModelSpec | None, teacher_facts: ModelFacts | None,
                   student_facts: ModelFacts | None) -> tuple[int | None, str]:
    """The student's vocabulary size and where it comes from (None for a factory or an unreadable folder)."""
    if student is not None and student.path is not None:
        facts = student_facts
        what = f"vocab_size in '{student.path}/config.json'"
    elif student is None or student.from_teacher is not None:
        facts = teacher_facts
        what = "the teacher's vocab_size: the student is built from the teacher"
    else:
        return None, ""
    return (facts.vocab_size if facts is not None else None), what


class _Vocabularies:
    """Tokenizers loaded once each (cheap: no weights); load errors collected as problems."""

    def __init__(self) -> None:
        self.loaded: dict[str, dict[str, int] | None] = {}
        self.problems: list[str] = []

    def get(self, folder: str, where: str) -> dict[str, int] | None:
        from kdistill.models import load_tokenizer

        if folder not in self.loaded:
            self.loaded[folder] = None
            if Path(folder).is_dir() and tokenizer_files(folder):  # else the config check has said so
                try:
                    self.loaded[folder] = load_tokenizer(folder, where=where).get_vocab()
                except ConfigError as exc:
                    self.problems.append(str(exc))
        return self.loaded[folder]


def _ref_problems(matches: list[MatchSpec], layer_map: Any, teacher_layers: int | None,
                  student_layers: int | None) -> list[str]:
    """Layer refs and the layer map against the layer counts known before weights load."""
    problems = []
    uses_map = False
    for i, spec in enumerate(matches):
        sides = (("teacher", spec.teacher, teacher_layers),
                 ("student", spec.student if spec.student is not None else spec.teacher, student_layers))
        for role, text, count in sides:
            if count is None or not isinstance(text, str):
                continue
            if text.endswith(".*"):
                uses_map = True
                continue
            where = f"matches[{i}].{role}"
            try:
                for ref in parse_ref(text, where=where):
                    if ref.kind in LAYER_KINDS:
                        ref.resolved(count, where=where)
            except RefError as exc:
                problems.append(str(exc))
    if uses_map and teacher_layers is not None and student_layers is not None:
        problems += _layer_map_problems(layer_map, teacher_layers, student_layers)
    return problems


def _layer_map_problems(value: Any, teacher_layers: int, student_layers: int) -> list[str]:
    from kdistill.matches import last_k_layer_map, skip_layer_map, uniform_layer_map

    if isinstance(value, str):
        builder = {"uniform": uniform_layer_map, "last": last_k_layer_map, "skip": skip_layer_map}.get(value)
        try:
            if builder is not None:
                builder(teacher_layers, student_layers)
        except ConfigError as exc:
            return [f"layer_map: '{value}' with a {teacher_layers}-layer teacher and a {student_layers}-layer "
                    f"student: {str(exc).removeprefix('layer map: ')}"]
        return []
    problems = []
    for i, pair in enumerate(value if isinstance(value, list) else []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair)):
            continue  # the config check reports the form
        for role, index, count in (("teacher", pair[0], teacher_layers), ("student", pair[1], student_layers)):
            try:
                Ref("hidden", index).resolved(count, where=f"layer_map[{i}] ({role})")
            except RefError as exc:
                problems.append(str(exc))
    return problems


__all__ = [
    "ModelFacts", "TOKENIZER_FILES", "folder_contents", "missing_tokenizer", "model_problems", "read_model_folder",
    "teacher_tokenizer_reason", "tokenizer_files", "vocab_too_small", "vocabulary_difference",
]
