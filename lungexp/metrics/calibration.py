"""Probability calibration fitted on validation predictions (``eval.calibration``), and the Brier score.

* ``temperature``: one scalar ``T`` with ``p' = sigmoid(logit(p) / T)``, fitted by minimising the negative
  log-likelihood; strictly monotone, so rankings (AUROC, average precision, the FROC) are unchanged;
* ``isotonic``: the non-decreasing step function of best squared fit (pool-adjacent-violators), interpolated
  linearly between its fitted points; flexible, but it can tie scores (piecewise constant) and needs more
  validation data than one temperature;
* ``none``: the network's probabilities as they are.

A fitted :class:`Calibrator` is a plain dict (:meth:`Calibrator.to_dict`, :func:`calibrator_from_dict`), so it
travels in a checkpoint read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import isotonic_regression, minimize_scalar
from torchmetrics.functional.classification import binary_calibration_error

from lungexp.metrics.classification import CALIBRATION_BINS
from lungexp.utils.errors import ConfigError, look_up_option

CALIBRATIONS = ("none", "temperature", "isotonic")
_EPSILON = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit (a stored 0 or 1 is rounded)
_LOG_TEMPERATURE_BOUNDS = (-np.log(100.0), np.log(100.0))


class Calibrator(ABC):
    """Maps probabilities to calibrated probabilities; ``method`` is its ``eval.calibration`` name."""

    method: ClassVar[str]

    @abstractmethod
    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64, same shape)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., <parameters>}`` in plain lists and floats."""


@dataclass(frozen=True)
class TemperatureScaling(Calibrator):
    """``sigmoid(logit(p) / temperature)``: a temperature above 1 softens over-confident probabilities."""

    temperature: float
    method: ClassVar[str] = "temperature"

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        return _sigmoid(_logit(probabilities) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": float(self.temperature)}

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        """The temperature of least negative log-likelihood (searched on log T, within [1/100, 100])."""
        logits, labels = _logit(probabilities), np.asarray(labels, dtype=np.float64)

        def nll(log_temperature: float) -> float:
            scaled = logits / np.exp(log_temperature)
            return float(np.mean(np.logaddexp(0.0, scaled) - labels * scaled))

        best = minimize_scalar(nll, bounds=_LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-6})
        return cls(temperature=float(np.exp(best.x)))


@dataclass(frozen=True)
class IsotonicCalibration(Calibrator):
    """The non-decreasing map through ``(inputs[i], outputs[i])``, linear between them and constant beyond."""

    inputs: tuple[float, ...]
    outputs: tuple[float, ...]
    method: ClassVar[str] = "isotonic"

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(probabilities, dtype=np.float64), self.inputs, self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray) -> IsotonicCalibration:
        """Pool-adjacent-violators on the fraction of positives per distinct probability (weighted by count)."""
        inputs, index, counts = np.unique(np.asarray(probabilities, dtype=np.float64), return_inverse=True,
                                          return_counts=True)
        positives = np.bincount(index, weights=np.asarray(labels, dtype=np.float64), minlength=len(inputs))
        outputs = isotonic_regression(positives / counts, weights=counts, increasing=True).x
        step = np.diff(outputs) != 0  # only the ends of each pooled block shape the interpolation
        ends = np.r_[True, step] | np.r_[step, True]
        return cls(inputs=tuple(map(float, inputs[ends])), outputs=tuple(map(float, outputs[ends])))


_METHODS: dict[str, type[TemperatureScaling] | type[IsotonicCalibration]] = {
    TemperatureScaling.method: TemperatureScaling, IsotonicCalibration.method: IsotonicCalibration}


def check_calibration(method: str, key: str = "eval.calibration") -> str:
    """``method`` if it is one of :data:`CALIBRATIONS`, else a :class:`ConfigError` naming ``key``."""
    return look_up_option(key, method, CALIBRATIONS)


def fit_calibrator(method: str, probabilities: np.ndarray, labels: np.ndarray) -> Calibrator | None:
    """The ``method`` calibrator fitted on (validation) ``probabilities`` and 0/1 ``labels``.

    ``None`` for ``none``, and, with a warning, when the labels lack a class (nothing to calibrate against).
    """
    method = check_calibration(method)
    if method == "none":
        return None
    labels = np.asarray(labels)
    if labels.all() or not labels.any():
        warnings.warn(f"eval.calibration={method}: the validation predictions need both classes; "
                      "the probabilities are left uncalibrated", stacklevel=2)
        return None
    return _METHODS[method].fit(np.asarray(probabilities, dtype=np.float64), labels)


def calibrator_from_dict(state: Mapping[str, Any]) -> Calibrator:
    """The calibrator :meth:`Calibrator.to_dict` wrote; a :class:`ConfigError` for anything else."""
    method = state.get("method") if isinstance(state, Mapping) else None
    try:
        if method == TemperatureScaling.method:
            return TemperatureScaling(temperature=float(state["temperature"]))
        if method == IsotonicCalibration.method:
            return IsotonicCalibration(inputs=tuple(map(float, state["inputs"])),
                                       outputs=tuple(map(float, state["outputs"])))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"stored {method} calibration is incomplete ({error!r}): {dict(state)}") from None
    raise ConfigError(f"stored calibration {state!r} names no method of {', '.join(CALIBRATIONS[1:])}")


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label (0 is perfect; 0.25 is a constant 0.5)."""
    return float(np.mean((np.asarray(probabilities, np.float64) - np.asarray(labels, np.float64)) ** 2))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ECE exactly as the ``ece`` metric computes it (L1, :data:`CALIBRATION_BINS` equal-width bins)."""
    return float(binary_calibration_error(torch.tensor(np.asarray(probabilities, np.float64)),
                                          torch.tensor(np.asarray(labels), dtype=torch.long),
                                          n_bins=CALIBRATION_BINS, norm="l1"))


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p) - np.log1p(-p)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))
