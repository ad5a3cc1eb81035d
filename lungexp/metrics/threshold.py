"""Decision thresholds chosen on validation predictions and applied unchanged to test (``eval.threshold``).

Rules:

* ``youden``: the operating point maximising sensitivity + specificity - 1 (Youden's J); of equal
  ones, the highest threshold;
* ``sensitivity@0.9`` (any level in (0, 1]): the highest threshold whose sensitivity reaches the level;
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
RULES_HELP = "youden, sensitivity@<level> (e.g. sensitivity@0.9) or a fixed probability in [0, 1] (e.g. 0.5)"


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
    value = _number(rule)
    if value is None or not 0 <= value <= 1:
        raise ConfigError(f"{key}={rule!r} is not a threshold rule; use {RULES_HELP}")
    return value


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, rule: str | float) -> float:
    """The threshold ``rule`` picks on (validation) ``labels`` and ``probabilities``.

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
    else:
        point = int(np.argmax(sensitivity >= float(rule.removeprefix(SENSITIVITY_PREFIX)) - 1e-12))
    below = scores[point + 1] if point + 1 < len(scores) else 0.0
    return float((scores[point] + below) / 2)


def threshold_from_validation(rule: str | float, validation: pd.DataFrame | None) -> float:
    """The threshold ``rule`` picks on a validation table (``label``, ``probability``); 0.5 with a warning when
    a rule needs validation predictions and there are none (e.g. a checkpoint saved without validation)."""
    if isinstance(rule, str):
        if validation is None:
            log.warning("eval.threshold=%s needs validation predictions, but none ran on these weights; using 0.5",
                        rule)
            return 0.5
        return choose_threshold(validation["label"].to_numpy(), validation["probability"].to_numpy(), rule)
    return float(rule)


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
