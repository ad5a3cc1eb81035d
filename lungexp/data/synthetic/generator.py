"""The generator: every scan from its own seed stream, the three LUNA16 CSVs, atomic placement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungexp.data.names import ANNOTATION_COLUMNS, CANDIDATE_COLUMNS, DEMO_RATING_COLUMNS, MALIGNANCY_COLUMNS
from lungexp.data.scans.metaimage import write_mhd
from lungexp.data.synthetic.acquisition import series_uid, simulate_acquisition
from lungexp.data.synthetic.anatomy import build_anatomy, lung_clearance_mm
from lungexp.data.synthetic.candidates import place_false_positives, scan_candidate_rows
from lungexp.data.synthetic.geometry import sample_geometry
from lungexp.data.synthetic.manifest import (
    ANNOTATIONS_NAME,
    CANDIDATES_NAME,
    MALIGNANCY_NAME,
    GeneratorParams,
    SyntheticDataset,
    existing_dataset,
    write_manifest,
)
from lungexp.data.synthetic.nodules import (
    malignancy_labels,
    malignancy_row,
    place_nodules,
    reader_ratings,
    render_nodule,
)
from lungexp.data.synthetic.vessels import UNENHANCED_BLOOD_HU, grow_vessels, render_vessels
from lungexp.utils.atomic import publish_folder, staging_folder

LUNA_FLOAT_FORMAT = "%.10g"  # annotations.csv carries ~10 significant digits
# The spawn key's second entry of each scan's stream of rating draws, apart from its stream of the scan (key
# (index,)), so that adding ratings left every scan, label and candidate as it was.
RATINGS_STREAM = 1


def generate_luna16_dataset(
    root: str | Path,
    num_scans: int = 20,
    num_subsets: int = 5,
    shape_zyx: tuple[int, int, int] = (80, 160, 160),
    nodules_per_scan: tuple[int, int] = (2, 4),
    negatives_per_scan: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write (or reuse) a synthetic LUNA16-format dataset at ``root``.

    The dataset is built in a hidden folder beside ``root`` and renamed into place at the end, so an
    interrupted run never leaves a half-written dataset at ``root``. A complete dataset is marked by
    ``root/.synthetic.json``; if it was made with the same parameters it is returned as is, otherwise a
    ``ValueError`` asks for the folder to be deleted or for ``overwrite=True``. Same seed, same bytes.
    Sequences may be any sequence (Hydra passes lists); ``nodules_per_scan`` is an inclusive range.
    """
    params = GeneratorParams.from_arguments(
        num_scans, num_subsets, shape_zyx, nodules_per_scan, negatives_per_scan, seed
    )
    root = Path(root)
    existing = None if overwrite else existing_dataset(root, params)
    if existing is not None:
        return existing
    with staging_folder(root) as staging:
        _write_dataset(staging, params)
        # False when another process (e.g. a second DDP rank) published the same dataset first: use theirs.
        publish_folder(staging, root, replace_existing=overwrite)
    published = existing_dataset(root, params)
    assert published is not None, f"{root}: no dataset right after publishing it"
    return published


def _write_dataset(directory: Path, params: GeneratorParams) -> None:
    """Write every scan, the three CSVs and, last, the manifest that marks the dataset complete."""
    manifest_scans: list[dict] = []
    malignancy_rows: list[dict] = []
    candidate_rows: list[dict] = []
    for index in range(params.num_scans):
        scan = _generate_scan(params, index, directory, first_nodule=len(malignancy_rows))
        manifest_scans.append(scan.manifest_entry)
        malignancy_rows += scan.malignancy_rows
        candidate_rows += scan.candidate_rows
    _write_tables(directory, malignancy_rows, candidate_rows)
    write_manifest(directory, params, manifest_scans)


def _write_tables(directory: Path, malignancy_rows: list[dict], candidate_rows: list[dict]) -> None:
    """LUNA16 lists rows grouped by series UID; candidates keep 2 decimals, annotations ~10 digits."""
    malignancy = pd.DataFrame(malignancy_rows, columns=[*MALIGNANCY_COLUMNS, *DEMO_RATING_COLUMNS])
    malignancy = malignancy.sort_values("seriesuid", kind="stable")
    csv_options = {"index": False, "lineterminator": "\n"}
    malignancy.to_csv(directory / MALIGNANCY_NAME, float_format=LUNA_FLOAT_FORMAT, **csv_options)
    malignancy[ANNOTATION_COLUMNS].to_csv(
        directory / ANNOTATIONS_NAME, float_format=LUNA_FLOAT_FORMAT, **csv_options
    )
    candidates = pd.DataFrame(candidate_rows, columns=CANDIDATE_COLUMNS)
    candidates = candidates.sort_values("seriesuid", kind="stable").round(2)
    candidates.to_csv(directory / CANDIDATES_NAME, **csv_options)


@dataclass(frozen=True)
class _ScanOutput:
    manifest_entry: dict
    malignancy_rows: list[dict]
    candidate_rows: list[dict]


def _generate_scan(params: GeneratorParams, index: int, directory: Path, first_nodule: int) -> _ScanOutput:
    """Build scan ``index`` from its own seed stream (independent of ``num_scans``) and write it;
    ``first_nodule`` is the dataset-wide number of its first nodule, which fixes the nodules' labels. The
    readers' ratings of its nodules come from a stream of their own (:data:`RATINGS_STREAM`)."""
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(index,)))
    ratings_rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(index, RATINGS_STREAM)))
    seriesuid = series_uid(rng)
    geometry = sample_geometry(rng, params.shape_zyx)
    anatomy = build_anatomy(rng, geometry)
    segments = grow_vessels(rng, anatomy, geometry)
    occupancy = render_vessels(segments, geometry)
    unenhanced_blood_hu = rng.uniform(*UNENHANCED_BLOOD_HU)
    anatomy.hu += occupancy * (unenhanced_blood_hu - anatomy.hu)
    clearance_mm = lung_clearance_mm(anatomy.lung, geometry.spacing_zyx)
    nodule_count = int(rng.integers(params.nodules_per_scan[0], params.nodules_per_scan[1] + 1))
    labels = malignancy_labels(params.seed, first_nodule, nodule_count)
    nodules = place_nodules(rng, labels, anatomy.lung, clearance_mm, geometry)
    bboxes = [render_nodule(anatomy.hu, nodule, geometry) for nodule in nodules]
    negatives = place_false_positives(
        rng, params.negatives_per_scan, segments, occupancy, anatomy, clearance_mm, nodules, geometry
    )
    image = simulate_acquisition(rng, anatomy.hu)

    subset = index % params.num_subsets
    (directory / f"subset{subset}").mkdir(exist_ok=True)
    write_mhd(geometry.scan(image), directory / f"subset{subset}" / f"{seriesuid}.mhd")
    return _ScanOutput(
        manifest_entry={
            "seriesuid": seriesuid,
            "subset": subset,
            "shape_zyx": list(geometry.shape_zyx),
            "spacing_xyz": [float(s) for s in geometry.spacing_zyx[::-1]],
            "origin_xyz": [float(o) for o in geometry.origin_xyz],
        },
        malignancy_rows=[
            {**malignancy_row(seriesuid, nodule, bbox, geometry), **reader_ratings(ratings_rng, nodule)}
            for nodule, bbox in zip(nodules, bboxes, strict=True)
        ],
        candidate_rows=scan_candidate_rows(rng, seriesuid, nodules, negatives, geometry),
    )
