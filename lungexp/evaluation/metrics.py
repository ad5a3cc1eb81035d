"""The metric set every model is compared on, so all runs report the same numbers."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)


def classification_metrics(prefix: str, threshold: float = 0.5) -> MetricCollection:
    """Accuracy, precision, sensitivity (recall), specificity, F1 and AUROC on probabilities.

    Metric names are ``{prefix}{name}``, e.g. ``val/auroc``; sensitivity is logged as ``sensitivity``
    (the clinical name of recall).
    """
    return MetricCollection(
        {
            "accuracy": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "sensitivity": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
            "auroc": BinaryAUROC(),
        },
        prefix=prefix,
    )
