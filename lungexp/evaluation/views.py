"""Axial, coronal and sagittal slices through the centre of a CT patch, as a radiologist views them.

Patches are ``(z, y, x)`` arrays on a grid aligned with the world (LPS) axes: +x is the patient's
left, +y posterior, +z superior (:mod:`lungexp.data.patches`). Shown in radiological convention:
axial with anterior up and the patient's right on the image's left, coronal and sagittal with
superior up, sagittal with anterior on the left. Grey levels are the HU window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

VIEWS = ("axial", "coronal", "sagittal")
HEATMAP_CMAP = "jet"
HEATMAP_ALPHA = 0.4


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The three slices through the patch centre (voxel ``size // 2``, where the candidate lies), each
    oriented for display with row 0 at the top."""
    z, y, x = (size // 2 for size in volume.shape)
    return {
        "axial": volume[z],                  # rows y (anterior first), columns x (patient's right first)
        "coronal": volume[::-1, y, :],       # rows z (superior first), columns x
        "sagittal": volume[::-1, :, x],      # rows z (superior first), columns y (anterior first)
    }


def draw_views(axes: Sequence[Axes], hu: np.ndarray, hu_window: tuple[float, float],
               heatmap: np.ndarray | None = None) -> None:
    """Draw the central slices of ``hu`` (``(z, y, x)`` HU) on three axes, with an optional ``heatmap``
    (same shape, values in [0, 1]) blended over them."""
    slices = central_slices(hu)
    heat = central_slices(heatmap) if heatmap is not None else None
    for ax, view in zip(axes, VIEWS, strict=True):
        ax.imshow(slices[view], cmap="gray", vmin=hu_window[0], vmax=hu_window[1], interpolation="nearest")
        if heat is not None:
            ax.imshow(heat[view], cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=HEATMAP_ALPHA, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(view, fontsize=8)


def short_uid(seriesuid: str, keep: int = 12) -> str:
    """The distinguishing tail of a DICOM UID (LUNA16's differ in their last digits)."""
    return seriesuid if len(seriesuid) <= keep + 1 else f"…{seriesuid[-keep:]}"
