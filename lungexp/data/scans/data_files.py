"""The one rule for files that a scan header names (MetaImage ``ElementDataFile``, NRRD ``data file``).

A header handed in from elsewhere (a download, a colleague's folder) must not make lungexp read any
other file than the scan's own data: whatever it reads ends up in patches, predictions and models.
So a named data file must lie in the header's folder or below it, also after following links.
"""

from __future__ import annotations

import os
from pathlib import Path

from lungexp.data.scans.read_errors import ScanReadError


def data_file_in_header_folder(header: Path, name: str, field: str) -> Path:
    """The data file ``name`` as the readers open it (relative to the header's folder), after checking it
    stays in that folder.

    Args:
        header: the header file.
        name: the data file as the header writes it.
        field: the header line that names it (``ElementDataFile = ../x.raw``), for the message.

    The folder is the header's as given or, if the header is a link, the folder the link points
    into (both hold the header); the data file is followed through every link on its way.
    """
    data_file = header.parent / name  # an absolute name replaces the folder, as ITK does
    target = data_file.resolve()
    folders = {header.parent.resolve(), header.resolve().parent}
    if not any(target.is_relative_to(folder) for folder in folders):
        by_name = not Path(os.path.abspath(data_file)).is_relative_to(os.path.abspath(header.parent))
        through_link = "" if by_name else f" (a link to {target})"
        raise ScanReadError(f"{header}: {field}{through_link} points outside the header's folder {header.parent}; "
                            "put the data file next to the header (a copy, not a link) and name it relative to it")
    return data_file
