"""Series-level splits: LUNA16 folds, seeded random series split, and the checks run every time."""

from __future__ import annotations

import pandas as pd
import pytest

from lungexp.data.splits import SplitError, check_splits, split_by_series, split_by_subset


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
