"""NRRD (``.nrrd``, or a detached ``.nhdr`` header): checking the data file a header names.

A NRRD header may keep its voxels in another file (``data file: x.raw``, also spelled ``datafile``,
in any letter case), or spread them over several (``data file: LIST`` followed by names, or a
``%d`` pattern). The single file must lie in the header's folder
(:func:`~lungexp.data.scans.data_files.data_file_in_header_folder`); the multi-file forms are refused.
"""

from __future__ import annotations

from pathlib import Path

from lungexp.data.scans.data_files import data_file_in_header_folder
from lungexp.data.scans.read_errors import ScanReadError

# NRRD headers are short: a longer one is refused, and a longer line is read in parts (a path cannot be that long).
_MAX_HEADER_LINES = 1000
_MAX_LINE_BYTES = 65536


def check_nrrd(path: Path) -> None:
    """Check that ``path`` starts like a NRRD and that any data file it names lies in its folder."""
    for name in _data_files(path):
        if name.upper().startswith("LIST") or "%" in name:
            raise ScanReadError(f"{path}: data file: {name} spreads the volume over several files; only one data "
                                "file (or the data in the .nrrd itself) is supported; re-save the scan as one .nrrd")
        data_file = data_file_in_header_folder(path, name, f"data file: {name}")
        if not data_file.is_file():
            raise ScanReadError(f"{path}: its data file {data_file} (data file: {name}) is missing; "
                                "copy it next to the header (a partial download?)")


def _data_files(path: Path) -> list[str]:
    """The values of every ``data file`` field of the header (the header ends at the first blank line)."""
    names = []
    with path.open("rb") as handle:
        if handle.read(4) != b"NRRD":
            raise ScanReadError(f"{path}: does not start with NRRD's magic line (NRRD000x); is this really a NRRD file?")
        handle.readline(_MAX_LINE_BYTES)  # the rest of the magic line
        for _ in range(_MAX_HEADER_LINES):
            line = handle.readline(_MAX_LINE_BYTES).decode("latin-1").strip()
            if not line:  # the blank line that ends the header, or the end of a detached header
                break
            key, separator, value = line.partition(":")
            # "key:=value" lines are free-form key/value pairs, not fields; "#" starts a comment
            if separator and not value.startswith("=") and not key.startswith("#"):
                if key.replace(" ", "").lower() == "datafile":
                    names.append(value.strip())
        else:
            raise ScanReadError(f"{path}: its header does not end within {_MAX_HEADER_LINES} lines (no blank line); "
                                "is this really a NRRD file?")
    return names
