"""NIfTI (``.nii``, ``.nii.gz``): the header checks ITK skips, and the voxels ITK reads as 0.

ITK reads a damaged NIfTI header without a word: voxel sizes (``pixdim``) that are negative, 0 or
NaN become their absolute value or 1; of a qform and an sform that disagree it uses one; a header
of a ``.hdr``/``.img`` pair saved as ``.nii`` makes it read another file. Each is refused here,
naming the file, from the header as stored (nibabel's loader repairs some fields before one sees
them). World coordinates in a NIfTI header are RAS; ITK turns them into LPS, as every lungexp scan.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import cast

import nibabel
import numpy as np
from nibabel.openers import ImageOpener

from lungexp.data.scans.read_errors import ScanReadError

_SINGLE_FILE_MAGICS = (b"n+1", b"n+2")  # NIfTI-1 and NIfTI-2 with the voxels in the same file
# How far a qform and an sform written from one geometry may disagree: float32 rounding, and the qform's
# float32 quaternion, which alone turns the axes by up to ~0.06 degrees near 180-degree rotations.
_ORIGIN_TOLERANCE_MM = 1e-3
_AXIS_ANGLE_TOLERANCE_DEG = 0.1
_VOXEL_SIZE_TOLERANCE = 1e-4  # relative


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI header ITK would read wrongly (see module doc); :class:`ScanReadError` naming ``path``."""
    header = _stored_header(path)
    magic = bytes(header["magic"].item())
    if not magic.startswith(_SINGLE_FILE_MAGICS):
        raise ScanReadError(f"{path}: its header (magic {magic!r}) is not a single-file NIfTI, whose voxels follow "
                            "the header (magic b'n+1'); save the scan as one .nii or .nii.gz")
    dims = int(header["dim"][0])
    sizes = header["pixdim"][1 : 1 + min(max(dims, 0), 3)]
    if not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise ScanReadError(f"{path}: pixdim = {_numbers(sizes)} (the voxel sizes in mm) must be positive; ITK would "
                            "use other sizes without a word; fix pixdim in the header or save the scan again")
    try:
        qform, qform_code = header.get_qform(coded=True)
        sform, sform_code = header.get_sform(coded=True)
    except ValueError as error:  # e.g. quaternion parameters that are no rotation
        raise ScanReadError(f"{path}: its qform/sform cannot be read ({error}); fix the header") from None
    if qform_code > 0 and sform_code > 0:
        _check_forms_agree(path, qform, int(qform_code), sform, int(sform_code))


def count_non_finite_voxels(path: Path) -> int:
    """NaN and infinite voxels as the file stores them (ITK reads them as 0, i.e. water at 0 HU); only a
    floating-point datatype can hold them."""
    image = cast(nibabel.Nifti1Image, nibabel.load(path))  # load is typed as any image; NIfTI 1 or 2 here
    if not np.issubdtype(image.header.get_data_dtype(), np.floating):
        return 0
    array = np.asanyarray(image.dataobj)
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _stored_header(path: Path) -> nibabel.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header as stored, unrepaired."""
    try:
        with ImageOpener(str(path)) as opener:  # gunzips a .nii.gz
            block = opener.read(nibabel.Nifti2Header.template_dtype.itemsize)
    except (OSError, EOFError, zlib.error) as error:
        raise ScanReadError(f"{path}: cannot read it as NIfTI ({error}); check that the file is a complete, "
                            "uncorrupted scan") from None
    for header_class in (nibabel.Nifti1Header, nibabel.Nifti2Header):
        size = header_class.template_dtype.itemsize
        if len(block) >= size and size in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")):
            return header_class(block[:size], check=False)
    raise ScanReadError(f"{path}: not a NIfTI file (no NIfTI header at its start); check that the file is a complete, "
                        "uncorrupted scan")


def _check_forms_agree(path: Path, qform: np.ndarray, qform_code: int, sform: np.ndarray, sform_code: int) -> None:
    """Both transforms are set (codes > 0): they must place the voxels alike, as ITK reads only one."""
    q_axes, s_axes = qform[:3, :3], sform[:3, :3]
    q_sizes, s_sizes = np.linalg.norm(q_axes, axis=0), np.linalg.norm(s_axes, axis=0)
    cosines = np.sum(q_axes * s_axes, axis=0) / (q_sizes * s_sizes)
    angle = float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())
    shift = float(np.linalg.norm(qform[:3, 3] - sform[:3, 3]))
    resized = float((np.abs(q_sizes - s_sizes) / s_sizes).max())
    if shift <= _ORIGIN_TOLERANCE_MM and angle <= _AXIS_ANGLE_TOLERANCE_DEG and resized <= _VOXEL_SIZE_TOLERANCE:
        return
    raise ScanReadError(
        f"{path}: its qform (qform_code {qform_code}) and sform (sform_code {sform_code}) disagree: the first voxel "
        f"at {_numbers(qform[:3, 3])} vs {_numbers(sform[:3, 3])} mm (RAS, {shift:.3f} mm apart), voxel sizes "
        f"{_numbers(q_sizes)} vs {_numbers(s_sizes)} mm, axes up to {angle:.3f} degrees apart; ITK would use one "
        "of them without a word; fix the header so both agree, or set the code of the wrong one to 0 (unknown)"
    )


def _numbers(values: np.ndarray) -> str:
    return f"({', '.join(f'{value:g}' for value in values)})"
