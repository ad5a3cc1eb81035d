"""The scans under a data root, found by file name: the LUNA16 layout ``subsetK/<seriesuid>.mhd``.

Any nesting of supported scan files works; a ``subsetK`` folder on the way marks LUNA16's fold K.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lungexp.data.scans.read_errors import ScanReadError
from lungexp.data.scans.reader import scan_suffix
from lungexp.utils.atomic import TEMPORARY_SUFFIX

SCAN_INDEX_COLUMNS = ["seriesuid", "path", "subset"]


def index_scans(root: str | Path) -> pd.DataFrame:
    """All scan files under ``root``: ``seriesuid, path, subset``, sorted by seriesuid.

    ``seriesuid`` is the file name without its extension; ``subset`` is K for files inside a folder
    named ``subsetK`` (the LUNA16 folds), else -1. Temporaries of an unfinished write are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanReadError(f"{root}: scan folder not found; check data.root")
    rows = []
    for path in sorted(root.rglob("*")):
        suffix = scan_suffix(path)
        if suffix is None or _is_temporary(path, root) or not path.is_file():
            continue
        rows.append({"seriesuid": path.name[: -len(suffix)], "path": str(path), "subset": _subset_of(path, root)})
    table = pd.DataFrame(rows, columns=SCAN_INDEX_COLUMNS).astype({"subset": int})
    duplicated = table[table["seriesuid"].duplicated(keep=False)]
    if not duplicated.empty:
        listing = "; ".join(f"{uid}: {', '.join(group['path'])}"
                            for uid, group in list(duplicated.groupby("seriesuid"))[:5])
        raise ScanReadError(f"{root}: {duplicated['seriesuid'].nunique()} seriesuid(s) have several scan files "
                            f"({listing}); keep one file per series")
    return table.sort_values("seriesuid", kind="stable").reset_index(drop=True)


def _is_temporary(path: Path, root: Path) -> bool:
    """Inside a folder that :mod:`lungexp.utils.atomic` is still writing."""
    return any(part.endswith(TEMPORARY_SUFFIX) for part in path.relative_to(root).parts[:-1])


def _subset_of(path: Path, root: Path) -> int:
    """K of the nearest enclosing ``subsetK`` folder, up to and including ``root``; -1 if none."""
    for folder in path.parents:
        match = re.fullmatch(r"subset(\d+)", folder.name)
        if match:
            return int(match.group(1))
        if folder == root:
            break
    return -1
