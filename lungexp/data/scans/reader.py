"""Reading one scan file (``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``), or only its header.

SimpleITK does the decoding, but its error messages ("Could not create IO object", "Buffer size
mismatch") rarely say which file is at fault or what to do, so every failure here is a
:class:`~lungexp.data.scans.errors.ScanReadError` that names the file, the problem and the fix.
MetaImage headers are checked first (:func:`~lungexp.data.scans.metaimage.check_mhd`), because a
missing or truncated ``.raw`` is by far the most common problem with a partial LUNA16 download.

Arrays are indexed ``(z, y, x)`` and geometry is ``(x, y, z)``, as in :mod:`lungexp.data.scans.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel
import numpy as np
import SimpleITK as sitk

from lungexp.data.scans.errors import ScanReadError, itk_message
from lungexp.data.scans.metaimage import check_mhd
from lungexp.data.scans.scan import Scan

SCAN_SUFFIXES = (".mhd", ".nii.gz", ".nii", ".nrrd")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


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
    """Read a ``.mhd``/``.nii``/``.nii.gz``/``.nrrd`` volume with its geometry.

    Values are returned as stored (LUNA16 and converted DICOM: int16 HU). A file with NaN or infinite
    voxels ("no data") is refused rather than filled with a guessed value.
    """
    path = _check_scan_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read it ({itk_message(error)}); "
                            "check that the file is a complete, uncorrupted scan") from None
    try:
        scan = Scan.from_sitk(image, source=path)
    except ValueError as error:
        raise ScanReadError(f"{error}; lungexp needs a 3D CT volume") from None
    non_finite = _non_finite_voxels(path, scan.array)
    if non_finite:
        raise ScanReadError(f"{path}: {non_finite} of {scan.array.size} voxels are NaN or infinite (no data); "
                            "lungexp does not guess values for them: fill them (e.g. with -1000 HU, air) and "
                            "save the scan again")
    return scan


def _non_finite_voxels(path: Path, array: np.ndarray) -> int:
    """The NaN and infinite voxels as the file stores them. ITK's NIfTI reader turns them into 0 (which
    reads as water, 0 HU), so a NIfTI of a floating-point datatype is read again with nibabel, which
    keeps them."""
    if scan_suffix(path) in _NIFTI_SUFFIXES:
        image = cast(nibabel.Nifti1Image, nibabel.load(path))  # load is typed as any image; NIfTI 1 or 2 here
        if not np.issubdtype(image.header.get_data_dtype(), np.floating):
            return 0
        array = np.asanyarray(image.dataobj)
    elif not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def read_scan_header(path: str | Path) -> ScanHeader:
    """Read only the geometry of a scan file, not its voxels."""
    path = _check_scan_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ScanReadError(f"{path}: SimpleITK could not read the header ({itk_message(error)})") from None
    if reader.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 3D volume, got {reader.GetDimension()}D")
    return ScanHeader(
        size_xyz=np.array(reader.GetSize(), dtype=np.int64),
        origin=np.array(reader.GetOrigin(), dtype=np.float64),
        spacing=np.array(reader.GetSpacing(), dtype=np.float64),
        direction=np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
        path=path,
    )


def scan_suffix(path: Path) -> str | None:
    """The scan-format suffix of ``path`` (``.nii.gz`` counts as one), or None for other files."""
    name = path.name.lower()
    return next((suffix for suffix in SCAN_SUFFIXES if name.endswith(suffix)), None)


def _check_scan_file(path: str | Path) -> Path:
    """The path, after checking it exists, has a supported suffix and (``.mhd``) a sound header."""
    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"{path}: scan file not found; check the path (and data.root)")
    if scan_suffix(path) is None:
        raise ScanReadError(f"{path}: unsupported scan format; expected one of {', '.join(SCAN_SUFFIXES)} "
                            "(convert DICOM series with `python -m lungexp.convert`)")
    if path.suffix.lower() == ".mhd":
        check_mhd(path)
    return path
