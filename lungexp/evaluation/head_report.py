"""The report of a target's heads (``target.*``) beyond the one logit every binary report judges.

A target of one binary head is reported by :func:`~lungexp.evaluation.report.report_split` exactly as before
targets existed. Otherwise each head gets its own metric set (:func:`~lungexp.metrics.head_metrics.head_metric_set`:
multiclass, ordinal, or binary at 0.5 for an auxiliary binary head) on the rows it has a label for, with the
95 % cluster-bootstrap interval of each metric (``eval.bootstrap``, resampling the series as the binary
report does); the primary head's metrics keep today's names (``test/qwk``), an auxiliary head's are
``test/<name>/...`` with ``test/<name>/samples`` and ``test/<name>/masked`` (the rows it has no label for). A
binary primary head of a multitask target keeps the whole binary report (threshold, figures, FROC); each
multiclass or ordinal head gets its figures (:func:`~lungexp.visualize.class_plots.head_figures`: confusion matrix,
ROC per class or cut, reliability) under ``plots/`` (the primary) or ``plots/<name>/``; a calibrated multiclass
primary head (``eval.calibration=temperature``) also gets ``ece_uncalibrated`` and the reliability diagram of the
network's own probabilities, as a calibrated binary head does.

Validation (:func:`validation_head_metrics`) averages a multiclass head's ``auroc_macro`` over the classes the
split holds, so that a class missing from a small validation split does not make the checkpoint monitor NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import Logger

from lungexp.data.labels.class_maps import MASKED
from lungexp.data.labels.targets import HeadSpec, TargetOptions
from lungexp.evaluation.operating_point import uncalibrated_column
from lungexp.evaluation.report import PatchPictures, report_split
from lungexp.evaluation.split_metrics import PLOTS, predictions_table
from lungexp.evaluation.types import EvaluationReport, EvaluationSettings
from lungexp.metrics.bootstrap import cluster_resampling, interval_metrics
from lungexp.metrics.head_metrics import head_metric_set, resampled_metric_set
from lungexp.metrics.multiclass import top_label_ece
from lungexp.models.heads import predicted_classes
from lungexp.tracking.artifacts import log_figure, log_table
from lungexp.visualize.class_plots import head_figures, top_label_reliability_figure

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("mae", "ece", "loss")  # the head metrics to minimise; every other one is maximised


def is_one_logit(target: TargetOptions) -> bool:
    """Whether ``target`` is one binary head: trained, tested and reported as before targets existed."""
    return not target.auxiliary and target.primary.kind == "binary"


def target_predictions_table(rows: np.ndarray, probabilities: np.ndarray, target: TargetOptions,
                             samples: pd.DataFrame | None = None, labels: np.ndarray | None = None) -> pd.DataFrame:
    """:func:`~lungexp.evaluation.split_metrics.predictions_table` with every head's probability columns and,
    for each multiclass or ordinal head, its predicted class index (``prediction``, ``<name>_prediction``)."""
    if is_one_logit(target):
        return predictions_table(rows, probabilities, samples, labels)
    table = predictions_table(rows, probabilities, samples, labels, columns=target.probability_columns,
                              label_columns=target.label_columns)
    return with_predicted_classes(table, target)


def with_predicted_classes(table: pd.DataFrame, target: TargetOptions) -> pd.DataFrame:
    """``table`` with the predicted class index of each multiclass or ordinal head
    (:func:`~lungexp.models.heads.predicted_classes`: the most probable class, the median level − 1)."""
    predicted = {head.prediction_column: predicted_classes(
        head.kind, torch.as_tensor(table[list(head.probability_columns)].to_numpy(np.float64))).numpy()
        for head in target.heads if head.kind != "binary"}
    return table.assign(**predicted)


def head_metrics(predictions: pd.DataFrame, heads: Sequence[HeadSpec], prefix: str, bootstrap: int = 0,
                 seed: int = 0, group_by: str = "seriesuid") -> dict[str, float]:
    """Each head's metric set on the rows it has a label for (names after ``prefix``, ``test/`` or
    ``test/<name>/``), and with ``bootstrap`` > 0 and a ``seriesuid`` column their 95 % cluster-bootstrap
    intervals (``<name>_ci_low``/``_ci_high``)."""
    stage = prefix.rstrip("/")
    metrics: dict[str, float] = {}
    for head in heads:
        labels = predictions[head.label_column].to_numpy(np.int64)
        labelled = labels != MASKED
        table = predictions[labelled]
        probabilities = table[list(head.probability_columns)].to_numpy(np.float64)
        if head.kind == "binary":
            probabilities = probabilities[:, 0]
        metric_set = head_metric_set(head.kind, head.class_names)
        named = head.metric_prefix(stage)
        metrics.update(metric_set(labels[labelled], probabilities, named))
        if not head.is_primary:
            metrics[f"{named}samples"], metrics[f"{named}masked"] = float(labelled.sum()), float((~labelled).sum())
        if bootstrap > 0 and "seriesuid" in table and len(table):
            resampling = cluster_resampling(table, bootstrap, seed, group_by)
            draws = resampled_metric_set(metric_set, labels[labelled], probabilities,
                                         table["seriesuid"].astype(str).to_numpy(), resampling)
            draws.pop("threshold", None)  # a binary head's, fixed at 0.5: no interval
            metrics.update(interval_metrics(draws, named))
    return metrics


def report_target(predictions: pd.DataFrame, target: TargetOptions, settings: EvaluationSettings,
                  loggers: Sequence[Logger], *, prefix: str = "test/", title: str = "Test", artifact: str | None = None,
                  pictures: PatchPictures | None = None, figures: bool = True) -> EvaluationReport:
    """The report of ``predictions`` of ``target``'s heads: :func:`~lungexp.evaluation.report.report_split`'s for a
    binary primary head (the only one, as before targets existed), then :func:`head_metrics` of the others; the
    table itself logged as ``artifact`` (when given) in either case."""
    extra = settings.bootstrap, settings.seed, settings.group_by
    drawn = class_head_figures(predictions, target.heads, title) if figures else {}
    for path, figure in drawn.items():
        log_figure(loggers, figure, path)
    if target.primary.kind == "binary":
        report = report_split(predictions, settings, loggers, prefix=prefix, title=title, artifact=artifact,
                              pictures=pictures, figures=figures)
        if not target.auxiliary:
            return report
        return replace(report, metrics={**report.metrics, **head_metrics(predictions, target.auxiliary, prefix,
                                                                          *extra)},
                       figures={**report.figures, **drawn})
    uncalibrated, uncalibrated_figures = uncalibrated_report(predictions, target.primary, prefix, title, figures)
    for path, figure in uncalibrated_figures.items():
        log_figure(loggers, figure, path)
    if artifact is not None:
        log_table(loggers, predictions, artifact)
    return EvaluationReport(metrics={**head_metrics(predictions, target.heads, prefix, *extra), **uncalibrated},
                            figures={**drawn, **uncalibrated_figures})


def uncalibrated_report(predictions: pd.DataFrame, head: HeadSpec, prefix: str, title: str, figures: bool = True
                        ) -> tuple[dict[str, float], dict[str, Figure]]:
    """For a table whose multiclass ``head`` was calibrated (its ``<column>_uncalibrated`` columns,
    :func:`~lungexp.evaluation.operating_point.with_calibrated`): ``{prefix}ece_uncalibrated``, the top-label ECE of
    the network's own probabilities, and (``figures``) their reliability diagram; nothing otherwise."""
    columns = [uncalibrated_column(column) for column in head.probability_columns]
    if head.kind != "multiclass" or not set(columns) <= set(predictions.columns):
        return {}, {}
    labels = predictions[head.label_column].to_numpy(np.int64)
    raw = predictions[columns].to_numpy(np.float64)
    drawn = {f"{PLOTS}/reliability_diagram_uncalibrated.png": top_label_reliability_figure(
        labels, raw, title=f"{title} top-label reliability, uncalibrated")} if figures else {}
    return {f"{prefix}ece_uncalibrated": top_label_ece(raw, labels)}, drawn


def class_head_figures(predictions: pd.DataFrame, heads: Sequence[HeadSpec], title: str) -> dict[str, Figure]:
    """The figures of each multiclass or ordinal head by artifact path: ``plots/<file>`` for the primary head,
    ``plots/<name>/<file>`` for an auxiliary one (a binary head's are the binary report's)."""
    figures: dict[str, Figure] = {}
    for head in heads:
        if head.kind == "binary":
            continue
        folder = PLOTS if head.is_primary else f"{PLOTS}/{head.name}"
        drawn = head_figures(head.kind, predictions[head.label_column].to_numpy(np.int64),
                             predictions[list(head.probability_columns)].to_numpy(np.float64), head.class_names,
                             title=title if head.is_primary else f"{title} {head.name}")
        figures.update({f"{folder}/{name}": figure for name, figure in drawn.items()})
    return figures


def validation_head_metrics(predictions: pd.DataFrame, heads: Sequence[HeadSpec], prefix: str = "val/"
                            ) -> tuple[dict[str, float], dict[str, list[str]]]:
    """:func:`head_metrics` as validation logs them for the checkpoint monitor: a multiclass head's ``auroc_macro``
    is the mean of the one-vs-rest AUROCs the split defines, leaving out the classes it lacks (whose AUROC stays
    NaN), where the test report keeps scikit-learn's NaN. Also, by metric name, the classes each such mean left out.
    A split of one class leaves it NaN (the primary head's is refused before training, as a binary one is)."""
    metrics = head_metrics(predictions, heads, prefix)
    left_out: dict[str, list[str]] = {}
    for head in heads:
        if head.kind != "multiclass":
            continue
        named = head.metric_prefix(prefix.rstrip("/"))
        per_class = {name: metrics[f"{named}auroc_{name}"] for name in head.class_names}
        defined = [value for value in per_class.values() if np.isfinite(value)]
        if defined and len(defined) < len(per_class):
            metrics[f"{named}auroc_macro"] = float(np.mean(defined))
            left_out[f"{named}auroc_macro"] = [name for name, value in per_class.items() if not np.isfinite(value)]
    return metrics, left_out


def monitored_head_metrics(target: TargetOptions, stage: str = "val") -> dict[str, str]:
    """What validation logs for a target that is not one logit: each head's metric names (as :func:`head_metrics`
    names them, without intervals), each with the direction that is better (``max`` or ``min``)."""
    names: list[str] = []
    for head in target.heads:
        classes = np.arange(head.num_classes)
        probabilities = np.full((head.num_classes, len(head.probability_columns)), 0.5)
        scored = head_metric_set(head.kind, head.class_names)(
            classes, probabilities[:, 0] if head.kind == "binary" else probabilities, head.metric_prefix(stage))
        names.extend(scored)
    return {name: "min" if name.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max" for name in names}
