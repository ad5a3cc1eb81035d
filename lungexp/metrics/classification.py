"""The metric set every model is compared on, so all runs report the same numbers under the same names.

A patch counts as positive when its probability is strictly above the threshold (torchmetrics' rule).
Validation logs the set every epoch (torchmetrics objects that accumulate over batches); the test stage
and pooled cross-validation compute the same set from a predictions table with :func:`table_metrics`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

CALIBRATION_BINS = 15  # torchmetrics' default; the reliability diagram uses the same bins
THRESHOLD_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1")
AT_THRESHOLD = "at_threshold/"


def thresholded_metrics(threshold: float = 0.5) -> dict[str, Metric]:
    """Accuracy, precision, sensitivity (recall), specificity and F1 of ``probability > threshold``."""
    threshold = float(threshold)
    return {
        "accuracy": BinaryAccuracy(threshold=threshold),
        "precision": BinaryPrecision(threshold=threshold),
        "sensitivity": BinaryRecall(threshold=threshold),
        "specificity": BinarySpecificity(threshold=threshold),
        "f1": BinaryF1Score(threshold=threshold),
    }


def classification_metrics(prefix: str, threshold: float = 0.5) -> MetricCollection:
    """The thresholded metrics, AUROC, average precision and expected calibration error on probabilities.

    Names are ``{prefix}{name}``, e.g. ``val/auroc``; sensitivity is logged as ``sensitivity`` (the
    clinical name of recall), average precision as ``average_precision``, the L1 calibration error over
    :data:`CALIBRATION_BINS` equal-width bins as ``ece``.
    """
    return MetricCollection(
        {
            **thresholded_metrics(threshold),
            "auroc": BinaryAUROC(),
            "average_precision": BinaryAveragePrecision(),
            "ece": BinaryCalibrationError(n_bins=CALIBRATION_BINS, norm="l1"),
        },
        prefix=prefix,
    )


def table_metrics(labels: np.ndarray, probabilities: np.ndarray, prefix: str, threshold: float) -> dict[str, float]:
    """:func:`classification_metrics` at 0.5 on whole arrays, plus ``{prefix}threshold`` and the thresholded
    metrics at ``threshold`` as ``{prefix}at_threshold/{name}``.

    With one class only, the metrics that need the other (AUROC, average precision, and sensitivity or
    specificity) are NaN, with one warning that says so.
    """
    target = torch.tensor(np.asarray(labels), dtype=torch.long)
    preds = torch.tensor(np.asarray(probabilities), dtype=torch.float64)
    undefined = undefined_with_one_class(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' own one-class warnings: replaced by the one below
        metrics = classification_metrics(prefix)(preds, target)
        at_threshold = MetricCollection({**thresholded_metrics(threshold)}, prefix=f"{prefix}{AT_THRESHOLD}")(preds, target)
    values = {name: float(value) for name, value in {**metrics, **at_threshold}.items()}
    values[f"{prefix}threshold"] = float(threshold)
    if undefined:
        warnings.warn(f"{prefix.rstrip('/') or 'predictions'}: only class {int(target[0]) if len(target) else '-'} "
                      f"present, so {', '.join(undefined)} are undefined (NaN)", stacklevel=2)
        for name in values:
            if name.rsplit("/", 1)[-1] in undefined:
                values[name] = float("nan")
    return values


def undefined_with_one_class(target: torch.Tensor | np.ndarray) -> list[str]:
    """The metrics of the set that need the class ``target`` (0/1 labels) lacks: none with both classes."""
    positives = int(target.sum())
    if 0 < positives < len(target):
        return []
    return ["auroc", "average_precision", "sensitivity" if positives == 0 else "specificity"]


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probability, fraction of positives and count per equal-width bin (NaN for empty bins)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    index = np.clip(calibration_bin(probabilities, bins), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=probabilities, minlength=bins) / counts
        observed = np.bincount(index, weights=np.asarray(labels, dtype=np.float64), minlength=bins) / counts
    return confidence, observed, counts


def calibration_bin(probabilities: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """The ECE's bin of each probability as torchmetrics bins it: ``k`` for [k/bins, (k+1)/bins), and a
    bin ``bins`` of its own for a probability of exactly 1."""
    return np.searchsorted(np.linspace(0, 1, bins + 1), np.asarray(probabilities, dtype=np.float64), side="right") - 1
