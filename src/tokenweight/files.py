"""Atomic file and folder writes, and content hashes.

Nothing this package writes is ever visible half-written: a file or folder is built under
a temporary name in the same directory (same filesystem) and moved into place with
:func:`os.replace` / :func:`os.rename`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_text",
    "remove_path",
    "sha256_bytes",
    "sha256_file",
    "temp_sibling",
]

_CHUNK = 1 << 20


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A fresh hidden name next to ``path``: ``.NAME.TAG-PID-RANDOM`` (same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_path(path: str | Path) -> None:
    """Remove a file, link or folder tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync, then rename."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as deterministic JSON, atomically (same object -> same bytes)."""
    return atomic_write_text(path, json_text(obj))


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary sibling name and move it to ``final`` on success.

    Yields the temporary folder. On an exception it is removed and ``final`` is untouched.
    With ``overwrite`` an existing ``final`` is replaced (moved aside, then deleted);
    without it an existing ``final`` raises :class:`FileExistsError` at the end.
    """
    final = Path(final)
    tmp = temp_sibling(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise FileExistsError(str(final))
            old = temp_sibling(final, "old")
            os.rename(final, old)
            os.rename(tmp, final)
            remove_path(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
