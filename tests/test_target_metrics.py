"""The multiclass and ordinal metric sets against scikit-learn on fixed predictions; NaN (never an error) where a
bootstrap resample misses a class; their cluster-bootstrap draws, in the shape the binary set's intervals take;
and validation's macro AUROC over the classes a small split holds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    recall_score,
    roc_auc_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from lungexp.data.labels.class_maps import CLASS_MAPS
from lungexp.data.labels.targets import HeadSpec
from lungexp.evaluation.head_report import head_metrics, validation_head_metrics
from lungexp.metrics.bootstrap import ClusterResampling, interval_metrics
from lungexp.metrics.classification import table_metrics
from lungexp.metrics.head_metrics import head_metric_set, resampled_metric_set
from lungexp.metrics.multiclass import multiclass_metrics, top_label_ece
from lungexp.metrics.ordinal import ordinal_metrics

NAMES = ("ground_glass", "part_solid", "solid")


def _multiclass(seed: int = 0, size: int = 90, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size)
    logits = rng.normal(size=(size, classes))
    logits[np.arange(size), labels] += 1.2
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _ordinal(seed: int = 0, size: int = 120, levels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, levels, size)
    score = labels + rng.normal(scale=1.0, size=size)
    cumulative = 1 / (1 + np.exp(-(score[:, None] - np.arange(levels - 1) - 0.5) * 2))  # P(level >= k + 2)
    return labels, cumulative


def test_multiclass_metrics_are_scikit_learns() -> None:
    labels, probabilities = _multiclass()
    predicted = probabilities.argmax(axis=1)
    metrics = multiclass_metrics(labels, probabilities, "test/texture/", NAMES)
    expected = {
        "auroc_macro": roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"),
        "auroc_weighted": roc_auc_score(labels, probabilities, multi_class="ovr", average="weighted"),
        "balanced_accuracy": balanced_accuracy_score(labels, predicted),
        "f1_macro": f1_score(labels, predicted, average="macro"),
        "accuracy": float(np.mean(labels == predicted)),
    }
    for index, name in enumerate(NAMES):
        expected[f"auroc_{name}"] = roc_auc_score(labels == index, probabilities[:, index])
        expected[f"sensitivity_{name}"] = recall_score(labels == index, predicted == index)
        expected[f"specificity_{name}"] = recall_score(labels != index, predicted != index)
    for name, value in expected.items():
        assert metrics[f"test/texture/{name}"] == pytest.approx(value, rel=1e-6), name
    assert 0.1 < metrics["test/texture/auroc_macro"] < 0.95  # informative predictions, not a degenerate case


def test_the_top_label_ece_is_torchmetrics() -> None:
    labels, probabilities = _multiclass(seed=3, classes=4)
    probabilities[0] = [1.0, 0.0, 0.0, 0.0]  # a confidence of exactly 1: its own bin, as torchmetrics bins it
    expected = float(multiclass_calibration_error(torch.tensor(probabilities), torch.tensor(labels), 4, n_bins=15,
                                                  norm="l1"))
    assert top_label_ece(probabilities, labels) == pytest.approx(expected, rel=1e-6)
    assert multiclass_metrics(labels, probabilities)["ece"] == pytest.approx(expected, rel=1e-6)


def test_a_missing_class_makes_what_needs_it_nan_and_the_rest_defined() -> None:
    labels, probabilities = _multiclass(seed=1)
    present = labels != 2
    metrics = multiclass_metrics(labels[present], probabilities[present], class_names=NAMES)
    predicted = probabilities[present].argmax(axis=1)
    assert math.isnan(metrics["auroc_macro"]) and math.isnan(metrics["auroc_solid"])
    assert math.isnan(metrics["sensitivity_solid"]) and not math.isnan(metrics["specificity_solid"])
    weighted = np.average([roc_auc_score(labels[present] == k, probabilities[present, k]) for k in (0, 1)],
                          weights=np.bincount(labels[present]))
    assert metrics["auroc_weighted"] == pytest.approx(weighted, rel=1e-6)  # an absent class weighs 0
    with pytest.warns(UserWarning):  # scikit-learn warns of the predicted class that is absent, and averages the rest
        assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels[present], predicted))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels[present], predicted, average="macro"))
    one_class = multiclass_metrics(np.zeros(5, dtype=int), probabilities[:5])
    assert math.isnan(one_class["auroc_weighted"]) and one_class["accuracy"] == np.mean(probabilities[:5].argmax(1) == 0)
    empty = multiclass_metrics(labels[:0], probabilities[:0], class_names=NAMES)
    assert set(empty) == set(metrics) and all(math.isnan(value) for value in empty.values())


def test_validation_averages_the_macro_auroc_over_the_classes_the_split_holds() -> None:
    """A small validation split without a class: the checkpoint monitor gets the mean of the AUROCs it defines, not
    NaN (which Lightning's checkpoint ranks below every number, keeping whichever epoch came first); the test report
    keeps scikit-learn's NaN."""
    labels, probabilities = _multiclass(seed=1)
    present = labels != 1
    primary = HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"])
    auxiliary = HeadSpec(name="lesion", kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"])
    columns = {**dict(zip(primary.probability_columns, probabilities[present].T, strict=True)),
               **dict(zip(auxiliary.probability_columns, probabilities[present].T, strict=True))}
    table = pd.DataFrame({"label": labels[present], "lesion_label": labels[present], **columns})
    metrics, left_out = validation_head_metrics(table, [primary, auxiliary], "val/")
    expected = np.mean([roc_auc_score(labels[present] == k, probabilities[present, k]) for k in (0, 2)])
    assert metrics["val/auroc_macro"] == pytest.approx(expected) == metrics["val/lesion/auroc_macro"]
    assert left_out == {"val/auroc_macro": ["part_solid"], "val/lesion/auroc_macro": ["part_solid"]}
    assert math.isnan(metrics["val/auroc_part_solid"])  # the class's own AUROC stays undefined
    assert math.isnan(head_metrics(table, [primary], "test/")["test/auroc_macro"])
    every = pd.DataFrame({"label": labels, **dict(zip(primary.probability_columns, probabilities.T, strict=True))})
    assert validation_head_metrics(every, [primary], "val/") == (head_metrics(every, [primary], "val/"), {})


def test_ordinal_metrics_are_scikit_learns() -> None:
    labels, cumulative = _ordinal()
    predicted = (cumulative > 0.5).sum(axis=1)
    metrics = ordinal_metrics(labels, cumulative, "test/")
    assert metrics["test/qwk"] == pytest.approx(cohen_kappa_score(labels, predicted, weights="quadratic"), rel=1e-6)
    assert metrics["test/mae"] == pytest.approx(mean_absolute_error(labels, predicted))
    assert metrics["test/accuracy"] == pytest.approx(np.mean(labels == predicted))
    assert metrics["test/accuracy_within1"] == pytest.approx(np.mean(np.abs(labels - predicted) <= 1))
    for level in range(2, 6):
        assert metrics[f"test/auroc_ge{level}"] == pytest.approx(
            roc_auc_score(labels >= level - 1, cumulative[:, level - 2]), rel=1e-6)
    assert metrics["test/qwk"] > 0.5 and 0 < metrics["test/mae"] < 1.5


def test_ordinal_metrics_with_missing_levels_are_nan_where_undefined() -> None:
    labels, cumulative = _ordinal(seed=2)
    low = labels <= 2  # levels 4 and 5 absent: the cuts at 4 and 5 have no positives
    metrics = ordinal_metrics(labels[low], cumulative[low])
    assert math.isnan(metrics["auroc_ge4"]) and math.isnan(metrics["auroc_ge5"]) and not math.isnan(metrics["auroc_ge2"])
    # Five levels stay five: the kappa's weights keep the scale's spacing (scikit-learn given every level).
    predicted = (cumulative[low] > 0.5).sum(axis=1)
    assert metrics["qwk"] == pytest.approx(cohen_kappa_score(labels[low], predicted, weights="quadratic",
                                                             labels=list(range(5))), rel=1e-6)
    alone = ordinal_metrics(np.zeros(4, dtype=int), np.zeros((4, 4)))  # one level, predicted right
    assert math.isnan(alone["qwk"]) and alone["mae"] == 0 and alone["accuracy"] == 1
    assert all(math.isnan(value) for value in ordinal_metrics(labels[:0], cumulative[:0]).values())


@pytest.mark.parametrize("kind", ["binary", "multiclass", "ordinal"])
def test_bootstrap_draws_give_intervals_like_the_binary_sets(kind: str) -> None:
    labels, probabilities = _multiclass(size=60) if kind == "multiclass" else _ordinal(size=60)
    if kind == "binary":
        labels, probabilities = (labels >= 2).astype(int), probabilities[:, 1]
    metric_set = head_metric_set(kind, NAMES if kind == "multiclass" else None)
    series = np.array([f"s{index % 15}" for index in range(len(labels))])
    resampling = ClusterResampling.draw(sorted(set(series)), 100, seed=0)
    draws = resampled_metric_set(metric_set, labels, probabilities, series, resampling)
    point = metric_set(labels, probabilities, "")
    assert set(draws) == set(point) and all(len(values) == 100 for values in draws.values())
    # Draw 0 is the set computed on its resample: each patch as often as its series was drawn.
    rows = np.repeat(np.arange(len(labels)), resampling.weights(series)[0].astype(int))
    assert draws[next(iter(point))][0] == pytest.approx(next(iter(metric_set(labels[rows], probabilities[rows],
                                                                            "").values())), nan_ok=True)
    intervals = interval_metrics(draws, "test/")
    main = {"binary": "auroc", "multiclass": "auroc_macro", "ordinal": "qwk"}[kind]
    low, high = intervals[f"test/{main}_ci_low"], intervals[f"test/{main}_ci_high"]
    assert low < point[main] < high


def test_a_resample_that_misses_a_class_is_nan_not_an_error() -> None:
    labels, probabilities = _multiclass(size=30)
    series = np.where(labels == 2, "rare", np.array([f"s{index}" for index in range(30)]))  # class 2: one series
    resampling = ClusterResampling.draw(sorted(set(series)), 100, seed=1)
    draws = resampled_metric_set(head_metric_set("multiclass"), labels, probabilities, series, resampling)
    missed = resampling.weights(series)[:, labels == 2].sum(axis=1) == 0
    assert missed.any() and np.isnan(draws["auroc_macro"][missed]).all()
    assert np.isfinite(draws["auroc_macro"][~missed]).all() and np.isfinite(draws["accuracy"]).all()


def test_the_binary_set_is_table_metrics() -> None:
    labels, probabilities = np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.6])
    assert head_metric_set("binary", threshold=0.5)(labels, probabilities, "test/") == table_metrics(
        labels, probabilities, "test/", 0.5)
