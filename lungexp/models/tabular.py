"""The tabular baseline (``model=tabular``): logistic regression, or a small MLP, on the standardised covariates
alone, no image.

On the real LIDC crops the nodule's diameter alone ranks malignant above benign better than every CNN, so every
image model is to be compared with this model fitted on the same samples, splits and folds: it is a run like any
other (its test report, cross-validation, ``lungexp.compare``, the registry, ``predict``), that reads no scan.

With ``hidden=()`` it is scikit-learn's ``LogisticRegression`` (L2 penalty, ``C``, with intercept) on the
standardised covariates: the LightningModule minimises the same objective, the mean log-loss plus
``||w||² / (2·C·n)`` (:meth:`TabularNet.penalty`, ``n`` training samples; the intercept is not penalised), by
full-batch L-BFGS from zero weights, so the fit is deterministic and converges to scikit-learn's coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lungexp.models.fusion import Standardize
from lungexp.utils.errors import ArgumentError


class TabularNet(nn.Module):
    """Logits ``(B, num_classes)`` of ``(B, num_covariates)`` covariates as read: standardised (``scaler``, fitted on
    the training split like :class:`~lungexp.models.fusion.CovariateFusion`'s), then the ``head``: one linear layer,
    or ``hidden`` layers of linear + ReLU before it.

    The whole model is its classifier ``head`` (there is no backbone to pretrain or freeze).

    Args:
        num_covariates: ``k``, the covariates per sample (``len(model.covariates)``).
        num_classes: outputs; 1 for the binary tasks.
        hidden: widths of the hidden layers; empty: logistic regression.
        C: inverse strength of the L2 penalty of the weights, as scikit-learn's ``C`` (see :meth:`penalty`).
    """

    def __init__(self, num_covariates: int, num_classes: int = 1, hidden: Sequence[int] = (), C: float = 1.0) -> None:
        super().__init__()
        if num_covariates < 1:
            raise ArgumentError(f"num_covariates={num_covariates}: the tabular model needs at least one covariate "
                                "(model.covariates=[diameter_mm])")
        if C <= 0:
            raise ArgumentError(f"C={C} must be positive (the inverse strength of the L2 penalty)")
        self.C = float(C)
        self.scaler = Standardize(num_covariates)
        widths = [num_covariates, *hidden]
        layers: list[nn.Module] = []
        for inputs, outputs in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(inputs, outputs), nn.ReLU()]
        output = nn.Linear(widths[-1], num_classes)
        if not hidden:  # logistic regression starts where scikit-learn's lbfgs does
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        self.head = nn.Sequential(*layers, output)

    def forward(self, covariates: torch.Tensor) -> torch.Tensor:
        return self.head(self.scaler(covariates))

    def penalty(self, samples: int) -> torch.Tensor:
        """``||w||² / (2·C·samples)`` of every linear layer's weights (not the biases): added to the mean log-loss over
        ``samples`` training samples, it is scikit-learn's objective divided by ``samples``, with the same minimum."""
        weights = torch.stack([layer.weight.pow(2).sum() for layer in self.head if isinstance(layer, nn.Linear)])
        return weights.sum() / (2 * self.C * samples)
