"""Where training reads the patch cache from (``data.cache_memory``): the memory map, host memory, or the device.

``mmap`` (default) reads each patch from the memory-mapped ``patches.npy`` in DataLoader workers.
``ram`` reads the whole array into host memory once; forked DataLoader workers share it. ``device``
puts the training and validation patches on the training device as one ``int16`` tensor per split
and gathers each batch there by index (the sampler's indices, so the same patches in the same
order), with the HU window applied on the device: no DataLoader worker touches a patch.

Before anything is loaded, the bytes needed are compared with the memory free
(:func:`check_fits`), so a cache that does not fit fails in seconds with the size needed, the size
free and the alternative, not with an out-of-memory error minutes later.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psutil
import torch

from lungexp.data.names import COVARIATES_KEY, IMAGE_KEY, INDEX_KEY, LABEL_KEY
from lungexp.data.patches.cache import PatchCache
from lungexp.data.patches.normalization import HUWindow
from lungexp.utils.errors import LungexpError

GB = 1e9
LOAD_CHUNK = 4096  # patches copied to the device at a time: 268 MB of host memory at 32³


class CacheMemoryError(LungexpError):
    """The patches asked for by ``data.cache_memory`` do not fit in the memory free."""


def patch_bytes(count: int, patch_shape: Sequence[int]) -> int:
    """Bytes of ``count`` int16 patches of ``patch_shape`` (C, D, H, W)."""
    return count * int(np.prod(patch_shape)) * np.dtype(np.int16).itemsize


def free_bytes(device: torch.device) -> int:
    """Memory free on ``device``: the GPU's free memory, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def check_fits(needed: int, free: int, *, what: str, where: str, alternative: str, copies: int = 1) -> None:
    """Raise :class:`CacheMemoryError` unless ``copies`` × ``needed`` bytes fit in ``free``.

    Args:
        needed: bytes one copy takes.
        free: bytes free where the copies go.
        what: the setting and what it loads, e.g. ``data.cache_memory=device (1200 training and validation patches)``.
        where: the memory, e.g. ``cuda:0``.
        alternative: what to do instead.
        copies: the copies held in that memory (DDP ranks on one machine each hold their own).
    """
    if copies * needed <= free:
        return
    held = f"{copies} ranks each hold {needed / GB:.2f} GB, {copies * needed / GB:.2f} GB in all" if copies > 1 \
        else f"needs {needed / GB:.2f} GB"
    raise CacheMemoryError(f"{what}: {held}, but {where} has {free / GB:.2f} GB free; {alternative}")


def read_into_memory(cache: PatchCache) -> np.ndarray:
    """The whole patch array of ``cache``, read from disk into host memory (``data.cache_memory=ram``)."""
    return np.load(cache.patches_path)


class DeviceBatches:
    """The ``collate_fn`` of ``data.cache_memory=device``: a list of positions in a split -> its batch,
    gathered from the split's patches on the device and put through the HU window there.

    Args:
        patches: the split's patches, ``(N, C, D, H, W)`` int16, on the device.
        labels: ``(N,)`` float labels; rows: ``(N,)`` cache rows (the batch's ``index``).
        window: the HU window and normalisation of the DataLoader path.
        covariates: ``(N, k)`` covariates of the split's samples, or None (the batch then has none, as a
            :class:`~lungexp.data.loading.dataset.PatchDataset` without them).
    """

    def __init__(self, patches: torch.Tensor, labels: np.ndarray, rows: np.ndarray, window: HUWindow,
                 covariates: np.ndarray | None = None) -> None:
        self.patches = patches
        self.labels = torch.as_tensor(labels, device=patches.device)
        self.rows = torch.as_tensor(rows, device=patches.device)
        self.window = window
        self.covariates = None if covariates is None else torch.as_tensor(covariates, device=patches.device)

    @classmethod
    def load(cls, patches: np.ndarray, rows: np.ndarray, labels: np.ndarray, window: HUWindow,
             device: torch.device, covariates: np.ndarray | None = None) -> DeviceBatches:
        """Copy the ``rows`` of ``patches`` (in row order) to ``device``, a chunk at a time (host memory stays small)."""
        rows = np.asarray(rows)
        split = torch.empty((len(rows), *patches.shape[1:]), dtype=torch.int16, device=device)
        for start in range(0, len(rows), LOAD_CHUNK):
            chunk = rows[start:start + LOAD_CHUNK]
            split[start:start + len(chunk)] = torch.from_numpy(np.ascontiguousarray(patches[chunk])).to(device)
        return cls(split, labels, rows, window, covariates)

    def __call__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(positions, device=self.patches.device)
        batch = {IMAGE_KEY: self.window.batch(self.patches.index_select(0, index)),
                 LABEL_KEY: self.labels[index], INDEX_KEY: self.rows[index]}
        if self.covariates is not None:
            batch[COVARIATES_KEY] = self.covariates[index]
        return batch
