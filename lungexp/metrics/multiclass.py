"""The metric set of a multiclass head, from class labels and class probabilities.

Names (after ``prefix``): ``auroc_macro`` and ``auroc_weighted`` (one-vs-rest AUROC averaged over the classes,
equally or by prevalence), ``auroc_<class>``, ``accuracy``, ``balanced_accuracy`` (the mean sensitivity over
the classes present), ``f1_macro`` (over the classes present or predicted), ``sensitivity_<class>`` and
``specificity_<class>`` (one-vs-rest, of the most probable class), and ``ece``: the top-label expected
calibration error (the most probable class's probability against whether it is right, in
:data:`~lungexp.metrics.classification.CALIBRATION_BINS` equal bins).

torchmetrics computes the confusion matrix and the per-class AUROC (the ECE is its multiclass ECE, recomputed
in one ``bincount``: :func:`top_label_ece`); the rest follows from the confusion matrix here, so that a class absent from the labels (as in a bootstrap resample,
:mod:`lungexp.metrics.head_metrics`) is NaN where a metric of it is undefined instead of torchmetrics' 0, and
the averages agree with scikit-learn's (``roc_auc_score(multi_class="ovr")``, ``balanced_accuracy_score``,
``f1_score(average="macro")``; tests/test_target_metrics.py): ``auroc_macro`` is NaN unless every class is
present, ``auroc_weighted`` (an absent class weighs 0) unless two are.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_auroc, multiclass_confusion_matrix

from lungexp.metrics.classification import CALIBRATION_BINS, calibration_bin


def multiclass_metrics(labels: np.ndarray, probabilities: np.ndarray, prefix: str = "",
                       class_names: Sequence[str] | None = None) -> dict[str, float]:
    """The multiclass metric set of ``labels`` (class indices 0 … K − 1) against ``probabilities`` ``(N, K)``;
    ``class_names`` name the per-class metrics (default ``0`` … ``K−1``). NaN where undefined, never an error."""
    probs = torch.as_tensor(np.ascontiguousarray(probabilities, dtype=np.float64))
    target = torch.as_tensor(np.ascontiguousarray(labels, dtype=np.int64))
    num_classes = probs.shape[1]
    names = [str(index) for index in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for {num_classes} probability columns")
    if len(target):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics' warnings on absent classes: those metrics are NaN below
            confusion = multiclass_confusion_matrix(probs, target, num_classes).double().numpy()
            per_class_auroc = multiclass_auroc(probs, target, num_classes, average=None, thresholds=None).double().numpy()
        ece = top_label_ece(probs.numpy(), target.numpy())
    else:  # an empty table: every metric NaN
        confusion, per_class_auroc, ece = np.zeros((num_classes, num_classes)), np.full(num_classes, math.nan), math.nan
    support = confusion.sum(axis=1)  # true samples per class
    predicted = confusion.sum(axis=0)
    hits = np.diag(confusion)
    total = support.sum()
    present = support > 0
    per_class_auroc[~present | (support == total)] = math.nan  # one-vs-rest needs the class and another
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = hits / support
        specificity = (total - support - predicted + hits) / (total - support)
        f1 = 2 * hits / (support + predicted)  # NaN for a class neither present nor predicted: left out
        accuracy = hits.sum() / total
    metrics = {
        "auroc_macro": float(per_class_auroc.mean()),  # NaN unless every class's AUROC is defined
        "auroc_weighted": _weighted_auroc(per_class_auroc, support),
        "accuracy": float(accuracy),
        "balanced_accuracy": _mean(sensitivity[present]),
        "f1_macro": _mean(f1[np.isfinite(f1)]),
        "ece": ece,
    }
    for index, name in enumerate(names):
        metrics[f"auroc_{name}"] = float(per_class_auroc[index])
        metrics[f"sensitivity_{name}"] = float(sensitivity[index])
        metrics[f"specificity_{name}"] = float(specificity[index])
    return {f"{prefix}{name}": value for name, value in metrics.items()}


def top_label_ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """torchmetrics' multiclass ECE (L1, top label, the bins of :func:`calibration_bin`), in one ``bincount``:
    torchmetrics' own takes ~10 ms a call, too slow for a thousand bootstrap draws."""
    confidence = probabilities.max(axis=1)
    wrong_by = confidence - (probabilities.argmax(axis=1) == labels)
    gaps = np.bincount(calibration_bin(confidence), weights=wrong_by, minlength=CALIBRATION_BINS + 1)
    return float(np.abs(gaps).sum() / len(labels))


def _weighted_auroc(per_class: np.ndarray, support: np.ndarray) -> float:
    """The prevalence-weighted mean of the per-class AUROCs: an absent class weighs 0; NaN with one class."""
    weighted = support > 0
    if weighted.sum() < 2:
        return math.nan
    return float(np.sum(per_class[weighted] * support[weighted]) / support[weighted].sum())


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan
