"""The optimizer of the tabular baseline (``model=tabular``): full-batch L-BFGS, run to convergence at each step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lungexp.utils.errors import ArgumentError


def full_batch_lbfgs(params: Iterable[Any], lr: float = 1.0, weight_decay: float = 0.0, max_iter: int = 500,
                     history_size: int = 20, tolerance_grad: float = 1e-9, tolerance_change: float = 1e-12
                     ) -> torch.optim.LBFGS:
    """:class:`torch.optim.LBFGS` with a strong-Wolfe line search, for one batch of the whole training split (the
    datamodule serves it so with ``data.images=false``): deterministic, and each step runs up to ``max_iter``
    iterations, so a convex model (logistic regression) is fitted in its first step.

    ``weight_decay`` is the key every model's optimizer has (``conf/shared/classifier.yaml``) and must stay 0: the
    tabular model's L2 penalty is part of its loss, scikit-learn's, set by ``model.net.C``
    (:meth:`~lungexp.models.tabular.TabularNet.penalty`).
    """
    if weight_decay != 0:
        raise ArgumentError(f"weight_decay={weight_decay}: the tabular model is penalised as scikit-learn's "
                            "LogisticRegression, by model.net.C (smaller: stronger); leave weight_decay at 0")
    return torch.optim.LBFGS(params, lr=lr, max_iter=max_iter, history_size=history_size,
                             tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                             line_search_fn="strong_wolfe")
