"""The table of training samples for a task: one row per patch, with its label and fold.

Every task yields the same columns, ``seriesuid, coordX, coordY, coordZ, label, subset`` (world mm),
so the cache, splits and datasets below never need to know which task produced them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.labels.annotations import (
    COORD_COLUMNS,
    OUTSIDE_CHOICES,
    AnnotationError,
    check_points_inside,
    read_candidates,
    read_excluded_annotations,
    read_malignancy_annotations,
    read_world_points,
)
from lungexp.data.labels.label_rules import LabelRule
from lungexp.data.labels.sampled_candidates import NegativesSpec, drop_excluded, sampled_candidates
from lungexp.data.labels.splits import SplitSpec, split_samples
from lungexp.data.scans.reader import read_scan_header
from lungexp.utils.errors import look_up_option

log = logging.getLogger(__name__)

TASKS = ("candidates", "malignancy", "points")
MISSING_SCANS_CHOICES = ("error", "skip")
# Coordinates equal after rounding to this many decimals (1e-4 mm, as the patch cache key rounds) are one point.
POINT_DECIMALS = 4


def task_labels(
    task: str,
    labels_csv: Path | None,
    scans: pd.DataFrame,
    cache_dir: Path,
    annotations_csv: Path | None = None,
    excluded_csv: Path | None = None,
    negatives: NegativesSpec | None = None,
    num_workers: int = 0,
    label_rule: LabelRule | None = None,
) -> pd.DataFrame:
    """The task's labelled points (:func:`read_labels`, labelled by ``label_rule`` if given); for ``candidates``,
    where they come from:

    * ``labels_csv``;
    * or, when ``labels_csv`` is None (asked for, never a fallback for a missing file), the nodules of
      ``annotations_csv`` as positives plus ``negatives`` sampled from the lungs of every scan in ``scans``
      (cached in ``cache_dir``; default :class:`NegativesSpec`);
    * then, with an ``excluded_csv`` on disk, without the negatives lying on its findings.
    """
    if labels_csv is None:
        if label_rule is not None:
            raise ValueError("label_rule applies to the rows of a labels_csv; sampled candidates have none")
        if task != "candidates" or annotations_csv is None:
            raise ValueError("labels_csv=None samples candidates: it needs task='candidates' and an annotations_csv")
        log.info("Positives are the nodules of %s, negatives are sampled from the lungs", annotations_csv)
        source = annotations_csv
        labels = sampled_candidates(annotations_csv, scans, cache_dir, negatives or NegativesSpec(),
                                    num_workers=num_workers).rename(columns={"class": "label"})
    elif not labels_csv.is_file():
        hint = (", or set data.labels_csv=null to take the positives from data.annotations_csv and sample "
                "negatives in the lungs" if task == "candidates" else "")
        raise AnnotationError(f"{labels_csv}: labels CSV not found; check the path (data.labels_csv){hint}")
    else:
        labels = read_labels(task, labels_csv, label_rule)
        source = labels_csv
    if task == "candidates" and excluded_csv is not None and excluded_csv.is_file():
        labels = drop_excluded(labels, read_excluded_annotations(excluded_csv), source)
    return labels


def read_labels(task: str, labels_csv: str | Path, label_rule: LabelRule | None = None) -> pd.DataFrame:
    """Rows with world coordinates and a 0/1 ``label`` column, from the CSV layout of ``task``, or from
    ``label_rule`` (which drops the rows it labels neither way).

    * ``candidates``: LUNA16 ``candidates.csv``/``candidates_V2.csv``, label = ``class`` (nodule vs not);
    * ``malignancy``: ``annotations_with_malignancy.csv``, label = ``mal_bool`` (malignant vs benign);
    * ``points``: any ``seriesuid,coordX,coordY,coordZ,label`` CSV (e.g. for NIfTI data).
    """
    look_up_option("data.task", task, TASKS)
    if task == "candidates":
        table = read_candidates(labels_csv).rename(columns={"class": "label"})
    elif task == "malignancy":
        table = read_malignancy_annotations(labels_csv)
        table["label"] = table["mal_bool"].astype(int)
    else:
        table = read_world_points(labels_csv)
    if label_rule is not None:
        table = label_rule.apply(table, labels_csv)
    table["label"] = table["label"].astype(int)
    return drop_duplicate_points(table, labels_csv)


def drop_duplicate_points(table: pd.DataFrame, source: str | Path, values: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Rows at the same point of the same series are one sample: repeats are dropped, with a warning counting them.

    A repeated row would otherwise count twice in the metrics. The same point with other ``values`` (labelled
    both 0 and 1, or two scores) is an :class:`AnnotationError` naming the CSV lines (header = line 1), as
    ``table``'s index is the CSV's row order. Points are the same when their coordinates agree to 1e-4 mm.
    """
    points = table[["seriesuid", *COORD_COLUMNS]].copy()
    points[COORD_COLUMNS] = points[COORD_COLUMNS].round(POINT_DECIMALS)
    repeated = points.duplicated(keep=False)
    if not repeated.any():
        return table
    groups = table.loc[repeated].groupby([points.loc[repeated, c] for c in points.columns]).groups.values()
    contradictions = [rows for rows in groups if len(table.loc[rows, list(values)].drop_duplicates()) > 1]
    if contradictions:
        shown = "; ".join(
            f"lines {', '.join(str(i + 2) for i in rows)} ({table.at[rows[0], 'seriesuid']} at "
            f"({', '.join(f'{table.at[rows[0], c]:g}' for c in COORD_COLUMNS)}) mm: "
            + "; ".join(f"{_plural(column)} {', '.join(str(v) for v in table.loc[rows, column])}" for column in values)
            + ")"
            for rows in contradictions[:5]
        )
        more = f"; and {len(contradictions) - 5} more" if len(contradictions) > 5 else ""
        conflict = "labelled both 0 and 1" if list(values) == ["label"] else f"given different {', '.join(values)}"
        raise AnnotationError(f"{source}: {len(contradictions)} point(s) are {conflict}: {shown}{more}; "
                              f"keep the row with the right {' and '.join(values)}")
    duplicates = points.duplicated(keep="first")
    log.warning("%s: dropped %d duplicate row(s) (same seriesuid and coordinates as an earlier row, same %s)",
                source, int(duplicates.sum()), " and ".join(values))
    return table[~duplicates]


def _plural(noun: str) -> str:
    return f"{noun[:-1]}ies" if noun.endswith("y") else f"{noun}s"


def limit_training_negatives(samples: pd.DataFrame, per_scan: int | None, split: SplitSpec) -> pd.DataFrame:
    """:func:`limit_negatives` on the training split only (seeded by ``split.seed``): validation and
    test keep every candidate of their scans, as a true FROC/CPM needs."""
    if per_scan is None:
        return samples
    train = split_samples(samples, split)["train"]
    kept = limit_negatives(train, per_scan, split.seed)
    return samples.drop(train.index.difference(kept.index)).reset_index(drop=True)


def limit_negatives(samples: pd.DataFrame, per_scan: int | None, seed: int) -> pd.DataFrame:
    """Keep at most ``per_scan`` negatives of each series (a seeded random choice) and every positive.

    LUNA16's ``candidates_V2.csv`` has ~850 negatives per scan: 49 GB of 32^3 int16 patches in all.
    """
    if per_scan is None:
        return samples
    negatives = samples[samples["label"] == 0]
    shuffled = negatives.assign(order=np.random.default_rng(seed).random(len(negatives)))
    shuffled = shuffled.sort_values(["seriesuid", "order"])
    kept = shuffled.index[shuffled.groupby("seriesuid").cumcount().to_numpy() < per_scan]
    return samples.loc[samples.index.isin(kept) | (samples["label"] != 0)]


def build_samples(
    labels: pd.DataFrame,
    scans: pd.DataFrame,
    source: str | Path,
    missing_scans: str = "skip",
    outside: str = "error",
) -> pd.DataFrame:
    """Join labels with the scans on disk and check every coordinate lies inside its scan.

    Args:
        labels: output of :func:`read_labels`.
        scans: ``seriesuid, path, subset`` from :func:`lungexp.data.scans.scan_index.index_scans`.
        source: the labels CSV, named in error messages.
        missing_scans: ``skip`` rows whose scan is absent (normal with a partial LUNA16 download,
            logged with a count) or ``error``.
        outside: ``error`` or ``skip`` (with a logged count) for coordinates outside their scan.
    """
    look_up_option("data.missing_scans", missing_scans, MISSING_SCANS_CHOICES)
    look_up_option("data.outside", outside, OUTSIDE_CHOICES)
    known = labels["seriesuid"].isin(scans["seriesuid"])
    if missing_scans == "skip" and not known.all():
        log.info("%s: %d rows of %d series have no scan under the data root and are skipped",
                 source, int((~known).sum()), labels.loc[~known, "seriesuid"].nunique())
        labels = labels[known]
    wanted = set(labels["seriesuid"])
    headers = {
        uid: read_scan_header(path)
        for uid, path in zip(scans["seriesuid"], scans["path"], strict=True)
        if uid in wanted
    }
    labels = check_points_inside(labels, headers, on_outside=outside, source=source)
    subset = scans.set_index("seriesuid")["subset"]
    samples = labels.assign(subset=labels["seriesuid"].map(subset).astype(int))
    return samples.reset_index(drop=True)
