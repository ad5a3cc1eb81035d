"""Covariates (e.g. the nodule's diameter) as a network's input beside the image, by late fusion.

:class:`CovariateFusion` wraps any network of :mod:`lungexp.models` (the contract of :mod:`lungexp.models.layers`:
its classifier is ``head`` = pooling, flatten, dropout, linear): the network keeps everything up to its pooled (and
dropped-out) image features, and a new linear ``head`` reads those features together with the standardised
covariates. So the image features and the covariates meet only in the last, linear layer: the network can learn
what the image adds to, say, the diameter, without spending capacity on re-deriving it, and the head's weights of
the covariates say how much each one counts.

Standardisation is part of the model (:class:`Standardize`): its mean and standard deviation are buffers, set
once per fit from the training split (:meth:`Standardize.fit`) and stored in every checkpoint, so evaluation,
prediction and ensembles use the training statistics whatever data they score. A model takes the covariates as
read from the CSV.

Backbone vs head (pretrained loading, fine-tuning): the wrapped network is ``image`` (its pretrained weights load
there), the new linear layer is ``head``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGE_NETWORK = "image"  # the attribute (and state-dict prefix) of the wrapped network


class Standardize(nn.Module):
    """``(x - mean) / std`` per covariate, with ``mean`` and ``std`` buffers (saved with the model).

    Until :meth:`fit` they are 0 and 1 (the identity).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_covariates: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_covariates))
        self.register_buffer("std", torch.ones(num_covariates))

    def fit(self, values: np.ndarray, names: Sequence[str] = ()) -> None:
        """Set the statistics from the ``(samples, k)`` training covariates: mean and population standard deviation
        (as scikit-learn's ``StandardScaler``); a constant covariate keeps a standard deviation of 1 (with a
        warning naming it: it cannot inform the model)."""
        values = np.asarray(values, dtype=np.float64)
        mean, std = values.mean(axis=0), values.std(axis=0)
        constant = std == 0
        for index in map(int, np.flatnonzero(constant)):
            log.warning("covariate %s is the same (%g) for every training sample: it cannot inform the model",
                        names[index] if index < len(names) else index, mean[index])
        std[constant] = 1.0
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))

    def forward(self, covariates: torch.Tensor) -> torch.Tensor:
        return (covariates.to(self.mean.dtype) - self.mean) / self.std


class CovariateFusion(nn.Module):
    """A network of :mod:`lungexp.models` whose linear classifier also reads ``num_covariates`` standardised
    covariates (see the module's doc): ``forward(image, covariates)`` -> logits ``(B, num_classes)``.

    Args:
        net: the image network; its ``head`` (pooling, flatten, dropout, linear) loses its linear layer, which
            is replaced by this model's ``head``.
        num_covariates: ``k``, the covariates per sample.
    """

    def __init__(self, net: nn.Module, num_covariates: int) -> None:
        super().__init__()
        head = net.get_submodule("head")
        linear = head[-1] if isinstance(head, nn.Sequential) and len(head) else None
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{type(net).__name__}.head must end in an nn.Linear (lungexp.models.layers' contract); "
                            f"got {type(head).__name__}")
        net.head = cast(nn.Sequential, head)[:-1]  # pooled, flattened, dropped-out image features
        self.image = net
        self.scaler = Standardize(num_covariates)
        self.head = nn.Linear(linear.in_features + num_covariates, linear.out_features)

    @property
    def stem_conv(self) -> nn.Conv3d:
        return cast(nn.Conv3d, self.image.stem_conv)

    @property
    def num_covariates(self) -> int:
        return len(self.scaler.mean)

    def forward(self, image: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        features = self.image(image)
        return self.head(torch.cat([features, self.scaler(covariates).to(features.dtype)], dim=1))

    @torch.no_grad()
    def start_from(self, covariate_model: nn.Linear) -> None:
        """Start the head as ``covariate_model`` (a linear model of the standardised covariates alone, e.g. the
        logistic regression fitted on the training split), the image features' weights at 0: training then begins
        where the tabular baseline ends, and the image network learns what the covariates leave unexplained. From
        a random head, a few epochs of a small learning rate barely move the covariates' weights, so the image
        features, not the diameter, decide the first epochs (measured on the LIDC crops: docs/real_data.md)."""
        if covariate_model.weight.shape != (self.head.out_features, self.num_covariates):
            raise ValueError(f"a start for {self.num_covariates} covariates and {self.head.out_features} outputs "
                             f"needs a linear model of that shape, not {tuple(covariate_model.weight.shape)}")
        image_features = self.head.in_features - self.num_covariates
        self.head.weight[:, :image_features] = 0
        self.head.weight[:, image_features:] = covariate_model.weight
        self.head.bias.copy_(covariate_model.bias)


class CovariatesAtTrainingMean(CovariateFusion):
    """A :class:`CovariateFusion` seen as a network of the image alone, its covariates at their training mean:
    what Grad-CAM explains. The covariates enter the logit only through the linear head, as a sum, so the
    gradient of the logit with respect to any image feature map, and hence the Grad-CAM map, is the same whatever
    their values. Shares the modules (and their names) of the model it views."""

    def __init__(self, model: CovariateFusion) -> None:
        nn.Module.__init__(self)
        self.image, self.scaler, self.head = model.image, model.scaler, model.head

    def forward(self, image: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        at_mean = self.scaler.mean.expand(len(image), -1)
        return super().forward(image, at_mean if covariates is None else covariates)


def with_covariates(net: nn.Module, covariates: Sequence[str], images: bool = True) -> nn.Module:
    """The model of a run with ``covariates``: ``net`` itself without any (exactly today's network), or when it reads
    no image (``images=False``: a :class:`~lungexp.models.tabular.TabularNet`, which takes the covariates itself),
    else a :class:`CovariateFusion` of it."""
    if not images and covariate_scaler(net) is None:
        raise TypeError(f"{type(net).__name__} reads images; a model without them (images=false) must read the "
                        "covariates itself, as lungexp.models.TabularNet does")
    return CovariateFusion(net, len(covariates)) if covariates and images else net


def image_network(net: nn.Module) -> nn.Module:
    """``net`` as a function of the image alone (Grad-CAM): a covariate model with its covariates at their training
    mean (:class:`CovariatesAtTrainingMean`), any other network as it is."""
    return CovariatesAtTrainingMean(net) if isinstance(net, CovariateFusion) else net


def covariate_scaler(net: nn.Module) -> Standardize | None:
    """The standardisation of a covariate model's inputs, None for a network of the image alone."""
    scaler = getattr(net, "scaler", None)
    return scaler if isinstance(scaler, Standardize) else None


def network_inputs(image: torch.Tensor | None, covariates: torch.Tensor | None) -> list[torch.Tensor]:
    """The arguments a model is called with: the image, the covariates, or both (in that order)."""
    return [value for value in (image, covariates) if value is not None]
