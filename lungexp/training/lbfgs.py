"""The optimizer of the tabular baseline (``model=tabular``): full-batch L-BFGS, run to convergence at each step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from lungexp.models.tabular import TabularNet
from lungexp.utils.errors import ArgumentError


def full_batch_lbfgs(params: Iterable[Any], lr: float = 1.0, weight_decay: float = 0.0, max_iter: int = 500,
                     history_size: int = 20, tolerance_grad: float = 1e-9, tolerance_change: float = 1e-12
                     ) -> torch.optim.LBFGS:
    """:class:`torch.optim.LBFGS` with a strong-Wolfe line search, for one batch of the whole training split (the
    datamodule serves it so with ``data.images=false``): deterministic, and each step runs up to ``max_iter``
    iterations, so a convex model (logistic regression) is fitted in its first step.

    ``weight_decay`` is the key every model's optimizer has (``conf/base_classifier.yaml``) and must stay 0: the
    tabular model's L2 penalty is part of its loss, scikit-learn's, set by ``model.net.C``
    (:meth:`~lungexp.models.tabular.TabularNet.penalty`).
    """
    if weight_decay != 0:
        raise ArgumentError(f"weight_decay={weight_decay}: the tabular model is penalised as scikit-learn's "
                            "LogisticRegression, by model.net.C (smaller: stronger); leave weight_decay at 0")
    return torch.optim.LBFGS(params, lr=lr, max_iter=max_iter, history_size=history_size,
                             tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                             line_search_fn="strong_wolfe")


def fitted_logistic_regression(covariates: torch.Tensor, labels: torch.Tensor, C: float = 1.0) -> nn.Linear:
    """The logistic regression of 0/1 ``labels`` on ``(samples, k)`` standardised ``covariates``, fitted as the
    tabular baseline is (scikit-learn's objective with L2 ``C``, full-batch L-BFGS from zero weights): where a
    covariate model starts (:meth:`~lungexp.models.fusion.CovariateFusion.start_from`)."""
    model = TabularNet(covariates.shape[1], C=C)  # its scaler unfitted: the identity, the inputs are standardised
    optimizer = full_batch_lbfgs(model.parameters())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = model(covariates.float()).squeeze(-1)
        loss = functional.binary_cross_entropy_with_logits(logits, labels.float()) + model.penalty(len(labels))
        loss.backward()
        return loss

    optimizer.step(closure)
    linear = model.head[-1]
    assert isinstance(linear, nn.Linear)
    return linear
