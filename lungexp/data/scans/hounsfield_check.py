"""Is a scan plausibly CT in Hounsfield units? Checked on every scan as it is read, from a file
(:func:`~lungexp.data.scans.reader.read_scan`) or a DICOM series (:mod:`~lungexp.data.scans.dicom`).

A header can be wrong in ways its byte size does not reveal: a wrong byte order or a signed type
read as unsigned turns air into +6000 or +64000, a DICOM series without its RescaleIntercept gives
raw stored values (air near 0 instead of -1000), a broken export gives a constant volume. Any of
these would train and test on nonsense without a word; here each is an error naming the file,
what looks wrong and which header field to check.

The rules, tuned on the real LIDC-IDRI scans and the synthetic ones, with wide margins:
padding outside the scanner's field of view (the minimum value, when it covers more than 1 % of
the voxels, e.g. -2048 or -3024) is ignored; then the 1st to 99th percentiles must span at least
100 HU, the 0.1st and 99.9th percentiles must lie in [-3100, 4000] HU, and at least 1 % of the
voxels must be air or lung (<= -500 HU; real chest CTs have about 50 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungexp.data.scans.formats import scan_format
from lungexp.data.scans.read_errors import ScanReadError
from lungexp.data.scans.scan import Scan

# Percentiles of about this many voxels (an even grid of them) describe a scan well and cost ~20 ms.
SAMPLE_VOXELS = 300_000
PADDING_FRACTION = 0.01
MIN_SPREAD_HU = 100.0
HU_RANGE = (-3100.0, 4000.0)
AIR_OR_LUNG_MAX_HU = -500.0
MIN_AIR_FRACTION = 0.01

_DICOM_FIELDS = ("RescaleSlope (0028,1053), RescaleIntercept (0028,1052) and PixelRepresentation (0028,0103) "
                 "of the DICOM slices")


def check_hounsfield(scan: Scan) -> None:
    """Raise :class:`~lungexp.data.scans.read_errors.ScanReadError` if ``scan`` does not look like CT in HU (see module doc)."""
    step = max(1, round((scan.array.size / SAMPLE_VOXELS) ** (1 / 3)))
    values = np.asarray(scan.array[::step, ::step, ::step], dtype=np.float64).ravel()
    name, fields = _describe(scan.source)
    if not np.isfinite(values).all():
        raise ScanReadError(f"{name}: has NaN or infinite voxel values; check {fields}")
    lowest = values.min()
    if (values == lowest).mean() > PADDING_FRACTION and (values > lowest).any():
        values = values[values > lowest]
    low, p1, median, p99, high = np.percentile(values, [0.1, 1, 50, 99, 99.9])
    if p99 - p1 < MIN_SPREAD_HU:
        raise ScanReadError(f"{name}: the voxel values barely vary (1st to 99th percentile {p1:.0f} to {p99:.0f}), "
                            f"so the file holds no CT image; check {fields}, or re-export the scan")
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise ScanReadError(f"{name}: voxel values {low:.0f} to {high:.0f} (0.1st to 99.9th percentile) are far "
                            f"outside CT's range in HU (about -1024 for air to 3000 for dense bone): the header "
                            f"probably declares the wrong type or byte order; check {fields}")
    air = float((values <= AIR_OR_LUNG_MAX_HU).mean())
    if air < MIN_AIR_FRACTION:
        raise ScanReadError(f"{name}: no air or lung: {air:.1%} of the voxels are below {AIR_OR_LUNG_MAX_HU:.0f} HU (median "
                            f"{median:.0f}), so these are probably not Hounsfield units, e.g. stored pixel values "
                            f"without RescaleSlope/RescaleIntercept applied (air then reads about 0 instead of "
                            f"-1000); check {fields}")


def _describe(source: object) -> tuple[str, str]:
    """The scan's name for messages and the header fields that decide how its values are read."""
    path = Path(str(source))
    found = scan_format(path)
    if found is None:
        return f"DICOM series in {path}", _DICOM_FIELDS
    return str(path), found[1].value_fields
