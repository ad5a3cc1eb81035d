"""Every metric and figure of a predictions table, the same wherever predictions come from: the test stage
of training, ``python -m lungexp.evaluate`` and the pooled folds of a cross-validation.

A predictions table (:func:`predictions_table`) has one row per patch: ``label`` (0/1), ``probability`` and,
for the FROC, ``seriesuid, coordX, coordY, coordZ`` (world mm).
"""

from __future__ import annotations

import logging
import warnings
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
    ClusterResampling,
    cluster_resampling,
    cluster_statistics,
    interval_metrics,
    resampled_metrics,
    stratified_auroc_draws,
)
from lungexp.metrics.calibration import brier_score, expected_calibration_error
from lungexp.metrics.classification import (
    AT_THRESHOLD,
    reliability_bins,
    table_metrics,
    undefined_with_one_class,
)
from lungexp.metrics.delong import delong
from lungexp.metrics.luna16_froc import FrocReference, compute_froc
from lungexp.metrics.stratified import STRATUM_COUNTS, Strata, StrataError, stratified_auroc
from lungexp.metrics.threshold import false_positives_per_scan
from lungexp.utils.errors import ConfigError, did_you_mean
from lungexp.utils.tables import read_csv
from lungexp.visualize.gradcam import gradcam_figure, gradcam_heatmaps, last_conv3d, pick_samples
from lungexp.visualize.montage import worst_errors_figure
from lungexp.visualize.plots import (
    StratumAuroc,
    confusion_matrix_figure,
    froc_figure,
    precision_recall_figure,
    reliability_figure,
    roc_figure,
    score_histogram_figure,
    strata_auroc_figure,
)

log = logging.getLogger(__name__)

PLOTS = "plots"


def predictions_table(rows: np.ndarray, probabilities: np.ndarray, samples: pd.DataFrame | None = None,
                      labels: np.ndarray | None = None, columns: Sequence[str] = ("probability",),
                      label_columns: Sequence[str] = ("label",)) -> pd.DataFrame:
    """The predictions table of scored patches, one row per patch in cache order (repeats dropped: a sampler
    that pads DDP ranks to equal lengths scores some patches twice).

    Args:
        rows: each patch's row of the sample table (``cache_row``).
        probabilities: each patch's probability, kept to 6 decimals (what the logged CSV holds): ``(N,)``, or
            ``(N, len(columns))`` for a target of several probability columns.
        samples: the sample table (a patch cache's index: ``label``, ``seriesuid``, world coordinates, ...),
            whose rows the table takes; without it, only ``cache_row``, ``labels`` and the probabilities.
        labels: each patch's label, used only without ``samples``: ``(N,)``, or ``(N, len(label_columns))``.
        columns: the probability columns (:attr:`~lungexp.data.labels.targets.TargetOptions.probability_columns`).
        label_columns: the label columns ``labels`` fill.
    """
    if samples is not None:
        table = samples.iloc[rows].reset_index(names="cache_row")
    elif labels is None:
        table = pd.DataFrame({"cache_row": rows, "label": labels})
    else:
        values = np.asarray(labels).reshape(len(rows), len(label_columns))
        table = pd.DataFrame({"cache_row": rows, **dict(zip(label_columns, values.T, strict=True))})
    scores = np.round(np.asarray(probabilities, dtype=np.float64).reshape(len(rows), len(columns)), 6)
    table = table.assign(**dict(zip(columns, scores.T, strict=True)))
    return table.drop_duplicates("cache_row").sort_values("cache_row").reset_index(drop=True)


def evaluate_predictions(predictions: pd.DataFrame, settings: EvaluationSettings, prefix: str = "test/",
                         title: str = "Test", figures: bool = True) -> EvaluationReport:
    """All metrics and (unless ``figures`` is false) figures of ``predictions``; names start with ``prefix``.

    Metrics: ``accuracy, precision, sensitivity, specificity, f1`` at 0.5, ``auroc``,
    ``average_precision``, ``ece``, ``brier``, ``threshold`` and the five thresholded metrics at it as
    ``at_threshold/<name>``, for ``settings.detection`` with ``seriesuid`` also ``at_threshold/fp_per_scan``; for
    a calibrated table (:mod:`lungexp.evaluation.operating_point`) ``ece_uncalibrated`` and
    ``brier_uncalibrated``; with ``settings.froc`` also ``cpm`` and ``sens_at_<rate>_fp``. With
    ``settings.bootstrap``, ``<name>_ci_low``/``_ci_high`` (cluster bootstrap, 95 %) of AUROC, average
    precision, ECE, the thresholded metrics at ``threshold`` and the CPM; with both classes,
    ``auroc_delong_ci_low``/``_high`` (DeLong's variance). With ``settings.strata``, the stratified AUROC and
    each stratum's metrics (:func:`stratified_metrics`).
    Figures: ROC, precision-recall, confusion matrices at 0.5 and at the threshold, score histogram,
    reliability diagram (and that of the uncalibrated probabilities, for a calibrated table), with
    ``settings.froc`` the FROC and with ``settings.strata`` the AUROC per stratum.
    """
    labels = predictions["label"].to_numpy().astype(np.int64)
    probabilities = predictions["probability"].to_numpy(np.float64)
    threshold = settings.threshold
    resampling = None
    if settings.bootstrap > 0 and "seriesuid" in predictions:
        resampling = cluster_resampling(predictions, settings.bootstrap, settings.seed, settings.group_by,
                                        settings.froc.seriesuids if settings.froc is not None else None)
    metrics = table_metric_set(predictions, threshold, prefix, resampling)
    if settings.detection and "seriesuid" in predictions:
        metrics[f"{prefix}{AT_THRESHOLD}fp_per_scan"] = false_positives_per_scan(predictions, threshold)
    plots = {**_figures(labels, probabilities, metrics, threshold, prefix, title),
             **_uncalibrated_figure(predictions, metrics, prefix, title)} if figures else {}
    if settings.strata is not None:
        strata = stratified_metrics(predictions, settings.strata, threshold, prefix, resampling)
        metrics.update(strata)
        if figures:
            plots[f"{PLOTS}/auroc_by_stratum.png"] = _strata_figure(strata, settings.strata, metrics, prefix, title)
    froc = None
    if settings.froc is not None:
        froc = compute_froc(predictions, settings.froc.annotations, excluded=settings.froc.excluded,
                            seriesuids=settings.froc.seriesuids, resampling=resampling)
        metrics.update(froc.as_metrics(prefix))
        if figures:
            plots[f"{PLOTS}/froc.png"] = froc_figure(froc, title=f"{title} FROC")
    return EvaluationReport(metrics=metrics, figures=plots, froc=froc)


def table_metric_set(predictions: pd.DataFrame, threshold: float, prefix: str,
                     resampling: ClusterResampling | None = None) -> dict[str, float]:
    """The metrics of a table judged on its own, the whole split's or one stratum's: :func:`table_metrics`, the
    calibration metrics (:func:`calibration_metrics`), DeLong's interval of the AUROC (with both classes) and,
    with ``resampling``, the bootstrap intervals of :data:`~lungexp.metrics.bootstrap.RESAMPLED`."""
    labels = predictions["label"].to_numpy().astype(np.int64)
    probabilities = predictions["probability"].to_numpy(np.float64)
    metrics = {**table_metrics(labels, probabilities, prefix, threshold), **calibration_metrics(predictions, prefix)}
    if 0 < labels.sum() < len(labels):
        low, high = delong(labels, probabilities).interval()
        metrics[f"{prefix}auroc_delong{CI_LOW}"], metrics[f"{prefix}auroc_delong{CI_HIGH}"] = low, high
    if resampling is not None:
        metrics.update(interval_metrics(resampled_metrics(predictions, threshold, resampling), prefix))
    return metrics


def stratified_metrics(predictions: pd.DataFrame, strata: Strata, threshold: float, prefix: str,
                       resampling: ClusterResampling | None = None) -> dict[str, float]:
    """What ``predictions`` show within ``strata`` of their column (:mod:`lungexp.metrics.stratified`).

    ``{prefix}auroc_stratified`` (with ``resampling``, its cluster-bootstrap interval: the same draws as every
    other metric) and, per stratum, ``{prefix}<column>_<low>-<high>/positives`` and ``/negatives`` and the
    metric set of :func:`table_metric_set` (e.g. ``test/diameter_mm_6-10/auroc``; not the false positives per
    scan, as a stratum holds only some of a scan's patches). A stratum lacking a class logs none of the metrics
    that need it (one log line says so), nor any other that is undefined there (NaN, e.g. the interval of the
    precision where no draw calls a patch positive); with no stratum holding both classes, no stratified AUROC
    either. A value of the column that is no number, or lies below the first edge, is a
    :class:`~lungexp.metrics.stratified.StrataError`.
    """
    if strata.column not in predictions:
        raise StrataError(f"eval.strata.column={strata.column!r}: the predictions have no column '{strata.column}'; "
                          f"their columns are {list(map(str, predictions.columns))}")
    codes = strata.codes(predictions[strata.column], f"{prefix.rstrip('/')} predictions",
                         lambda rows: [_describe_sample(predictions, row) for row in rows])
    labels = predictions["label"].to_numpy().astype(np.int64)
    metrics: dict[str, float] = {}
    statistics = []
    for code, name in enumerate(strata.names):
        inside = predictions[codes == code]
        stratum = f"{prefix}{name}/"
        positives = int(inside["label"].sum())
        metrics[f"{stratum}{STRATUM_COUNTS[0]}"], metrics[f"{stratum}{STRATUM_COUNTS[1]}"] = positives, len(inside) - positives
        if inside.empty:
            log.info("%s: no samples in this stratum", stratum.rstrip("/"))
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*only class")  # said once below, for the stratum
            metrics.update(_defined(table_metric_set(inside, threshold, stratum, resampling), stratum,
                                    inside["label"].to_numpy()))
        metrics.pop(f"{stratum}threshold")  # the split's, not the stratum's
        if resampling is not None:
            statistics.append(cluster_statistics(inside, threshold, resampling))
    auroc = stratified_auroc(labels, predictions["probability"].to_numpy(np.float64), codes)
    if np.isnan(auroc):
        log.warning("%sauroc_stratified: no stratum of %s holds both classes, so there is no pair to rank; "
                    "not logged", prefix, strata.column)
        return metrics
    metrics[f"{prefix}auroc_stratified"] = auroc
    if resampling is not None:
        draws = stratified_auroc_draws(statistics, resampling.counts)
        metrics.update(interval_metrics({"auroc_stratified": draws}, prefix))
    return metrics


def _defined(metrics: dict[str, float], stratum: str, labels: np.ndarray) -> dict[str, float]:
    """The ``metrics`` of a stratum that are numbers: none that its lacking class leaves undefined (said in one
    log line), with their intervals."""
    undefined = undefined_with_one_class(labels)
    if undefined:
        lacking = "negatives" if labels.all() else "positives"
        log.info("%s: %d samples, no %s: %s not logged", stratum.rstrip("/"), len(labels), lacking,
                 ", ".join(undefined))
    return {name: value for name, value in metrics.items()
            if _base_metric(name, stratum) not in undefined and not np.isnan(value)}


def _base_metric(name: str, prefix: str) -> str:
    """``auroc`` of ``test/x_0-6/auroc_ci_low``, ``sensitivity`` of ``.../at_threshold/sensitivity``."""
    return name.removeprefix(prefix).removesuffix(CI_LOW).removesuffix(CI_HIGH).rsplit("/", 1)[-1]


def _describe_sample(predictions: pd.DataFrame, row: int) -> str:
    """``series <uid> at (x, y, z) mm`` of a predictions row (``row <n>`` without the key columns)."""
    values = predictions.iloc[row]
    if not {"seriesuid", "coordX", "coordY", "coordZ"} <= set(predictions.columns):
        return f"row {row + 1}"
    return (f"series {values['seriesuid']} at ({values['coordX']:.2f}, {values['coordY']:.2f}, "
            f"{values['coordZ']:.2f}) mm")


def _strata_figure(strata_metrics: dict[str, float], strata: Strata, metrics: dict[str, float], prefix: str,
                   title: str) -> Figure:
    """The AUROC per stratum with its interval (bootstrap, else DeLong) and class counts, and the stratified
    and plain AUROC as reference lines."""
    rows = []
    for name, bounds in zip(strata.names, strata.ranges, strict=True):
        stratum = f"{prefix}{name}/"
        interval = "auroc" if f"{stratum}auroc{CI_LOW}" in strata_metrics else "auroc_delong"
        rows.append(StratumAuroc(bounds, strata_metrics.get(f"{stratum}auroc", np.nan),
                                 strata_metrics.get(f"{stratum}{interval}{CI_LOW}", np.nan),
                                 strata_metrics.get(f"{stratum}{interval}{CI_HIGH}", np.nan),
                                 int(strata_metrics[f"{stratum}positives"]), int(strata_metrics[f"{stratum}negatives"])))
    value, low, high = (strata_metrics.get(f"{prefix}auroc_stratified{suffix}", np.nan)
                        for suffix in ("", CI_LOW, CI_HIGH))
    return strata_auroc_figure(rows, (value, low, high), metrics[f"{prefix}auroc"], strata.column,
                               title=f"{title} AUROC within {strata.column} strata")


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
    false positives per scan for task ``candidates``, ``eval.bootstrap`` resamplings of its ``data.split.group_by``
    clusters and ``eval.strata``."""
    return EvaluationSettings(threshold=threshold, froc=froc_reference(data, series),
                              detection=data.task == "candidates", bootstrap=options.bootstrap,
                              group_by=data.split.group_by, strata=options.strata)


def check_strata_column(strata: Strata | None, data: DataOptions) -> None:
    """Before any slow work: ``eval.strata.column`` is a column of the labels CSV of ``data`` with a number at or
    above the first edge in every row (a :class:`~lungexp.utils.errors.ConfigError` naming the column, the file and
    its columns, or a :class:`~lungexp.metrics.stratified.StrataError` naming the first bad lines). Nothing to
    check yet where the CSV is still to be made (``data.synthetic``, generated on first use) or sampled
    (``data.labels_csv=null``); the report checks the predictions then."""
    if strata is None or data.labels_csv is None or not data.labels_csv.is_file():
        return
    columns = list(read_csv(data.labels_csv, "labels CSV", rows=0).columns)
    if strata.column not in columns:
        raise ConfigError(f"eval.strata.column={strata.column!r}: the labels CSV {data.labels_csv} (data.labels_csv) "
                          f"has no column '{strata.column}'{did_you_mean(strata.column, columns)}; its columns are "
                          f"{columns}")
    values = read_csv(data.labels_csv, "labels CSV", columns=[strata.column])[strata.column]
    strata.codes(values, f"{data.labels_csv} (data.labels_csv)",
                 lambda rows: [f"line {row + 2}" for row in rows])  # the header is line 1


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


def calibration_metrics(predictions: pd.DataFrame, prefix: str) -> dict[str, float]:
    """``{prefix}brier`` of ``probability`` and, for a calibrated table, ``{prefix}ece_uncalibrated`` and
    ``{prefix}brier_uncalibrated``."""
    labels = predictions["label"].to_numpy().astype(np.int64)
    metrics = {f"{prefix}brier": brier_score(labels, predictions["probability"].to_numpy(np.float64))}
    if UNCALIBRATED in predictions:
        raw = predictions[UNCALIBRATED].to_numpy(np.float64)
        metrics[f"{prefix}ece_uncalibrated"] = expected_calibration_error(labels, raw)
        metrics[f"{prefix}brier_uncalibrated"] = brier_score(labels, raw)
    return metrics


def _uncalibrated_figure(predictions: pd.DataFrame, metrics: dict[str, float], prefix: str, title: str
                         ) -> dict[str, Figure]:
    """For a calibrated table, the reliability diagram of the uncalibrated probabilities, by artifact name."""
    if UNCALIBRATED not in predictions:
        return {}
    labels = predictions["label"].to_numpy().astype(np.int64)
    figure = reliability_figure(*reliability_bins(labels, predictions[UNCALIBRATED].to_numpy(np.float64)),
                                ece=metrics[f"{prefix}ece_uncalibrated"], title=f"{title} reliability, uncalibrated")
    return {f"{PLOTS}/reliability_diagram_uncalibrated.png": figure}
