"""LUNA16 FROC/CPM: hand-built cases with known answers, and random cases against a loop-by-loop port of
the rules of LUNA16's evaluation script (scikit-learn's roc_curve + np.interp)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from lungexp.data.labels.annotations import AnnotationError
from lungexp.metrics.luna16_froc import FP_RATES, FrocInputError, compute_froc

ALL_RATES = len(FP_RATES)


def nodules(*rows: tuple[str, float, float, float, float]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


def candidates(*rows: tuple[str, float, float, float, float]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"])


def false_positives(uid: str, count: int, probability: float) -> list[tuple[str, float, float, float, float]]:
    """``count`` candidates far from everything (x = 500 mm + i)."""
    return [(uid, 500.0 + i, 0.0, 0.0, probability) for i in range(count)]


def test_perfect_ranking_gives_cpm_one() -> None:
    truth = nodules(("a", 0, 0, 0, 10), ("b", 10, 10, 10, 6))
    predictions = candidates(("a", 1, 1, 1, 0.9), ("b", 10, 10, 11, 0.8),
                             *false_positives("a", 20, 0.1), *false_positives("b", 20, 0.2))
    result = compute_froc(predictions, truth)
    assert result.cpm == 1.0
    assert all(value == 1.0 for value in result.sensitivities.values())
    assert (result.num_scans, result.num_nodules, result.num_found, result.num_false_positives) == (2, 2, 2, 40)


def test_nodules_found_only_beyond_eight_fps_per_scan_score_zero() -> None:
    # one scan, nine false positives above the only nodule: 9 FP/scan before the first hit
    predictions = candidates(*false_positives("a", 9, 0.9), ("a", 0, 0, 0, 0.5))
    result = compute_froc(predictions, nodules(("a", 0, 0, 0, 5)))
    assert result.cpm == 0.0
    assert result.num_found == 1
    assert result.curve["sensitivity"].iloc[-1] == 1.0  # found, but too late


def test_duplicate_hits_count_once_with_their_highest_probability() -> None:
    truth = nodules(("a", 0, 0, 0, 10))
    single = compute_froc(candidates(("a", 0, 0, 0, 0.7), *false_positives("a", 4, 0.5)), truth)
    duplicated = compute_froc(candidates(("a", 0, 0, 0, 0.7), ("a", 1, 0, 0, 0.95), ("a", 0, 2, 0, 0.3),
                                         *false_positives("a", 4, 0.5)), truth)
    assert duplicated.num_false_positives == single.num_false_positives == 4  # extra hits are not FPs
    assert duplicated.num_found == 1 and duplicated.cpm == 1.0
    assert duplicated.curve["threshold"].iloc[1] == 0.95  # the nodule enters at its best probability


def test_candidates_on_excluded_findings_are_ignored() -> None:
    truth = nodules(("a", 0, 0, 0, 10))
    excluded = nodules(("a", 100, 0, 0, 8), ("a", 200, 0, 0, -1))  # -1: size unknown -> 10 mm
    predictions = candidates(("a", 100, 3, 0, 0.99), ("a", 204.9, 0, 0, 0.98), ("a", 0, 0, 0, 0.5))
    with_excluded = compute_froc(predictions, truth, excluded=excluded)
    assert (with_excluded.num_ignored, with_excluded.num_false_positives) == (2, 0)
    assert with_excluded.cpm == 1.0
    without = compute_froc(predictions, truth)
    assert without.num_false_positives == 2
    # two FPs above the nodule on one scan: found from 2 FP/scan on
    assert without.sensitivities[1] == 0.0 and without.sensitivities[2] == 1.0


def test_a_candidate_exactly_on_the_radius_hits() -> None:
    truth = nodules(("a", 10.5, -20.25, 30.0, 7.5))
    on_sphere = compute_froc(candidates(("a", 10.5 + 3.75, -20.25, 30.0, 0.8)), truth)
    just_outside = compute_froc(candidates(("a", 10.5 + 3.76, -20.25, 30.0, 0.8)), truth)
    assert on_sphere.num_found == 1 and on_sphere.cpm == 1.0
    assert just_outside.num_found == 0 and just_outside.num_false_positives == 1 and just_outside.cpm == 0.0


def test_a_scan_without_candidates_still_divides_the_fp_rate() -> None:
    truth = nodules(("a", 0, 0, 0, 10))
    predictions = candidates(*false_positives("a", 2, 0.9), ("a", 0, 0, 0, 0.5))
    one_scan = compute_froc(predictions, truth)
    two_scans = compute_froc(predictions, truth, seriesuids=["a", "empty"])
    assert one_scan.num_scans == 1 and two_scans.num_scans == 2
    assert one_scan.curve["fps_per_scan"].max() == 2.0 and two_scans.curve["fps_per_scan"].max() == 1.0
    # two FPs above the nodule: 2 FP/scan on one scan, 1 FP/scan over two
    assert one_scan.sensitivities[1] == 0.0 and one_scan.sensitivities[2] == 1.0
    assert two_scans.sensitivities[0.5] == 0.0 and two_scans.sensitivities[1] == 1.0


def test_a_nodule_without_candidates_lowers_the_sensitivity() -> None:
    predictions = candidates(("a", 0, 0, 0, 0.9), *false_positives("a", 3, 0.1))
    found_all = compute_froc(predictions, nodules(("a", 0, 0, 0, 10)))
    one_missed = compute_froc(predictions, nodules(("a", 0, 0, 0, 10), ("b", 0, 0, 0, 10), ("a", 300, 0, 0, 4)),
                              seriesuids=["a", "b"])
    assert found_all.cpm == 1.0
    assert one_missed.num_nodules == 3 and one_missed.num_found == 1
    assert one_missed.cpm == pytest.approx(1 / 3)


def test_annotations_of_scans_not_evaluated_do_not_count() -> None:
    result = compute_froc(candidates(("a", 0, 0, 0, 0.9)), nodules(("a", 0, 0, 0, 10), ("z", 0, 0, 0, 10)))
    assert result.num_nodules == 1 and result.cpm == 1.0


def test_no_false_positives_at_all_gives_the_found_fraction_everywhere() -> None:
    result = compute_froc(candidates(("a", 0, 0, 0, 0.9)), nodules(("a", 0, 0, 0, 10), ("a", 50, 0, 0, 10)))
    assert list(result.sensitivities.values()) == [0.5] * ALL_RATES


def test_no_nodules_is_nan_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="no nodules"):
        result = compute_froc(candidates(("a", 0, 0, 0, 0.9)), nodules())
    assert math.isnan(result.cpm)


def test_metric_names() -> None:
    result = compute_froc(candidates(("a", 0, 0, 0, 0.9)), nodules(("a", 0, 0, 0, 10)))
    assert list(result.as_metrics("test/")) == ["test/cpm", "test/sens_at_0.125_fp", "test/sens_at_0.25_fp",
                                                "test/sens_at_0.5_fp", "test/sens_at_1_fp", "test/sens_at_2_fp",
                                                "test/sens_at_4_fp", "test/sens_at_8_fp"]


@pytest.mark.parametrize("table, column, error", [("predictions", "probability", FrocInputError),
                                                  ("annotations", "diameter_mm", AnnotationError)])
def test_missing_column_is_named(table: str, column: str, error: type[Exception]) -> None:
    tables = {"predictions": candidates(("a", 0, 0, 0, 0.9)), "annotations": nodules(("a", 0, 0, 0, 10))}
    tables[table] = tables[table].drop(columns=column)
    with pytest.raises(error, match=f"{table}: missing column.*{column}"):
        compute_froc(tables["predictions"], tables["annotations"])


def test_non_numeric_probability_is_named_with_its_row() -> None:
    predictions = candidates(("a", 0, 0, 0, 0.9), ("a", 1, 1, 1, float("nan")))
    with pytest.raises(FrocInputError, match="'probability'.*row\\(s\\) 3 "):
        compute_froc(predictions, nodules(("a", 0, 0, 0, 10)))


@pytest.mark.parametrize("nodule_diameter, excluded_diameter, row", [
    (0.0, 8.0, "annotations: column 'diameter_mm' must hold a positive number.*row\\(s\\) 2 \\(0.0\\)"),
    (10.0, -5.0, "excluded findings: column 'diameter_mm' must hold a positive number.*or -1.*row\\(s\\) 2 \\(-5.0\\)"),
    (10.0, 0.0, "excluded findings: column 'diameter_mm'.*row\\(s\\) 2 \\(0.0\\)"),
])
def test_diameters_follow_the_training_reader(nodule_diameter: float, excluded_diameter: float, row: str) -> None:
    """A nodule of diameter 0 can never be hit and only -1 means "size unknown" (10 mm), as for training."""
    predictions = candidates(("a", 0, 0, 0, 0.9), ("a", 100, 0, 0, 0.8))
    with pytest.raises(AnnotationError, match=row):
        compute_froc(predictions, nodules(("a", 0, 0, 0, nodule_diameter)),
                     excluded=nodules(("a", 100, 0, 0, excluded_diameter)))


def test_counts_are_the_scripts() -> None:
    truth = nodules(("a", 0, 0, 0, 10), ("a", 6, 0, 0, 10), ("a", 300, 0, 0, 5), ("b", 0, 0, 0, 6))
    excluded = nodules(("a", 100, 0, 0, -1), ("a", 3, 0, 0, 20))  # the second overlaps the first two nodules
    predictions = candidates(
        ("a", 0, 0, 0, 0.9), ("a", 1, 0.5, 0, 0.8), ("a", 7, 0, 0, 0.65),  # on the first, first, second nodule
        ("a", 3, 0, 0, 0.7),  # on both nodules: a double detection on each, not ignored on the excluded finding
        ("a", 104, 0, 0, 0.6), ("a", 100, 1, 0, 0.5),  # two marks on the excluded finding of unknown size
        *false_positives("a", 3, 0.4), *false_positives("b", 2, 0.3))
    result = compute_froc(predictions, truth, excluded=excluded)
    assert result.script_counts() == {
        "True positives": 2, "False positives": 5, "False negatives": 2, "Total number of candidates": 11,
        "Total number of nodules": 4, "Ignored candidates on excluded nodules": 2,
        "Ignored candidates which were double detections on a nodule": 3,
    }


def random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Scans with nodules, excluded findings and candidates near and far, probabilities with ties."""
    rng = np.random.default_rng(seed)
    scans = [f"scan{i}" for i in range(12)]
    truth, excluded, rows = [], [], []
    for uid in scans[:-2]:  # the last two scans: no candidates (one of them has a nodule)
        for _ in range(rng.integers(0, 4)):
            centre, diameter = rng.uniform(-100, 100, 3), rng.uniform(3, 30)
            truth.append((uid, *centre, diameter))
            for _ in range(rng.integers(0, 4)):
                rows.append((uid, *(centre + rng.normal(0, diameter / 3, 3)), rng.random()))
        for _ in range(rng.integers(0, 2)):
            centre = rng.uniform(-100, 100, 3)
            excluded.append((uid, *centre, rng.choice([-1.0, rng.uniform(3, 10)])))
            rows.append((uid, *(centre + rng.normal(0, 2, 3)), rng.random()))
        rows += [(uid, *rng.uniform(-150, 150, 3), rng.random()) for _ in range(rng.integers(5, 60))]
    truth.append((scans[-1], 0.0, 0.0, 0.0, 10.0))
    predictions = candidates(*rows).assign(probability=lambda t: t["probability"].round(1))  # ties
    return predictions, nodules(*truth), nodules(*excluded), scans


def reference_sensitivities(predictions: pd.DataFrame, truth: pd.DataFrame, excluded: pd.DataFrame,
                            scans: list[str]) -> list[float]:
    """The script's loops, candidate by candidate: FROC lists -> roc_curve -> np.interp at the rates."""
    labels, scores = [], []
    total_nodules = 0
    for uid in scans:
        remaining = {i: row for i, row in predictions[predictions["seriesuid"] == uid].iterrows()}
        findings = [(row, True) for _, row in truth[truth["seriesuid"] == uid].iterrows()]
        findings += [(row, False) for _, row in excluded[excluded["seriesuid"] == uid].iterrows()]
        for finding, included in findings:
            diameter = finding["diameter_mm"] if finding["diameter_mm"] >= 0 else 10.0
            total_nodules += included
            matched = []
            for key, candidate in predictions[predictions["seriesuid"] == uid].iterrows():
                distance2 = sum((candidate[c] - finding[c]) ** 2 for c in ("coordX", "coordY", "coordZ"))
                if distance2 <= (diameter / 2) ** 2:
                    if included:
                        matched.append(candidate["probability"])
                    if included or key in remaining:
                        remaining.pop(key, None)
            if included and matched:
                labels.append(1)
                scores.append(max(matched))
        for candidate in remaining.values():
            labels.append(0)
            scores.append(candidate["probability"])
    detected = sum(labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    fps = fpr * (len(labels) - detected) / len(scans)
    sens = tpr * detected / total_nodules
    return list(np.interp(FP_RATES, fps, sens))


def reference_counts(predictions: pd.DataFrame, truth: pd.DataFrame, excluded: pd.DataFrame,
                     scans: list[str]) -> dict[str, int]:
    """The script's candidate counts, candidate by candidate as it loops (its strict ``<`` radius)."""
    counts = dict.fromkeys(["True positives", "False positives", "False negatives", "Total number of candidates",
                            "Total number of nodules", "Ignored candidates on excluded nodules",
                            "Ignored candidates which were double detections on a nodule"], 0)
    for uid in scans:
        marks = predictions[predictions["seriesuid"] == uid]
        remaining = set(marks.index)
        counts["Total number of candidates"] += len(marks)
        findings = [(row, True) for _, row in truth[truth["seriesuid"] == uid].iterrows()]
        findings += [(row, False) for _, row in excluded[excluded["seriesuid"] == uid].iterrows()]
        for finding, included in findings:
            counts["Total number of nodules"] += included
            radius2 = ((finding["diameter_mm"] if finding["diameter_mm"] >= 0 else 10.0) / 2) ** 2
            matches = [key for key, mark in marks.iterrows()
                       if sum((mark[c] - finding[c]) ** 2 for c in ("coordX", "coordY", "coordZ")) < radius2]
            if included:
                remaining -= set(matches)
                counts["Ignored candidates which were double detections on a nodule"] += max(len(matches) - 1, 0)
                counts["True positives" if matches else "False negatives"] += 1
            else:
                counts["Ignored candidates on excluded nodules"] += len(remaining & set(matches))
                remaining -= set(matches)
        counts["False positives"] += len(remaining)
    return counts


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_a_port_of_the_luna16_script(seed: int) -> None:
    predictions, truth, excluded, scans = random_case(seed)
    result = compute_froc(predictions, truth, excluded=excluded, seriesuids=scans)
    expected = reference_sensitivities(predictions, truth, excluded, scans)
    np.testing.assert_allclose(list(result.sensitivities.values()), expected, rtol=0, atol=1e-12)
    assert result.cpm == pytest.approx(np.mean(expected), abs=1e-12)
    assert result.script_counts() == reference_counts(predictions, truth, excluded, scans)


def test_bootstrap_interval_brackets_the_cpm_and_is_seeded() -> None:
    predictions, truth, excluded, scans = random_case(0)
    first = compute_froc(predictions, truth, excluded=excluded, seriesuids=scans, bootstrap=200, seed=3)
    again = compute_froc(predictions, truth, excluded=excluded, seriesuids=scans, bootstrap=200, seed=3)
    low, high = first.cpm_ci
    assert low < first.cpm < high
    assert first.cpm_ci == again.cpm_ci
    assert {"test/cpm_ci_low", "test/cpm_ci_high"} <= set(first.as_metrics("test/"))
    assert all(lo <= hi for lo, hi in first.sensitivity_ci.values())
