"""``predict detections=FILE``: a false-positive-reduction stage on a detector's boxes.

The boxes (:mod:`lungexp.data.labels.detector_boxes`) become candidate points, duplicates within
``merge_radius_mm`` merged; each point is scored by the checkpoint as any candidate, and its
``probability`` is the fusion of the detector's score with the classifier's:

* ``none``: the classifier's probability alone;
* ``product``: ``detector_score × classifier_probability`` (both must agree for a high score);
* ``mean``: ``(detector_score + classifier_probability) / 2``.

The table keeps LUNA16's submission columns and adds ``detector_score`` and ``classifier_probability``,
so that ``python -m lungexp.froc`` reports the detector alone, the classifier alone and the fusion.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungexp.data.labels.detector_boxes import DETECTOR_SCORE, merge_duplicates, read_detections
from lungexp.evaluation.head_report import is_one_logit
from lungexp.inference.candidate_scoring import SUBMISSION_COLUMNS, check_known_series, predict_candidates
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.scans import ScanSource
from lungexp.utils.errors import ConfigError, check_number, look_up_option

log = logging.getLogger(__name__)

FUSIONS = ("none", "product", "mean")
CLASSIFIER_PROBABILITY = "classifier_probability"
DETECTION_SUBMISSION_COLUMNS = [*SUBMISSION_COLUMNS, DETECTOR_SCORE, CLASSIFIER_PROBABILITY]
_FORMULAS = {"none": "classifier_probability", "product": "detector_score × classifier_probability",
             "mean": "(detector_score + classifier_probability) / 2"}


def check_candidate_options(candidates: str | None, detections: str | None, fuse: str,
                            merge_radius_mm: float) -> None:
    """``predict`` takes exactly one of ``candidates=`` and ``detections=``; ``fuse`` needs a detector's scores."""
    if (candidates is None) == (detections is None):
        given = "both" if candidates is not None else "neither"
        raise ConfigError(f"predict needs one of candidates=POINTS.csv (points to score) and detections=FILE (a "
                          f"detector's boxes: CSV of centres or corners, or MONAI's JSON), got {given}")
    look_up_option("fuse", fuse, FUSIONS)
    if detections is None and fuse != "none":
        raise ConfigError(f"fuse={fuse} fuses a detector's scores with the classifier's, so it needs "
                          "detections=FILE instead of candidates=; or leave fuse=none")
    check_number("merge_radius_mm", merge_radius_mm, low=0)


def score_detections(predictor: Predictor | Ensemble, scans: ScanSource, path: str | Path, fuse: str = "none",
                     merge_radius_mm: float = 5.0, batch_size: int = 64) -> pd.DataFrame:
    """:data:`DETECTION_SUBMISSION_COLUMNS` for each box left after merging, in file order. A nodule probability
    to fuse with the detector's: a model of one binary logit only (a :class:`ConfigError` otherwise)."""
    target = predictor.recipe.targets
    if not is_one_logit(target):
        raise ConfigError(f"detections= scores a detector's boxes by a nodule probability, but the model was trained "
                          f"for {target.describe()}: score points of it with candidates=POINTS.csv instead")
    single = scans.seriesuids[0] if len(scans.seriesuids) == 1 else None
    boxes = read_detections(path, seriesuid=single)
    check_known_series(boxes, scans, path)
    candidates = merge_duplicates(boxes, merge_radius_mm)
    log.info("%s: %d box(es) -> %d candidate(s) (duplicates within %g mm merged); probability = %s", path,
             len(boxes), len(candidates), merge_radius_mm, _FORMULAS[fuse])
    table = predict_candidates(predictor, scans, candidates, source=path, batch_size=batch_size)
    table[DETECTOR_SCORE] = candidates[DETECTOR_SCORE].to_numpy()
    table[CLASSIFIER_PROBABILITY] = table["probability"]
    table["probability"] = fused(table[DETECTOR_SCORE], table[CLASSIFIER_PROBABILITY], fuse)
    return table[DETECTION_SUBMISSION_COLUMNS]


def fused(detector_score: pd.Series, classifier_probability: pd.Series, fuse: str) -> pd.Series:
    """The ``fuse`` rule (module docstring) applied to two scores in [0, 1]."""
    if fuse == "product":
        return detector_score * classifier_probability
    if fuse == "mean":
        return (detector_score + classifier_probability) / 2
    return classifier_probability
