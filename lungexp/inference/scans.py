"""The scans ``predict`` reads: one scan file, a folder of scan files (e.g. LUNA16's ``subsetK/``) or DICOM.

Each source names its scans by seriesuid (file name without extension, or the DICOM
SeriesInstanceUID) and reads each wanted scan once; DICOM series are converted to HU in memory with
the project's reader, exactly as ``python -m lungexp.convert`` would write them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from lungexp.data.scans import (
    SCAN_SUFFIXES,
    ScanHeader,
    ScanReadError,
    find_dicom_series,
    index_scans,
    iter_dicom_series,
    read_scan,
    read_scan_header,
)
from lungexp.data.scans.reader import scan_suffix
from lungexp.data.scans.scan import Scan


class ScanFiles:
    """Single-file volumes (``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``) by seriesuid."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    @property
    def seriesuids(self) -> list[str]:
        return list(self.paths)

    def headers(self, wanted: Collection[str]) -> dict[str, ScanHeader]:
        """Geometry without voxels, to check coordinates before any scan is read."""
        return {uid: read_scan_header(self.paths[uid]) for uid in wanted}

    def read(self, wanted: Collection[str]) -> Iterator[tuple[str, Scan]]:
        for uid in wanted:
            yield uid, read_scan(self.paths[uid])


class DicomFolder:
    """Every DICOM series under a folder, by SeriesInstanceUID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._series = find_dicom_series(folder)  # headers only; checks each series is a complete stack

    @property
    def seriesuids(self) -> list[str]:
        return list(self._series)

    def headers(self, wanted: Collection[str]) -> dict[str, ScanHeader]:
        return {}  # the geometry of a series is known once it is read

    def read(self, wanted: Collection[str]) -> Iterator[tuple[str, Scan]]:
        for uid, scan in iter_dicom_series(self.folder):
            if uid in wanted:
                yield uid, scan


ScanSource = ScanFiles | DicomFolder


def open_scans(path: str | Path) -> ScanSource:
    """The scans at ``path``: a scan file, a folder searched recursively for scan files, else a DICOM folder."""
    path = Path(path)
    if path.is_file():
        suffix = scan_suffix(path)
        if suffix is None:
            raise ScanReadError(f"scans={path}: not a scan file; give a {', '.join(SCAN_SUFFIXES)} file, a folder "
                                "of them (e.g. a LUNA16 folder) or a folder of DICOM slices")
        return ScanFiles({path.name[: -len(suffix)]: path})
    if not path.is_dir():
        raise ScanReadError(f"scans={path}: no such file or folder")
    files = index_scans(path)
    if not files.empty:
        return ScanFiles({uid: Path(p) for uid, p in zip(files["seriesuid"], files["path"], strict=True)})
    try:
        return DicomFolder(path)
    except ScanReadError as error:
        raise ScanReadError(f"scans={path}: no scan files ({', '.join(SCAN_SUFFIXES)}) in it, and as DICOM: "
                            f"{error}") from None
