"""PyTorch datasets: cached patches, normalised by an HU window and augmented on the fly; or, for a model that reads
no image (``data.images=false``, ``model=tabular``), the samples' covariates alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lungexp.data.fingerprint import content_key
from lungexp.data.names import COVARIATES_KEY, IMAGE_KEY, INDEX_KEY, LABEL_KEY, POINT_COLUMNS
from lungexp.data.patches.cache import PatchCache
from lungexp.data.patches.normalization import HUWindow


class PatchDataset(Dataset):
    """Rows of a :class:`PatchCache` as ``{"image": (C, D, H, W) float, "label": float, "index": int}``
    (the keys are :mod:`lungexp.data.names`' ``IMAGE_KEY``, ``LABEL_KEY``, ``INDEX_KEY``; ``index`` is the cache row),
    and ``"covariates": (k,) float`` (``COVARIATES_KEY``) when ``covariates`` are given.

    Args:
        cache: the patch cache.
        rows: which cache rows form this dataset (e.g. one split).
        window: clips HU to the window, then normalises (``unit``, ``symmetric`` or ``zscore``).
        transform: optional callable on the normalised ``(C, D, H, W)`` tensor, e.g. a TorchIO
            ``Compose``; applied in DataLoader workers.
        patches: the array to read, in cache row order (``data.cache_memory=ram``: the cache read into
            memory); default the cache's memory map.
        covariates: ``(rows of the cache, k)`` values of the sample table's covariate columns, in cache row order,
            as read (the model standardises them); None: none.
        labels: ``(rows of the cache,)`` or ``(rows of the cache, heads)`` labels in cache row order (a multitask
            target's heads); None: the cache index's ``label``.
    """

    def __init__(
        self,
        cache: PatchCache,
        rows: Sequence[int] | np.ndarray,
        window: HUWindow,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        patches: np.ndarray | None = None,
        covariates: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.cache = cache
        self.patches = patches
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = (cache.index["label"].to_numpy() if labels is None else labels)[self.rows].astype(np.float32)
        self.covariates = None if covariates is None else np.asarray(covariates, dtype=np.float32)[self.rows]
        self.window = window
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        patches = self.cache.patches if self.patches is None else self.patches
        image = self.window(patches[self.rows[i]])
        if self.transform is not None:
            image = self.transform(image)
        sample = {IMAGE_KEY: image, LABEL_KEY: torch.tensor(self.labels[i]), INDEX_KEY: torch.tensor(self.rows[i])}
        if self.covariates is not None:
            sample[COVARIATES_KEY] = torch.from_numpy(self.covariates[i])
        return sample

    def class_counts(self) -> tuple[int, int]:
        """(negatives, positives)."""
        return class_counts(self.labels)


def class_counts(labels: np.ndarray) -> tuple[int, int]:
    """(negatives, positives) of 0/1 ``labels`` (a multitask target's: of its first head, the primary)."""
    labels = labels if labels.ndim == 1 else labels[:, 0]
    positives = int(labels.sum())
    return len(labels) - positives, positives


class CovariateSamples:
    """The samples of a configuration without their patches (``data.images=false``): what a
    :class:`~lungexp.data.patches.cache.PatchCache` serves, less the array, for a model of the covariates alone.

    Args:
        index: the sample table, one row per sample (its ``label``, points and covariate columns).
        covariates: the covariate columns.
    """

    def __init__(self, index: pd.DataFrame, covariates: Sequence[str]) -> None:
        self.index = index.reset_index(drop=True)
        # What the samples are: their points and covariate values (labels are never part of a data key).
        self.key = content_key({"covariates": list(covariates)}, self.index[[*POINT_COLUMNS, *covariates]], {})

    def __len__(self) -> int:
        return len(self.index)


class CovariateDataset(Dataset):
    """Samples as ``{"covariates": (k,) float, "label": float, "index": int}``, no image (``data.images=false``).

    Args:
        labels: ``(samples,)`` labels of the whole sample table (``(samples, heads)`` of a multitask target's
            heads); covariates: ``(samples, k)``, as read.
        rows: which rows of the sample table form this dataset (e.g. one split).
    """

    def __init__(self, labels: np.ndarray, covariates: np.ndarray, rows: Sequence[int] | np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)[self.rows].astype(np.float32)
        self.covariates = np.asarray(covariates, dtype=np.float32)[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {COVARIATES_KEY: torch.from_numpy(self.covariates[i]), LABEL_KEY: torch.tensor(self.labels[i]),
                INDEX_KEY: torch.tensor(self.rows[i])}

    def class_counts(self) -> tuple[int, int]:
        """(negatives, positives)."""
        return class_counts(self.labels)
