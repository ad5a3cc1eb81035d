"""CT scans: reading and writing them, their geometry and their Hounsfield units, one job per module.

* :mod:`~lungexp.data.scans.reader`: one scan file or its header, with every check (the one way files are read);
* :mod:`~lungexp.data.scans.formats`: the file formats (``.mhd``/``.mha``, ``.nii``/``.nii.gz``,
  ``.nrrd``/``.nhdr``), each with its ITK reader and header check;
* :mod:`~lungexp.data.scans.metaimage`, :mod:`~lungexp.data.scans.nifti`, :mod:`~lungexp.data.scans.nrrd`:
  those header checks (and atomic ``.mhd``/``.raw`` writing); :mod:`~lungexp.data.scans.data_files`:
  the rule for the data files a header names (in the header's folder);
* :mod:`~lungexp.data.scans.dicom`: DICOM series discovery, slice-stack checks and reading (for ``convert``
  and ``predict``);
* :mod:`~lungexp.data.scans.hounsfield_check`: are the voxels plausibly CT in HU (every scan read);
* :mod:`~lungexp.data.scans.scan_index`: the scans under a data root (the LUNA16 ``subsetK`` layout).

Every failure is a :class:`ScanReadError` naming the file or folder, the problem and the fix.
"""

from lungexp.data.scans.dicom import find_dicom_series, iter_dicom_series, read_dicom_series
from lungexp.data.scans.metaimage import write_mhd
from lungexp.data.scans.read_errors import ScanReadError
from lungexp.data.scans.reader import SCAN_SUFFIXES, ScanHeader, read_scan, read_scan_header
from lungexp.data.scans.scan_index import index_scans

__all__ = [
    "SCAN_SUFFIXES",
    "ScanHeader",
    "ScanReadError",
    "find_dicom_series",
    "index_scans",
    "iter_dicom_series",
    "read_dicom_series",
    "read_scan",
    "read_scan_header",
    "write_mhd",
]
