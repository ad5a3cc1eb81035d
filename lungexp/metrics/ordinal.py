"""The metric set of an ordinal head, from class indices and cumulative probabilities P(level >= k).

Names (after ``prefix``), with levels 1 … K and the predicted level of
:func:`~lungexp.models.heads.predicted_classes` (the median of the predicted distribution): ``qwk`` (Cohen's
kappa with quadratic weights), ``mae`` (mean absolute error in levels), ``accuracy``, ``accuracy_within1``
(predicted level at most one off), and ``auroc_ge<k>`` for k = 2 … K: the binary AUROC of P(level >= k) for
"level >= k", each cut of the scale as a binary task. NaN where undefined (a cut with one side empty; kappa
when labels and predictions are one level alone), never an error, so bootstrap resamples
(:mod:`lungexp.metrics.head_metrics`) that miss levels still count. Checked against scikit-learn
(``cohen_kappa_score(weights="quadratic")``, ``mean_absolute_error``, ``roc_auc_score``) in
tests/test_target_metrics.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.classification import binary_auroc, multiclass_cohen_kappa

from lungexp.models.heads import predicted_classes


def ordinal_metrics(labels: np.ndarray, cumulative: np.ndarray, prefix: str = "") -> dict[str, float]:
    """The ordinal metric set of ``labels`` (class indices 0 … K − 1, level − 1) against ``cumulative``
    ``(N, K − 1)``: column j holds P(level >= j + 2)."""
    probabilities = torch.as_tensor(np.ascontiguousarray(cumulative, dtype=np.float64))
    target = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.int64))
    levels = probabilities.shape[1] + 1
    cuts = {f"auroc_ge{level}": math.nan for level in range(2, levels + 1)}
    if not len(target):
        return {f"{prefix}{name}": math.nan for name in ("qwk", "mae", "accuracy", "accuracy_within1", *cuts)}
    predicted = predicted_classes("ordinal", probabilities)
    errors = (predicted - target).abs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' warnings on a single level: NaN below
        kappa = float(multiclass_cohen_kappa(predicted, target, levels, weights="quadratic"))
        for level in range(2, levels + 1):
            reached = target >= level - 1
            if 0 < int(reached.sum()) < len(target):
                cuts[f"auroc_ge{level}"] = float(binary_auroc(probabilities[:, level - 2], reached.long()))
    metrics = {
        "qwk": kappa,
        "mae": float(mean_absolute_error(predicted.double(), target.double())),
        "accuracy": float((errors == 0).double().mean()),
        "accuracy_within1": float((errors <= 1).double().mean()),
        **cuts,
    }
    return {f"{prefix}{name}": value for name, value in metrics.items()}
