"""One head's metric set by its kind, and that set under every draw of a cluster bootstrap.

A :data:`MetricSet` is called as ``metric_set(labels, probabilities, prefix)`` and returns metrics by name:
:func:`~lungexp.metrics.classification.table_metrics` (binary: ``probabilities`` ``(N,)``),
:func:`~lungexp.metrics.multiclass.multiclass_metrics` (``(N, K)``) or
:func:`~lungexp.metrics.ordinal.ordinal_metrics` (``(N, K − 1)`` cumulative). :func:`resampled_metric_set`
computes any of them under each draw of a :class:`~lungexp.metrics.bootstrap.ClusterResampling` (its
patches repeated as often as their cluster was drawn), in the shape
:func:`~lungexp.metrics.bootstrap.interval_metrics` takes, so a head's 95 % intervals come as the binary
set's do; the binary set's own fast path stays :func:`~lungexp.metrics.bootstrap.resampled_metrics`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from lungexp.metrics.bootstrap import ClusterResampling
from lungexp.metrics.classification import table_metrics
from lungexp.metrics.multiclass import multiclass_metrics
from lungexp.metrics.ordinal import ordinal_metrics
from lungexp.models.heads import HEAD_KINDS
from lungexp.utils.errors import ArgumentError, look_up_option

MetricSet = Callable[[np.ndarray, np.ndarray, str], dict[str, float]]


def head_metric_set(kind: str, class_names: Sequence[str] | None = None, threshold: float = 0.5) -> MetricSet:
    """The metric set of a head of ``kind``: binary at ``threshold`` (chosen on validation), multiclass with
    per-class metrics named by ``class_names``, ordinal."""
    look_up_option("kind", kind, HEAD_KINDS, error=ArgumentError)
    if kind == "binary":
        return functools.partial(table_metrics, threshold=threshold)
    if kind == "multiclass":
        return functools.partial(multiclass_metrics, class_names=class_names)
    return ordinal_metrics


def resampled_metric_set(metric_set: MetricSet, labels: np.ndarray, probabilities: np.ndarray,
                         seriesuids: Sequence[str], resampling: ClusterResampling) -> dict[str, np.ndarray]:
    """Each metric of ``metric_set`` under every draw of ``resampling``: the patches of a cluster drawn n times
    taken n times (``seriesuids``: each patch's series). A draw that misses a class gives NaN for what it
    leaves undefined, which :func:`~lungexp.metrics.bootstrap.percentile_interval` leaves out."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    counts = resampling.weights(seriesuids).astype(np.int64)
    patches = np.arange(len(labels))
    draws: list[dict[str, float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the binary set's one-class warning, once per draw that has one class
        for weights in counts:
            rows = np.repeat(patches, weights)
            draws.append(metric_set(labels[rows], probabilities[rows], ""))
    return {name: np.array([draw[name] for draw in draws]) for name in draws[0]} if draws else {}
