"""Axial, coronal and sagittal slices through the centre of a CT patch, as a radiologist views them.

Patches are ``(z, y, x)`` arrays on a grid aligned with the world (LPS) axes: +x is the patient's
left, +y posterior, +z superior (:mod:`lungexp.data.patches.extraction`). Shown in radiological convention:
axial with anterior up and the patient's right on the image's left, coronal and sagittal with
superior up, sagittal with anterior on the left. Grey levels are the HU window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes

VIEWS = ("axial", "coronal", "sagittal")
HEATMAP_CMAP = "jet"
HEATMAP_MAX_ALPHA = 0.65  # opacity at the heatmap's peak; it fades (quadratically) to clear CT where the map is low
CENTRE_COLOR = "tab:red"


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
    (same shape, values in [0, 1]) blended over them, and ticks at the borders pointing at the centre."""
    slices = central_slices(hu)
    heat = central_slices(heatmap) if heatmap is not None else None
    for ax, view in zip(axes, VIEWS, strict=True):
        ax.imshow(slices[view], cmap="gray", vmin=hu_window[0], vmax=hu_window[1], interpolation="nearest")
        if heat is not None:
            colours = colormaps[HEATMAP_CMAP](heat[view])
            colours[..., 3] = HEATMAP_MAX_ALPHA * heat[view] ** 2
            ax.imshow(colours, interpolation="bilinear")
        _mark_centre(ax, slices[view].shape, rows_flipped=view != "axial")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(view, fontsize=8)


def _mark_centre(ax: Axes, shape: tuple[int, ...], rows_flipped: bool) -> None:
    """Short lines from each border towards the centre voxel (``size // 2``), leaving the centre itself visible."""
    rows, columns = shape
    row, column = (rows - 1 - rows // 2 if rows_flipped else rows // 2), columns // 2
    length = max(2, rows // 8)
    style: dict[str, Any] = {"color": CENTRE_COLOR, "lw": 1.5}
    ax.plot([column, column], [-0.5, length - 0.5], **style)
    ax.plot([column, column], [rows - length - 0.5, rows - 0.5], **style)
    ax.plot([-0.5, length - 0.5], [row, row], **style)
    ax.plot([columns - length - 0.5, columns - 0.5], [row, row], **style)
    ax.set(xlim=(-0.5, columns - 0.5), ylim=(rows - 0.5, -0.5))


def short_uid(seriesuid: str, keep: int = 12) -> str:
    """The distinguishing tail of a DICOM UID (LUNA16's differ in their last digits)."""
    return seriesuid if len(seriesuid) <= keep + 1 else f"…{seriesuid[-keep:]}"
