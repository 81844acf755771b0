"""Files and folders written whole or not at all: a temporary sibling, then one rename.

    atomic_write_text(path, text)          # a file: temporary file, fsync, rename
    with atomic_folder(target) as tmp:     # a folder: fill ``tmp``; on success it replaces ``target``
        model.save_pretrained(tmp)

A crash leaves the old file or folder as it was, plus at most a temporary sibling named
``.<name>.tmp-<pid>`` (a folder being replaced briefly sits at ``.<name>.old-<pid>``), which the
next write of the same target removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``target``; when the block ends without an error it
    replaces ``target`` (whose old contents are removed); on an error it is removed instead."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def cache_root() -> Path:
    """``$KDISTILL_CACHE`` or ``~/.cache/kdistill``: where fine-tuned teachers and their outputs live."""
    return Path(os.environ.get("KDISTILL_CACHE") or Path.home() / ".cache" / "kdistill")


def fingerprint(*parts: object) -> str:
    """A short content key: files by their bytes, everything else by its JSON form."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_file():
            with open(part, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


__all__ = ["atomic_folder", "atomic_write_text", "cache_root", "fingerprint"]
