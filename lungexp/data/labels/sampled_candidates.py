"""Candidates for datasets without a candidates file, and LUNA16's excluded findings.

LUNA16's ``candidates_V2.csv`` comes from detector systems. A user with only nodule annotations
(e.g. LIDC-IDRI converted with ``lungexp.convert`` plus ``annotations.csv``) gets a stand-in: one
positive per annotated nodule and negatives sampled inside the lungs of every scan, half of them
on vessels and other bright structures (:mod:`lungexp.data.labels.negatives`). Sampling reads every scan,
so the result is cached as a CSV keyed by its inputs and written atomically.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.fingerprint import content_key
from lungexp.data.labels.annotations import read_annotations
from lungexp.data.labels.negatives import sample_negatives
from lungexp.data.names import COORD_COLUMNS
from lungexp.data.scans.reader import read_scan
from lungexp.utils.atomic import atomic_file
from lungexp.utils.errors import ArgumentError, check_int, check_number
from lungexp.utils.parallel import map_scans

log = logging.getLogger(__name__)

# Candidates within this distance (mm) of an excluded finding of unknown size are dropped.
EXCLUDED_MIN_RADIUS_MM = 2.5


def _negatives_for_scan(task: tuple[str, str, np.ndarray, np.ndarray, dict]) -> pd.DataFrame:
    uid, path, centres, diameters, options = task
    points = sample_negatives(read_scan(path), centres, diameters, **options)
    return pd.DataFrame({"seriesuid": uid, **dict(zip(COORD_COLUMNS, points.T, strict=True)), "class": 0})


@dataclass(frozen=True)
class NegativesSpec:
    """Negatives sampled from each scan's lungs (``data.negatives``), see :func:`sample_negatives`.

    Args:
        count: negatives per scan.
        vessel_fraction: share placed on vessels and other bright structures (hard negatives).
        margin_mm: minimum distance from a nodule's edge.
        seed: base seed; each scan's sampling is seeded from it and its seriesuid.
    """

    count: int = 30
    vessel_fraction: float = 0.5
    margin_mm: float = 10.0
    seed: int = 0

    @classmethod
    def from_config(  # each parameter defaults to its field above: one default per option
        cls, count: int = count, vessel_fraction: float = vessel_fraction, margin_mm: float = margin_mm,
        seed: int = seed,
    ) -> NegativesSpec:
        """Check the sampling options; :class:`~lungexp.utils.errors.ArgumentError` names the parameter of a bad
        value (the datamodule's options add ``data.negatives.``)."""
        return cls(
            count=check_int("count", count, minimum=0, error=ArgumentError),
            vessel_fraction=check_number("vessel_fraction", vessel_fraction, 0, 1, error=ArgumentError),
            margin_mm=check_number("margin_mm", margin_mm, low=0, error=ArgumentError),
            seed=check_int("seed", seed, minimum=0, error=ArgumentError),
        )


def sampled_candidates(
    annotations_csv: str | Path,
    scans: pd.DataFrame,
    cache_dir: str | Path,
    negatives: NegativesSpec = NegativesSpec(),
    num_workers: int = 0,
) -> pd.DataFrame:
    """``seriesuid, coordX, coordY, coordZ, class``: annotated nodules (1) + ``negatives.count`` sampled
    negatives (0) per scan.

    Args:
        annotations_csv: LUNA16 ``annotations.csv`` (nodule centres and diameters).
        scans: ``seriesuid, path`` of every scan to sample from (scans without nodules get negatives too).
        cache_dir: where the sampled table is cached.
        negatives: how many negatives per scan, where, and their seed.
        num_workers: processes sampling scans in parallel.
    """
    annotations = read_annotations(annotations_csv)
    annotations = annotations[annotations["seriesuid"].isin(scans["seriesuid"])]
    options = asdict(negatives)
    key = content_key(options, annotations, dict(zip(scans["seriesuid"], scans["path"], strict=True)))
    target = Path(cache_dir) / f"sampled_candidates-{key}.csv"
    if target.is_file():
        return pd.read_csv(target, dtype={"seriesuid": str})

    nodules = annotations.groupby("seriesuid")
    tasks = []
    for uid, path in zip(scans["seriesuid"], scans["path"], strict=True):
        rows = nodules.get_group(uid) if uid in nodules.groups else annotations.iloc[:0]
        scan_seed = negatives.seed + int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)  # independent of scan order
        tasks.append((uid, str(path), rows[COORD_COLUMNS].to_numpy(float), rows["diameter_mm"].to_numpy(float),
                      {**options, "seed": scan_seed}))
    log.info("No candidates file: sampling %d negatives per scan from the lungs of %d scans", negatives.count,
             len(tasks))
    sampled = map_scans(_negatives_for_scan, tasks, num_workers, "Sampling negatives")
    positives = annotations[["seriesuid", *COORD_COLUMNS]].assign(**{"class": 1})
    table = pd.concat([positives, *sampled], ignore_index=True)
    with atomic_file(target) as temporary:
        table.to_csv(temporary, index=False)
    return table


def drop_excluded(candidates: pd.DataFrame, excluded: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Remove negative candidates lying on LUNA16's excluded findings (neither nodule nor false positive).

    LUNA16's evaluation ignores hits on these findings, so training should not call them negatives.
    """
    keep = np.ones(len(candidates), dtype=bool)
    # Grouped once and as plain arrays: per finding's series, comparing every row's seriesuid and taking rows of
    # the frame took 29 s for LUNA16's 754,975 rows (about 0.5 s like this).
    points = candidates[COORD_COLUMNS].to_numpy(float)
    negatives = np.flatnonzero((candidates["label"] == 0).to_numpy())
    per_scan = pd.Series(negatives).groupby(candidates["seriesuid"].to_numpy()[negatives]).indices  # positions
    for uid, findings in excluded.groupby("seriesuid"):
        if uid not in per_scan:
            continue
        on_scan = negatives[per_scan[uid]]
        centres = findings[COORD_COLUMNS].to_numpy(float)
        radii = np.maximum(findings["diameter_mm"].to_numpy(float) / 2, EXCLUDED_MIN_RADIUS_MM)
        distances = np.linalg.norm(points[on_scan, None, :] - centres[None, :, :], axis=2)
        keep[on_scan[(distances <= radii).any(axis=1)]] = False
    if not keep.all():
        log.info("%s: dropped %d negative candidates lying on excluded findings", source, int((~keep).sum()))
    return candidates[keep]
