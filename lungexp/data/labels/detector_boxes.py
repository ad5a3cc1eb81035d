"""A detector's boxes as candidate points: each box's centre in world mm, with the detector's score.

Three forms are read, all in world millimetres ``(x, y, z)``, the frame of LUNA16's ``annotations.csv``
(ITK's, as SimpleITK reads ``.mhd``/NIfTI/DICOM headers):

* a CSV of box centres, ``seriesuid, coordX, coordY, coordZ, score``, optionally with the box size
  (``diameter_mm``, or ``sizeX, sizeY, sizeZ``; only checked to be >= 0, the point is the centre). A
  detector's LUNA16 submission (``..., probability``) is this form too: without a ``score`` column the
  ``probability`` column is the score;
* a CSV of box corners, ``seriesuid, x_min, y_min, z_min, x_max, y_max, z_max, score``;
* the JSON that MONAI's ``lung_nodule_ct_detection`` bundle writes (``scripts/detection_saver.py``: a
  list with one entry per image, ``{"box": [[...], ...], "label": [...], "label_scores": [...],
  "image": PATH}``), or the MONAI detection tutorial's form of it, a mapping from a split name to such a
  list with the scores under ``score`` (``{"validation": [{"box": ..., "score": ..., "image": ...}]}``,
  as ``luna16_post_combine_cross_fold_results.py`` reads it). Boxes must be in the bundle's default mode
  ``cccwhd`` (``ConvertBoxModed(src_mode="xyzxyz", dst_mode="cccwhd")`` in its ``inference.json``):
  centre x, y, z then size in world mm, after ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``,
  which puts them back in the LPS frame of LUNA16's annotations (the tutorial feeds ``box[0:3]`` to
  LUNA16's evaluation as ``coordX, coordY, coordZ``). The seriesuid is the image's file name without
  its scan suffix. ``label`` is not read: the bundle detects one class, nodules.

A CSV is read as corners when it has all six corner columns and no ``coordX``. Scores must lie in
[0, 1] (MONAI's and nnDetection's do: they are probabilities), so that they can be fused with a
classifier's probability. Each problem is one :class:`DetectionError` naming the file and the rows
(numbered as in a spreadsheet: the header is row 1) or the JSON entry and box (``entry 1, box 0``, both counted
from 0); a JSON's boxes keep that name in ``row_name`` (:data:`~lungexp.data.names.ROW_NAME_COLUMN`), so that
``predict``'s checks of the points (unknown series, outside the scan) name the box too.

:func:`merge_duplicates` then merges boxes of one series whose centres lie within ``radius_mm`` of a
higher-scoring one (greedy, as non-maximum suppression on points).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from lungexp.data.labels.annotations import AnnotationError, describe_rows, read_number_columns
from lungexp.data.names import COORD_COLUMNS, POINT_COLUMNS, ROW_NAME_COLUMN
from lungexp.data.scans.reader import scan_suffix

DETECTOR_SCORE = "detector_score"
DETECTION_COLUMNS = [*POINT_COLUMNS, DETECTOR_SCORE]
CORNER_COLUMNS = ["x_min", "y_min", "z_min", "x_max", "y_max", "z_max"]
SIZE_COLUMNS = (["diameter_mm"], ["sizeX", "sizeY", "sizeZ"])  # optional, either
SCORE_COLUMNS = ("score", "probability")  # the first one present is the detector's score
MONAI_BOX_MODE = "cccwhd"
MONAI_SCORE_KEYS = ("label_scores", "score")  # the bundle's DetectionSaver, the tutorial's json
# Centres closer than the radius of a 10 mm nodule mark one nodule in practice; distinct nodules of a scan
# rarely lie this close (LUNA16 counts a hit within a nodule's radius).
DEFAULT_MERGE_RADIUS_MM = 5.0


class DetectionError(AnnotationError):
    """A detector's output that cannot be read; the message names the file and the rows, or the JSON entry."""


def read_detections(path: str | Path, seriesuid: str | None = None) -> pd.DataFrame:
    """``seriesuid, coordX, coordY, coordZ, detector_score`` (and a JSON's ``row_name``): one row per box, in file
    order.

    Args:
        path: a ``.json`` file in MONAI's detection form, else a CSV of centres or corners (module docstring).
        seriesuid: the series of every box of a CSV without a ``seriesuid`` column (a single scan); without
            it such a CSV is an error.

    The index numbers the boxes: a CSV's rows from 0 (spreadsheet row = index + 2), a JSON's boxes in order
    (named in ``row_name``: ``entry 1, box 0``).
    """
    path = Path(path)
    if not path.is_file():
        raise DetectionError(f"detections={path}: file not found; check the path")
    if path.suffix.lower() == ".json":
        return _read_monai_json(path)
    return _read_box_csv(path, seriesuid)


def _read_box_csv(path: Path, seriesuid: str | None) -> pd.DataFrame:
    try:
        header = [str(name) for name in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        header = []  # read_number_columns names the problem
    corners = "coordX" not in header and set(CORNER_COLUMNS) <= set(header)
    score = next((name for name in SCORE_COLUMNS if name in header), SCORE_COLUMNS[0])
    sizes = next((names for names in SIZE_COLUMNS if set(names) <= set(header)), [])
    has_uid = "seriesuid" in header or not header
    if not has_uid and seriesuid is None:
        raise DetectionError(f"{path} has no seriesuid column; add one naming each box's scan (it may be left out "
                             "only when the scans are a single series)")
    try:
        table = read_number_columns(path, [*(CORNER_COLUMNS if corners else COORD_COLUMNS), *sizes, score],
                                    texts=["seriesuid"] if has_uid else [])
    except AnnotationError as error:
        raise DetectionError(f"{error}; a detector's boxes are centres ({', '.join(COORD_COLUMNS)}) or corners "
                             f"({', '.join(CORNER_COLUMNS)}) in world mm, with a score (or probability) "
                             "column") from None
    if corners:
        low, high = table[CORNER_COLUMNS[:3]].to_numpy(), table[CORNER_COLUMNS[3:]].to_numpy()
        _check_rows(path, "x_max, y_max, z_max", pd.Series((high < low).any(axis=1), index=table.index),
                    table[CORNER_COLUMNS].astype(str).agg(" ".join, axis=1),
                    "at least x_min, y_min, z_min (max corner >= min corner, world mm)")
        table[COORD_COLUMNS] = (low + high) / 2
    for name in sizes:
        _check_rows(path, name, table[name] < 0, table[name], "a size >= 0 (mm)")
    _check_rows(path, score, ~table[score].between(0, 1), table[score], "a detector score in [0, 1]",
                "; rescale the scores to [0, 1] (e.g. a sigmoid of logits)")
    uids = table["seriesuid"].astype(str) if has_uid else seriesuid
    return pd.DataFrame({"seriesuid": uids, **{c: table[c] for c in COORD_COLUMNS},
                         DETECTOR_SCORE: table[score]}, index=table.index)


def _check_rows(path: Path, column: str, bad: pd.Series, shown: pd.Series, expected: str, hint: str = "") -> None:
    if bad.any():
        raise DetectionError(f"{path}: column '{column}' must hold {expected}, but "
                             f"{describe_rows(bad.reset_index(drop=True), shown.reset_index(drop=True))}{hint}")


def _read_monai_json(path: Path) -> pd.DataFrame:
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DetectionError(f"{path}: not a readable JSON file ({error}); expected MONAI's detection output, "
                             "a list of {\"box\": [...], \"label_scores\": [...], \"image\": ...}") from None
    if isinstance(content, dict):  # the tutorial's {"validation": [...]}: every split's entries
        named = [(f"'{split}'[{i}]", entry) for split, entries in content.items()
                 for i, entry in enumerate(entries if isinstance(entries, list) else [entries])]
    elif isinstance(content, list):
        named = [(f"entry {i}", entry) for i, entry in enumerate(content)]
    else:
        named = [("the top level", content)]
    tables = [_monai_entry(path, name, entry) for name, entry in named]
    if not tables:
        raise DetectionError(f"{path}: holds no images; expected MONAI's detection output, one entry per image")
    return pd.concat(tables, ignore_index=True)


def _monai_entry(path: Path, name: str, entry: Any) -> pd.DataFrame:
    """The boxes of one image of MONAI's detection JSON."""
    where = f"{path}: {name}"
    if not isinstance(entry, dict) or "box" not in entry or "image" not in entry:
        keys = f"its keys are {sorted(entry)}" if isinstance(entry, dict) else f"it is a {type(entry).__name__}"
        raise DetectionError(f"{where} is not an image's detections ({keys}); each entry needs 'box', "
                             f"'image' and one of {', '.join(map(repr, MONAI_SCORE_KEYS))}")
    key = next((key for key in MONAI_SCORE_KEYS if key in entry), None)
    if key is None:
        raise DetectionError(f"{where} has no scores; expected one of {', '.join(map(repr, MONAI_SCORE_KEYS))}")
    image = Path(str(entry["image"]))
    suffix = scan_suffix(image)
    uid = image.name[: -len(suffix)] if suffix else image.name
    try:
        boxes = np.asarray(entry["box"], dtype=np.float64).reshape(-1, 6)
        scores = np.asarray(entry[key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DetectionError(f"{where} ({uid}): 'box' must be a list of boxes of 6 numbers each ({MONAI_BOX_MODE}: "
                             f"centre x, y, z and size in world mm) and '{key}' a list of numbers") from None
    if len(boxes) != len(scores):
        raise DetectionError(f"{where} ({uid}): {len(boxes)} box(es) but {len(scores)} score(s) in '{key}'; "
                             "each box needs its score")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 3:] < 0).any(axis=1)
    bad_score = ~((scores >= 0) & (scores <= 1))
    names = [f"{name}, box {index}" for index in range(len(boxes))]
    for problem, mask, expected, hint in (
            ("'box'", bad, f"finite {MONAI_BOX_MODE} boxes with sizes >= 0", ""),
            (f"'{key}'", bad_score, "detector scores in [0, 1]", "; rescale them to [0, 1]")):
        if mask.any():
            shown = "; ".join(names[index] for index in np.flatnonzero(mask)[:5])
            raise DetectionError(f"{where} ({uid}): {problem} must hold {expected}, but {int(mask.sum())} box(es) "
                                 f"do not: {shown}{' ...' if mask.sum() > 5 else ''}{hint}")
    return pd.DataFrame({"seriesuid": uid, **dict(zip(COORD_COLUMNS, boxes[:, :3].T, strict=True)),
                         DETECTOR_SCORE: scores, ROW_NAME_COLUMN: names})


def merge_duplicates(detections: pd.DataFrame, radius_mm: float = DEFAULT_MERGE_RADIUS_MM) -> pd.DataFrame:
    """The boxes left once each box, in order of falling score, has removed the lower-scoring boxes of its
    series whose centres lie within ``radius_mm`` of its own (ties: the earlier row wins).

    A kept box keeps its own centre and score (not a score-weighted mean: the point is one the detector
    marked); rows keep their index and file order. ``radius_mm=0`` merges nothing.
    """
    if radius_mm == 0 or detections.empty:
        return detections
    keep = np.zeros(len(detections), dtype=bool)
    for rows in detections.groupby("seriesuid", sort=False).indices.values():
        centres = detections.iloc[rows][COORD_COLUMNS].to_numpy(np.float64)
        order = np.argsort(-detections.iloc[rows][DETECTOR_SCORE].to_numpy(), kind="stable")
        tree, removed = cKDTree(centres), np.zeros(len(rows), dtype=bool)
        for position in order:
            if not removed[position]:
                keep[rows[position]] = True
                removed[tree.query_ball_point(centres[position], radius_mm)] = True
    return detections[keep]
