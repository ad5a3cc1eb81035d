"""``eval.calibration`` on predictions tables: fitted on a checkpoint's validation predictions, applied to the
tables it scores, and reported before and after.

A calibrated table keeps the network's own probabilities in :data:`UNCALIBRATED`; every metric and figure of
the report is then of the calibrated ``probability``, and :func:`calibration_metrics` adds the ECE, Brier
score and reliability diagram of the uncalibrated ones.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungexp.metrics.calibration import (
    Calibrator,
    brier_score,
    check_calibration,
    expected_calibration_error,
    fit_calibrator,
)
from lungexp.metrics.classification import reliability_bins
from lungexp.visualize.plots import reliability_figure

log = logging.getLogger(__name__)

UNCALIBRATED = "probability_uncalibrated"  # column of a calibrated table: the network's own probabilities


def fit_on_validation(method: str, validation: pd.DataFrame | None, key: str = "eval.calibration"
                      ) -> Calibrator | None:
    """The ``method`` calibrator fitted on a validation table (``label``, ``probability``); ``None`` for
    ``none`` and, with a warning naming ``key`` (the option that chose it), when there are no validation
    predictions or too few (:func:`~lungexp.metrics.calibration.fit_calibrator`)."""
    if check_calibration(method, key) == "none":
        return None
    if validation is None:
        log.warning("%s=%s needs validation predictions, but none ran on these weights; "
                    "the probabilities are left uncalibrated", key, method)
        return None
    return fit_calibrator(method, validation["probability"].to_numpy(), validation["label"].to_numpy(), key)


def calibrate_table(table: pd.DataFrame | None, calibrator: Calibrator | None) -> pd.DataFrame | None:
    """``table`` with its ``probability`` calibrated and the original kept in :data:`UNCALIBRATED`; unchanged
    without a calibrator (and ``None`` stays ``None``)."""
    if table is None or calibrator is None:
        return table
    return with_calibrated(table, calibrator(table["probability"].to_numpy(np.float64)))


def with_calibrated(table: pd.DataFrame, calibrated: np.ndarray) -> pd.DataFrame:
    """``table`` with ``probability`` replaced by ``calibrated`` (one per row) and the original kept in
    :data:`UNCALIBRATED`."""
    return table.assign(**{UNCALIBRATED: table["probability"].to_numpy(np.float64),
                           "probability": np.asarray(calibrated, dtype=np.float64).round(6)})


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
    return metrics, {"plots/reliability_diagram_uncalibrated.png": figure}
