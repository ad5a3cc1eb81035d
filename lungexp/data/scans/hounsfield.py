"""Hounsfield units: the value of air, and voxels stored as CT stores them (int16 HU)."""

from __future__ import annotations

import numpy as np

# Air on the Hounsfield scale (by definition): the fill outside a scan or a body.
AIR_HU = -1000


def as_int16_hu(array: np.ndarray, source: object = None) -> np.ndarray:
    """``array`` as int16 (rounded if floating point); ``ValueError`` naming ``source`` if values are
    not finite or do not fit int16."""
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
