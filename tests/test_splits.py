"""Series-level splits: LUNA16 folds, seeded random series split, and the checks run every time."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from lungexp.data.labels.splits import (
    SplitError,
    SplitSpec,
    check_splits,
    split_by_series,
    split_by_subset,
    split_samples,
)


def table(n_series: int = 20, per_series: int = 6) -> pd.DataFrame:
    rows = [
        {"seriesuid": f"1.2.{s}", "subset": s % 5, "label": int(i == 0 or (i == 1 and s % 3 == 0))}
        for s in range(n_series) for i in range(per_series)
    ]
    return pd.DataFrame(rows)


def test_luna16_folds_hold_whole_series() -> None:
    splits = split_by_subset(table(), test_fold=0, val_fold=1)
    assert set(splits["test"]["subset"]) == {0} and set(splits["val"]["subset"]) == {1}
    assert set(splits["train"]["subset"]) == {2, 3, 4}
    check_splits(splits)
    assert sum(len(f) for f in splits.values()) == len(table())


def test_unknown_fold_names_the_available_ones() -> None:
    with pytest.raises(SplitError, match=r"data.split.fold=7 .*subsets \[0, 1, 2, 3, 4\]"):
        split_by_subset(table(), test_fold=7, val_fold=1)


def test_random_series_split_is_seeded_and_series_level() -> None:
    first = split_by_series(table(), val_fraction=0.2, test_fraction=0.2, seed=3)
    again = split_by_series(table(), val_fraction=0.2, test_fraction=0.2, seed=3)
    other = split_by_series(table(), val_fraction=0.2, test_fraction=0.2, seed=4)
    check_splits(first)
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert set(first["test"]["seriesuid"]) != set(other["test"]["seriesuid"])
    assert first["test"]["seriesuid"].nunique() == 4


def test_a_series_in_two_splits_is_an_error() -> None:
    splits = split_by_subset(table(), test_fold=0, val_fold=1)
    leaked = pd.concat([splits["train"], splits["test"].iloc[:1]])
    with pytest.raises(SplitError, match="in both 'train' and 'test'"):
        check_splits({**splits, "train": leaked})


def test_empty_and_single_class_splits_are_errors() -> None:
    splits = split_by_subset(table(), test_fold=0, val_fold=1)
    with pytest.raises(SplitError, match="'val' split is empty"):
        check_splits({**splits, "val": splits["val"].iloc[:0]})
    negatives_only = splits["test"][splits["test"]["label"] == 0]
    with pytest.raises(SplitError, match="'test' split has only class 0"):
        check_splits({**splits, "test": negatives_only})


def test_validation_may_reuse_the_test_fold_of_a_tiny_dataset(caplog) -> None:
    splits = split_by_subset(table(), test_fold=0, val_fold=0)
    check_splits(splits)  # val == test is allowed; train still shares nothing
    assert "test metrics are optimistic" in caplog.text
    with pytest.raises(SplitError, match="in both 'train' and 'val'"):
        check_splits({**splits, "train": pd.concat([splits["train"], splits["val"].iloc[:1]])})


def test_patient_grouping_keeps_a_patients_scans_together() -> None:
    samples = table(n_series=20)
    samples["patient_id"] = samples["seriesuid"].map(lambda uid: f"p{int(uid.split('.')[-1]) // 2}")  # 2 scans each
    splits = split_by_series(samples, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="patient_id")
    check_splits(splits, group_by="patient_id")
    by_series = split_by_series(samples, val_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(SplitError, match="patient_id value"):  # series-level splitting separates some patients
        check_splits(by_series, group_by="patient_id")
    with pytest.raises(SplitError, match="not a column"):
        split_by_series(samples, 0.2, 0.2, seed=0, group_by="patient")


@pytest.mark.parametrize("method", ["series", "folds"])
def test_patients_are_kept_together_unless_series_are_asked_for(method: str, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    """data=nifti with a patient_id column split one patient's crops across train and test, without a word."""
    caplog.set_level(logging.INFO, logger="lungexp")
    samples = table(n_series=20)
    samples["patient_id"] = samples["seriesuid"].map(lambda uid: f"p{int(uid.split('.')[-1]) // 2}")
    options = {"method": method, "num_folds": 5 if method == "folds" else None}
    default = SplitSpec.from_config(**options)
    assert default.group_by == "auto"
    splits = split_samples(samples, default)
    check_splits(splits, group_by=default.group_by)
    check_splits(splits, group_by="patient_id")  # no patient in two splits
    assert "group_by=auto: the labels have a patient_id column" in caplog.text
    by_series = split_samples(samples, SplitSpec.from_config(**options, group_by="seriesuid"))
    check_splits(by_series, group_by="seriesuid")  # asked for: series may part a patient
    with pytest.raises(SplitError, match="patient_id value"):
        check_splits(by_series, group_by=default.group_by)
    caplog.clear()
    without = split_samples(samples.drop(columns="patient_id"), default)  # no patients named: series
    for name in without:
        pd.testing.assert_frame_equal(without[name], by_series[name].drop(columns="patient_id"))
    assert "patient_id" not in caplog.text


def test_k_folds_of_series_are_stratified_disjoint_and_seeded() -> None:
    from lungexp.data.labels.splits import assign_folds, split_by_folds

    samples = table(n_series=30)
    folds = assign_folds(samples, num_folds=3, seed=5)
    per_series = folds.groupby(samples["seriesuid"]).nunique()
    assert (per_series == 1).all()  # a series never spans two folds
    series_fold = folds.groupby(samples["seriesuid"]).first()
    positive = samples.groupby("seriesuid")["label"].max()
    for has_positive in (0, 1):  # each stratum spread over the folds, sizes differing by at most one
        counts = series_fold[positive == has_positive].value_counts().reindex(range(3), fill_value=0)
        assert counts.max() - counts.min() <= 1
    assert series_fold.value_counts().max() - series_fold.value_counts().min() <= 1
    assert assign_folds(samples, 3, seed=5).equals(folds)
    assert not assign_folds(samples, 3, seed=6).equals(folds)

    splits = split_by_folds(samples, num_folds=3, test_fold=2, val_fold=0, seed=5)
    check_splits(splits)
    assert set(splits["test"]["seriesuid"]) == set(series_fold[series_fold == 2].index)
    assert sum(len(f) for f in splits.values()) == len(samples)


def test_k_folds_keep_a_patients_scans_together() -> None:
    from lungexp.data.labels.splits import assign_folds

    samples = table(n_series=24).assign(patient_id=lambda t: "p" + (t["seriesuid"].str[4:].astype(int) // 3).astype(str))
    folds = assign_folds(samples, num_folds=4, seed=0, group_by="patient_id")
    assert (folds.groupby(samples["patient_id"]).nunique() == 1).all()
    with pytest.raises(SplitError, match="8 patient_id group"):
        assign_folds(samples, num_folds=9, seed=0, group_by="patient_id")
