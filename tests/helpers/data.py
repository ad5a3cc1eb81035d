"""Test helpers for scan I/O: synthetic DICOM series, raw DICOM pixel access, the shared real data."""

from __future__ import annotations

import locale
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.helpers.config import PROJECT_ROOT


def shared_data_dir() -> Path:
    """The shared real data (``$LUNGEXP_SHARED_DATA`` or ``../shared/data``); skips the test if absent."""
    default = PROJECT_ROOT.parent / "shared" / "data"
    folder = Path(os.environ.get("LUNGEXP_SHARED_DATA", default))
    if not (folder / "lidc-idri").is_dir() or not (folder / "luna16").is_dir():
        pytest.skip(f"real data not found at {folder} (needs lidc-idri/ and luna16/; set LUNGEXP_SHARED_DATA)")
    return folder


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    series_uid: str,
    spacing_xyz: Sequence[float] = (0.7, 0.8, 2.5),
    origin_xyz: Sequence[float] = (-100.0, -120.0, -300.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    slice_z: Sequence[float] | None = None,
    tilt_degrees: float = 0.0,
) -> list[Path]:
    """Write ``hu`` ``(z, y, x)`` as one CT slice file per z, like SimpleITK's DicomSeriesFromArray example.

    GDCM stores ``(hu - intercept) / slope`` and records slope/intercept in the headers, as CT
    scanners do. ``slice_z`` (mm from the origin, one per slice) defaults to even steps of
    ``spacing_xyz[2]``; give others to make gaps or uneven spacing. Files are named in reverse
    slice order so readers must sort by position, not by name; the series UID prefix lets
    several series share a folder. ``tilt_degrees`` shifts each slice in y by ``z * tan(tilt)``, as a
    tilted gantry does (the slices stay axial).
    """
    if slice_z is None:
        slice_z = np.arange(hu.shape[0]) * spacing_xyz[2]
    assert len(slice_z) == hu.shape[0], "one slice_z per slice"
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    process_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the C locale
    for k, z in enumerate(slice_z):
        image = sitk.GetImageFromArray(hu[k].astype(np.int16))
        image.SetSpacing(tuple(float(s) for s in spacing_xyz[:2]))
        position = (origin_xyz[0], origin_xyz[1] + z * np.tan(np.radians(tilt_degrees)), origin_xyz[2] + z)
        tags = {
            "0008|0060": "CT",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000e": series_uid,
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing_xyz[1]:g}\\{spacing_xyz[0]:g}",  # row spacing (y) \ column spacing (x)
            "0020|0013": str(k + 1),
            "0028|1052": f"{intercept:g}",
            "0028|1053": f"{slope:g}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{series_uid}-slice{hu.shape[0] - k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        written.append(path)
    locale.setlocale(locale.LC_ALL, process_locale)  # else later open()s decode UTF-8 files as ASCII
    return written


def stored_pixel_values(path: Path, rows: int, columns: int) -> np.ndarray:
    """The stored (pre-rescale) int16 pixels of an uncompressed little-endian DICOM file.

    Parsed from the bytes of the Pixel Data element, independently of GDCM, to check that the
    reader really applied RescaleSlope/Intercept.
    """
    data = path.read_bytes()
    start = data.rfind(b"\xe0\x7f\x10\x00")  # tag (7FE0,0010), little endian
    assert start >= 0, f"{path}: no Pixel Data element"
    if data[start + 4 : start + 6] in (b"OW", b"OB"):  # explicit VR: 2 reserved bytes, 4-byte length
        (length,) = struct.unpack("<I", data[start + 8 : start + 12])
        offset = start + 12
    else:  # implicit VR
        (length,) = struct.unpack("<I", data[start + 4 : start + 8])
        offset = start + 8
    assert length == rows * columns * 2, f"{path}: Pixel Data has {length} bytes, expected 16-bit {rows}x{columns}"
    return np.frombuffer(data[offset : offset + length], dtype="<i2").reshape(rows, columns)


def dicom_tag(path: Path, tag: str) -> str:
    """One header tag of one DICOM file as SimpleITK reads it."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip()


def dicom_numbers(path: Path, tag: str) -> np.ndarray:
    """A ``\\``-separated numeric DICOM tag as floats."""
    return np.array([float(v) for v in dicom_tag(path, tag).split("\\")])
