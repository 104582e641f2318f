"""Replacing a file (or a directory) so that a crash leaves either the old or the new one.

One helper for every file the project must never leave half-written — run records, the
privacy accountant's state, checkpoints, model packages, keys, manifests. The new content goes
to a temporary file beside the target (same directory, so the rename cannot cross file
systems), is flushed and ``fsync``-ed, renamed over the target with :func:`os.replace` (atomic
on POSIX), and then the directory is ``fsync``-ed so the rename itself survives a power cut.

Modes: ``mode=None`` gives what ``open(path, "w")`` gives (0o666 less the umask); an explicit
``mode`` is set on the temporary file when it is created — a private key (0o600) is never
readable by others, not even for a moment — and is the target's mode afterwards.

Only the standard library is used, so every layer (``configs`` up to ``server``) may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_directory", "fsync_directory", "write_atomic", "write_json_atomic"]


def fsync_directory(directory: str | Path) -> None:
    """``fsync`` a directory so that renames and new entries in it are durable (a no-op where the
    platform has no directory file descriptors)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _create(tmp: Path, mode: int | None) -> int:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    if mode is not None:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
    return fd


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path to write the new content of ``path`` to, for writers that take a file
    name (pyarrow, pandas); when the block ends without an exception it is fsynced and renamed
    over ``path``. On an exception the temporary file is removed and ``path`` is left as it was.

    The temporary file exists (empty, with ``mode``) when the block starts.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.close(_create(tmp, mode))
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)  # a writer that recreated the file may have changed its mode
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically and durably."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb") as fh:  # created by atomic_path with ``mode``: never readable by others if 0o600
            fh.write(payload)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None, allow_nan: bool = True,
                      mode: int | None = None) -> Path:
    """``json.dumps(obj, …)`` plus a final newline, written with :func:`write_atomic`."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default, allow_nan=allow_nan)
    return write_atomic(path, text + "\n", mode=mode)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``path`` to fill; when the block ends without an
    exception every file in it is fsynced and it replaces ``path`` (an existing ``path`` is
    removed first, so between the two steps neither exists: readers treat a missing directory
    as "not written", never a half-written one). On an exception the temporary directory is
    removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _fsync_file(f)
        fsync_directory(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)
