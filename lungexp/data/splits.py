"""Series-level train/val/test splits, so no scan ever contributes to two splits.

LUNA16 ships its scans in ten folders ``subset0..subset9`` that are the official
cross-validation folds; :func:`split_by_subset` uses them. Other data gets a seeded random split
of series with :func:`split_by_series`, or seeded K folds of series with :func:`split_by_folds`
(cross-validation). :func:`check_splits` runs on every split, every run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lungexp.utils.errors import LungexpError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


class SplitError(LungexpError):
    """A split that would make the evaluation meaningless (overlap, empty, a single class)."""


def split_by_subset(samples: pd.DataFrame, test_fold: int, val_fold: int) -> dict[str, pd.DataFrame]:
    """LUNA16 folds: ``subset{test_fold}`` is the test set, ``subset{val_fold}`` validation, the rest train.

    ``val_fold == test_fold`` is allowed for datasets too small for three folds; validation then
    reuses the test series (a warning says so: model selection sees the test set).
    """
    if test_fold == val_fold:
        log.warning("data.split.val_fold == data.split.fold (%d): validating on the test series, so test "
                    "metrics are optimistic; use separate folds whenever the data allows", test_fold)
    present = sorted(int(k) for k in samples["subset"].unique())
    for name, fold in (("data.fold", test_fold), ("data.val_fold", val_fold)):
        if fold not in present:
            raise SplitError(f"{name}={fold} but the scans are in subsets {present}; pick one of those")
    return {
        "train": samples[~samples["subset"].isin([test_fold, val_fold])],
        "val": samples[samples["subset"] == val_fold],
        "test": samples[samples["subset"] == test_fold],
    }


def split_by_series(
    samples: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, group_by: str = "seriesuid"
) -> dict[str, pd.DataFrame]:
    """Seeded random split of whole groups, stratified by whether a group has a positive.

    ``group_by`` is ``seriesuid`` (one scan per patient, as in LUNA16) or a patient column of the
    labels CSV (e.g. ``patient_id``) so that all scans of a patient land in the same split.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise SplitError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                         "and sum to less than 1")
    if group_by not in samples:
        raise SplitError(f"data.split.group_by='{group_by}' is not a column of the labels CSV; "
                         f"columns are {sorted(samples.columns)}")
    rng = np.random.default_rng(seed)
    has_positive = samples.groupby(group_by)["label"].max()
    assignment: dict[str, str] = {}
    for _, stratum in has_positive.groupby(has_positive):
        groups = rng.permutation(stratum.index.to_numpy())
        n_test = int(round(len(groups) * test_fraction))
        n_val = int(round(len(groups) * val_fraction))
        for i, group in enumerate(groups):
            assignment[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    which = samples[group_by].map(assignment)
    return {name: samples[which == name] for name in SPLIT_NAMES}


def assign_folds(samples: pd.DataFrame, num_folds: int, seed: int, group_by: str = "seriesuid") -> pd.Series:
    """Fold ``0..num_folds-1`` of every row: seeded K folds of whole groups (series, or patients with
    ``group_by``), stratified by whether a group has a positive, so every fold gets its share of both."""
    if num_folds < 2:
        raise SplitError(f"data.split.num_folds={num_folds}: K-fold splits need at least 2 folds")
    if group_by not in samples:
        raise SplitError(f"data.split.group_by='{group_by}' is not a column of the labels CSV; "
                         f"columns are {sorted(samples.columns)}")
    has_positive = samples.groupby(group_by)["label"].max()
    if len(has_positive) < num_folds:
        raise SplitError(f"{len(has_positive)} {group_by} group(s) cannot fill data.split.num_folds={num_folds} "
                         "folds; use fewer folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for _, stratum in has_positive.groupby(has_positive):
        for group in rng.permutation(stratum.index.to_numpy()):
            fold_of[group] = len(fold_of) % num_folds  # one round robin across strata keeps fold sizes even
    return samples[group_by].map(fold_of)


def split_by_folds(
    samples: pd.DataFrame, num_folds: int, test_fold: int, val_fold: int, seed: int, group_by: str = "seriesuid"
) -> dict[str, pd.DataFrame]:
    """Fold ``test_fold`` of :func:`assign_folds` is the test set, ``val_fold`` validation, the rest train."""
    for name, fold in (("data.split.fold", test_fold), ("data.split.val_fold", val_fold)):
        if not 0 <= fold < num_folds:
            raise SplitError(f"{name}={fold} but data.split.num_folds={num_folds}; pick 0..{num_folds - 1}")
    folds = assign_folds(samples, num_folds, seed, group_by)
    return {
        "train": samples[~folds.isin([test_fold, val_fold])],
        "val": samples[folds == val_fold],
        "test": samples[folds == test_fold],
    }


def check_splits(
    splits: dict[str, pd.DataFrame], required: Sequence[str] = SPLIT_NAMES, group_by: str = "seriesuid"
) -> None:
    """Raise :class:`SplitError` if a series (or ``group_by`` group, e.g. a patient) is in two splits,
    or a split is empty or has one class.

    The one exception: validation may be the very same rows as test (see :func:`split_by_subset`).
    Training never shares a series with either.
    """
    for column in dict.fromkeys(["seriesuid", group_by]):
        _check_disjoint(splits, column)
    for name in required:
        frame = splits.get(name)
        if frame is None or frame.empty:
            raise SplitError(f"the '{name}' split is empty; check data.fold/data.val_fold or the split fractions")
        classes = sorted(frame["label"].unique())
        if len(classes) < 2:
            raise SplitError(f"the '{name}' split has only class {classes[0]} ({len(frame)} samples from "
                             f"{frame['seriesuid'].nunique()} series); metrics like AUROC need both classes")


def _check_disjoint(splits: dict[str, pd.DataFrame], column: str) -> None:
    members = {name: set(frame[column]) for name, frame in splits.items()}
    names = list(members)
    val_is_test = "val" in splits and "test" in splits and splits["val"].index.equals(splits["test"].index)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if val_is_test and {first, second} == {"val", "test"}:
                continue
            shared = members[first] & members[second]
            if shared:
                raise SplitError(f"{len(shared)} {column} value(s) are in both '{first}' and '{second}', e.g. "
                                 f"{sorted(shared)[:3]}; each must belong to exactly one split")
