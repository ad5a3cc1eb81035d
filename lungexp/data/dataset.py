"""A PyTorch dataset over cached patches: HU window normalisation and on-the-fly augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lungexp.data.cache import PatchCache
from lungexp.data.names import IMAGE_KEY, INDEX_KEY, LABEL_KEY
from lungexp.data.options import check_hu_window


class HUWindow:
    """Clip HU to ``[low, high]``, then normalise.

    ``unit`` scales the window to ``[0, 1]`` (air -> 0 for the default window), ``symmetric`` to
    ``[-1, 1]``, ``zscore`` standardises each patch to zero mean and unit variance per channel (the
    normalisation MedicalNet's weights were trained with).
    """

    def __init__(self, low: float = -1000.0, high: float = 400.0, normalize: str = "unit") -> None:
        self.low, self.high, self.normalize = check_hu_window((low, high), normalize)

    def __call__(self, hu: np.ndarray) -> torch.Tensor:
        """One patch, ``(C, ...)`` HU."""
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


class PatchDataset(Dataset):
    """Rows of a :class:`PatchCache` as ``{"image": (C, D, H, W) float, "label": float, "index": int}``
    (the keys are :mod:`lungexp.data.names`' ``IMAGE_KEY``, ``LABEL_KEY``, ``INDEX_KEY``; ``index`` is the cache row).

    Args:
        cache: the patch cache.
        rows: which cache rows form this dataset (e.g. one split).
        window: clips HU to the window, then normalises (``unit``, ``symmetric`` or ``zscore``).
        transform: optional callable on the normalised ``(C, D, H, W)`` tensor, e.g. a TorchIO
            ``Compose``; applied in DataLoader workers.
        patches: the array to read, in cache row order (``data.cache_memory=ram``: the cache read into
            memory); default the cache's memory map.
    """

    def __init__(
        self,
        cache: PatchCache,
        rows: Sequence[int],
        window: HUWindow,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        patches: np.ndarray | None = None,
    ) -> None:
        self.cache = cache
        self.patches = patches
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = cache.index["label"].to_numpy()[self.rows].astype(np.float32)
        self.window = window
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        patches = self.cache.patches if self.patches is None else self.patches
        image = self.window(patches[self.rows[i]])
        if self.transform is not None:
            image = self.transform(image)
        return {IMAGE_KEY: image, LABEL_KEY: torch.tensor(self.labels[i]), INDEX_KEY: torch.tensor(self.rows[i])}

    def class_counts(self) -> tuple[int, int]:
        """(negatives, positives)."""
        positives = int(self.labels.sum())
        return len(self.labels) - positives, positives
