"""Probability calibration fitted on validation predictions (``eval.calibration``), and the Brier score.

* ``temperature``: one scalar ``T`` with ``p' = sigmoid(logit(p) / T)``, fitted by minimising the negative
  log-likelihood; strictly monotone, so rankings (AUROC, average precision, the FROC) are unchanged;
* ``isotonic``: the non-decreasing step function of best squared fit (pool-adjacent-violators), interpolated
  linearly between its fitted points; flexible, but it can tie scores (piecewise constant) and needs more
  validation data than one temperature;
* ``none``: the network's probabilities as they are.

A fitted :class:`Calibrator` is a plain dict (:meth:`Calibrator.to_dict`, :func:`calibrator_from_dict`), so it
travels in a checkpoint read with ``torch.load(weights_only=True)``. Every calibrator, fitted or read back, must
be one that keeps a probability a probability and never reverses a ranking (a positive, finite temperature; an
isotonic map of finite, increasing inputs in [0, 1] to non-decreasing outputs in [0, 1]); a stored one that is
not is refused, naming where it was stored.

Fitting needs :data:`MIN_PER_CLASS` validation predictions of each class, else the probabilities are left
uncalibrated with a warning; isotonic regression on fewer than :data:`ISOTONIC_FEW` predictions, and a
temperature at the end of its search range, are fitted with a warning.
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
from lungexp.utils.errors import ArgumentError, ConfigError, check_number, look_up_option

CALIBRATIONS = ("none", "temperature", "isotonic")
# Below 5 of a class, the calibrated probabilities near that class are set by one to four samples: isotonic
# regression then outputs steps of 0, 1/2, 1/3 ... (on two samples, 0 and 1 only), and the temperature of least
# log-loss is set by whichever sample is on the wrong side, at its search bound when none is.
MIN_PER_CLASS = 5
# Isotonic regression overfits on fewer than about 1000 calibration samples, where one temperature is the safer
# choice (Niculescu-Mizil & Caruana, ICML 2005; scikit-learn's calibration guide says the same).
ISOTONIC_FEW = 1000
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

    def __post_init__(self) -> None:
        # NaN would give NaN probabilities, a negative temperature would reverse the ranking.
        check_number("temperature", self.temperature, low=0, low_open=True, error=ArgumentError)

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

    def __post_init__(self) -> None:
        inputs, outputs = np.asarray(self.inputs, np.float64), np.asarray(self.outputs, np.float64)
        if inputs.ndim != 1 or not len(inputs) or inputs.shape != outputs.shape:
            raise ArgumentError(f"inputs and outputs must be two lists of the same, non-zero length; got "
                                f"{len(self.inputs)} input(s) and {len(self.outputs)} output(s)", "outputs")
        for name, values, rule in (("inputs", inputs, np.all(np.diff(inputs) > 0)),
                                   ("outputs", outputs, np.all(np.diff(outputs) >= 0))):
            if not (np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 1 and rule):
                order = "increasing" if name == "inputs" else "non-decreasing"
                raise ArgumentError(f"{name} must be {order} probabilities in [0, 1]; got {_shown(values)}")

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


def fit_calibrator(method: str, probabilities: np.ndarray, labels: np.ndarray, key: str = "eval.calibration"
                   ) -> Calibrator | None:
    """The ``method`` calibrator fitted on (validation) ``probabilities`` and 0/1 ``labels``; ``key`` is the option
    that chose it, as its messages name it.

    ``None`` for ``none`` and, with a warning, below :data:`MIN_PER_CLASS` predictions of either class or with
    a probability that is not finite (too little to calibrate against); fitted with a warning on few predictions
    (module docstring).
    """
    method = check_calibration(method, key)
    if method == "none":
        return None
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    positives = int(np.count_nonzero(labels))
    negatives = len(labels) - positives
    unusable = int(np.count_nonzero(~np.isfinite(probabilities)))
    if min(positives, negatives) < MIN_PER_CLASS or unusable:
        held = (f"{unusable} probabilities that are not finite" if unusable
                else f"{positives} positive(s) and {negatives} negative(s)")
        warnings.warn(f"{key}={method}: the validation predictions hold {held}; a calibration needs both classes, "
                      f"at least {MIN_PER_CLASS} of each, so the probabilities are left uncalibrated", stacklevel=2)
        return None
    if method == IsotonicCalibration.method and len(labels) < ISOTONIC_FEW:
        warnings.warn(f"{key}=isotonic on {len(labels)} validation predictions: isotonic regression overfits on "
                      f"fewer than about {ISOTONIC_FEW} (a step function through few points); {key}=temperature "
                      "is the safer choice", stacklevel=2)
    calibrator = _METHODS[method].fit(probabilities, labels)
    if isinstance(calibrator, TemperatureScaling) and np.isclose(
            abs(np.log(calibrator.temperature)), _LOG_TEMPERATURE_BOUNDS[1], atol=1e-3):
        warnings.warn(f"{key}=temperature: the fitted temperature {calibrator.temperature:.3g} is at the end of its "
                      "range [0.01, 100], as when the validation predictions separate the classes perfectly; "
                      "the calibrated probabilities are nearly all 0 or 1", stacklevel=2)
    return calibrator


def calibrator_from_dict(state: Mapping[str, Any], source: str = "the stored calibration") -> Calibrator:
    """The calibrator :meth:`Calibrator.to_dict` wrote; a :class:`ConfigError` naming ``source`` (where it was
    stored) for anything else: another method, a missing value, or a damaged one (module docstring)."""
    method = state.get("method") if isinstance(state, Mapping) else None
    if method not in _METHODS:
        raise ConfigError(f"{source}: {state!r} names no method of {', '.join(_METHODS)}")
    try:
        if method == TemperatureScaling.method:
            return TemperatureScaling(temperature=float(state["temperature"]))
        return IsotonicCalibration(inputs=tuple(map(float, state["inputs"])),
                                   outputs=tuple(map(float, state["outputs"])))
    except (KeyError, TypeError, ValueError) as error:  # an ArgumentError of the checks is a ValueError
        problem = f"no {error}" if isinstance(error, KeyError) else str(error)
        raise ConfigError(f"{source}: the stored {method} calibration is damaged ({problem}); fit it again "
                          "(train or register with the calibration again) or use calibration=none") from None


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 label (0 is perfect; 0.25 is a constant 0.5)."""
    return float(np.mean((np.asarray(probabilities, np.float64) - np.asarray(labels, np.float64)) ** 2))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The ECE exactly as the ``ece`` metric computes it (L1, :data:`CALIBRATION_BINS` equal-width bins)."""
    return float(binary_calibration_error(torch.tensor(np.asarray(probabilities, np.float64)),
                                          torch.tensor(np.asarray(labels), dtype=torch.long),
                                          n_bins=CALIBRATION_BINS, norm="l1"))


def _shown(values: np.ndarray, count: int = 6) -> str:
    """The first ``count`` values, for a message."""
    return "[" + ", ".join(f"{value:g}" for value in values[:count]) + (", ...]" if len(values) > count else "]")


def _logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.log(p) - np.log1p(-p)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))
