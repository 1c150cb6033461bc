"""One writer per output folder: an advisory lock taken before the first write.

Every command that writes a folder holds :func:`output_lock` on it until it ends. The lock
is an exclusive ``fcntl.flock`` on a small file beside the folder, ``.NAME.lock`` in the
folder's parent (beside it, not inside: several commands build their folder under a
temporary name and move it into place). The file records who holds it (pid, host, start
time), so a second writer is refused with
``error: --out runs/x is in use by pid 4242 on node7 since 2026-12-06 10:41:07 UTC``.

The operating system releases the lock when its process ends, however it ends: after a
``kill -9`` the file stays behind, but it is no longer locked and the next run takes it
over (and rewrites it). A holder removes its file when it finishes. The output-folder
rule (:func:`tokenweight.infra.files.check_output_dir`) ignores these files.

``flock`` locks are reliable on local filesystems. On network filesystems they depend on
the server and client (NFS emulates them with its own byte-range locks, some FUSE and
object-store mounts ignore them); there the lock may not stop a writer on another machine.

Multi-process launches: :func:`shared_output_lock` has rank 0 take the lock and share the
outcome with every rank (over the ``torch.distributed`` process group) before any writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "LOCK_PATTERN",
    "FolderLock",
    "lock_file",
    "output_lock",
    "shared_output_lock",
    "unwritable_error",
]

LOCK_PATTERN = re.compile(r"^\..+\.lock$")
"""Names of lock files (``.NAME.lock``); :func:`~tokenweight.infra.files.check_output_dir`
ignores them."""


def lock_file(out: str | os.PathLike[str]) -> Path:
    """The lock file of output folder ``out``: ``.NAME.lock`` beside it."""
    path = Path(os.path.abspath(out))
    return path.parent / f".{path.name}.lock"


def unwritable_error(option: str, out: Any, exc: OSError) -> TokenWeightError:
    """The error for an output location that cannot be written."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a part of the path is a file, not a folder"
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
    return TokenWeightError(
        f"{option} {out} cannot be written: {reason}{where}; choose a folder you can write to "
        "(nothing was changed)"
    )


class FolderLock:
    """A held lock on one output folder; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int, created: list[Path]) -> None:
        self.path = path
        self._fd: int | None = fd
        self._created = created  # parent folders made to hold the lock file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and unlock; then remove the
        parent folders made for it, if they stayed empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(self.path)
        finally:
            os.close(fd)  # closing the descriptor releases the flock
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    """Who holds the lock, from its file: ``pid N on HOST since TIME``."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file is being written)"


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns those created, outermost first."""
    missing = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def acquire(out: str | os.PathLike[str], option: str = "--out") -> FolderLock:
    """Take the lock of output folder ``out`` now, or raise :class:`TokenWeightError`
    naming ``option`` and the holder (an output that cannot be written is an error too)."""
    path = lock_file(out)
    created: list[Path] = []
    try:
        created = _make_parents(path.parent)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TokenWeightError(
                    f"{option} {out} is in use by {_holder(path)} (lock file {path}); wait "
                    f"for that run to finish, or choose another {option}"
                ) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "output": str(os.path.abspath(out)),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
    except TokenWeightError:
        _remove_created(created)
        raise
    except OSError as exc:
        _remove_created(created)
        raise unwritable_error(option, out, exc) from None
    lock = FolderLock(path, fd, created)
    try:
        _check_writable(Path(out))
    except OSError as exc:
        lock.release()
        raise unwritable_error(option, out, exc) from None
    return lock


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_writable(out: Path) -> None:
    """An existing output folder must accept a new file (permission bits do not stop
    root; an immutable folder or a read-only mount does)."""
    if not out.is_dir() or out.is_symlink():
        return
    probe = out / f".tokenweight-write-test-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str], option: str = "--out") -> Iterator[FolderLock]:
    """Hold the lock of output folder ``out`` for the ``with`` block (see :func:`acquire`)."""
    lock = acquire(out, option)
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def shared_output_lock(
    out: str | os.PathLike[str], option: str = "--out", *, start_group: bool = False
) -> Iterator[FolderLock | None]:
    """:func:`output_lock` for every process of a launch: with an initialized
    ``torch.distributed`` process group of several ranks, rank 0 takes the lock and sends
    the outcome to all ranks, which all raise the same error when it failed, and rank 0
    keeps it until every rank has left the block; alone, the process takes it itself.

    ``start_group``: under a launcher (``WORLD_SIZE`` > 1, ``MASTER_ADDR`` set) with no
    process group yet, start a CPU (gloo) one for this and close it after.
    Yields the lock on the process that holds it, else ``None``."""
    started = start_group and _start_gloo_group()
    try:
        if _process_group_size() <= 1:
            with output_lock(out, option) as lock:
                yield lock
            return
        with _rank_zero_lock(out, option) as lock:
            yield lock
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


@contextlib.contextmanager
def _rank_zero_lock(out: str | os.PathLike[str], option: str) -> Iterator[FolderLock | None]:
    import torch.distributed as dist

    lock: FolderLock | None = None
    message = [""]
    if dist.get_rank() == 0:
        try:
            lock = acquire(out, option)
        except TokenWeightError as exc:
            message = [str(exc)]
    dist.broadcast_object_list(message, src=0)
    if message[0]:
        raise TokenWeightError(message[0])
    try:
        yield lock
        dist.barrier()  # rank 0 keeps the lock until every rank is done writing
    finally:
        if lock is not None:
            lock.release()


def _process_group_size() -> int:
    """World size of the initialized default process group (1 without one)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 1
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def _start_gloo_group() -> bool:
    """Start a gloo process group from the launcher's environment when there is a
    multi-process launch and no group yet; returns whether one was started."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return False
    # processes of one launch finish at different times: wait long at the final barrier
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return True
