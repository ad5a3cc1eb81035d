"""The HU window a patch is clipped to and how it is then scaled (``data.hu_window``, ``data.normalize``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lungexp.utils.errors import ArgumentError, check_number, look_up_option

if TYPE_CHECKING:  # imported where a patch is normalised, so that data.normalize is checked before torch loads
    import torch

NORMALIZATIONS = ("unit", "symmetric", "zscore")


class HUWindow:
    """Clip HU to ``[low, high]``, then normalise.

    ``unit`` scales the window to ``[0, 1]`` (air -> 0 for the default window), ``symmetric`` to
    ``[-1, 1]``, ``zscore`` standardises each patch to zero mean and unit variance per channel (the
    normalisation MedicalNet's weights were trained with).

    Raises:
        ArgumentError: (a ``ValueError``) naming the parameter: ``low``/``high`` not numbers with
            ``low < high``, or ``normalize`` not one of :data:`NORMALIZATIONS`.
    """

    def __init__(self, low: float = -1000.0, high: float = 400.0, normalize: str = "unit") -> None:
        self.low = check_number("low", low, error=ArgumentError)
        self.high = check_number("high", high, error=ArgumentError)
        if self.high <= self.low:
            raise ArgumentError(f"high={high:g} must be more than low={low:g}")
        self.normalize = look_up_option("normalize", normalize, NORMALIZATIONS, error=ArgumentError)

    def __call__(self, hu: np.ndarray) -> torch.Tensor:
        """One patch, ``(C, ...)`` HU."""
        import torch

        return self._normalised(torch.from_numpy(np.asarray(hu, dtype=np.float32)), first_spatial_dim=1)

    def batch(self, hu: torch.Tensor) -> torch.Tensor:
        """A batch, ``(N, C, ...)`` HU of any dtype, on its own device (``data.cache_memory=device``)."""
        return self._normalised(hu.float(), first_spatial_dim=2)

    def _normalised(self, hu: torch.Tensor, first_spatial_dim: int) -> torch.Tensor:
        # The same float32 operations on both paths, so a patch comes out bit for bit the same from either.
        scaled = ((hu - self.low) / (self.high - self.low)).clamp_(0.0, 1.0)
        if self.normalize == "symmetric":
            scaled = scaled * 2.0 - 1.0
        elif self.normalize == "zscore":  # per patch and channel
            spatial = tuple(range(first_spatial_dim, scaled.ndim))
            scaled = (scaled - scaled.mean(dim=spatial, keepdim=True)) / (
                scaled.std(dim=spatial, correction=0, keepdim=True) + 1e-6)
        return scaled
