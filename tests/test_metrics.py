"""Metrics, thresholds and the evaluation report, each number against scikit-learn or numpy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from lungexp.config.check import check
from lungexp.evaluation.split_metrics import evaluate_predictions
from lungexp.evaluation.types import EvaluationOptions, EvaluationSettings
from lungexp.metrics.classification import reliability_bins, table_metrics
from lungexp.metrics.luna16_froc import FrocReference
from lungexp.metrics.threshold import (
    check_rule_for_task,
    choose_threshold,
    false_positives_per_scan,
    threshold_from_validation,
)
from lungexp.utils.errors import ConfigError

# Ties within and across classes, a score exactly at 0.5 and one exactly at 0.3.
LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1])
SCORES = np.array([0.1, 0.2, 0.2, 0.3, 0.5, 0.7, 0.3, 0.5, 0.7, 0.9, 0.05, 0.6, 0.6, 0.2])


def sklearn_at(threshold: float, labels: np.ndarray = LABELS, scores: np.ndarray = SCORES) -> dict[str, float]:
    predicted = scores > threshold
    return {
        "accuracy": sk.accuracy_score(labels, predicted),
        "precision": sk.precision_score(labels, predicted, zero_division=0),
        "sensitivity": sk.recall_score(labels, predicted, zero_division=0),
        "specificity": sk.recall_score(1 - labels, ~predicted, zero_division=0),
        "f1": sk.f1_score(labels, predicted, zero_division=0),
    }


def numpy_ece(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error, bin by bin: sum over bins of |mean score - positive rate| * bin share."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (scores >= low) & (scores < high) if high < 1 else (scores >= low)
        if inside.any():
            total += abs(scores[inside].mean() - labels[inside].mean()) * inside.mean()
    return total


def test_every_metric_matches_sklearn_with_ties_and_scores_on_the_threshold() -> None:
    metrics = table_metrics(LABELS, SCORES, "test/", threshold=0.3)
    for name, value in sklearn_at(0.5).items():
        assert metrics[f"test/{name}"] == pytest.approx(value, abs=1e-6), name
    for name, value in sklearn_at(0.3).items():
        assert metrics[f"test/at_threshold/{name}"] == pytest.approx(value, abs=1e-6), name
    assert metrics["test/auroc"] == pytest.approx(sk.roc_auc_score(LABELS, SCORES), abs=1e-6)
    assert metrics["test/average_precision"] == pytest.approx(sk.average_precision_score(LABELS, SCORES), abs=1e-6)
    assert metrics["test/ece"] == pytest.approx(numpy_ece(LABELS, SCORES), abs=1e-6)
    assert metrics["test/threshold"] == 0.3


def test_a_score_exactly_at_the_threshold_is_negative() -> None:
    metrics = table_metrics(np.array([0, 1]), np.array([0.4, 0.4]), "test/", threshold=0.4)
    assert metrics["test/at_threshold/sensitivity"] == 0.0 and metrics["test/at_threshold/specificity"] == 1.0
    just_below = table_metrics(np.array([0, 1]), np.array([0.4, 0.4]), "test/", threshold=0.3999)
    assert just_below["test/at_threshold/sensitivity"] == 1.0


@pytest.mark.parametrize("label, undefined, defined", [
    (0, {"auroc", "average_precision", "sensitivity"}, {"specificity", "accuracy", "ece"}),
    (1, {"auroc", "average_precision", "specificity"}, {"sensitivity", "accuracy", "ece"}),
])
def test_one_class_gives_nan_with_a_warning(label: int, undefined: set[str], defined: set[str]) -> None:
    labels = np.full(5, label)
    scores = np.array([0.1, 0.4, 0.6, 0.8, 0.9])
    with pytest.warns(UserWarning, match=f"only class {label} present"):
        metrics = table_metrics(labels, scores, "test/", threshold=0.5)
    for name in undefined:
        assert math.isnan(metrics[f"test/{name}"]), name
    for name in defined:
        assert not math.isnan(metrics[f"test/{name}"]), name
    assert metrics["test/accuracy"] == pytest.approx(sk.accuracy_score(labels, scores > 0.5))
    assert metrics["test/ece"] == pytest.approx(numpy_ece(labels, scores), abs=1e-6)


def sklearn_operating_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fpr, tpr, thresholds = sk.roc_curve(LABELS, SCORES, drop_intermediate=False)
    return fpr[1:], tpr[1:], thresholds[1:]


def test_youden_threshold_reproduces_the_best_roc_point() -> None:
    fpr, tpr, thresholds = sklearn_operating_points()
    best = int(np.argmax(tpr - fpr))
    threshold = choose_threshold(LABELS, SCORES, "youden")
    below = np.max(SCORES[SCORES < thresholds[best]], initial=0.0)
    assert threshold == pytest.approx((thresholds[best] + below) / 2)
    at = sklearn_at(threshold)
    assert (at["sensitivity"], 1 - at["specificity"]) == pytest.approx((tpr[best], fpr[best]))


@pytest.mark.parametrize("level", [0.5, 0.9, 1.0])
def test_sensitivity_threshold_is_the_highest_reaching_the_level(level: float) -> None:
    fpr, tpr, thresholds = sklearn_operating_points()
    first = int(np.argmax(tpr >= level))
    threshold = choose_threshold(LABELS, SCORES, f"sensitivity@{level}")
    assert sklearn_at(threshold)["sensitivity"] == pytest.approx(tpr[first])
    assert tpr[first] >= level and (first == 0 or tpr[first - 1] < level)


def test_fixed_threshold_and_bad_rules() -> None:
    assert choose_threshold(LABELS, SCORES, 0.5) == 0.5
    assert choose_threshold(LABELS, SCORES, "0.25") == 0.25
    for bad in ("youdn", "sensitivity@1.5", "sensitivity@x", 2.0):
        with pytest.raises(ConfigError, match="eval.threshold"):
            choose_threshold(LABELS, SCORES, bad)


def test_one_class_validation_falls_back_to_one_half() -> None:
    with pytest.warns(UserWarning, match="both classes"):
        assert choose_threshold(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), "youden") == 0.5


@pytest.mark.parametrize("task", ["malignancy", "points"])
def test_a_false_positive_rate_is_refused_where_patches_are_not_a_scans_candidates(task: str) -> None:
    check_rule_for_task("fp_per_scan@1", "candidates")
    for rule in ("youden", "sensitivity@0.9", 0.5):
        check_rule_for_task(rule, task)
    with pytest.raises(ConfigError, match=rf"^eval.threshold=fp_per_scan@1: .* data.task={task}; use youden"):
        check_rule_for_task("fp_per_scan@1", task)


def test_fp_per_scan_threshold_is_the_most_sensitive_within_the_rate() -> None:
    # 2 scans; scores descending: 0.9 P, 0.8 N, 0.7 P, 0.6 N, 0.5 N, 0.4 P, 0.3 N (a tie of 0.6 with a positive)
    validation = pd.DataFrame({"label": [1, 0, 1, 0, 0, 1, 0, 1],
                               "probability": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.6],
                               "seriesuid": ["a", "b", "a", "b", "a", "b", "a", "b"]})
    # at most 1 FP per scan = 2 FPs: scores >= 0.6 hold 2 FPs (0.8, 0.6); 0.5 would make 3
    threshold = threshold_from_validation("fp_per_scan@1", validation)
    assert threshold == pytest.approx((0.6 + 0.5) / 2)
    assert false_positives_per_scan(validation, threshold) == 1.0
    assert threshold_from_validation("fp_per_scan@0.5", validation) == pytest.approx((0.7 + 0.6) / 2)  # 1 FP
    assert threshold_from_validation("fp_per_scan@10", validation) == pytest.approx(0.15)  # everything positive
    # a negative on top already exceeds the rate: the threshold sits on it, so nothing is called positive
    top_negative = validation.assign(probability=validation["probability"].where(validation["label"] == 1, 0.95))
    assert threshold_from_validation("fp_per_scan@1", top_negative) == 0.95
    assert false_positives_per_scan(top_negative, 0.95) == 0.0


def test_fp_per_scan_without_the_series_of_validation_falls_back_to_half(caplog) -> None:
    validation = pd.DataFrame({"label": LABELS, "probability": SCORES})
    assert threshold_from_validation("fp_per_scan@1", validation) == 0.5
    assert "seriesuid" in caplog.text
    assert threshold_from_validation("sensitivity@1", validation) == choose_threshold(LABELS, SCORES, "sensitivity@1")


@pytest.mark.parametrize("bad", ["fp_per_scan@0", "fp_per_scan@-1", "fp_per_scan@x", "fp_per_scan@inf"])
def test_bad_fp_per_scan_rates(bad: str) -> None:
    with pytest.raises(ConfigError, match="false-positive rate"):
        EvaluationOptions.from_config({"threshold": bad})


def test_options_from_config_checks_keys_and_values() -> None:
    options = EvaluationOptions.from_config({"threshold": "sensitivity@0.9", "montage_k": 2,
                                             "gradcam": {"samples": 1, "target_layer": "features.1.0"}})
    assert (options.threshold, options.montage_k, options.gradcam_samples, options.gradcam_layer) == (
        "sensitivity@0.9", 2, 1, "features.1.0")
    with pytest.raises(ConfigError, match="eval.montage"):
        EvaluationOptions.from_config({"montage": 2})
    with pytest.raises(ConfigError, match="eval.gradcam.samples"):
        EvaluationOptions.from_config({"gradcam": {"samples": -1}})
    with pytest.raises(ConfigError, match="eval.calibration='temprature'.*did you mean 'temperature'"):
        EvaluationOptions.from_config({"calibration": "temprature"})


def test_reliability_bins_match_numpy() -> None:
    confidence, observed, counts = reliability_bins(LABELS, SCORES, bins=5)
    assert counts.sum() == len(SCORES)
    top = SCORES >= 0.8
    assert counts[4] == top.sum() and observed[4] == LABELS[top].mean() and confidence[4] == SCORES[top].mean()


def test_report_has_every_metric_and_figure() -> None:
    predictions = pd.DataFrame({"label": LABELS, "probability": SCORES, "seriesuid": ["a"] * 7 + ["b"] * 7,
                                "coordX": np.arange(14.0) * 50, "coordY": 0.0, "coordZ": 0.0})
    nodules = predictions[predictions["label"] == 1][["seriesuid", "coordX", "coordY", "coordZ"]].assign(
        diameter_mm=5.0)
    report = evaluate_predictions(predictions, EvaluationSettings(threshold=0.3, froc=FrocReference(nodules)))
    assert set(table_metrics(LABELS, SCORES, "test/", 0.3)) < set(report.metrics)
    assert report.metrics["test/cpm"] == report.froc.cpm
    assert report.froc.num_nodules == LABELS.sum() == report.froc.num_found
    assert set(report.figures) == {f"plots/{name}.png" for name in (
        "roc_curve", "precision_recall", "confusion_matrix", "confusion_matrix_at_threshold", "score_histogram",
        "reliability_diagram", "froc")}


def test_a_bad_eval_option_stops_the_run_before_any_data_is_read(make_config) -> None:
    from lungexp.training.pipeline import build

    with pytest.raises(Exception, match="eval.threshold='youdn' is not a threshold rule") as error:
        build(check(make_config("eval.threshold=youdn"), "run"))
    assert isinstance(error.value.__cause__ or error.value, ConfigError)
