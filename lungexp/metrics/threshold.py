"""Decision thresholds chosen on validation predictions and applied unchanged to test (``eval.threshold``).

Rules:

* ``youden``: the operating point maximising sensitivity + specificity - 1 (Youden's J); of equal
  ones, the highest threshold;
* ``sensitivity@0.9`` (any level in (0, 1]): the highest threshold whose sensitivity reaches the level;
* ``fp_per_scan@1`` (any rate > 0, for task ``candidates``): the lowest threshold (the most sensitive
  operating point) whose false positives per validation scan stay at or below the rate; the scans are
  the distinct ``seriesuid`` of the validation predictions;
* a number in [0, 1] (e.g. ``0.5``): that threshold, whatever validation says.

A patch is positive when its probability is strictly above the threshold (see
:mod:`lungexp.metrics.classification`). A chosen threshold lies halfway between the validation score of
its operating point and the next lower one, so no validation score sits on it and test patches
scoring like the operating point's patches are called positive.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from lungexp.utils.errors import ConfigError

log = logging.getLogger(__name__)

YOUDEN = "youden"
SENSITIVITY_PREFIX = "sensitivity@"
FP_PER_SCAN_PREFIX = "fp_per_scan@"
RULES_HELP = ("youden, sensitivity@<level> (e.g. sensitivity@0.9), fp_per_scan@<rate> (e.g. fp_per_scan@1) "
              "or a fixed probability in [0, 1] (e.g. 0.5)")


def check_threshold_rule(rule: str | float, key: str = "eval.threshold") -> str | float:
    """``rule`` as a rule name or a float, or a :class:`ConfigError` naming ``key`` and the valid rules."""
    if isinstance(rule, str) and rule == YOUDEN:
        return rule
    if isinstance(rule, str) and rule.startswith(SENSITIVITY_PREFIX):
        level = _number(rule.removeprefix(SENSITIVITY_PREFIX))
        if level is None or not 0 < level <= 1:
            raise ConfigError(f"{key}={rule!r}: the sensitivity level must be a number in (0, 1], "
                              f"e.g. sensitivity@0.9")
        return rule
    if isinstance(rule, str) and rule.startswith(FP_PER_SCAN_PREFIX):
        rate = _number(rule.removeprefix(FP_PER_SCAN_PREFIX))
        if rate is None or not 0 < rate < float("inf"):
            raise ConfigError(f"{key}={rule!r}: the false-positive rate must be a number > 0 (false positives "
                              "per scan), e.g. fp_per_scan@1")
        return rule
    value = _number(rule)
    if value is None or not 0 <= value <= 1:
        raise ConfigError(f"{key}={rule!r} is not a threshold rule; use {RULES_HELP}")
    return value


def check_rule_for_task(rule: str | float, task: str, key: str = "eval.threshold") -> None:
    """``fp_per_scan@`` counts false positives among each scan's candidate detections (``data.task=candidates``);
    on nodule crops or labelled points the rate would be computed but mean nothing: refused, saying what to use."""
    if isinstance(rule, str) and rule.startswith(FP_PER_SCAN_PREFIX) and task != "candidates":
        raise ConfigError(f"{key}={rule}: false positives per scan count a scan's candidate detections "
                          f"(data.task=candidates), but data.task={task}; use youden, sensitivity@<level> "
                          "(e.g. sensitivity@0.9) or a fixed probability")


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, rule: str | float,
                     scans: int | None = None) -> float:
    """The threshold ``rule`` picks on (validation) ``labels`` and ``probabilities``; ``scans``, the number of
    scans the patches come from, is needed by ``fp_per_scan@``.

    Without both classes only a fixed number can be honoured; other rules fall back to 0.5 with a warning.
    """
    rule = check_threshold_rule(rule)
    if not isinstance(rule, str):
        return float(rule)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        warnings.warn(f"eval.threshold={rule}: the validation predictions need both classes; using 0.5",
                      stacklevel=2)
        return 0.5
    scores, true_positives, false_positives = _operating_points(labels, np.asarray(probabilities, np.float64))
    sensitivity = true_positives / labels.sum()
    if rule == YOUDEN:
        point = int(np.argmax(sensitivity - false_positives / (~labels).sum()))
    elif rule.startswith(FP_PER_SCAN_PREFIX):
        if not scans:
            raise ValueError(f"{rule} needs the number of scans the predictions come from")
        allowed = np.flatnonzero(false_positives / scans <= float(rule.removeprefix(FP_PER_SCAN_PREFIX)) + 1e-12)
        if not len(allowed):  # the top-scoring score already has too many false positives: call nothing positive
            return float(scores[0])
        point = int(allowed[-1])  # false positives only grow as the threshold falls
    else:
        point = int(np.argmax(sensitivity >= float(rule.removeprefix(SENSITIVITY_PREFIX)) - 1e-12))
    below = scores[point + 1] if point + 1 < len(scores) else 0.0
    return float((scores[point] + below) / 2)


def threshold_from_validation(rule: str | float, validation: pd.DataFrame | None) -> float:
    """The threshold ``rule`` picks on a validation table (``label``, ``probability``, and ``seriesuid`` for
    ``fp_per_scan@``); 0.5 with a warning when a rule needs validation predictions and there are none (e.g. a
    checkpoint saved without validation) or they lack the series (a checkpoint saved before they were stored)."""
    if not isinstance(rule, str):
        return float(rule)
    if validation is None:
        log.warning("eval.threshold=%s needs validation predictions, but none ran on these weights; using 0.5", rule)
        return 0.5
    if rule.startswith(FP_PER_SCAN_PREFIX) and "seriesuid" not in validation:
        log.warning("eval.threshold=%s needs the seriesuid of each validation prediction, which these weights' "
                    "validation predictions lack (saved by an older lungexp); using 0.5", rule)
        return 0.5
    scans = validation["seriesuid"].nunique() if "seriesuid" in validation else None
    return choose_threshold(validation["label"].to_numpy(), validation["probability"].to_numpy(), rule, scans)


def false_positives_per_scan(predictions: pd.DataFrame, threshold: float) -> float:
    """Negatives scoring above ``threshold`` per distinct ``seriesuid`` of ``predictions`` (as
    ``fp_per_scan@`` counts them on validation)."""
    negatives = predictions["label"].to_numpy() == 0
    false_positives = int((predictions["probability"].to_numpy()[negatives] > threshold).sum())
    return false_positives / max(predictions["seriesuid"].nunique(), 1)


def _operating_points(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, descending, with the true and false positives of ``probability >= score``."""
    order = np.argsort(-probabilities, kind="stable")
    scores, positive = probabilities[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last]
    return scores[last], true_positives, last + 1 - true_positives


def _number(text: str | float) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
