"""Reading one scan file (``.mhd``/``.mha``, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``), or only its header.

Every scan lungexp reads from a file comes through here (the patch cache, negative sampling,
``predict``, sample tables), so every check sits here once: the file's suffix decides its format,
the format's header check runs first (:mod:`~lungexp.data.scans.formats`: a missing or truncated
``.raw``, a damaged header, a data file outside the header's folder), then only that format's ITK
reader opens it, its geometry must be sound, and the voxels must be finite and plausibly CT in
Hounsfield units (:func:`~lungexp.data.scans.hounsfield_check.check_hounsfield`).

SimpleITK does the decoding, but its error messages ("Could not create IO object", "Buffer size
mismatch") rarely say which file is at fault or what to do, so every failure here is a
:class:`~lungexp.data.scans.read_errors.ScanReadError` that names the file, the problem and the fix.

Arrays are indexed ``(z, y, x)`` and geometry is ``(x, y, z)``, as in :mod:`lungexp.data.scans.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungexp.data.scans.formats import SCAN_SUFFIXES, ScanFormat, scan_format
from lungexp.data.scans.hounsfield_check import check_hounsfield
from lungexp.data.scans.nifti import count_non_finite_voxels
from lungexp.data.scans.read_errors import ScanReadError, itk_message
from lungexp.data.scans.scan import Scan

__all__ = ["SCAN_SUFFIXES", "ScanHeader", "read_scan", "read_scan_header", "scan_suffix"]


@dataclass(frozen=True, eq=False)
class ScanHeader:
    """The geometry of a scan without its voxels, to check coordinates against it cheaply.

    Fields follow :class:`~lungexp.data.scans.scan.Scan`: ``size_xyz`` (voxels), ``origin`` and
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
        """A voxel-less :class:`Scan` with this header's geometry, which keeps the world <-> voxel
        maths in one place for header-only checks."""
        return Scan.without_voxels(self.shape_zyx, self.origin, self.spacing, self.direction, source=self.path)

    def contains_world(self, world_xyz: np.ndarray) -> np.ndarray:
        """Whether world points ``(x, y, z)`` mm fall inside the scan; ``(3,)`` or ``(N, 3)``."""
        return self.geometry().contains_world(world_xyz)

    def world_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """World bounding box ``(low_xyz, high_xyz)`` of the voxel grid, voxel edges included."""
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.shape_zyx], indexing="ij"))
        world = self.geometry().voxel_to_world(corners.reshape(3, -1).T)
        return world.min(axis=0), world.max(axis=0)


def read_scan(path: str | Path) -> Scan:
    """Read a scan file with its geometry, after every check (see module doc).

    Values are returned as stored (LUNA16 and converted DICOM: int16 HU). A file with NaN or infinite
    voxels ("no data") is refused rather than filled with a guessed value.
    """
    path = Path(path)
    reader, file_format = _read_header(path)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read it ({itk_message(error)}); "
                            "check that the file is a complete, uncorrupted scan") from None
    scan = Scan.from_sitk(image, source=path)
    non_finite = _non_finite_voxels(path, scan.array, file_format)
    if non_finite:
        raise ScanReadError(f"{path}: {non_finite} of {scan.array.size} voxels are NaN or infinite (no data); "
                            "lungexp does not guess values for them: fill them (e.g. with -1000 HU, air) and "
                            "save the scan again")
    check_hounsfield(scan)
    return scan


def _non_finite_voxels(path: Path, array: np.ndarray, file_format: ScanFormat) -> int:
    """The NaN and infinite voxels as the file stores them (ITK's NIfTI reader turns them into 0)."""
    if file_format.image_io == "NiftiImageIO":
        return count_non_finite_voxels(path)
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def read_scan_header(path: str | Path) -> ScanHeader:
    """Read only the geometry of a scan file, not its voxels (after the same header checks as :func:`read_scan`)."""
    path = Path(path)
    reader, _ = _read_header(path)
    return ScanHeader(
        size_xyz=np.array(reader.GetSize(), dtype=np.int64),
        origin=np.array(reader.GetOrigin(), dtype=np.float64),
        spacing=np.array(reader.GetSpacing(), dtype=np.float64),
        direction=np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
        path=path,
    )


def scan_suffix(path: Path) -> str | None:
    """The scan-format suffix of ``path`` (``.nii.gz`` counts as one), or None for other files."""
    found = scan_format(path)
    return found[0] if found else None


def _read_header(path: Path) -> tuple[sitk.ImageFileReader, ScanFormat]:
    """A reader of ``path`` that has read and checked the header, and the file's format: the file exists,
    has a supported suffix, passes its format's header check, and ITK finds a 3D volume of sound geometry in it."""
    if not path.is_file():
        raise ScanReadError(f"{path}: scan file not found; check the path (and data.root)")
    found = scan_format(path)
    if found is None:
        raise ScanReadError(f"{path}: unsupported scan format; expected one of {', '.join(SCAN_SUFFIXES)} "
                            "(convert DICOM series with `python -m lungexp.convert`)")
    _, file_format = found
    file_format.check_header(path)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(file_format.image_io)  # ITK would otherwise try every reader it has
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read the header ({itk_message(error)}); "
                            "check that the file is a complete, uncorrupted scan") from None
    if reader.GetDimension() != 3:
        raise ScanReadError(f"{path}: a {reader.GetDimension()}D image; lungexp needs a 3D CT volume")
    _check_geometry(path, reader)
    return reader, file_format


def _check_geometry(path: Path, reader: sitk.ImageFileReader) -> None:
    """Voxel sizes must be positive and origin and axes finite and independent, else world coordinates
    would land nowhere (or fail later, far from the file)."""
    spacing, origin = np.array(reader.GetSpacing()), np.array(reader.GetOrigin())
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ScanReadError(f"{path}: voxel spacing {spacing.tolist()} must be three positive sizes in mm; "
                            "fix the header or save the scan again")
    if not np.all(np.isfinite(origin)) or not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise ScanReadError(f"{path}: origin {origin.tolist()} or direction {direction.ravel().tolist()} is damaged "
                            "(not finite, or axes that coincide); fix the header or save the scan again")
