"""Reading and writing CT scans: MetaImage (LUNA16), NIfTI, NRRD and DICOM series.

SimpleITK does the decoding, but its error messages ("Could not create IO object", "Buffer size
mismatch") rarely say which file is at fault or what to do. Every failure here is a
:class:`ScanReadError` that names the file or folder, the problem and the fix. MetaImage headers
are checked before SimpleITK sees them, because a missing or truncated ``.raw`` is by far the most
common problem with a partial LUNA16 download.

Arrays are indexed ``(z, y, x)`` and geometry is ``(x, y, z)``, as in :mod:`lungexp.data.scan`.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lungexp.data.scan import Scan
from lungexp.utils.errors import LungexpError

SCAN_SUFFIXES = (".mhd", ".nii.gz", ".nii", ".nrrd")

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

# DICOM tags, as SimpleITK names them.
_TAG_POSITION = "0020|0032"  # ImagePositionPatient
_TAG_ORIENTATION = "0020|0037"  # ImageOrientationPatient

# Slices closer than this (mm) are at the same position: a duplicate or a second acquisition.
_SAME_POSITION_MM = 0.01
# A step between slices larger than this many median steps means slices are missing.
_GAP_FACTOR = 1.5
# Steps that differ from the median by more than this fraction make the spacing inconsistent.
_STEP_TOLERANCE = 0.1


class ScanReadError(LungexpError):
    """A scan file or folder that cannot be read; the message says which, why and what to do."""


@dataclass(frozen=True, eq=False)
class ScanHeader:
    """The geometry of a scan without its voxels, to check coordinates against it cheaply.

    Fields follow :class:`~lungexp.data.scan.Scan`: ``size_xyz`` (voxels), ``origin`` and
    ``spacing`` (mm, ``(x, y, z)``) and the 3x3 ``direction``.
    """

    size_xyz: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    path: Path

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.size_xyz[::-1])  # type: ignore[return-value]

    def geometry(self) -> Scan:
        """A voxel-less :class:`Scan` (zero-byte broadcast array) with this header's geometry.

        It keeps the world <-> voxel maths in one place, :class:`Scan`, for header-only checks.
        """
        return Scan(
            array=np.broadcast_to(np.int16(0), self.shape_zyx),
            origin=self.origin,
            spacing=self.spacing,
            direction=self.direction,
            source=self.path,
        )

    def contains_world(self, world_xyz: np.ndarray) -> np.ndarray:
        """Whether world points ``(x, y, z)`` mm fall inside the scan; ``(3,)`` or ``(N, 3)``."""
        return self.geometry().contains_world(world_xyz)

    def world_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """World bounding box ``(low_xyz, high_xyz)`` of the voxel grid, voxel edges included."""
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.shape_zyx], indexing="ij"))
        world = self.geometry().voxel_to_world(corners.reshape(3, -1).T)
        return world.min(axis=0), world.max(axis=0)


# --------------------------------------------------------------------------------------------------
# Single-file volumes


def read_scan(path: str | Path) -> Scan:
    """Read a ``.mhd``/``.nii``/``.nii.gz``/``.nrrd`` volume with its geometry.

    Values are returned as stored (LUNA16 and converted DICOM: int16 HU).
    """
    path = _check_scan_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read it ({_itk_message(error)}); "
                            "check that the file is a complete, uncorrupted scan") from None
    try:
        return Scan.from_sitk(image, source=path)
    except ValueError as error:
        raise ScanReadError(f"{error}; lungexp needs a 3D CT volume") from None


def read_scan_header(path: str | Path) -> ScanHeader:
    """Read only the geometry of a scan file, not its voxels."""
    path = _check_scan_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read the header ({_itk_message(error)})") from None
    if reader.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 3D volume, got {reader.GetDimension()}D")
    return ScanHeader(
        size_xyz=np.array(reader.GetSize(), dtype=np.int64),
        origin=np.array(reader.GetOrigin(), dtype=np.float64),
        spacing=np.array(reader.GetSpacing(), dtype=np.float64),
        direction=np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
        path=path,
    )


def _check_scan_file(path: str | Path) -> Path:
    """The path, after checking it exists, has a supported suffix and (``.mhd``) a sound header."""
    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"{path}: scan file not found; check the path (and data.root)")
    if _scan_suffix(path) is None:
        raise ScanReadError(f"{path}: unsupported scan format; expected one of {', '.join(SCAN_SUFFIXES)} "
                            "(convert DICOM series with `python -m lungexp.convert`)")
    if path.suffix.lower() == ".mhd":
        _check_mhd(path)
    return path


def _scan_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in SCAN_SUFFIXES if name.endswith(suffix)), None)


def _itk_message(error: Exception) -> str:
    """The informative last line of a SimpleITK exception (the first names a C++ source file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# --------------------------------------------------------------------------------------------------
# MetaImage


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


def _check_mhd(path: Path) -> None:
    """Check a MetaImage header against its data file before SimpleITK reads it."""
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
    channels = fields.get("ElementNumberOfChannels", "1")
    if channels != "1":
        raise ScanReadError(f"{path}: ElementNumberOfChannels = {channels}; a CT volume has one channel")

    data_name = fields["ElementDataFile"]
    if data_name == "LIST" or "%" in data_name or " " in data_name:
        raise ScanReadError(f"{path}: ElementDataFile = {data_name} spreads the volume over several files; "
                            "only a single data file (or LOCAL) is supported; re-save the scan as one .mhd/.raw")
    data_path, data_start = (path, local_offset) if data_name == "LOCAL" else (path.parent / data_name, 0)
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


def write_mhd(scan: Scan, path: str | Path) -> Path:
    """Write ``scan`` as a LUNA16-style MetaImage: ``path`` (``.mhd``) + ``.raw``, int16, uncompressed.

    Both files are written under temporary names in the target folder and renamed into place
    (the ``.raw`` first), so a ``.mhd`` never points at a partly written ``.raw``, even if writing
    is interrupted.
    Returns the ``.mhd`` path.
    """
    path = Path(path)
    if path.suffix.lower() != ".mhd":
        raise ValueError(f"{path}: write_mhd writes MetaImage; give a path ending in .mhd")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw_path = path.with_suffix(".raw")
    voxels = _as_int16_hu(scan.array, scan.source)
    temporaries = [_temporary(path.parent, raw_path.name), _temporary(path.parent, path.name)]
    try:
        temporaries[0].write_bytes(voxels.astype("<i2").tobytes())
        temporaries[1].write_text(_mhd_header(scan, voxels.shape, raw_path.name))
        os.replace(temporaries[0], raw_path)
        os.replace(temporaries[1], path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    return path


def _temporary(folder: Path, name: str) -> Path:
    """A fresh hidden name in ``folder``; its ``.tmp`` suffix keeps it out of :func:`index_scans`."""
    return folder / f".{name}.{uuid.uuid4().hex}.tmp"


def _mhd_header(scan: Scan, shape_zyx: tuple[int, ...], raw_name: str) -> str:
    """MetaImage header text laid out like the LUNA16 files (and ITK's own writer)."""
    fields = {
        "ObjectType": "Image",
        "NDims": "3",
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": "False",
        "CompressedData": "False",
        "TransformMatrix": _numbers(scan.direction.T.ravel()),  # MetaIO stores the direction column by column
        "Offset": _numbers(scan.origin),
        "CenterOfRotation": "0 0 0",
        "AnatomicalOrientation": _orientation_code(scan.direction),
        "ElementSpacing": _numbers(scan.spacing),
        "DimSize": " ".join(str(n) for n in shape_zyx[::-1]),
        "ElementType": "MET_SHORT",
        "ElementDataFile": raw_name,
    }
    return "".join(f"{key} = {value}\n" for key, value in fields.items())


def _numbers(values: np.ndarray) -> str:
    """Space-separated numbers that read back exactly (integers without a trailing ``.0``)."""
    return " ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values)


def _orientation_code(direction: np.ndarray) -> str:
    """ITK's three-letter code (e.g. ``RAI`` for identity in LPS) naming where each index axis starts."""
    letters = ("RL", "AP", "IS")  # the side an LPS axis comes from when its index increases / decreases
    code = ""
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        code += letters[axis][0 if column[axis] > 0 else 1]
    return code


def _as_int16_hu(array: np.ndarray, source: object = None) -> np.ndarray:
    """``array`` as int16 (rounded if floating point); error if values are not finite or do not fit int16."""
    if array.dtype == np.int16:
        return array
    values = np.rint(array) if np.issubdtype(array.dtype, np.floating) else array
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{source}: has NaN or infinite values; cannot store them as int16 HU")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    info = np.iinfo(np.int16)
    if low < info.min or high > info.max:
        raise ValueError(f"{source}: values span [{low}, {high}], outside int16; is this really CT in HU?")
    return values.astype(np.int16)


# --------------------------------------------------------------------------------------------------
# DICOM


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
    """Files with the DICOM preamble that GDCM left out of every series because it cannot parse them.

    A truncated slice is silently skipped by the series scan, which would show up as a gap in the
    stack, or not at all for the first or last slice.
    """
    reader = sitk.ImageFileReader()
    unreadable = []
    for path in sorted(folder.rglob("*")):
        if str(path) in listed or not path.is_file() or not _has_dicom_preamble(path):
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
    """One (checked) series as int16 HU with the geometry ITK derives from the slice headers."""
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
                            f"({_itk_message(error)})") from None
    try:
        array = _as_int16_hu(sitk.GetArrayViewFromImage(image), f"series {uid} in {folder}")
    except ValueError as error:
        raise ScanReadError(str(error)) from None
    return Scan(array=array, origin=image.GetOrigin(), spacing=image.GetSpacing(),
                direction=image.GetDirection(), source=folder)


def _slice_tags(uid: str, file: str, reader: sitk.ImageFileReader) -> np.ndarray:
    """ImageOrientationPatient (6 values) then ImagePositionPatient (3) of one slice."""
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ScanReadError(f"series {uid}: cannot read slice {file} ({_itk_message(error)})") from None
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
    """Reject single slices, mixed orientations, missing slices and uneven slice spacing.

    ITK would read a stack with a gap using one average slice spacing and only print a warning,
    silently misplacing every annotation beyond the gap.
    """
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
    distances = positions @ np.cross(orientations[0, :3], orientations[0, 3:])
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


# --------------------------------------------------------------------------------------------------
# Scan index


def index_scans(root: str | Path) -> pd.DataFrame:
    """All scan files under ``root``: ``seriesuid, path, subset``, sorted by seriesuid.

    ``seriesuid`` is the file name without its extension; ``subset`` is K for files inside a folder
    named ``subsetK`` (the LUNA16 folds), else -1.
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanReadError(f"{root}: scan folder not found; check data.root")
    rows = []
    for path in sorted(root.rglob("*")):
        suffix = _scan_suffix(path)
        if suffix is None or not path.is_file():
            continue
        rows.append({"seriesuid": path.name[: -len(suffix)], "path": str(path), "subset": _subset_of(path, root)})
    table = pd.DataFrame(rows, columns=["seriesuid", "path", "subset"]).astype({"subset": int})
    duplicated = table[table["seriesuid"].duplicated(keep=False)]
    if not duplicated.empty:
        listing = "; ".join(f"{uid}: {', '.join(group['path'])}"
                            for uid, group in list(duplicated.groupby("seriesuid"))[:5])
        raise ScanReadError(f"{root}: {duplicated['seriesuid'].nunique()} seriesuid(s) have several scan files "
                            f"({listing}); keep one file per series")
    return table.sort_values("seriesuid", kind="stable").reset_index(drop=True)


def _subset_of(path: Path, root: Path) -> int:
    """K of the nearest enclosing ``subsetK`` folder, up to and including ``root``; -1 if none."""
    for folder in path.parents:
        match = re.fullmatch(r"subset(\d+)", folder.name)
        if match:
            return int(match.group(1))
        if folder == root:
            break
    return -1
