"""Atomic files: readers see the old file or the whole new one, never half of it.

Every file the project writes (database files, exports, encodings, checkpoints) goes through
here: it is written under a temporary name in the destination folder, flushed to disk, then
renamed onto its final name. On an error the temporary file is removed and the destination is
left as it was.

    write_atomic(path, data)                 # bytes
    with open_atomic(path) as f: ...         # a file object (zip writers, streams)
    with atomic_path(path) as tmp: image.save(tmp, format="PNG")   # writers that want a path

A full disk (or quota) is a `DiskFull` error, one plain sentence for the user, wherever it
happens in a write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_TMP_MARK = ".tmp-"
DISK_FULL_MESSAGE = "the disk is full: free space or delete versions"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(ValueError):
    """The disk (or the user's quota) is full; what was being written was not written.

    A ValueError like every refusal the UI shows as a sentence; the OS or SQLite error is its
    `__cause__`."""

    def __init__(self, message: str = DISK_FULL_MESSAGE):
        super().__init__(message)


def is_disk_full(err: BaseException) -> bool:
    """True for the OS errors of a full disk or quota (ENOSPC, EDQUOT) and for DiskFull."""
    return isinstance(err, DiskFull) or (isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS)


@contextlib.contextmanager
def disk_full_as_error() -> Iterator[None]:
    """Turn the OS errors of a full disk raised inside into DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull() from err
        raise


def temp_name_for(path: Path) -> Path:
    """A fresh temporary name beside `path` (hidden, recognisable by `is_temp_name`)."""
    return path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(6)}")


def is_temp_name(name: str) -> bool:
    """True for the temporary names used here (leftovers of a crash, safe to delete)."""
    return name.startswith(".") and _TMP_MARK in name


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable; not possible (nor needed) on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    The temporary file is created empty first (exclusively, with the usual 0o666-less-umask
    permissions), so a writer that opens it by name gets a file nobody else can be using.
    """
    path = Path(path)
    with disk_full_as_error():
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = temp_name_for(path)
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(path.parent)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open `path` for writing (binary) through `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with open_atomic(path) as f:
        f.write(data)
    return Path(path)


def folder_bytes(folder: str | os.PathLike, *, own_only: bool = False) -> int:
    """Bytes of the files under `folder` (0 when it does not exist); links are not followed.

    With `own_only`, files hard-linked from elsewhere (shared, like the example cast in every
    workspace) are not counted.
    """
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walked
                continue
            if not (own_only and stat.st_nlink > 1):
                total += stat.st_size
    return total


def move_into_place(source: Path, path: str | os.PathLike) -> Path:
    """Rename a complete file written by this module (e.g. a staged import) onto `path`, durably.

    Both must be on one file system (a staged file lives in the data folder)."""
    path = Path(path)
    with disk_full_as_error():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, path)
        fsync_dir(path.parent)
    return path


def reserve_space(path: Path, size: int) -> int:
    """Make `path` a file holding `size` bytes of disk (allocated, not sparse); returns its size.

    A reserve that a full disk can give back to the writes that must get through (deletes):
    what cannot be allocated is left out, never half-written elsewhere."""
    current = path.stat().st_size if path.exists() else 0
    if current >= size:
        return current
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            os.posix_fallocate(fd, current, size - current)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a full disk, among others
                os.ftruncate(fd, current)
                return current
            os.lseek(fd, current, os.SEEK_SET)  # a file system without fallocate: write zeros
            chunk = bytes(1 << 20)
            try:
                for start in range(current, size, len(chunk)):
                    os.write(fd, chunk[: min(len(chunk), size - start)])
            except OSError:
                os.ftruncate(fd, current)
                return current
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def shrink_reserve(path: Path, step: int) -> int:
    """Give back up to `step` bytes of a reserve made by `reserve_space`; returns the bytes freed."""
    try:
        current = path.stat().st_size
    except FileNotFoundError:
        return 0
    if current == 0:
        return 0
    keep = max(0, current - step)
    os.truncate(path, keep)
    return current - keep
