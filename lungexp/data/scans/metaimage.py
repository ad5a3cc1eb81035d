"""MetaImage (``.mhd`` + ``.raw``, the LUNA16 format, or ``.mha``): checking a header against its data, and writing.

A header is checked before SimpleITK reads it, so that a missing, truncated or oversized ``.raw``
is reported with the file, the expected and actual sizes, and the fix, instead of ITK's "Buffer
size mismatch".
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungexp.data.scans.data_files import data_file_in_header_folder
from lungexp.data.scans.hounsfield import as_int16_hu
from lungexp.data.scans.read_errors import ScanReadError
from lungexp.data.scans.scan import Scan
from lungexp.utils.atomic import staging_folder

# Bytes per voxel of the MetaImage element types a CT volume can use.
_MET_ELEMENT_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}

# MetaImage geometry fields (with MetaIO's synonyms): how many numbers each holds, and whether they are
# voxel sizes (positive).
_GEOMETRY_FIELDS = {
    "ElementSpacing": (3, True),
    **dict.fromkeys(("Offset", "Origin", "Position"), (3, False)),
    **dict.fromkeys(("TransformMatrix", "Rotation", "Orientation"), (9, False)),
}


def check_mhd(path: Path) -> None:
    """Check a MetaImage header (``.mhd`` or ``.mha``) against its data file, which must lie in the header's
    folder; :class:`ScanReadError` saying what is wrong."""
    fields, local_offset = _parse_mhd(path)
    for key in ("DimSize", "ElementType", "ElementDataFile"):
        if key not in fields:
            raise ScanReadError(f"{path}: MetaImage header has no {key} field; "
                                "the header is incomplete, re-download or re-convert the scan")
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        raise ScanReadError(f"{path}: DimSize '{fields['DimSize']}' / HeaderSize "
                            f"'{fields.get('HeaderSize', '0')}' must be integers") from None
    if len(dims) != 3 or min(dims) < 1:
        raise ScanReadError(f"{path}: DimSize = {fields['DimSize']}; expected three positive sizes (a 3D CT)")
    element_type = fields["ElementType"]
    if element_type not in _MET_ELEMENT_SIZES:
        raise ScanReadError(f"{path}: unsupported ElementType {element_type}; expected one of "
                            f"{', '.join(_MET_ELEMENT_SIZES)} (LUNA16 scans are MET_SHORT)")
    _check_geometry_fields(path, fields)
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels != "1":
        raise ScanReadError(f"{path}: ElementNumberOfChannels = {channels}; a CT volume has one channel")

    data_name = fields["ElementDataFile"]
    if data_name == "LIST" or "%" in data_name or " " in data_name:
        raise ScanReadError(f"{path}: ElementDataFile = {data_name} spreads the volume over several files; "
                            "only a single data file (or LOCAL) is supported; re-save the scan as one .mhd/.raw")
    if data_name == "LOCAL":
        data_path, data_start = path, local_offset
    else:
        data_path, data_start = data_file_in_header_folder(path, data_name, f"ElementDataFile = {data_name}"), 0
    if not data_path.is_file():
        raise ScanReadError(f"{path}: its data file {data_path} (ElementDataFile = {data_name}) is missing; "
                            "copy the .raw next to the .mhd (a partial download?)")
    if fields.get("CompressedData", "False").lower() == "true":
        return  # the compressed size says nothing about the volume; SimpleITK checks it on reading
    expected = int(np.prod(dims)) * _MET_ELEMENT_SIZES[element_type]
    actual = data_path.stat().st_size - data_start
    if header_size == -1:  # MetaIO: the data is the last `expected` bytes of the file
        header_size = max(actual - expected, 0)
    if actual != expected + header_size:
        problem = "truncated" if actual < expected + header_size else "too large"
        raise ScanReadError(
            f"{data_path} is {problem}: {path} declares DimSize {fields['DimSize']} of {element_type} "
            f"(+ HeaderSize {header_size}), i.e. {expected + header_size} bytes, but the data has {actual} "
            "bytes; re-download the scan or fix DimSize/ElementType in the .mhd"
        )


def _check_geometry_fields(path: Path, fields: dict[str, str]) -> None:
    """The geometry fields present must hold their count of finite numbers, voxel sizes positive: ITK reads
    what it can of a damaged one without a word (``nan`` as 0, a negative size as positive), while the
    header alone (the coordinate checks) would take it as it is."""
    for key, (count, positive) in _GEOMETRY_FIELDS.items():
        if key not in fields:
            continue
        try:
            numbers = [float(v) for v in fields[key].split()]
        except ValueError:
            numbers = []
        if len(numbers) != count or not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
            expected = "three positive voxel sizes in mm (x y z)" if positive else f"{count} finite numbers"
            raise ScanReadError(f"{path}: {key} = {fields[key]}; expected {expected}; "
                                f"fix {key} in the header or re-convert the scan")


def _parse_mhd(path: Path) -> tuple[dict[str, str], int]:
    """Header fields of a ``.mhd`` and the byte offset where local data (``LOCAL``) would start."""
    fields: dict[str, str] = {}
    offset = 0
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            offset += len(raw_line)
            line = raw_line.decode("latin-1").strip()
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ScanReadError(f"{path}: line {number} is not 'Key = Value' ({line[:60]!r}); "
                                    "is this really a MetaImage header?")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":  # always the last field; binary data may follow
                break
    return fields, offset


def write_mhd(scan: Scan, path: str | Path) -> Path:
    """Write ``scan`` as a LUNA16-style MetaImage: ``path`` (``.mhd``) + ``.raw``, int16, uncompressed.

    SimpleITK writes both files into a hidden folder beside ``path``; they are then renamed into
    place, the ``.raw`` first, so a ``.mhd`` never points at a partly written ``.raw``, even if
    writing is interrupted. Returns the ``.mhd`` path.
    """
    path = Path(path)
    if path.suffix.lower() != ".mhd":
        raise ValueError(f"{path}: write_mhd writes MetaImage; give a path ending in .mhd")
    image = dataclasses.replace(scan, array=as_int16_hu(scan.array, scan.source)).to_sitk()
    with staging_folder(path) as staging:
        sitk.WriteImage(image, str(staging / path.name), useCompression=False)
        header_last = sorted(staging.iterdir(), key=lambda written: written.name == path.name)
        for written in header_last:
            os.replace(written, path.parent / written.name)
    return path
