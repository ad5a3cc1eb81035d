"""DICOM CT series: finding every series under a folder, checking its slice stack, reading it in HU.

Used by ``python -m lungexp.convert`` to bring DICOM downloads (e.g. LIDC-IDRI) into the LUNA16
layout, and by ``predict`` to read them in memory. Every series is checked before any voxels are
read: ITK reads a stack with a missing slice using one average spacing and only prints a warning,
silently misplacing every annotation beyond the gap, and reads a gantry-tilted stack (slices shifted
sideways from one to the next) as if it were straight. The voxels of each series must then be
plausibly CT in Hounsfield units (:func:`~lungexp.data.scans.hounsfield_check.check_hounsfield`),
as for every scan read from a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungexp.data.scans.hounsfield import as_int16_hu
from lungexp.data.scans.hounsfield_check import check_hounsfield
from lungexp.data.scans.read_errors import ScanReadError, itk_message
from lungexp.data.scans.scan import Scan

# DICOM tags, as SimpleITK names them.
_TAG_POSITION = "0020|0032"  # ImagePositionPatient
_TAG_ORIENTATION = "0020|0037"  # ImageOrientationPatient

# The usual name ending of DICOM files (LIDC-IDRI's); such a file that is in no series is a damaged slice.
DICOM_SUFFIX = ".dcm"
# Slices closer than this (mm) are at the same position: a duplicate or a second acquisition.
_SAME_POSITION_MM = 0.01
# A step between slices larger than this many median steps means slices are missing.
_GAP_FACTOR = 1.5
# Steps that differ from the median by more than this fraction make the spacing inconsistent.
_STEP_TOLERANCE = 0.1
# A slice whose position lies farther than this (mm) from the line through the first slice along the
# slice normal is sheared sideways (a gantry tilt): ITK would place it on that line. Far below a voxel
# (CT pixels are 0.5-1 mm), far above the rounding of positions in the headers.
_OFF_NORMAL_MM = 0.05


def read_dicom_series(folder: str | Path) -> dict[str, Scan]:
    """Every DICOM series under ``folder`` (searched recursively) as int16 HU, by SeriesInstanceUID.

    All series are found and their slice stacks checked before any voxels are loaded.
    """
    return dict(iter_dicom_series(folder))


def iter_dicom_series(folder: str | Path) -> Iterator[tuple[str, Scan]]:
    """Like :func:`read_dicom_series`, but loads one series at a time to bound memory (for conversion)."""
    for uid, files in find_dicom_series(folder).items():
        yield uid, _read_series(uid, files)


def find_dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """SeriesInstanceUID -> slice files (sorted by GDCM along the slice normal) of every series.

    Reads only headers, and checks every series is a complete, evenly spaced stack of slices.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanReadError(f"{folder}: DICOM folder not found; check the path")
    series: dict[str, list[str]] = {}
    for directory, _, names in sorted(os.walk(folder)):
        if not names:
            continue
        with _itk_warnings_off():  # ITK warns "No Series were found" for every folder without DICOM
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)
        for uid in uids:
            if uid in series:
                raise ScanReadError(f"series {uid} is split across {Path(series[uid][0]).parent} and {directory}; "
                                    "move all its slices into one folder")
            series[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid))
    unreadable = _unreadable_dicom_files(folder, {file for files in series.values() for file in files})
    if unreadable:
        listing = ", ".join(str(path) for path in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise ScanReadError(f"{len(unreadable)} DICOM file(s) cannot be read (truncated or corrupt): {listing}{more}; "
                            "re-download them (or remove them to convert the rest)")
    if not series:
        raise ScanReadError(f"{folder}: no DICOM series found in it or its subfolders; "
                            "point at the folder that holds the .dcm slices")
    for uid, files in series.items():
        _check_slice_stack(uid, files)
    return series


def _unreadable_dicom_files(folder: Path, listed: set[str]) -> list[Path]:
    """DICOM files that GDCM left out of every series because it cannot parse them: files with the
    DICOM preamble whose header does not read, and ``.dcm`` files whose preamble is damaged.

    A corrupt slice is silently skipped by the series scan, which would show up as a gap in the
    stack, or not at all for the first or last slice.
    """
    reader = sitk.ImageFileReader()
    unreadable = []
    for path in sorted(folder.rglob("*")):
        if str(path) in listed or not path.is_file():
            continue
        if not _has_dicom_preamble(path):
            if path.suffix.lower() == DICOM_SUFFIX:
                unreadable.append(path)
            continue
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            unreadable.append(path)
    return unreadable


def _has_dicom_preamble(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's global warning printout for a moment (it goes straight to stderr)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_series(uid: str, files: list[str]) -> Scan:
    """One (checked) series as int16 HU with the geometry ITK derives from the slice headers, after
    checking that the values are plausibly HU."""
    folder = Path(files[0]).parent
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    # Float output: GDCM applies each slice's RescaleSlope/Intercept without truncating to the first
    # slice's integer type; the HU are rounded back to int16 below.
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ScanReadError(f"series {uid} in {folder}: SimpleITK could not read it "
                            f"({itk_message(error)})") from None
    try:
        array = as_int16_hu(sitk.GetArrayViewFromImage(image), f"series {uid} in {folder}")
    except ValueError as error:
        raise ScanReadError(str(error)) from None
    scan = Scan(array=array, origin=image.GetOrigin(), spacing=image.GetSpacing(),
                direction=image.GetDirection(), source=folder)
    check_hounsfield(scan)
    return scan


def _slice_tags(uid: str, file: str, reader: sitk.ImageFileReader) -> np.ndarray:
    """ImageOrientationPatient (6 values) then ImagePositionPatient (3) of one slice."""
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ScanReadError(f"series {uid}: cannot read slice {file} ({itk_message(error)})") from None
    values = []
    for tag, size in ((_TAG_ORIENTATION, 6), (_TAG_POSITION, 3)):
        text = reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else ""
        try:
            numbers = [float(v) for v in text.split("\\")]
        except ValueError:
            numbers = []
        if len(numbers) != size:
            raise ScanReadError(f"series {uid}: slice {file} has no valid tag {tag} ({text!r}); lungexp needs "
                                "ImageOrientationPatient and ImagePositionPatient on every slice")
        values += numbers
    return np.array(values)


def _check_slice_stack(uid: str, files: list[str]) -> None:
    """Reject single slices, mixed orientations, slices off the normal (gantry tilt), missing slices and
    uneven slice spacing."""
    folder = Path(files[0]).parent
    if len(files) < 2:
        raise ScanReadError(f"series {uid} in {folder} has a single slice (a localizer?); a CT volume "
                            "needs at least two; remove it from the folder to read the rest")
    reader = sitk.ImageFileReader()
    tags = np.array([_slice_tags(uid, file, reader) for file in files])
    orientations, positions = tags[:, :6], tags[:, 6:]
    odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > 1e-4)
    if odd.size:
        raise ScanReadError(f"series {uid} in {folder}: {odd.size} slice(s), e.g. {Path(files[odd[0]]).name}, "
                            f"have orientation {orientations[odd[0]].tolist()} unlike {orientations[0].tolist()} "
                            "of the first slice; split the series or remove the odd slices")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    _check_on_normal(uid, folder, files, positions, normal)
    distances = positions @ normal
    steps = np.diff(distances)
    shared = np.flatnonzero(steps < _SAME_POSITION_MM)
    if shared.size:
        pairs = ", ".join(f"{Path(files[i]).name} = {Path(files[i + 1]).name}" for i in shared[:3])
        raise ScanReadError(f"series {uid} in {folder}: {shared.size} pairs of slices share a position ({pairs}); "
                            "the folder may hold two acquisitions with one SeriesInstanceUID; keep one of them")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
    if gaps.size:
        where = "; ".join(f"{steps[i]:.2f} mm between {Path(files[i]).name} (at {distances[i]:.2f} mm) and "
                          f"{Path(files[i + 1]).name} (at {distances[i + 1]:.2f} mm)" for i in gaps[:3])
        raise ScanReadError(f"series {uid} in {folder} has missing slices: the usual step is {median:.2f} mm "
                            f"but {gaps.size} gap(s) are larger: {where}; re-download the complete series")
    uneven = np.flatnonzero(np.abs(steps - median) > _STEP_TOLERANCE * median)
    if uneven.size:
        i = int(uneven[0])
        raise ScanReadError(f"series {uid} in {folder} has inconsistent slice spacing: {steps[i]:.3f} mm between "
                            f"{Path(files[i]).name} and {Path(files[i + 1]).name} vs the usual {median:.3f} mm "
                            f"({uneven.size} uneven step(s)); remove duplicate or extra slices")


def _check_on_normal(uid: str, folder: Path, files: list[str], positions: np.ndarray, normal: np.ndarray) -> None:
    """Every slice must lie on the line through the first one along the slice normal: ITK stacks the slices
    along that line, so a series acquired with a tilted gantry (each slice shifted sideways) would be
    sheared, every voxel away from the first slice misplaced."""
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    worst = int(np.argmax(sideways))
    if sideways[worst] > _OFF_NORMAL_MM:
        tilt = np.degrees(np.arctan2(sideways[worst], abs(along[worst])))
        raise ScanReadError(f"series {uid} in {folder}: its slices are not stacked along their normal (a gantry tilt "
                            f"of about {tilt:.1f} degrees?): {Path(files[worst]).name} lies {sideways[worst]:.2f} mm "
                            f"sideways of {Path(files[0]).name}, and lungexp would read the stack as if it were "
                            "straight; resample the series to straight slices first (e.g. dcm2niix corrects gantry "
                            "tilt; then read its NIfTI) or leave the series out")
