"""Training samplers whose draws depend only on a seed and the epoch (see :mod:`lungexp.data.loading.balance`).

Lightning calls ``set_epoch(e)`` on the training sampler before every epoch; these samplers re-seed
their own generator with ``seed + e`` there, so epoch ``e`` draws the same patches whether the run
started at epoch 0 or was resumed at ``e`` (see :mod:`lungexp.training.resume`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler


class _EpochSeeded:
    generator: torch.Generator

    def _init_seed(self, seed: int) -> None:
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class EpochSeededRandomSampler(_EpochSeeded, RandomSampler):
    """Shuffling (``RandomSampler``) seeded with ``seed + epoch``."""

    def __init__(self, data_source: Any, *, seed: int, **kwargs: Any) -> None:
        super().__init__(data_source, generator=torch.Generator(), **kwargs)
        self._init_seed(seed)


class EpochSeededWeightedSampler(_EpochSeeded, WeightedRandomSampler):
    """Weighted sampling with replacement (``WeightedRandomSampler``) seeded with ``seed + epoch``."""

    def __init__(self, weights: torch.Tensor, num_samples: int, *, seed: int, replacement: bool = True) -> None:
        # torch's stub says Sequence[float]; the sampler reads any tensor-like through torch.as_tensor.
        super().__init__(weights, num_samples, replacement=replacement,  # type: ignore[arg-type]
                         generator=torch.Generator())
        self._init_seed(seed)
