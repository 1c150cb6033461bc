"""Atomic file and folder writes, and content hashes.

Nothing this package writes is ever visible half-written: a file or folder is built under
a temporary name in the same directory (same filesystem) and moved into place with
:func:`os.replace` / :func:`os.rename`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.folder_lock import LOCK_PATTERN

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "check_output_place",
    "clean_stale_siblings",
    "file_in_folder",
    "json_text",
    "read_json",
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


_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave it
    return True


def clean_stale_siblings(
    path: str | Path, tags: Sequence[str] = ("tmp", "work", "old")
) -> list[Path]:
    """Remove the temporary siblings of ``path`` (:func:`temp_sibling` names with one of
    ``tags``) left by a process that no longer runs, e.g. a killed run; returns them."""
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = _SIBLING.match(entry.name)
        if m and m["name"] == path.name and m["tag"] in tags and not _pid_alive(int(m["pid"])):
            remove_path(entry)
            removed.append(entry)
    return removed


def file_in_folder(folder: str | Path, name: Any, record: str | Path) -> Path:
    """``folder / name`` for a file name that ``record`` (a manifest in ``folder``) lists.

    A record may only name files of its own folder: a name with a path separator, ``..``,
    or an absolute path raises :class:`TokenWeightError` (nothing outside is read)."""
    text = str(name) if isinstance(name, str) else ""
    if not text or text in (".", "..") or Path(text).is_absolute() or Path(text).name != text:
        raise TokenWeightError(
            f"{record} names {name!r}, which is not a file of {folder} (a manifest may only "
            "name files in its own folder); the folder was changed by hand or comes from "
            "elsewhere: make it again with the command that wrote it"
        )
    return Path(folder) / text


def read_json(path: str | Path, fix: str) -> Any:
    """Parse a JSON file this package wrote; a truncated or corrupt one raises
    :class:`TokenWeightError` naming the file and ``fix`` (what the user should do)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenWeightError(f"{path} is corrupt or truncated ({exc}); {fix}") from None
    except OSError as exc:
        raise TokenWeightError(f"cannot read {path}: {exc.strerror or exc}; {fix}") from None


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output_dir(
    out: str | Path,
    what: str,
    *,
    markers: Sequence[str],
    known: Sequence[str] | None = None,
    inputs: Sequence[str | Path] = (),
    option: str = "--out",
) -> bool:
    """The one rule for whether a command may write into, resume or replace ``out``.

    ``out`` may be used when it does not exist, is an empty folder, or is recognisably an
    earlier output of the same command: it holds one of the ``markers`` (its manifest or
    run record) and, when ``known`` glob patterns are given, nothing else (hidden
    temporary files of an interrupted write and the tool's lock files aside). It may never be the current directory
    or one of its parents, and never equal, contain or lie inside one of ``inputs``.
    ``what`` names the command's output (``"tokenweight prepare output"``).

    Returns whether ``out`` holds such an earlier output. Raises :class:`TokenWeightError`
    saying what is in the way otherwise.
    """
    out = Path(out)
    check_output_place(out, inputs, option)
    if not out.exists():
        return False
    # temporary siblings of an interrupted (or concurrent) atomic write and the lock files
    # of output folders inside (tokenweight.infra.folder_lock) do not count
    entries = sorted(
        p.name for p in out.iterdir() if not (_SIBLING.match(p.name) or LOCK_PATTERN.match(p.name))
    )
    if not entries:
        return False
    _check_earlier_output(out, entries, what, markers, known, option)
    return True


def check_output_place(out: str | Path, inputs: Sequence[str | Path], option: str) -> None:
    """Refuse an ``out`` that is the current directory or above it, overlaps an input, or
    is not a folder (``option``: how the user named it)."""
    out = Path(out)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise TokenWeightError(
            f"{option} {out} is the current directory or one of its parents; "
            "choose a new folder for the output"
        )
    for source in inputs:
        other = Path(source).resolve()
        if Path(source).exists() and _overlaps(resolved, other):
            raise TokenWeightError(
                f"{option} {out} overlaps the input {source} (the same path, inside it or "
                "around it); choose a folder apart from the inputs"
            )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TokenWeightError(
            f"{option} {out} exists and is not a folder; choose another {option}"
        )


def _check_earlier_output(
    out: Path,
    entries: Sequence[str],
    what: str,
    markers: Sequence[str],
    known: Sequence[str] | None,
    option: str,
) -> None:
    """Refuse a non-empty ``out`` (holding ``entries``) unless it is recognisably an
    earlier output: one of ``markers`` and, with ``known`` patterns, nothing else."""
    if not any(m in entries for m in markers):
        raise TokenWeightError(
            f"{option} {out} holds {_listing(entries)}, which is not a {what}; choose "
            "another folder (nothing was changed)"
        )
    if known is not None:
        foreign = [
            e
            for e in entries
            if not e.startswith(".") and not any(fnmatch.fnmatch(e, k) for k in known)
        ]
        if foreign:
            raise TokenWeightError(
                f"{option} {out} is a {what} but also holds {_listing(foreign)}, which "
                "tokenweight did not write; move those away or choose another folder "
                "(nothing was changed)"
            )


def _listing(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown}{more})"


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
