"""Every metric and figure of a predictions table, the same wherever predictions come from: the test stage
of training, ``python -m lungexp.evaluate`` and the pooled folds of a cross-validation.

A predictions table (:func:`predictions_table`) has one row per patch: ``label`` (0/1), ``probability`` and,
for the FROC, ``seriesuid, coordX, coordY, coordZ`` (world mm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from lungexp.data.options import DataOptions
from lungexp.data.patches.normalization import HUWindow
from lungexp.evaluation.operating_point import UNCALIBRATED
from lungexp.evaluation.types import EvaluationOptions, EvaluationReport, EvaluationSettings
from lungexp.metrics.bootstrap import (
    CI_HIGH,
    CI_LOW,
    cluster_resampling,
    interval_metrics,
    resampled_metrics,
)
from lungexp.metrics.calibration import brier_score, expected_calibration_error
from lungexp.metrics.classification import AT_THRESHOLD, reliability_bins, table_metrics
from lungexp.metrics.delong import delong
from lungexp.metrics.luna16_froc import FrocReference, compute_froc
from lungexp.metrics.threshold import false_positives_per_scan
from lungexp.visualize.gradcam import gradcam_figure, gradcam_heatmaps, last_conv3d, pick_samples
from lungexp.visualize.montage import worst_errors_figure
from lungexp.visualize.plots import (
    confusion_matrix_figure,
    froc_figure,
    precision_recall_figure,
    reliability_figure,
    roc_figure,
    score_histogram_figure,
)

log = logging.getLogger(__name__)

PLOTS = "plots"


def predictions_table(rows: np.ndarray, probabilities: np.ndarray, samples: pd.DataFrame | None = None,
                      labels: np.ndarray | None = None) -> pd.DataFrame:
    """The predictions table of scored patches, one row per patch in cache order (repeats dropped: a sampler
    that pads DDP ranks to equal lengths scores some patches twice).

    Args:
        rows: each patch's row of the sample table (``cache_row``).
        probabilities: each patch's probability, kept to 6 decimals (what the logged CSV holds).
        samples: the sample table (a patch cache's index: ``label``, ``seriesuid``, world coordinates, ...),
            whose rows the table takes; without it, only ``cache_row``, ``labels`` and ``probability``.
        labels: each patch's label, used only without ``samples``.
    """
    if samples is not None:
        table = samples.iloc[rows].reset_index(names="cache_row")
    else:
        table = pd.DataFrame({"cache_row": rows, "label": labels})
    table = table.assign(probability=np.round(np.asarray(probabilities, dtype=np.float64), 6))
    return table.drop_duplicates("cache_row").sort_values("cache_row").reset_index(drop=True)


def evaluate_predictions(predictions: pd.DataFrame, settings: EvaluationSettings, prefix: str = "test/",
                         title: str = "Test", figures: bool = True) -> EvaluationReport:
    """All metrics and (unless ``figures`` is false) figures of ``predictions``; names start with ``prefix``.

    Metrics: ``accuracy, precision, sensitivity, specificity, f1`` at 0.5, ``auroc``,
    ``average_precision``, ``ece``, ``brier``, ``threshold`` and the five thresholded metrics at it as
    ``at_threshold/<name>``, with ``seriesuid`` also ``at_threshold/fp_per_scan``; for a calibrated table
    (:mod:`lungexp.evaluation.operating_point`) ``ece_uncalibrated`` and ``brier_uncalibrated``; with
    ``settings.froc`` also ``cpm`` and ``sens_at_<rate>_fp``. With
    ``settings.bootstrap``, ``<name>_ci_low``/``_ci_high`` (cluster bootstrap, 95 %) of AUROC, average
    precision, ECE, the thresholded metrics at ``threshold`` and the CPM; with both classes,
    ``auroc_delong_ci_low``/``_high`` (DeLong's variance).
    Figures: ROC, precision-recall, confusion matrices at 0.5 and at the threshold, score histogram,
    reliability diagram (and that of the uncalibrated probabilities, for a calibrated table) and, with
    ``settings.froc``, the FROC.
    """
    labels = predictions["label"].to_numpy().astype(np.int64)
    probabilities = predictions["probability"].to_numpy(np.float64)
    threshold = settings.threshold
    metrics = table_metrics(labels, probabilities, prefix, threshold)
    if "seriesuid" in predictions:
        metrics[f"{prefix}{AT_THRESHOLD}fp_per_scan"] = false_positives_per_scan(predictions, threshold)
    calibration, calibration_plots = calibration_metrics(predictions, prefix, title, figures)
    metrics.update(calibration)
    if 0 < labels.sum() < len(labels):
        low, high = delong(labels, probabilities).interval()
        metrics[f"{prefix}auroc_delong{CI_LOW}"], metrics[f"{prefix}auroc_delong{CI_HIGH}"] = low, high
    resampling = None
    if settings.bootstrap > 0 and "seriesuid" in predictions:
        resampling = cluster_resampling(predictions, settings.bootstrap, settings.seed, settings.group_by,
                                        settings.froc.seriesuids if settings.froc is not None else None)
        metrics.update(interval_metrics(resampled_metrics(predictions, threshold, resampling), prefix))
    plots = {**_figures(labels, probabilities, metrics, threshold, prefix, title), **calibration_plots} if figures else {}
    froc = None
    if settings.froc is not None:
        froc = compute_froc(predictions, settings.froc.annotations, excluded=settings.froc.excluded,
                            seriesuids=settings.froc.seriesuids, resampling=resampling)
        metrics.update(froc.as_metrics(prefix))
        if figures:
            plots[f"{PLOTS}/froc.png"] = froc_figure(froc, title=f"{title} FROC")
    return EvaluationReport(metrics=metrics, figures=plots, froc=froc)


def _figures(labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, float], threshold: float,
             prefix: str, title: str) -> dict[str, Figure]:
    at = {name: metrics[f"{prefix}{AT_THRESHOLD}{name}"] for name in ("sensitivity", "specificity", "precision")}
    figures = {
        "confusion_matrix": confusion_matrix_figure(_confusion(labels, probabilities, 0.5), 0.5,
                                                    title=f"{title} confusion matrix"),
        "confusion_matrix_at_threshold": confusion_matrix_figure(
            _confusion(labels, probabilities, threshold), threshold, title=f"{title} confusion matrix"),
        "score_histogram": score_histogram_figure(probabilities, labels, {"chosen": threshold, "fixed": 0.5},
                                                  title=f"{title} score distribution"),
        "reliability_diagram": reliability_figure(*reliability_bins(labels, probabilities),
                                                  ece=metrics[f"{prefix}ece"], title=f"{title} reliability"),
    }
    if 0 < labels.sum() < len(labels):  # the curves need both classes
        preds, target = torch.tensor(probabilities), torch.tensor(labels)
        fpr, tpr, _ = (t.numpy() for t in binary_roc(preds, target))
        precision, recall, _ = (t.numpy() for t in binary_precision_recall_curve(preds, target))
        figures["roc_curve"] = roc_figure(fpr, tpr, metrics[f"{prefix}auroc"],
                                          (1 - at["specificity"], at["sensitivity"]), title=f"{title} ROC")
        figures["precision_recall"] = precision_recall_figure(
            recall, precision, metrics[f"{prefix}average_precision"], prevalence=float(labels.mean()),
            operating_point=(at["sensitivity"], at["precision"]), title=f"{title} precision-recall")
    return {f"{PLOTS}/{name}.png": figure for name, figure in figures.items()}


def evaluation_settings(data: DataOptions, series: Sequence[str], threshold: float, options: EvaluationOptions
                        ) -> EvaluationSettings:
    """How a split of ``series`` of the dataset ``data`` is judged: at ``threshold``, with its FROC reference and
    ``eval.bootstrap`` resamplings of its ``data.split.group_by`` clusters."""
    return EvaluationSettings(threshold=threshold, froc=froc_reference(data, series), bootstrap=options.bootstrap,
                              group_by=data.split.group_by)


def froc_reference(data: DataOptions, series: Sequence[str]) -> FrocReference | None:
    """The FROC reference of the split of ``series`` of the dataset ``data``: for task ``candidates`` with an
    annotations CSV, its nodules and excluded findings and all of ``series``; otherwise ``None`` (no FROC)."""
    if data.task != "candidates" or data.annotations_csv is None:
        return None
    if not Path(data.annotations_csv).is_file():
        log.warning("no FROC/CPM: the annotations CSV %s does not exist", data.annotations_csv)
        return None
    return FrocReference.from_csv(data.annotations_csv, data.excluded_csv, series)


def patch_figures(net: torch.nn.Module, predictions: pd.DataFrame, patches: np.ndarray, window: HUWindow,
                  options: EvaluationOptions, threshold: float) -> dict[str, Figure]:
    """The pictures on CT: the worst-errors montage and Grad-CAM of a few positives and negatives.

    Args:
        net: the network, as tested.
        predictions: ``label, probability, seriesuid, coordX, coordY, coordZ, cache_row``.
        patches: ``(N, C, z, y, x)`` HU patches indexed by ``cache_row`` (a patch cache's memory map).
        window: the datamodule's HU window: grey levels of the pictures and the network's input normalisation.
        options: ``montage_k``, ``gradcam_samples``, ``gradcam_layer``.
        threshold: the decision threshold.
    """
    hu_window = (window.low, window.high)
    figures = {}
    if options.montage_k > 0:
        figures[f"{PLOTS}/worst_errors.png"] = worst_errors_figure(predictions, patches, threshold, options.montage_k,
                                                                   hu_window)
    samples = pick_samples(predictions, options.gradcam_samples)
    if len(samples):
        hu = np.stack([np.asarray(patches[row]) for row in samples["cache_row"]])
        images = torch.stack([window(volume) for volume in hu])
        layer = options.gradcam_layer or last_conv3d(net, images.shape[1:])
        figures[f"{PLOTS}/gradcam.png"] = gradcam_figure(hu, gradcam_heatmaps(net, images, layer), samples,
                                                         hu_window, layer)
    return figures


def _confusion(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """2x2 counts, rows = true class, columns = predicted (``probability > threshold``)."""
    predicted = (probabilities > threshold).astype(np.int64)
    return np.bincount(labels * 2 + predicted, minlength=4).reshape(2, 2)


def calibration_metrics(predictions: pd.DataFrame, prefix: str, title: str, figures: bool
                        ) -> tuple[dict[str, float], dict[str, Figure]]:
    """``{prefix}brier`` of ``probability`` and, for a calibrated table, ``{prefix}ece_uncalibrated``,
    ``{prefix}brier_uncalibrated`` and (with ``figures``) the reliability diagram of the uncalibrated
    probabilities, keyed by its artifact name under ``plots/``."""
    labels = predictions["label"].to_numpy().astype(np.int64)
    metrics = {f"{prefix}brier": brier_score(labels, predictions["probability"].to_numpy(np.float64))}
    if UNCALIBRATED not in predictions:
        return metrics, {}
    raw = predictions[UNCALIBRATED].to_numpy(np.float64)
    metrics[f"{prefix}ece_uncalibrated"] = expected_calibration_error(labels, raw)
    metrics[f"{prefix}brier_uncalibrated"] = brier_score(labels, raw)
    if not figures:
        return metrics, {}
    figure = reliability_figure(*reliability_bins(labels, raw), ece=metrics[f"{prefix}ece_uncalibrated"],
                                title=f"{title} reliability, uncalibrated")
    return metrics, {f"{PLOTS}/reliability_diagram_uncalibrated.png": figure}
