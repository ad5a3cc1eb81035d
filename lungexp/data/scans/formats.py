"""The scan file formats lungexp reads, each with the one ITK reader allowed to open it and its header check.

ITK picks a reader by trying all it has, some of which read whatever a file names; here a file's
suffix decides its format, its header is checked (damaged fields, data files outside the header's
folder) and then only that format's reader opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lungexp.data.scans.metaimage import check_mhd
from lungexp.data.scans.nifti import check_nifti
from lungexp.data.scans.nrrd import check_nrrd


@dataclass(frozen=True)
class ScanFormat:
    """A scan file format.

    Args:
        suffixes: file name endings, lower case.
        image_io: the SimpleITK ImageIO that reads it (and no other may).
        check_header: raises :class:`~lungexp.data.scans.read_errors.ScanReadError` for a header ITK would
            misread or that names a file outside its folder.
        value_fields: the header fields that decide how voxel values read, for messages about them.
    """

    suffixes: tuple[str, ...]
    image_io: str
    check_header: Callable[[Path], None]
    value_fields: str


SCAN_FORMATS = (
    ScanFormat((".mhd", ".mha"), "MetaImageIO", check_mhd,
               "ElementType and BinaryDataByteOrderMSB in the header (LUNA16 scans are MET_SHORT, little-endian, in HU)"),
    ScanFormat((".nii.gz", ".nii"), "NiftiImageIO", check_nifti, "the NIfTI datatype and scl_slope/scl_inter"),
    ScanFormat((".nrrd", ".nhdr"), "NrrdImageIO", check_nrrd, "the NRRD type and endian fields"),
)
SCAN_SUFFIXES = tuple(suffix for scan_format in SCAN_FORMATS for suffix in scan_format.suffixes)


def scan_format(path: Path) -> tuple[str, ScanFormat] | None:
    """The suffix (``.nii.gz`` counts as one) and format of ``path``, or None for other files."""
    name = path.name.lower()
    return next(((suffix, scan_format) for scan_format in SCAN_FORMATS for suffix in scan_format.suffixes
                 if name.endswith(suffix)), None)
