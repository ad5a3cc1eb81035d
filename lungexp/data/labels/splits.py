"""Series-level train/val/test splits, so no scan ever contributes to two splits.

LUNA16 ships its scans in ten folders ``subset0..subset9`` that are the official
cross-validation folds; :func:`split_by_subset` uses them. Other data gets a seeded random split
of series with :func:`split_by_series`, or seeded K folds of series with :func:`split_by_folds`
(cross-validation). :class:`SplitSpec` (``data.split``) chooses between them; :func:`check_splits`
runs on every split, every run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lungexp.utils.errors import ArgumentError, LungexpError, check_int, check_number, look_up_option

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SPLIT_METHODS = ("subsets", "series", "folds")
AUTO_GROUP = "auto"  # group_by: patients where the labels name them, else series
PATIENT_COLUMN = "patient_id"


class SplitError(LungexpError):
    """A split that would make the evaluation meaningless (overlap, empty, a single class)."""


@dataclass(frozen=True)
class SplitSpec:
    """How samples are split (``data.split``).

    Args:
        method: ``subsets`` (LUNA16 folders ``subsetK`` as folds), ``series`` (seeded random split) or
            ``folds`` (seeded K folds of series, what ``cv.folds`` uses for data without subsets).
        fold: test fold (``subsets``, ``folds``).
        val_fold: validation fold (``subsets``, ``folds``); equal to ``fold`` only for tiny datasets.
        val_fraction, test_fraction: shares of series (or ``group_by`` groups) in validation and
            test (``series``).
        seed: seed of the random split, and of ``data.max_negatives_per_scan``'s choice.
        group_by: ``auto`` (:func:`group_column`: the labels' ``patient_id`` column where they have one, else
            ``seriesuid``), ``seriesuid`` or a patient column of the labels CSV: a group never spans two splits.
        num_folds: K of ``folds``.
    """

    method: str = "subsets"
    fold: int = 0
    val_fold: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    group_by: str = AUTO_GROUP
    num_folds: int | None = None

    @classmethod
    def from_config(  # each parameter defaults to its field above: one default per option
        cls,
        method: str = method,
        fold: int = fold,
        val_fold: int = val_fold,
        val_fraction: float = val_fraction,
        test_fraction: float = test_fraction,
        seed: int = seed,
        group_by: str = group_by,
        num_folds: int | None = num_folds,
    ) -> SplitSpec:
        """Check the split options; :class:`~lungexp.utils.errors.ArgumentError` names the parameter of a value
        that cannot work."""
        method = look_up_option("method", method, SPLIT_METHODS, error=ArgumentError)
        val_fraction = check_number("val_fraction", val_fraction, 0, 1, True, True, error=ArgumentError)
        test_fraction = check_number("test_fraction", test_fraction, 0, 1, True, True, error=ArgumentError)
        if val_fraction + test_fraction >= 1:
            raise ArgumentError(f"val_fraction={val_fraction:g} + test_fraction="
                                f"{test_fraction:g} must be less than 1 (the rest is training)", "test_fraction")
        if method == "folds":
            num_folds = check_int("num_folds", num_folds, minimum=2, error=ArgumentError)
            for key, value in (("fold", fold), ("val_fold", val_fold)):
                if isinstance(value, int) and not 0 <= value < num_folds:
                    raise ArgumentError(f"{key}={value} but num_folds={num_folds}; pick 0..{num_folds - 1}",
                                        "num_folds")
        if not isinstance(group_by, str) or not group_by:
            raise ArgumentError(f"group_by={group_by!r} must be a column name, e.g. seriesuid")
        return cls(
            method=method,
            fold=check_int("fold", fold, minimum=0, error=ArgumentError),
            val_fold=check_int("val_fold", val_fold, minimum=0, error=ArgumentError),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=check_int("seed", seed, minimum=0, error=ArgumentError),
            group_by=group_by,
            num_folds=num_folds,
        )


def group_column(group_by: str, columns: Iterable[str]) -> str:
    """The column whose groups never span two splits: ``group_by`` as given, or for ``auto`` the
    :data:`PATIENT_COLUMN` of a table that has one (crops or scans of one patient are not independent, so a
    patient in both training and test would flatter the test), else ``seriesuid``."""
    if group_by != AUTO_GROUP:
        return group_by
    return PATIENT_COLUMN if PATIENT_COLUMN in columns else "seriesuid"


def split_samples(samples: pd.DataFrame, spec: SplitSpec) -> dict[str, pd.DataFrame]:
    """``train``/``val``/``test`` rows of ``samples`` by ``spec.method`` (check them with :func:`check_splits`),
    grouped by :func:`group_column` (logged when ``auto`` finds patients)."""
    group_by = group_column(spec.group_by, samples.columns)
    if spec.group_by == AUTO_GROUP and group_by == PATIENT_COLUMN:
        log.info("data.split.group_by=auto: the labels have a %s column, so the splits keep each patient's series "
                 "together (data.split.group_by=seriesuid splits by series instead)", PATIENT_COLUMN)
    if spec.method == "subsets":
        return split_by_subset(samples, test_fold=spec.fold, val_fold=spec.val_fold)
    if spec.method == "folds":
        if spec.num_folds is None:  # a SplitSpec made without from_config
            raise ArgumentError("method=folds needs num_folds (the K of the folds), e.g. num_folds=5", "num_folds")
        return split_by_folds(samples, spec.num_folds, spec.fold, spec.val_fold, spec.seed, group_by=group_by)
    return split_by_series(samples, spec.val_fraction, spec.test_fraction, spec.seed, group_by=group_by)


def split_by_subset(samples: pd.DataFrame, test_fold: int, val_fold: int) -> dict[str, pd.DataFrame]:
    """LUNA16 folds: ``subset{test_fold}`` is the test set, ``subset{val_fold}`` validation, the rest train.

    ``val_fold == test_fold`` is allowed for datasets too small for three folds; validation then
    reuses the test series (a warning says so: model selection sees the test set).
    """
    if test_fold == val_fold:
        log.warning("data.split.val_fold == data.split.fold (%d): validating on the test series, so test "
                    "metrics are optimistic; use separate folds whenever the data allows", test_fold)
    present = sorted(int(k) for k in samples["subset"].unique())
    for name, fold in (("data.split.fold", test_fold), ("data.split.val_fold", val_fold)):
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
    labels CSV (e.g. ``patient_id``) so that all scans of a patient land in the same split. The
    fractions are those :meth:`SplitSpec.from_config` accepts.
    """
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
    if group_by not in samples:
        raise SplitError(f"data.split.group_by='{group_by}' is not a column of the labels CSV; "
                         f"columns are {sorted(samples.columns)}")
    has_positive = samples.groupby(group_by)["label"].max()
    if len(has_positive) < num_folds:
        raise SplitError(f"{len(has_positive)} {group_by} group(s) cannot fill {num_folds} folds "
                         "(data.split.num_folds, cv.folds); use fewer folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for _, stratum in has_positive.groupby(has_positive):
        for group in rng.permutation(stratum.index.to_numpy()):
            fold_of[group] = len(fold_of) % num_folds  # one round robin across strata keeps fold sizes even
    return samples[group_by].map(fold_of)


def split_by_folds(
    samples: pd.DataFrame, num_folds: int, test_fold: int, val_fold: int, seed: int, group_by: str = "seriesuid"
) -> dict[str, pd.DataFrame]:
    """Fold ``test_fold`` of :func:`assign_folds` is the test set, ``val_fold`` validation, the rest train
    (fold numbers as :meth:`SplitSpec.from_config` checks them)."""
    folds = assign_folds(samples, num_folds, seed, group_by)
    return {
        "train": samples[~folds.isin([test_fold, val_fold])],
        "val": samples[folds == val_fold],
        "test": samples[folds == test_fold],
    }


def check_splits(
    splits: dict[str, pd.DataFrame], required: Sequence[str] = SPLIT_NAMES, group_by: str = AUTO_GROUP
) -> None:
    """Raise :class:`SplitError` if a series (or ``group_by`` group, e.g. a patient; :func:`group_column`) is in
    two splits, or a split is empty or has one class.

    The one exception: validation may be the very same rows as test (see :func:`split_by_subset`).
    Training never shares a series with either.
    """
    columns = next(iter(splits.values())).columns if splits else []
    for column in dict.fromkeys(["seriesuid", group_column(group_by, columns)]):
        _check_disjoint(splits, column)
    for name in required:
        frame = splits.get(name)
        if frame is None or frame.empty:
            raise SplitError(f"the '{name}' split is empty; check data.split.fold/data.split.val_fold or "
                             "data.split.val_fraction/data.split.test_fraction")
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
