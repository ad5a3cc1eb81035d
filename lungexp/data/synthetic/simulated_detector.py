"""A simulated detector on the generated scans: boxes in world mm, as a first stage would hand them to ``predict``.

Why this exists: ``lungexp.predict detections=...`` is a false-positive-reduction stage on a detector's boxes, and
the demo data has no detector. This one boxes every generated nodule (centre within 0.5 mm, size its diameter),
adds a duplicate 2 mm beside each (a lower score, as overlapping anchors give) and false marks on negative
candidates, so merging, fusion and the FROC of each score can be tried and tested without a trained detector.
Its scores overlap (nodules 0.3-0.95, false marks 0.05-0.8): the detector alone ranks imperfectly, leaving the
second stage something to add.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.labels.annotations import read_annotations, read_candidates
from lungexp.data.labels.detector_boxes import DETECTOR_SCORE, SIZE_COLUMNS
from lungexp.data.names import COORD_COLUMNS, POINT_COLUMNS
from lungexp.utils.atomic import atomic_file

BOX_SIZE_COLUMNS = SIZE_COLUMNS[1]  # sizeX, sizeY, sizeZ: the form read_detections reads
FALSE_MARK_SIZE_MM = 6.0
DUPLICATE_OFFSET_MM = 2.0
# False marks keep this far from every nodule and from each other, so no 5 mm merge can swallow one.
FALSE_MARK_CLEARANCE_MM = 10.0


@dataclass(frozen=True)
class SimulatedDetections:
    """``boxes``: seriesuid, centre (coordX..Z), size (sizeX..Z) and score, shuffled; ``expected``: the points
    they must become once duplicates are merged (the nodule boxes and the false marks, with ``detector_score``)."""

    boxes: pd.DataFrame
    expected: pd.DataFrame


def simulate_detections(root: str | Path, seriesuids: list[str] | None = None,
                        false_marks_per_scan: int | None = None, seed: int = 0) -> SimulatedDetections:
    """Boxes around the nodules of the generated dataset at ``root`` (``annotations.csv``) plus false marks on its
    negative candidates (``candidates_V2.csv``; ``false_marks_per_scan`` of them per scan, all that keep their
    clearance when ``None``), for ``seriesuids`` (default all)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    nodules = read_annotations(root / "annotations.csv").astype({"seriesuid": str})
    negatives = read_candidates(root / "candidates_V2.csv").astype({"seriesuid": str})
    if seriesuids is not None:
        nodules = nodules[nodules["seriesuid"].isin(seriesuids)]
        negatives = negatives[negatives["seriesuid"].isin(seriesuids)]
    hits = nodules[POINT_COLUMNS].assign(**{c: nodules[c] + rng.uniform(-0.5, 0.5, len(nodules)) for c in COORD_COLUMNS})
    hits[BOX_SIZE_COLUMNS] = np.repeat(nodules[["diameter_mm"]].to_numpy(), 3, axis=1)
    hits["score"] = rng.uniform(0.3, 0.95, len(hits))
    duplicates = hits.assign(coordX=hits["coordX"] + DUPLICATE_OFFSET_MM, score=hits["score"] - 0.1)
    marks = _false_mark_sites(nodules, negatives[negatives["class"] == 0], false_marks_per_scan)
    false = marks[POINT_COLUMNS].assign(**dict.fromkeys(BOX_SIZE_COLUMNS, FALSE_MARK_SIZE_MM),
                                        score=rng.uniform(0.05, 0.8, len(marks)))
    boxes = pd.concat([hits, duplicates, false], ignore_index=True).sample(frac=1.0, random_state=seed)
    expected = pd.concat([hits, false])[POINT_COLUMNS + ["score"]].rename(columns={"score": DETECTOR_SCORE})
    return SimulatedDetections(boxes.reset_index(drop=True), expected.reset_index(drop=True))


def _false_mark_sites(nodules: pd.DataFrame, negatives: pd.DataFrame, per_scan: int | None) -> pd.DataFrame:
    """Negatives, in file order, farther than the clearance from every nodule and every mark already chosen."""
    chosen: list[int] = []
    for seriesuid, scan in negatives.groupby("seriesuid", sort=False):
        taken = nodules.loc[nodules["seriesuid"] == seriesuid, COORD_COLUMNS].to_numpy(np.float64)
        marks = 0
        for index, point in zip(scan.index, scan[COORD_COLUMNS].to_numpy(np.float64), strict=True):
            if per_scan is not None and marks == per_scan:
                break
            if np.linalg.norm(taken - point, axis=1).min(initial=np.inf) > FALSE_MARK_CLEARANCE_MM:
                chosen.append(index)
                taken = np.vstack([taken, point])
                marks += 1
    return negatives.loc[chosen]


def monai_entries(boxes: pd.DataFrame, score_key: str = "label_scores") -> list[dict]:
    """The boxes as MONAI's detection bundle writes them: per image, ``cccwhd`` boxes in world mm and their scores;
    the image is named by its seriesuid, as ``read_detections`` expects."""
    return [{"box": group[[*COORD_COLUMNS, *BOX_SIZE_COLUMNS]].to_numpy().tolist(), "label": [0] * len(group),
             score_key: group["score"].tolist(), "image": f"{uid}/{uid}.nii.gz"}
            for uid, group in boxes.groupby("seriesuid", sort=False)]


def write_monai_json(boxes: pd.DataFrame, path: str | Path) -> Path:
    """Write ``boxes`` as a MONAI detection JSON (a list of entries, see :func:`monai_entries`), atomically."""
    path = Path(path)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(monai_entries(boxes)))
    return path
