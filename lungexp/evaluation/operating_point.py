"""The operating point: how a model's probabilities become decisions, fitted on its validation predictions.

``eval.calibration`` (or ``calibration`` of predict and register) fits a calibrator on the validation predictions
of the weights (:mod:`lungexp.metrics.calibration`), and the ``eval.threshold`` rule picks the decision threshold
on the calibrated ones (:mod:`lungexp.metrics.threshold`). The test stage of training, the predictor of a
checkpoint, the ensemble of several and the pooled report of a cross-validation all take their operating point
from here, so a score means the same decision wherever it is made.

A calibrated predictions table keeps the network's own probabilities in :data:`UNCALIBRATED`; every metric and
figure of its report is then of the calibrated ``probability``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lungexp.metrics.calibration import Calibrator, calibrator_from_dict, check_calibration, fit_calibrator
from lungexp.metrics.threshold import threshold_from_validation

log = logging.getLogger(__name__)

UNCALIBRATED = "probability_uncalibrated"  # column of a calibrated table: the network's own probabilities
UNCHOSEN_THRESHOLD = 0.5  # the threshold of models none of which chose one


@dataclass(frozen=True, eq=False)  # compared by identity: a table has no single truth value
class OperatingPoint:
    """The validation predictions of one model's weights and the calibrator fitted on them (``None``:
    uncalibrated); the decision threshold is chosen on them, calibrated, by a rule (:meth:`threshold`).

    Args:
        validation: ``label, probability`` (and ``seriesuid``, for ``fp_per_scan@``) of the validation patches;
            ``None`` when no validation ran on the weights.
        calibrator: what :meth:`apply` maps probabilities with.
    """

    validation: pd.DataFrame | None = None
    calibrator: Calibrator | None = None

    @classmethod
    def fit(cls, validation: pd.DataFrame | None, calibration: str, key: str = "eval.calibration",
            stored: Mapping[str, Any] | None = None, source: str = "the stored calibration") -> OperatingPoint:
        """The ``calibration`` method (``none``, ``temperature``, ``isotonic``) fitted on ``validation``, or the
        calibrator ``stored`` (:meth:`calibration_state` of the same fit, read from ``source``) when it is of
        that method. Uncalibrated for ``none`` and, with a warning naming ``key`` (the option that chose the
        method), when there are no validation predictions or too few
        (:func:`~lungexp.metrics.calibration.fit_calibrator`)."""
        method = check_calibration(calibration, key)
        if stored is not None and stored.get("method") == method:
            return cls.restored(validation, stored, source)
        if method == "none":
            return cls(validation)
        if validation is None:
            log.warning("%s=%s needs validation predictions, but none ran on these weights; "
                        "the probabilities are left uncalibrated", key, method)
            return cls(validation)
        return cls(validation, fit_calibrator(method, validation["probability"].to_numpy(),
                                              validation["label"].to_numpy(), key))

    @classmethod
    def restored(cls, validation: pd.DataFrame | None, state: Mapping[str, Any], source: str) -> OperatingPoint:
        """The operating point whose calibrator :meth:`calibration_state` wrote as ``state``; ``source`` names
        where it was read, for the message of a damaged one."""
        return cls(validation, calibrator_from_dict(state, source=source))

    def calibration_state(self) -> dict[str, Any] | None:
        """The calibrator as plain data (what a checkpoint and a registered model store); ``None`` uncalibrated."""
        return None if self.calibrator is None else self.calibrator.to_dict()

    def uncalibrated(self) -> OperatingPoint:
        """The same validation predictions without the calibrator."""
        return OperatingPoint(self.validation)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """``probabilities`` calibrated; unchanged without a calibrator."""
        return probabilities if self.calibrator is None else self.calibrator(probabilities)

    def calibrate_table(self, table: pd.DataFrame | None) -> pd.DataFrame | None:
        """``table`` with its ``probability`` calibrated and the original kept in :data:`UNCALIBRATED`; unchanged
        without a calibrator (and ``None`` stays ``None``)."""
        if table is None or self.calibrator is None:
            return table
        return with_calibrated(table, self.calibrator(table["probability"].to_numpy(np.float64)))

    def threshold(self, rule: str | float) -> float:
        """The decision threshold the ``eval.threshold`` ``rule`` picks on the (calibrated) validation predictions."""
        return threshold_from_validation(rule, self.calibrate_table(self.validation))


def with_calibrated(table: pd.DataFrame, calibrated: np.ndarray) -> pd.DataFrame:
    """``table`` with ``probability`` replaced by ``calibrated`` (one per row) and the original kept in
    :data:`UNCALIBRATED`."""
    return table.assign(**{UNCALIBRATED: table["probability"].to_numpy(np.float64),
                           "probability": np.asarray(calibrated, dtype=np.float64).round(6)})


def pooled_threshold(thresholds: Iterable[float]) -> float:
    """The threshold of several models judged as one (an ensemble's members, the folds of a cross-validation):
    the mean of their own thresholds, each chosen on its own validation predictions; those that chose none
    (not finite) are left out, and without any it is :data:`UNCHOSEN_THRESHOLD`."""
    chosen = [threshold for threshold in thresholds if np.isfinite(threshold)]
    return float(np.mean(chosen)) if chosen else UNCHOSEN_THRESHOLD
