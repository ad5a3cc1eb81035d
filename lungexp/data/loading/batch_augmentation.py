"""Augmentation of a whole ``(N, C, D, H, W)`` batch on its own device (``aug=batch_light|batch_strong``).

The TorchIO options (``aug=light|strong``) transform one patch at a time in DataLoader workers, and
TorchIO's ``RandomAffine`` resamples each patch through SimpleITK; on a GPU the workers cannot keep
up. These transforms do the same things to a batch at once, where the batch already is: flips and
the affine from kornia (``affine_grid``/``grid_sample``), intensity changes in plain torch. The
LightningModule applies them to training batches after the HU window
(:meth:`~lungexp.training.module.NoduleClassifier.on_after_batch_transfer`).

Every transform fires per sample with probability ``p``, like TorchIO's, and draws its parameters
from the global torch generators (re-seeded with ``seed + epoch`` by
:class:`~lungexp.training.resume.EpochSeed`), so a resumed run augments what an unbroken one does.
The ranges follow TorchIO's arguments; the differences are named in each class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.augmentation import RandomAffine3D
from torch import nn

SPATIAL_DIMS = (-3, -2, -1)  # (D, H, W) of a (N, C, D, H, W) batch


class BatchCompose(nn.Sequential):
    """The transforms in order, each on the whole batch (kornia's 3D modules or this module's)."""

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        super().__init__(*transforms)


class RandomAffine(RandomAffine3D):
    """kornia's ``RandomAffine3D`` with TorchIO ``RandomAffine``'s arguments and padding.

    Args:
        scales: ``(low, high)`` zoom factor, drawn for each axis independently (TorchIO's default).
        degrees: rotation about each axis, drawn from ``(-degrees, degrees)``; kornia turns the three
            angles into one axis-angle rotation, TorchIO composes them as Euler angles.
        translation: shift along each axis, drawn from ``(-translation, translation)`` voxels (TorchIO
            takes mm: the same at the default 1 mm patch spacing).
        p: probability that a sample is transformed.

    Voxels mapped from outside the patch take the sample's minimum, as TorchIO's
    ``default_pad_value: minimum`` (air after the HU window), not kornia's zeros.
    """

    def __init__(self, scales: Sequence[float] = (0.9, 1.1), degrees: float = 10.0, translation: float = 2.0,
                 p: float = 0.5) -> None:
        low, high = scales
        super().__init__(degrees=degrees, scale=((low, high),) * 3, p=p, align_corners=True)
        self.translation = float(translation)

    def forward_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        params = super().forward_parameters(batch_shape)
        # kornia takes the shift as a fraction of the size; TorchIO (and this class) in voxels.
        params["translations"] = torch.empty_like(params["translations"]).uniform_(-self.translation,
                                                                                   self.translation)
        return params

    def apply_transform(self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any],
                        transform: torch.Tensor | None = None) -> torch.Tensor:
        minimum = input.amin(dim=(1, *SPATIAL_DIMS), keepdim=True)
        return super().apply_transform(input - minimum, params, flags, transform) + minimum


class RandomIntensity(nn.Module):
    """An intensity change applied to each sample with probability ``p``; the others are left as they are."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def sample_parameters(self, count: int) -> torch.Tensor:
        """One row of parameters per transformed sample, drawn on the CPU."""
        raise NotImplementedError

    def transform(self, batch: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """The chosen samples changed by their parameters (not ``apply``: that is ``nn.Module.apply(fn)``)."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(len(batch)) < self.p).nonzero().squeeze(1)
        if len(chosen) == 0:
            return batch
        chosen = chosen.to(batch.device)
        parameters = self.sample_parameters(len(chosen)).to(batch.device, batch.dtype)
        return batch.index_copy(0, chosen, self.transform(batch.index_select(0, chosen), parameters))


def _uniform(count: int, columns: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(count, columns).uniform_(low, high)


class RandomNoise(RandomIntensity):
    """Gaussian noise of zero mean and a standard deviation drawn from ``std`` (TorchIO ``RandomNoise``)."""

    def __init__(self, std: Sequence[float] = (0.0, 0.02), p: float = 0.25) -> None:
        super().__init__(p)
        self.std = tuple(std)

    def sample_parameters(self, count: int) -> torch.Tensor:
        return _uniform(count, 1, *self.std)

    def transform(self, batch: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        return batch + torch.randn_like(batch) * parameters.view(-1, 1, 1, 1, 1)


class RandomGamma(RandomIntensity):
    """``sign(x) |x| ** gamma`` with ``log(gamma)`` drawn from ``log_gamma`` (TorchIO ``RandomGamma``)."""

    def __init__(self, log_gamma: Sequence[float] = (-0.3, 0.3), p: float = 0.5) -> None:
        super().__init__(p)
        self.log_gamma = tuple(log_gamma)

    def sample_parameters(self, count: int) -> torch.Tensor:
        return _uniform(count, 1, *self.log_gamma).exp()

    def transform(self, batch: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        return batch.sign() * batch.abs().pow(parameters.view(-1, 1, 1, 1, 1))


class RandomBlur(RandomIntensity):
    """Gaussian blur with a standard deviation (voxels) drawn from ``std`` for each axis (TorchIO ``RandomBlur``,
    which takes mm: the same at 1 mm spacing). Separable convolutions, kernels cut at 3 standard deviations;
    edges are replicated (scipy, under TorchIO, reflects them)."""

    def __init__(self, std: Sequence[float] = (0.0, 2.0), p: float = 0.5) -> None:
        super().__init__(p)
        self.std = tuple(std)

    def sample_parameters(self, count: int) -> torch.Tensor:
        return _uniform(count, 3, *self.std)

    def transform(self, batch: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        count, channels = batch.shape[:2]
        radius = max(1, math.ceil(3 * self.std[1]))
        offsets = torch.arange(-radius, radius + 1, device=batch.device, dtype=batch.dtype)
        # (count, 3, taps): one normalised kernel per sample and axis; std 0 leaves the sample as it is.
        kernels = torch.exp(-0.5 * (offsets / parameters.clamp_min(1e-3).unsqueeze(-1)) ** 2)
        kernels = kernels / kernels.sum(-1, keepdim=True)
        # Samples and channels as groups of one convolution: (1, count * channels, D, H, W).
        blurred = batch.reshape(1, count * channels, *batch.shape[2:])
        for axis in range(3):
            shape = [count * channels, 1, 1, 1, 1]
            shape[2 + axis] = 2 * radius + 1
            weight = kernels[:, axis].repeat_interleave(channels, dim=0).view(shape)
            padding = [0] * 6
            padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = radius  # F.pad lists the last dim first
            blurred = F.conv3d(F.pad(blurred, padding, mode="replicate"), weight, groups=count * channels)
        return blurred.view_as(batch)
