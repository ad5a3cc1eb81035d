"""Test-time augmentation: a network's probabilities averaged over mirrored copies of its input.

``flips`` scores every one of the 8 combinations of mirroring the three spatial axes of a
``(B, C, D, H, W)`` batch (the identity included) and averages the probabilities, as nnU-Net and
nnDetection mirror at test time. A nodule is no less a nodule in a mirrored scan, so the views are
equally valid inputs, and averaging them removes the part of a prediction that depends on orientation.
Probabilities (not logits) are averaged, as an ensemble's members are (:mod:`lungexp.inference.ensemble`).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import torch

from lungexp.utils.errors import look_up_option

TTA_MODES = ("none", "flips")
SPATIAL_DIMS = (2, 3, 4)  # D, H, W of (B, C, D, H, W)
FLIPS: tuple[tuple[int, ...], ...] = tuple(dims for count in range(4) for dims in combinations(SPATIAL_DIMS, count))


def check_tta(mode: str, key: str = "tta") -> str:
    """``mode`` if it is one of :data:`TTA_MODES`, else a :class:`~lungexp.utils.errors.ConfigError` naming ``key``."""
    return look_up_option(key, mode, TTA_MODES)


def tta_probabilities(probabilities_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      mode: str) -> torch.Tensor:
    """The mean of ``probabilities_of`` (per-sample probabilities of a batch) over the views of ``mode``."""
    if check_tta(mode) == "none":
        return probabilities_of(images)
    views = [probabilities_of(torch.flip(images, dims) if dims else images).float() for dims in FLIPS]
    return torch.stack(views).mean(dim=0)
