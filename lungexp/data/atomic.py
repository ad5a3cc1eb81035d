"""Writing files and folders so that a reader never sees them half-written.

Everything is first written under a temporary name in the target's own folder (so the final
``os.replace`` is a rename on one filesystem, atomic on POSIX) and renamed into place only when
complete; an interrupted write leaves the old target, if any, untouched and its temporaries gone.
Temporary names are hidden and end in :data:`TEMPORARY_SUFFIX`, so scan indexing skips them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


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
