"""The operating point: how a model's probabilities become decisions, fitted on its validation predictions.

``eval.calibration`` (or ``calibration`` of predict and register) fits a calibrator on the validation predictions
of the weights (:mod:`lungexp.metrics.calibration`), and the ``eval.threshold`` rule picks the decision threshold
on the calibrated ones (:mod:`lungexp.metrics.threshold`). The test stage of training, the predictor of a
checkpoint, the ensemble of several and the pooled report of a cross-validation all take their operating point
from here, so a score means the same decision wherever it is made.

The calibrator is of a target's primary head (a binary head's ``probability``, a multiclass head's
``probability_<class>``; an ordinal one is not calibrated, :func:`~lungexp.metrics.calibration.check_calibration`);
auxiliary heads keep their own probabilities. A calibrated predictions table keeps the network's own
probabilities of each calibrated column in ``<column>_uncalibrated`` (:data:`UNCALIBRATED` for ``probability``);
every metric and figure of its report is then of the calibrated ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lungexp.data.labels.targets import HeadSpec
from lungexp.metrics.calibration import (
    UNCALIBRATED_SUFFIX,
    Calibrator,
    calibrator_from_dict,
    check_calibration,
    fit_calibrator,
)
from lungexp.metrics.threshold import threshold_from_validation

log = logging.getLogger(__name__)

UNCALIBRATED = f"probability{UNCALIBRATED_SUFFIX}"  # a binary head's network's own probabilities, calibrated
UNCHOSEN_THRESHOLD = 0.5  # the threshold of models none of which chose one


@dataclass(frozen=True, eq=False)  # compared by identity: a table has no single truth value
class OperatingPoint:
    """The validation predictions of one model's weights and the calibrator fitted on them (``None``:
    uncalibrated); the decision threshold is chosen on them, calibrated, by a rule (:meth:`threshold`).

    Args:
        validation: ``label, probability`` (and ``seriesuid``, for ``fp_per_scan@``) of the validation patches
            (a target of several heads: every head's columns); ``None`` when no validation ran on the weights.
        calibrator: what :meth:`apply` maps the probabilities of ``head`` with.
        head: the head calibrated: the target's primary head (default: one binary logit's).
    """

    validation: pd.DataFrame | None = None
    calibrator: Calibrator | None = None
    head: HeadSpec = field(default_factory=HeadSpec)

    @classmethod
    def fit(cls, validation: pd.DataFrame | None, calibration: str, key: str = "eval.calibration",
            stored: Mapping[str, Any] | None = None, source: str = "the stored calibration",
            head: HeadSpec | None = None) -> OperatingPoint:
        """The ``calibration`` method (``none``, ``temperature``, ``isotonic``) of ``head`` (the target's primary;
        default one binary logit) fitted on ``validation``, or the calibrator ``stored`` (:meth:`calibration_state`
        of the same fit, read from ``source``) when it is of that method. Uncalibrated for ``none`` and, with a
        warning naming ``key`` (the option that chose the method), when there are no validation predictions or
        too few (:func:`~lungexp.metrics.calibration.fit_calibrator`); a method the head's kind does not have is a
        :class:`~lungexp.utils.errors.ConfigError` naming ``key``."""
        head = head or HeadSpec()
        method = check_calibration(calibration, key, head.kind)
        if stored is not None and stored.get("method") == method:
            return cls.restored(validation, stored, source, head)
        if method == "none":
            return cls(validation, head=head)
        if validation is None:
            log.warning("%s=%s needs validation predictions, but none ran on these weights; "
                        "the probabilities are left uncalibrated", key, method)
            return cls(validation, head=head)
        columns = list(head.probability_columns)
        probabilities = validation[columns[0]] if head.kind == "binary" else validation[columns]
        return cls(validation, fit_calibrator(method, probabilities.to_numpy(), validation["label"].to_numpy(), key),
                   head)

    @classmethod
    def restored(cls, validation: pd.DataFrame | None, state: Mapping[str, Any], source: str,
                 head: HeadSpec | None = None) -> OperatingPoint:
        """The operating point whose calibrator :meth:`calibration_state` wrote as ``state``, of ``head`` (default
        one binary logit); ``source`` names where it was read, for the message of a damaged one."""
        return cls(validation, calibrator_from_dict(state, source=source), head or HeadSpec())

    def calibration_state(self) -> dict[str, Any] | None:
        """The calibrator as plain data (what a checkpoint and a registered model store); ``None`` uncalibrated."""
        return None if self.calibrator is None else self.calibrator.to_dict()

    def uncalibrated(self) -> OperatingPoint:
        """The same validation predictions without the calibrator."""
        return OperatingPoint(self.validation, head=self.head)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """``probabilities`` calibrated: ``(N,)`` of one logit, or ``(N, columns)`` of every head, whose first
        columns are the primary head's (the others are left as they are); unchanged without a calibrator."""
        if self.calibrator is None:
            return probabilities
        if probabilities.ndim == 1:
            return self.calibrator(probabilities)
        width = len(self.head.probability_columns)
        calibrated = probabilities.astype(np.float64)
        primary = calibrated[:, 0] if self.head.kind == "binary" else calibrated[:, :width]
        calibrated[:, :width] = self.calibrator(primary).reshape(len(calibrated), width)
        return calibrated

    def calibrate_table(self, table: pd.DataFrame | None) -> pd.DataFrame | None:
        """``table`` with the probabilities of :attr:`head` calibrated and the originals kept (:func:`with_calibrated`);
        unchanged without a calibrator (and ``None`` stays ``None``)."""
        if table is None or self.calibrator is None:
            return table
        columns = list(self.head.probability_columns)
        probabilities = table[columns].to_numpy(np.float64)
        return with_calibrated(table, self.apply(probabilities[:, 0] if len(columns) == 1 else probabilities),
                               self.head)

    def threshold(self, rule: str | float) -> float:
        """The decision threshold the ``eval.threshold`` ``rule`` picks on the (calibrated) validation predictions."""
        return threshold_from_validation(rule, self.calibrate_table(self.validation))


def with_calibrated(table: pd.DataFrame, calibrated: np.ndarray, head: HeadSpec | None = None) -> pd.DataFrame:
    """``table`` with the probability columns of ``head`` (default one binary logit's ``probability``) replaced by
    the first columns of ``calibrated`` (``(N,)`` or ``(N, columns)``, one row per table row: the others are
    those of other heads) and each original kept in ``<column>_uncalibrated``."""
    columns = (head or HeadSpec()).probability_columns
    values = np.asarray(calibrated, dtype=np.float64)
    values = (values[:, None] if values.ndim == 1 else values)[:, :len(columns)].round(6)
    return table.assign(**{uncalibrated_column(column): table[column].to_numpy(np.float64) for column in columns},
                        **dict(zip(columns, values.T, strict=True)))


def uncalibrated_column(column: str) -> str:
    """Where a calibrated table keeps the network's own values of the probability ``column``."""
    return f"{column}{UNCALIBRATED_SUFFIX}"


def pooled_threshold(thresholds: Iterable[float]) -> float:
    """The threshold of several models judged as one (an ensemble's members, the folds of a cross-validation):
    the mean of their own thresholds, each chosen on its own validation predictions; those that chose none
    (not finite) are left out, and without any it is :data:`UNCHOSEN_THRESHOLD`."""
    chosen = [threshold for threshold in thresholds if np.isfinite(threshold)]
    return float(np.mean(chosen)) if chosen else UNCHOSEN_THRESHOLD
