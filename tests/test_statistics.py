"""DeLong's test, the cluster bootstrap and the paired comparison of runs, on fixed and simulated arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kstest

from lungexp.evaluation.split_metrics import evaluate_predictions
from lungexp.evaluation.types import EvaluationSettings
from lungexp.metrics.bootstrap import (
    RESAMPLED,
    ClusterResampling,
    cluster_resampling,
    percentile_interval,
    resampled_metrics,
)
from lungexp.metrics.classification import table_metrics
from lungexp.metrics.comparison import ComparisonError, ScoredRun, align, compare, holm, mcnemar
from lungexp.metrics.delong import delong, delong_test
from lungexp.metrics.luna16_froc import compute_froc
from tests.test_froc import random_case

LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0])
SCORES = np.array([  # ties within and across the classes
    [0.9, 0.8, 0.8, 0.5, 0.5, 0.3, 0.8, 0.1, 0.2, 0.5, 0.9, 0.7, 0.3, 0.3],
    [0.6, 0.6, 0.4, 0.9, 0.2, 0.6, 0.1, 0.1, 0.4, 0.3, 0.5, 0.8, 0.2, 0.6],
])


def placement_values(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The O(m n) definition: AUROC and the placement values of every positive and negative."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    psi = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def test_delong_variance_and_p_match_the_placement_value_definition() -> None:
    aurocs, v10, v01 = zip(*(placement_values(LABELS, s) for s in SCORES), strict=True)
    m, n = int(LABELS.sum()), int((1 - LABELS).sum())
    covariance = np.cov(np.stack(v10)) / m + np.cov(np.stack(v01)) / n
    result = delong(LABELS, SCORES)
    np.testing.assert_allclose(result.aurocs, aurocs, atol=1e-12)
    np.testing.assert_allclose(result.covariance, covariance, atol=1e-12)

    test = delong_test(LABELS, SCORES[0], SCORES[1])
    sd = np.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    z = (aurocs[0] - aurocs[1]) / sd
    from scipy.stats import norm

    assert test.difference == pytest.approx(aurocs[0] - aurocs[1], abs=1e-12)
    assert test.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=1e-12)
    assert test.ci == pytest.approx((test.difference - 1.959964 * sd, test.difference + 1.959964 * sd), abs=1e-6)
    low, high = delong(LABELS, SCORES[0]).interval()
    assert low == pytest.approx(aurocs[0] - 1.959964 * np.sqrt(covariance[0, 0]), abs=1e-6) and high <= 1.0


def correlated_pair(rng: np.random.Generator, n: int, strength_a: float, strength_b: float):
    labels = (rng.random(n) < 0.3).astype(np.int64)
    shared = rng.normal(size=n)  # the two models share part of their noise, as two nets on one test set do
    noise = rng.normal(size=(2, n))
    return labels, labels * strength_a + shared + noise[0], labels * strength_b + shared + noise[1]


def test_delong_p_values_are_uniform_under_the_null_and_detect_a_gap() -> None:
    rng = np.random.default_rng(12)
    p_values = [delong_test(*correlated_pair(rng, 200, 1.0, 1.0)).p_value for _ in range(300)]
    assert kstest(p_values, "uniform").pvalue > 0.01
    gap = [delong_test(*correlated_pair(rng, 300, 1.6, 0.8)).p_value for _ in range(20)]
    assert np.median(gap) < 1e-3


def clustered_predictions(seed: int = 0, series: int = 30, per_series: int = 60) -> pd.DataFrame:
    """Patches whose scores share their scan's offset: patches of one scan are not independent."""
    rng = np.random.default_rng(seed)
    uid = np.repeat([f"1.2.{i}" for i in range(series)], per_series)
    offset = np.repeat(rng.normal(0, 1.5, series), per_series)
    prevalence = np.repeat(rng.uniform(0.05, 0.6, series), per_series)
    labels = (rng.random(len(uid)) < prevalence).astype(np.int64)
    scores = 1 / (1 + np.exp(-(labels * 1.0 + offset + rng.normal(0, 0.5, len(uid)))))
    return pd.DataFrame({"seriesuid": uid, "label": labels, "probability": scores.round(6),
                         "patch": np.arange(len(uid)).astype(str)})


def test_a_draw_weighs_whole_series_like_copying_their_rows() -> None:
    predictions = clustered_predictions(per_series=20)
    predictions.loc[:4, "probability"] = 1.0  # calibration's own bin for probability 1
    resampling = ClusterResampling.draw(predictions["seriesuid"], samples=3, seed=5)
    resampled = resampled_metrics(predictions, 0.4, resampling)
    for draw in range(3):
        copies = resampling.weights(predictions["seriesuid"])[draw].astype(int)
        copied = predictions.loc[predictions.index.repeat(copies)]
        expected = table_metrics(copied["label"].to_numpy(), copied["probability"].to_numpy(), "", 0.4)
        for name in RESAMPLED:
            assert resampled[name][draw] == pytest.approx(expected[name], abs=1e-6), name


def test_the_bootstrap_resamples_whole_series_and_is_seeded() -> None:
    predictions = clustered_predictions()
    by_series = resampled_metrics(predictions, 0.5, ClusterResampling.draw(predictions["seriesuid"], 500, seed=1))
    as_patches = predictions.assign(seriesuid=predictions["patch"])  # every patch its own cluster: the wrong unit
    by_patch = resampled_metrics(as_patches, 0.5, ClusterResampling.draw(as_patches["seriesuid"], 500, seed=1))
    width = {name: np.subtract(*percentile_interval(values)[::-1]) for name, values in by_series.items()}
    patch_width = {name: np.subtract(*percentile_interval(values)[::-1]) for name, values in by_patch.items()}
    assert width["auroc"] > 1.5 * patch_width["auroc"]  # resampling patches would be too narrow

    settings = EvaluationSettings(threshold=0.5, bootstrap=200, seed=3)
    first, again = (evaluate_predictions(predictions, settings, figures=False).metrics for _ in range(2))
    other = evaluate_predictions(predictions, EvaluationSettings(threshold=0.5, bootstrap=200, seed=4),
                                 figures=False).metrics
    names = ["test/auroc", "test/average_precision", "test/ece", *(f"test/at_threshold/{m}" for m in
                                                                   ("accuracy", "precision", "sensitivity",
                                                                    "specificity", "f1"))]
    for name in names:
        assert first[f"{name}_ci_low"] <= first[name] <= first[f"{name}_ci_high"], name
        assert first[f"{name}_ci_low"] == again[f"{name}_ci_low"]
    assert first["test/auroc_ci_low"] != other["test/auroc_ci_low"]
    assert first["test/auroc_delong_ci_low"] < first["test/auroc"] < first["test/auroc_delong_ci_high"]
    off = evaluate_predictions(predictions, EvaluationSettings(threshold=0.5, bootstrap=0), figures=False).metrics
    assert "test/auroc_ci_low" not in off


def test_patients_are_resampled_as_one_cluster() -> None:
    predictions = clustered_predictions(series=6, per_series=5)
    predictions["patient_id"] = predictions["seriesuid"].map({f"1.2.{i}": f"p{i // 2}" for i in range(6)})
    resampling = cluster_resampling(predictions, 50, group_by="patient_id", seriesuids=["1.2.99"])
    assert resampling.counts.shape == (50, 4)  # 3 patients and a scan without candidates
    weights = resampling.weights(["1.2.0", "1.2.1", "1.2.2"])
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])
    assert (weights[:, 0] != weights[:, 2]).any()


def test_the_cpm_is_resampled_with_the_same_draws() -> None:
    predictions, truth, excluded, scans = random_case(0)
    own = compute_froc(predictions, truth, excluded=excluded, seriesuids=scans, bootstrap=100, seed=3)
    shared = compute_froc(predictions, truth, excluded=excluded, seriesuids=scans,
                          resampling=ClusterResampling.draw(scans, 100, seed=3))
    assert own.cpm_ci == shared.cpm_ci and len(shared.cpm_draws) == 100


def scored(name: str, predictions: pd.DataFrame, probabilities: np.ndarray, threshold: float = 0.5) -> ScoredRun:
    return ScoredRun(name, predictions.assign(probability=probabilities), threshold)


def positions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = clustered_predictions(seed, series=20, per_series=n // 20)
    return table.assign(coordX=rng.uniform(-100, 100, len(table)), coordY=rng.uniform(-100, 100, len(table)),
                        coordZ=rng.uniform(-300, 0, len(table)))


def test_compare_pairs_runs_and_corrects_across_pairs() -> None:
    table = positions(400)
    rng = np.random.default_rng(1)
    good = 1 / (1 + np.exp(-(table["label"] * 3 + rng.normal(size=len(table)))))
    worse = 1 / (1 + np.exp(-(table["label"] * 0.5 + rng.normal(size=len(table)))))
    runs = [scored("good", table, good), scored("worse", table.sample(frac=1, random_state=0),
                                                worse[table.sample(frac=1, random_state=0).index]),
            scored("copy", table, good)]
    result = compare(align(runs), bootstrap=200)
    assert list(result.runs["run"][:2]) in (["good", "copy"], ["copy", "good"])  # best first
    pair = result.pairs.set_index(["a", "b"]).loc[("good", "worse")]
    assert pair["delta_auroc"] > 0.2 and pair["delong_p"] < 1e-6
    assert pair["delta_average_precision_ci_low"] > 0 and pair["mcnemar_p"] < 0.01
    same = result.pairs[result.pairs["b"].isin(["good", "copy"]) & result.pairs["a"].isin(["good", "copy"])].iloc[0]
    assert same["delta_auroc"] == 0 and same["delong_p"] == 1.0 and same["mcnemar_p"] == 1.0
    np.testing.assert_allclose(result.pairs["delong_p_holm"], holm(result.pairs["delong_p"]))


def test_align_refuses_other_samples_and_intersect_keeps_the_shared_ones() -> None:
    table = positions(200)
    probabilities = np.linspace(0, 1, len(table))
    other = table.drop(index=[3, 10]).copy()
    other.loc[20, "label"] = 1 - other.loc[20, "label"]
    runs = [scored("fold0", table, probabilities), scored("edited", other, probabilities[other.index])]
    with pytest.raises(ComparisonError, match=r"2 of fold0's 200 samples are not in edited's \(first: fold0 row 5 "
                                              r".*1 samples have other labels \(first: fold0 row 22"):
        align(runs)
    aligned = align(runs, intersect=True)
    assert len(aligned.samples) == 197 and aligned.dropped == {"fold0": 3, "edited": 1}


def test_holm_and_mcnemar() -> None:
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(10, 0) == pytest.approx(2 * 0.5 ** 10)
