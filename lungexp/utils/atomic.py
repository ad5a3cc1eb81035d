"""Writing files and folders so that a reader never sees them half-written.

Everything is first written under a temporary name in the target's own folder (so the final
``os.replace`` is a rename on one filesystem, atomic on POSIX) and renamed into place only when
complete; an interrupted write leaves the old target, if any, untouched and its temporaries gone.
Temporary names are hidden and end in :data:`TEMPORARY_SUFFIX`, so scan indexing skips them.

:func:`check_output_file` refuses, before any work is spent, an output file that could not be written or
would replace one of the command's inputs. A full disk is named, never a crash: :func:`allocate_npy` reserves a file's blocks before it is
memory-mapped (a write into a map that the file system cannot back is a SIGBUS, which kills the
process without a word), and :func:`disk_full_named` turns "no space left" into a
:class:`DiskFullError` that names the file and its file system's free space. :func:`exclusive_lock`
lets one process at a time build something that several may start at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from lungexp.utils.errors import ConfigError, LungexpError

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # disk full, quota exceeded


class DiskFullError(LungexpError):
    """A file that does not fit on its file system; the message names it, the space needed and what is free."""


def _temporary_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s content to; it replaces ``target`` when the block ends.

    If the block raises, the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def staging_folder(target: str | Path) -> Iterator[Path]:
    """Yield a new empty hidden folder beside ``target``, removed with whatever is left in it on exit.

    Build the content there, then move it into place with :func:`publish_folder` (a whole folder)
    or ``os.replace`` (file by file).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_folder(finished: Path, target: Path, replace_existing: bool = False) -> bool:
    """Rename the finished folder to ``target``; False if another process published ``target`` first.

    ``replace_existing`` moves an old ``target`` aside first and deletes it after the rename.
    Without it a non-empty ``target`` is never replaced (POSIX ``rename`` refuses), which is how a
    second process building the same thing (a DDP rank, a parallel run) finds out it lost the race.
    """
    if replace_existing and target.exists():
        with staging_folder(target) as graveyard:
            os.replace(target, graveyard / target.name)
            os.replace(finished, target)
        return True
    try:
        os.replace(finished, target)
    except OSError:
        if not target.exists():
            raise
        return False
    return True


def format_bytes(size: float) -> str:
    """``37.2 GB``: decimal units, as ``df -H`` and file managers print them."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_bytes(folder: str | Path) -> int:
    """Free space for this user on the file system of ``folder`` (its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_output_file(key: str, target: str | Path, inputs: Iterable[tuple[str, str | Path | None]],
                      suffix: str = ".csv") -> Path:
    """``target`` if the option ``key`` may write it; else a :class:`~lungexp.utils.errors.ConfigError` naming
    ``key``: a name without ``suffix`` (so that no scan, data or checkpoint file is ever overwritten by a
    table), a folder, a path under a file, a folder this user cannot write in, or the very file (through any
    link) of one of ``inputs`` (option name, path; None for an option not given)."""
    target = Path(target)
    if target.is_dir():
        raise ConfigError(f"{key}={target} is a folder; give a file in it, e.g. {key}={target / f'predictions{suffix}'}")
    if target.suffix.lower() != suffix:
        raise ConfigError(f"{key}={target}: {key} is written as a {suffix} file; give a file name ending in {suffix}")
    folder = target.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{key}={target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={target}: {folder} is not writable by this user; choose another folder")
    for input_key, path in inputs:
        if path is not None and _same_file(target, Path(path)):
            raise ConfigError(f"{key}={target} is the file of {input_key}={path}: writing the results there would "
                              f"replace the input; choose another {key}")
    return target


def _same_file(first: Path, second: Path) -> bool:
    """Whether two spellings name one file: the same path once links and ``..`` are resolved, or the same file
    on disk (a hard link)."""
    first, second = first.resolve(), second.resolve()
    return first == second or (first.exists() and second.exists() and os.path.samefile(first, second))


@contextmanager
def disk_full_named(folder: str | Path, hint: str, name: str | Path | None = None) -> Iterator[None]:
    """Re-raise "no space left" (``ENOSPC``, ``EDQUOT``) inside the block as a :class:`DiskFullError` naming
    ``name`` (else the file of the error, else ``folder``), what is free there, and ``hint`` (what the user can do)."""
    try:
        yield
    except OSError as error:
        if error.errno not in NO_SPACE_ERRNOS:
            raise
        where = name or error.filename or folder
        raise DiskFullError(f"{where}: {error.strerror} ({format_bytes(free_bytes(folder))} free on that file "
                            f"system); {hint}") from None


def allocate_npy(path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """A new ``.npy`` file at ``path``, its blocks reserved (``posix_fallocate``), memory-mapped for writing.

    numpy's ``open_memmap`` leaves a sparse file, so a full disk shows only when a write into the map
    faults: SIGBUS. Reserving first makes it an ``OSError`` (``ENOSPC``, naming ``path``) here, before any
    work is spent on the content; the file is removed then.
    """
    path, dtype = Path(path), np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
        try:
            os.posix_fallocate(handle.fileno(), 0, offset + int(np.prod(shape)) * dtype.itemsize)
        except OSError as error:
            path.unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(path)) from None
    return np.memmap(path, dtype=dtype, mode="r+", shape=tuple(shape), offset=offset)


@contextmanager
def exclusive_lock(path: str | Path, waiting_message: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, and removed on release) for the block.

    A second process blocks until the first releases it, logging ``waiting_message`` once; the kernel
    releases the lock of a process that dies. The lock file is removed on release, so a process that
    was waiting on the removed file tries again on the path (the usual lock-file-with-unlink pattern).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = path.open("a")
        try:
            _lock(handle, waiting_message)
            if _still_at(path, handle):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the holder removed this file while we waited: lock the path anew
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _lock(handle: IO[str], waiting_message: str) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info(waiting_message)
        fcntl.flock(handle, fcntl.LOCK_EX)


def _still_at(path: Path, handle: IO[str]) -> bool:
    """Whether the locked file is still the one at ``path`` (not removed, nor replaced, by its last holder)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
