"""``predict``: nodule probabilities for candidate points on scans, in LUNA16's submission format.

Candidates are world points ``seriesuid, coordX, coordY, coordZ`` (mm); ``seriesuid`` may be left
out when the scans are a single series. Every seriesuid and coordinate is checked before the slow
work (scan file headers are read first; a DICOM series as it is read); each scan is then read once,
its patches extracted with the training :class:`~lungexp.data.patches.extraction.PatchExtractor` and scored in
batches. No labels, MLflow or training config are involved: the checkpoint carries the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from lungexp.data.labels.annotations import read_points
from lungexp.data.labels.covariates import covariate_values
from lungexp.data.names import COORD_COLUMNS, POINT_COLUMNS, ROW_NAME_COLUMN
from lungexp.data.patches.extraction import PatchExtractor
from lungexp.data.scans import ScanHeader
from lungexp.data.scans.scan import Scan
from lungexp.evaluation.head_report import is_one_logit, with_predicted_classes
from lungexp.evaluation.types import EvaluationOptions
from lungexp.inference.ensemble import Ensemble, load_members
from lungexp.inference.model import Predictor, inference_device
from lungexp.inference.scans import ScanSource
from lungexp.metrics.calibration import check_calibration
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.atomic import atomic_file, check_output_file, disk_full_named
from lungexp.utils.errors import ConfigError, LungexpError, check_int

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = [*POINT_COLUMNS, "probability"]
_SHOWN = 5  # rows listed in an error


class PredictionError(LungexpError):
    """Candidates that cannot be scored: unknown seriesuid, outside their scan, no way to tell their scan."""


def read_candidates(path: str | Path, scans: ScanSource | None) -> pd.DataFrame:
    """The candidates CSV, with ``seriesuid`` filled in for a single-series source when the column is absent
    (``scans`` None, for a model that reads no image: as the file has it).

    Raises :class:`PredictionError` for a missing file or a seriesuid that names none of the scans.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"candidates={path}: file not found")
    if scans is None:
        return read_points(path)
    try:
        has_uid = "seriesuid" in pd.read_csv(path, nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        has_uid = True  # read_points names the problem
    if not has_uid and len(scans.seriesuids) != 1:
        raise PredictionError(f"{path} has no seriesuid column, but the scans hold {len(scans.seriesuids)} series; "
                              "add a seriesuid column naming each candidate's scan")
    points = read_points(path, with_seriesuid=has_uid)
    if not has_uid:
        points.insert(0, "seriesuid", scans.seriesuids[0])
    check_known_series(points, scans, path)
    return points


def check_known_series(points: pd.DataFrame, scans: ScanSource, path: str | Path) -> None:
    """Raise :class:`PredictionError` naming the seriesuids of ``points`` that none of the scans has, and their
    rows (see :func:`row_names`)."""
    unknown = ~points["seriesuid"].isin(scans.seriesuids)
    if unknown.any():
        uids = list(dict.fromkeys(points.loc[unknown, "seriesuid"]))
        shown = points[unknown.to_numpy()].head(_SHOWN)
        rows = ("; ".join(row_names(shown)) if ROW_NAME_COLUMN in points
                else f"row(s) {', '.join(str(index + 2) for index in shown.index)}")
        known = ", ".join(scans.seriesuids[:3]) + (" ..." if len(scans.seriesuids) > 3 else "")
        raise PredictionError(f"{path}: unknown seriesuid {', '.join(uids[:3])}"
                              f"{f' and {len(uids) - 3} more' if len(uids) > 3 else ''} ({rows}); the scans are {known}")


def row_names(points: pd.DataFrame) -> list[str]:
    """How messages name the rows of ``points`` in their file: the ``row_name`` column where there is one (a
    detector's JSON names its entries and boxes), else spreadsheet rows (index + 2: the header is row 1)."""
    if ROW_NAME_COLUMN in points:
        return points[ROW_NAME_COLUMN].astype(str).tolist()
    return [f"row {index + 2}" for index in points.index]


def load_predictor(cfg: DictConfig) -> Ensemble:
    """The model of a ``predict`` config: ``ckpt_path`` (one or a list), ``cv_run`` or a registered ``model_uri``."""
    if cfg.model_uri is None:
        members = load_members(cfg.ckpt_path, cfg.cv_run, cfg.tracking_uri, device=cfg.device, precision=cfg.precision)
        ensemble = Ensemble(members, tta=cfg.tta or EvaluationOptions.from_config(members[0].evaluation).tta)
        ensemble.calibrate(cfg.calibration)
        return ensemble
    if (cfg.ckpt_path is not None or cfg.cv_run is not None or cfg.tta is not None or cfg.precision is not None
            or cfg.calibration != "none"):
        raise ConfigError(f"model_uri={cfg.model_uri} carries its checkpoints, TTA, calibration and precision; drop "
                          "ckpt_path, cv_run, tta, calibration and precision")
    from lungexp.inference.registered import load_registered  # imports MLflow's pyfunc machinery

    return load_registered(cfg.model_uri, cfg.tracking_uri, device=cfg.device)


def predict_candidates(predictor: Predictor | Ensemble, scans: ScanSource | None, candidates: pd.DataFrame,
                       source: str | Path = "candidates", batch_size: int = 64) -> pd.DataFrame:
    """``seriesuid, coordX, coordY, coordZ, probability`` for every candidate, in input order; for a model of another
    target, each head's probability columns (``probability_<class>``, ``probability_ge<k>``) and the predicted class
    index of each multiclass or ordinal head (``prediction``: the class map's order, an ordinal level − 1) instead.

    A model with covariates reads them from the candidates' columns of the same names, checked before any scan; a
    model that reads no image (``model=tabular``) only them, and no scan is read (``scans`` may be None).
    """
    names = predictor.recipe.covariates
    covariates = covariate_values(candidates, names, source) if names else None
    if not predictor.recipe.images:
        return _scored(candidates, predictor.patch_probabilities(None, batch_size, covariates), predictor.recipe)
    if scans is None:
        raise ConfigError(f"{predictor.recipe.net['_target_']} reads the image: give the scans (scans=...)")
    groups = candidates.groupby("seriesuid", sort=False).indices
    headers = scans.headers(list(groups))
    for uid, header in headers.items():
        _check_inside(candidates.iloc[groups[uid]], header, source)
    columns = predictor.recipe.targets.probability_columns
    probabilities = np.full((len(candidates), len(columns)) if len(columns) > 1 else len(candidates), np.nan,
                            dtype=np.float32)
    for uid, scan in tqdm(scans.read(list(groups)), total=len(groups), desc="Scoring scans", unit="scan"):
        rows = groups[uid]
        if uid not in headers:
            _check_inside(candidates.iloc[rows], _header_of(scan), source)
        patches = PatchExtractor(scan, predictor.recipe.patch).extract_many(
            candidates.iloc[rows][COORD_COLUMNS].to_numpy(np.float64))
        probabilities[rows] = predictor.patch_probabilities(patches, batch_size,
                                                            None if covariates is None else covariates[rows])
    return _scored(candidates, probabilities, predictor.recipe)


def _scored(candidates: pd.DataFrame, probabilities: np.ndarray, recipe: ModelRecipe) -> pd.DataFrame:
    """The candidates' points with the model's probabilities: ``probability`` of one logit, else every head's columns
    and predicted classes (:func:`~lungexp.evaluation.head_report.with_predicted_classes`)."""
    target = recipe.targets
    points = candidates[POINT_COLUMNS].reset_index(drop=True)
    if is_one_logit(target):
        return points.assign(probability=probabilities)
    scores = np.asarray(probabilities).reshape(len(points), -1)
    return with_predicted_classes(points.assign(**dict(zip(target.probability_columns, scores.T, strict=True))),
                                  target)


def _header_of(scan: Scan) -> ScanHeader:
    assert scan.source is not None  # the scans here are read from their files
    return ScanHeader(size_xyz=scan.size_xyz, origin=scan.origin, spacing=scan.spacing, direction=scan.direction,
                      path=scan.source)


def _check_inside(points: pd.DataFrame, header: ScanHeader, source: str | Path) -> None:
    inside = np.atleast_1d(header.contains_world(points[COORD_COLUMNS].to_numpy(np.float64)))
    if inside.all():
        return
    low, high = header.world_extent()
    extent = ", ".join(f"{axis} [{lo:.1f}, {hi:.1f}]" for axis, lo, hi in zip("xyz", low, high, strict=True))
    outside, first = points[~inside], points[~inside].head(_SHOWN)
    shown = "; ".join(f"{name} at ({', '.join(f'{value:.1f}' for value in point)}) mm"
                      for name, point in zip(row_names(first), first[COORD_COLUMNS].to_numpy(), strict=True))
    more = f" and {len(outside) - _SHOWN} more" if len(outside) > _SHOWN else ""
    raise PredictionError(f"{source}: {len(outside)} candidate(s) of {points['seriesuid'].iloc[0]} lie outside "
                          f"its scan {header.path} (which spans {extent} mm): {shown}{more}. Coordinates must be "
                          "world mm (x, y, z) in the scan's frame, not voxel indices")


def scans_needed(cfg: DictConfig, images: bool) -> str | None:
    """``scans``, which a model that reads the image needs (and ``detections=``); None where nothing reads them
    (``model=tabular``: its ``scans=`` is left unread, as one line says)."""
    if images or cfg.detections is not None:
        if cfg.scans is None:
            raise ConfigError("scans=...: give the scans to score on: a .mhd/.nii/.nii.gz/.nrrd file, a folder of "
                              "them (e.g. a LUNA16 folder) or a DICOM folder")
        return str(cfg.scans)
    if cfg.scans is not None:
        log.info("scans=%s is not read: the model reads no image (model=tabular), only the candidates' covariates",
                 cfg.scans)
    return None


def check_predict_options(cfg: DictConfig) -> None:
    """The options of a ``predict`` config that need no model or scan, checked before any slow work, each named by
    its own key: ``batch_size``, ``device``, ``calibration`` and ``out`` (see
    :func:`~lungexp.utils.atomic.check_output_file`: never one of the inputs)."""
    check_int("batch_size", cfg.batch_size, minimum=1)
    inference_device(cfg.device)
    check_calibration(cfg.calibration, key="calibration")
    checkpoints = [] if cfg.ckpt_path is None else [cfg.ckpt_path] if isinstance(cfg.ckpt_path, str) else cfg.ckpt_path
    inputs = [("candidates", cfg.candidates), ("detections", cfg.detections), ("scans", cfg.scans),
              *(("ckpt_path", path) for path in checkpoints)]
    check_output_file("out", cfg.out, inputs)


def write_submission(table: pd.DataFrame, out: str | Path) -> Path:
    """Write the table as CSV atomically (a temporary file renamed into place): a full disk leaves ``out`` as it
    was and is one :class:`~lungexp.utils.atomic.DiskFullError` naming it."""
    with disk_full_named(Path(out).parent, "free some space there, or give another out=", name=out), \
            atomic_file(out) as temporary:
        table.to_csv(temporary, index=False)
    return Path(out)
