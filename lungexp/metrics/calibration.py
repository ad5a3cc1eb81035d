"""Probability calibration fitted on validation predictions (``eval.calibration``), and the Brier score.

* ``temperature``: one scalar ``T`` with ``p' = sigmoid(logit(p) / T)``, fitted by minimising the negative
  log-likelihood; strictly monotone, so rankings (AUROC, average precision, the FROC) are unchanged. A multiclass
  head's class probabilities get ``p' = softmax(log(p) / T)`` (Guo et al. 2017; the same map for K = 2), which
  keeps each sample's most probable class but not the order of one class's probability across samples;
* ``isotonic``: the non-decreasing step function of best squared fit (pool-adjacent-violators), interpolated
  linearly between its fitted points; flexible, but it can tie scores (piecewise constant) and needs more
  validation data than one temperature. One probability to another: a binary head's only;
* ``none``: the network's probabilities as they are.

An ordinal head is not calibrated (:func:`check_calibration` says why).

A fitted :class:`Calibrator` is a plain dict (:meth:`Calibrator.to_dict`, :func:`calibrator_from_dict`), so it
travels in a checkpoint read with ``torch.load(weights_only=True)``. Every calibrator, fitted or read back, must
be one that keeps a probability a probability and never reverses a ranking (of a binary head's probabilities
across samples; of a multiclass head's classes within each sample): a positive, finite temperature, or an
isotonic map of finite, increasing inputs in [0, 1] to non-decreasing outputs in [0, 1]. A stored one that is
not is refused, naming where it was stored.

Fitting needs :data:`MIN_PER_CLASS` validation predictions of each class (a multiclass head: of right and of
wrong most probable classes), else the probabilities are left uncalibrated with a warning; isotonic regression on
fewer than :data:`ISOTONIC_FEW` predictions, and a temperature at the end of its search range, are fitted with a
warning.
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
from scipy.special import logsumexp, softmax
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
# A calibrated predictions table keeps the network's own values of each calibrated column in <column>_uncalibrated.
UNCALIBRATED_SUFFIX = "_uncalibrated"
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
    """``sigmoid(logit(p) / temperature)`` of ``(N,)`` P(positive), ``softmax(log(p) / temperature)`` of a
    multiclass head's ``(N, K)`` class probabilities: a temperature above 1 softens over-confident probabilities."""

    temperature: float
    method: ClassVar[str] = "temperature"

    def __post_init__(self) -> None:
        # NaN would give NaN probabilities, a negative temperature would reverse the ranking.
        check_number("temperature", self.temperature, low=0, low_open=True, error=ArgumentError)

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        if np.ndim(probabilities) == 2:
            return softmax(_log(probabilities) / self.temperature, axis=1)
        return _sigmoid(_logit(probabilities) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": float(self.temperature)}

    @classmethod
    def fit(cls, probabilities: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        """The temperature of least negative log-likelihood (searched on log T, within [1/100, 100]) of 0/1
        ``labels`` against ``(N,)`` probabilities, or of class indices against ``(N, K)`` class probabilities."""
        if np.ndim(probabilities) == 2:
            log_probabilities, rows = _log(probabilities), np.arange(len(labels))
            classes = np.asarray(labels, dtype=np.int64)

            def nll(log_temperature: float) -> float:
                scaled = log_probabilities / np.exp(log_temperature)
                return float(np.mean(logsumexp(scaled, axis=1) - scaled[rows, classes]))
        else:
            logits, positive = _logit(probabilities), np.asarray(labels, dtype=np.float64)

            def nll(log_temperature: float) -> float:
                scaled = logits / np.exp(log_temperature)
                return float(np.mean(np.logaddexp(0.0, scaled) - positive * scaled))

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


def check_calibration(method: str, key: str = "eval.calibration", kind: str = "binary") -> str:
    """``method`` if it is one of :data:`CALIBRATIONS` and defined for a head of ``kind`` (the primary head's:
    ``binary``, ``multiclass`` or ``ordinal``), else a :class:`ConfigError` naming ``key`` and what to use."""
    method = look_up_option(key, method, CALIBRATIONS)
    if kind == "multiclass" and method == IsotonicCalibration.method:
        raise ConfigError(f"{key}=isotonic maps one probability to another, a binary head's; a multiclass head's "
                          f"class probabilities are calibrated by one temperature: use {key}=temperature (or none)")
    if kind == "ordinal" and method != "none":
        raise ConfigError(f"{key}={method} is not offered for an ordinal head: a temperature on CORN's K − 1 logits "
                          "keeps P(level >= k) monotone but can move the median level, the prediction, so it would "
                          f"change the predicted levels (qwk, mae), not only the probabilities; use {key}=none")
    return method


def fit_calibrator(method: str, probabilities: np.ndarray, labels: np.ndarray, key: str = "eval.calibration"
                   ) -> Calibrator | None:
    """The ``method`` calibrator fitted on (validation) ``probabilities`` and ``labels``: ``(N,)`` P(positive) and
    0/1 labels, or a multiclass head's ``(N, K)`` class probabilities and class indices; ``key`` is the option
    that chose it, as its messages name it.

    ``None`` for ``none`` and, with a warning, below :data:`MIN_PER_CLASS` predictions of either class (a
    multiclass head: of right or of wrong most probable classes, without which the temperature runs to a bound of
    its range) or with a probability that is not finite (too little to calibrate against); fitted with a warning
    on few predictions (module docstring).
    """
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    multiclass = probabilities.ndim == 2
    method = check_calibration(method, key, "multiclass" if multiclass else "binary")
    if method == "none":
        return None
    if multiclass:
        right = int(np.count_nonzero(probabilities.argmax(axis=1) == labels))
        fewest = min(right, len(labels) - right)
        held, needs = f"{right} right and {len(labels) - right} wrong most probable class(es)", "right and wrong ones"
    else:
        positives = int(np.count_nonzero(labels))
        fewest = min(positives, len(labels) - positives)
        held, needs = f"{positives} positive(s) and {len(labels) - positives} negative(s)", "both classes"
    unusable = int(np.count_nonzero(~np.isfinite(probabilities)))
    if fewest < MIN_PER_CLASS or unusable:
        held = f"{unusable} probabilities that are not finite" if unusable else held
        warnings.warn(f"{key}={method}: the validation predictions hold {held}; a calibration needs {needs}, "
                      f"at least {MIN_PER_CLASS} of each, so the probabilities are left uncalibrated", stacklevel=2)
        return None
    if method == IsotonicCalibration.method and len(labels) < ISOTONIC_FEW:
        warnings.warn(f"{key}=isotonic on {len(labels)} validation predictions: isotonic regression overfits on "
                      f"fewer than about {ISOTONIC_FEW} (a step function through few points); {key}=temperature "
                      "is the safer choice", stacklevel=2)
    calibrator = _METHODS[method].fit(probabilities, labels)
    if isinstance(calibrator, TemperatureScaling) and np.isclose(
            abs(np.log(calibrator.temperature)), _LOG_TEMPERATURE_BOUNDS[1], atol=1e-3):
        why = ("as when the validation predictions separate the classes perfectly; the calibrated probabilities are "
               "nearly all 0 or 1") if calibrator.temperature < 1 else (
               "as when the validation predictions are no better than chance; the calibrated probabilities are "
               "nearly all equal")
        warnings.warn(f"{key}=temperature: the fitted temperature {calibrator.temperature:.3g} is at the end of its "
                      f"range [0.01, 100], {why}", stacklevel=2)
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


def _log(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities as logits (up to each row's constant, which softmax ignores)."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1.0))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))
