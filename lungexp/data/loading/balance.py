"""Class balance of the training loader (``data.balance``): plain shuffling or a balanced sampler,
both seeded per epoch (:mod:`lungexp.data.loading.epoch_samplers`), so a resumed run draws what an unbroken one does.

torch is imported only to make the sampler, so that the options can be checked before that import
(:mod:`lungexp.data.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungexp.utils.errors import ArgumentError, check_int, check_number, look_up_option

if TYPE_CHECKING:
    from torch.utils.data import Sampler

SAMPLERS = ("balanced", "none")


@dataclass(frozen=True)
class BalanceSpec:
    """How training patches are drawn.

    Args:
        sampler: ``balanced`` draws positives with probability ``positive_fraction`` (with
            replacement); ``none`` shuffles, each patch once per epoch.
        positive_fraction: expected share of positives per epoch with ``balanced``.
        samples_per_epoch: draws per epoch with ``balanced``; None = the training split's size.
    """

    sampler: str = "balanced"
    positive_fraction: float = 0.5
    samples_per_epoch: int | None = None

    @classmethod
    def from_config(  # each parameter defaults to its field above: one default per option
        cls, sampler: str = sampler, positive_fraction: float = positive_fraction,
        samples_per_epoch: int | None = samples_per_epoch,
    ) -> BalanceSpec:
        """Check the balance options; :class:`~lungexp.utils.errors.ArgumentError` names the parameter of a bad
        value."""
        return cls(
            sampler=look_up_option("sampler", sampler, SAMPLERS, error=ArgumentError),
            positive_fraction=check_number("positive_fraction", positive_fraction, 0, 1,
                                           low_open=True, high_open=True, error=ArgumentError),
            samples_per_epoch=check_int("samples_per_epoch", samples_per_epoch, minimum=1,
                                        allow_none=True, error=ArgumentError),
        )

    def sampler_for(self, labels: np.ndarray, seed: int) -> Sampler:
        """The training sampler for 0/1 ``labels`` (both classes present), drawing epoch ``e`` from ``seed + e``."""
        import torch

        from lungexp.data.loading.epoch_samplers import EpochSeededRandomSampler, EpochSeededWeightedSampler

        if self.sampler == "none":
            return EpochSeededRandomSampler(range(len(labels)), seed=seed)
        positives = labels.sum()
        weights = np.where(labels > 0, self.positive_fraction / positives,
                           (1 - self.positive_fraction) / (len(labels) - positives))
        return EpochSeededWeightedSampler(torch.as_tensor(weights, dtype=torch.double),
                                          self.samples_per_epoch or len(labels), replacement=True, seed=seed)
