"""The table of training samples for a task: one row per patch, with its label and fold.

Every task yields the same columns, ``seriesuid, coordX, coordY, coordZ, label, subset`` (world mm),
so the cache, splits and datasets below never need to know which task produced them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.annotations import (
    check_points_inside,
    read_candidates,
    read_malignancy_annotations,
    read_world_points,
)
from lungexp.data.io.reader import read_scan_header

log = logging.getLogger(__name__)

TASKS = ("candidates", "malignancy", "points")


def read_labels(task: str, labels_csv: str | Path) -> pd.DataFrame:
    """Rows with world coordinates and a 0/1 ``label`` column, from the CSV layout of ``task``.

    * ``candidates``: LUNA16 ``candidates.csv``/``candidates_V2.csv``, label = ``class`` (nodule vs not);
    * ``malignancy``: ``annotations_with_malignancy.csv``, label = ``mal_bool`` (malignant vs benign);
    * ``points``: any ``seriesuid,coordX,coordY,coordZ,label`` CSV (e.g. for NIfTI data).
    """
    if task == "candidates":
        table = read_candidates(labels_csv).rename(columns={"class": "label"})
    elif task == "malignancy":
        table = read_malignancy_annotations(labels_csv)
        table["label"] = table["mal_bool"].astype(int)
    elif task == "points":
        table = read_world_points(labels_csv)
    else:
        raise ValueError(f"unknown data.task '{task}'; choose one of {TASKS}")
    table["label"] = table["label"].astype(int)
    return table


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
        scans: ``seriesuid, path, subset`` from :func:`lungexp.data.io.scan_index.index_scans`.
        source: the labels CSV, named in error messages.
        missing_scans: ``skip`` rows whose scan is absent (normal with a partial LUNA16 download,
            logged with a count) or ``error``.
        outside: ``error`` or ``skip`` (with a logged count) for coordinates outside their scan.
    """
    for name, value in (("missing_scans", missing_scans), ("outside", outside)):
        if value not in ("error", "skip"):
            raise ValueError(f"data.{name} must be 'error' or 'skip', got '{value}'")
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
