"""Synthetic chest CT written in the LUNA16 on-disk layout.

Why this exists: the real LUNA16 release (~120 GB) cannot live in CI or on a laptop, yet every stage of
the pipeline (MetaImage reading, world/voxel conversion, patch extraction, training, evaluation against
``candidates_V2.csv``) should run end to end on a fresh machine, offline. The generator therefore copies
the *format* of LUNA16 exactly (``subset*/<seriesuid>.mhd/.raw``, CSV names, columns and coordinate
conventions) and imitates the *content* closely enough that a model has to learn something real: a
chest with lungs and branching vessels, nodules of varied size, shape and density, and negative
candidates that mostly sit on vessels and pleura, like the real candidate detector's false positives.

Coordinate conventions (the source of most LUNA16 bugs):

* numpy arrays from SimpleITK are indexed ``(z, y, x)``;
* world coordinates are millimetres in ``(x, y, z)`` order, ``world = origin + spacing * index`` with
  ``index`` in ``(x, y, z)`` order (identity direction, as in LUNA16).

Internally, positions are millimetre *offsets* from the first voxel in ``(z, y, x)`` order
(``offset = index_zyx * spacing_zyx``), so they index arrays directly; they become world ``(x, y, z)``
only when CSV rows are written (:func:`_offset_to_world`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

__all__ = [
    "ANNOTATION_COLUMNS",
    "CANDIDATE_COLUMNS",
    "MALIGNANCY_COLUMNS",
    "MANIFEST_NAME",
    "UID_PREFIX",
    "SyntheticDataset",
    "generate_luna16_dataset",
]

# Bump whenever the same parameters would produce different files, so stale datasets are detected.
GENERATOR_VERSION = 1
MANIFEST_NAME = ".synthetic.json"
UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # the LIDC-IDRI root shared by every LUNA16 series UID
ANNOTATIONS_NAME = "annotations.csv"
CANDIDATES_NAME = "candidates_V2.csv"
MALIGNANCY_NAME = "annotations_with_malignancy.csv"
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
MALIGNANCY_COLUMNS = (
    *ANNOTATION_COLUMNS,
    "mal_bool",
    "mal_details",
    "bboxLowX",
    "bboxLowY",
    "bboxLowZ",
    "bboxHighX",
    "bboxHighY",
    "bboxHighZ",
    "len_mal_details",
)
LUNA_FLOAT_FORMAT = "%.10g"  # annotations.csv carries ~10 significant digits
SLICE_SPACINGS_MM = (1.25, 1.5, 2.0, 2.5)

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -870.0
HU_FLOOR = -1024  # scanners clip reconstructed air here
MIN_SHAPE_ZYX = (16, 48, 48)  # below this the lungs cannot hold a vessel tree and a 3 mm nodule

MIN_NODULE_DIAMETER_MM = 3.0  # LUNA16 annotates nodules of 3 mm and more
MAX_NODULE_DIAMETER_MM = 30.0
MALIGNANT_FRACTION = 0.4
GOLDEN_RATIO_FRACTION = (np.sqrt(5.0) - 1.0) / 2.0  # steps that spread evenly over [0, 1)
# Share of nodules that look like the other class, so that malignancy is learnable but not trivial.
MISLEADING_LOOK_FRACTION = 0.15
NEGATIVE_EXCLUSION_MARGIN_MM = 3.0
MIN_VESSEL_RADIUS_MM = 0.5
MIN_CANDIDATE_VESSEL_RADIUS_MM = 1.0  # thinner vessels fade into partial volume and would not fool a detector
# Where negatives come from: vessels (bifurcations and segments), pleura/chest wall, plain parenchyma.
NEGATIVE_SHARES = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a generated dataset; file names and CSV columns are those of the LUNA16 release."""

    root: Path
    series_uids: tuple[str, ...]
    annotations_csv: Path
    candidates_csv: Path
    malignancy_csv: Path

    def mhd_path(self, seriesuid: str) -> Path:
        """Find a scan as LUNA16 readers do: by series UID across the ``subset*`` folders."""
        matches = sorted(self.root.glob(f"subset*/{seriesuid}.mhd"))
        if not matches:
            raise FileNotFoundError(f"no scan {seriesuid} under {self.root}")
        return matches[0]


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
    params = _Params.from_arguments(
        num_scans, num_subsets, shape_zyx, nodules_per_scan, negatives_per_scan, seed
    )
    root = Path(root)
    existing = None if overwrite else _existing_dataset(root, params)
    if existing is not None:
        return existing
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(staging, params)
        try:
            _move_into_place(staging, root, replace_existing=overwrite)
        except OSError:
            # Another process (e.g. a second DDP rank) finished the same dataset first: use theirs.
            concurrent = _existing_dataset(root, params)
            if concurrent is None:
                raise
            return concurrent
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _dataset_from_manifest(root, json.loads((root / MANIFEST_NAME).read_text()))


# --------------------------------------------------------------------------------------------------
# Parameters, manifest and atomic placement


@dataclass(frozen=True)
class _Params:
    """Everything that determines the dataset's bytes; kept in the manifest to recognise a dataset."""

    num_scans: int
    num_subsets: int
    shape_zyx: tuple[int, int, int]
    nodules_per_scan: tuple[int, int]
    negatives_per_scan: int
    seed: int

    @classmethod
    def from_arguments(
        cls,
        num_scans: int,
        num_subsets: int,
        shape_zyx: Sequence[int],
        nodules_per_scan: Sequence[int],
        negatives_per_scan: int,
        seed: int,
    ) -> _Params:
        """Normalise (lists from Hydra become tuples of int) and reject values that cannot work."""
        shape = tuple(int(n) for n in shape_zyx)
        nodule_range = tuple(int(n) for n in nodules_per_scan)
        if len(shape) != 3 or any(n < m for n, m in zip(shape, MIN_SHAPE_ZYX, strict=True)):
            raise ValueError(f"shape_zyx must be 3 sizes of at least {MIN_SHAPE_ZYX}, got {shape}")
        if len(nodule_range) != 2 or not 0 <= nodule_range[0] <= nodule_range[1]:
            raise ValueError(f"nodules_per_scan must be an inclusive range (low, high), got {nodule_range}")
        if int(num_scans) < 1 or int(num_subsets) < 1 or int(negatives_per_scan) < 0 or int(seed) < 0:
            raise ValueError("num_scans and num_subsets must be >= 1, negatives_per_scan and seed >= 0")
        return cls(int(num_scans), int(num_subsets), shape, nodule_range, int(negatives_per_scan), int(seed))

    def as_json(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "num_scans": self.num_scans,
            "num_subsets": self.num_subsets,
            "shape_zyx": list(self.shape_zyx),
            "nodules_per_scan": list(self.nodules_per_scan),
            "negatives_per_scan": self.negatives_per_scan,
            "seed": self.seed,
        }


def _existing_dataset(root: Path, params: _Params) -> SyntheticDataset | None:
    """Return the complete dataset at ``root`` if it matches ``params``; None if there is nothing there."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileExistsError(
            f"{root} exists but holds no complete synthetic dataset ({MANIFEST_NAME} is missing); "
            "delete it or pass overwrite=True"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest["params"] != params.as_json():
        raise ValueError(
            f"{root} holds a synthetic dataset made with different parameters:\n"
            f"  on disk:   {manifest['params']}\n  requested: {params.as_json()}\n"
            "delete the folder or pass overwrite=True to regenerate it"
        )
    return _dataset_from_manifest(root, manifest)


def _dataset_from_manifest(root: Path, manifest: dict) -> SyntheticDataset:
    return SyntheticDataset(
        root=root,
        series_uids=tuple(scan["seriesuid"] for scan in manifest["scans"]),
        annotations_csv=root / ANNOTATIONS_NAME,
        candidates_csv=root / CANDIDATES_NAME,
        malignancy_csv=root / MALIGNANCY_NAME,
    )


def _move_into_place(staging: Path, root: Path, replace_existing: bool) -> None:
    """Rename the finished dataset to ``root``; an old one is moved aside first and deleted after."""
    if replace_existing and root.exists():
        graveyard = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, graveyard / root.name)
        os.replace(staging, root)
        shutil.rmtree(graveyard, ignore_errors=True)
    else:
        os.replace(staging, root)  # POSIX: replaces an empty folder, fails on a non-empty one


def _write_dataset(directory: Path, params: _Params) -> None:
    """Write every scan, the three CSVs and, last, the manifest that marks the dataset complete."""
    manifest_scans, malignancy_rows, candidate_rows = [], [], []
    for index in range(params.num_scans):
        scan = _generate_scan(params, index, directory, first_nodule=len(malignancy_rows))
        manifest_scans.append(scan.manifest_entry)
        malignancy_rows += scan.malignancy_rows
        candidate_rows += scan.candidate_rows
    _write_tables(directory, malignancy_rows, candidate_rows)
    manifest = {"generator": "lungexp.data.synthetic", "params": params.as_json(), "scans": manifest_scans}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _write_tables(directory: Path, malignancy_rows: list[dict], candidate_rows: list[dict]) -> None:
    """LUNA16 lists rows grouped by series UID; candidates keep 2 decimals, annotations ~10 digits."""
    malignancy = pd.DataFrame(malignancy_rows, columns=list(MALIGNANCY_COLUMNS))
    malignancy = malignancy.sort_values("seriesuid", kind="stable")
    csv_options = {"index": False, "lineterminator": "\n"}
    malignancy.to_csv(directory / MALIGNANCY_NAME, float_format=LUNA_FLOAT_FORMAT, **csv_options)
    malignancy[list(ANNOTATION_COLUMNS)].to_csv(
        directory / ANNOTATIONS_NAME, float_format=LUNA_FLOAT_FORMAT, **csv_options
    )
    candidates = pd.DataFrame(candidate_rows, columns=list(CANDIDATE_COLUMNS))
    candidates = candidates.sort_values("seriesuid", kind="stable").round(2)
    candidates.to_csv(directory / CANDIDATES_NAME, **csv_options)


# --------------------------------------------------------------------------------------------------
# One scan


@dataclass(frozen=True)
class _Geometry:
    shape_zyx: tuple[int, int, int]
    spacing_zyx: np.ndarray  # mm, (z, y, x)
    origin_xyz: np.ndarray  # world mm of voxel (0, 0, 0), (x, y, z)

    @property
    def in_plane_spacing(self) -> float:
        return float(self.spacing_zyx[2])


@dataclass(frozen=True)
class _ScanOutput:
    manifest_entry: dict
    malignancy_rows: list[dict]
    candidate_rows: list[dict]


def _offset_to_world(offsets_zyx: np.ndarray, origin_xyz: np.ndarray) -> np.ndarray:
    """The only place (z, y, x) offsets become (x, y, z) world coordinates."""
    return origin_xyz + np.asarray(offsets_zyx, dtype=np.float64)[..., ::-1]


def _generate_scan(params: _Params, index: int, directory: Path, first_nodule: int) -> _ScanOutput:
    """Build scan ``index`` from its own seed stream (independent of ``num_scans``) and write it;
    ``first_nodule`` is the dataset-wide number of its first nodule, which fixes the nodules' labels."""
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(index,)))
    seriesuid = _series_uid(rng)
    geometry = _sample_geometry(rng, params.shape_zyx)
    anatomy = _build_anatomy(rng, geometry)
    segments = _grow_vessels(rng, anatomy, geometry)
    occupancy = _render_vessels(segments, geometry)
    unenhanced_blood_hu = rng.uniform(25.0, 55.0)
    anatomy.hu += occupancy * (unenhanced_blood_hu - anatomy.hu)
    clearance_mm = _clearance_mm(anatomy.lung, geometry.spacing_zyx)
    nodule_count = int(rng.integers(params.nodules_per_scan[0], params.nodules_per_scan[1] + 1))
    labels = _malignancy_labels(params.seed, first_nodule, nodule_count)
    nodules = _place_nodules(rng, labels, anatomy.lung, clearance_mm, geometry)
    bboxes = [_render_nodule(anatomy.hu, nodule, geometry) for nodule in nodules]
    negatives = _sample_negatives(
        rng, params.negatives_per_scan, segments, occupancy, anatomy, clearance_mm, nodules, geometry
    )
    image = _simulate_acquisition(rng, anatomy.hu)

    subset = index % params.num_subsets
    (directory / f"subset{subset}").mkdir(exist_ok=True)
    _write_scan(image, geometry, directory / f"subset{subset}" / f"{seriesuid}.mhd")
    return _ScanOutput(
        manifest_entry={
            "seriesuid": seriesuid,
            "subset": subset,
            "shape_zyx": list(geometry.shape_zyx),
            "spacing_xyz": [float(s) for s in geometry.spacing_zyx[::-1]],
            "origin_xyz": [float(o) for o in geometry.origin_xyz],
        },
        malignancy_rows=[
            _malignancy_row(seriesuid, nodule, bbox, geometry)
            for nodule, bbox in zip(nodules, bboxes, strict=True)
        ],
        candidate_rows=_candidate_rows(rng, seriesuid, nodules, negatives, geometry),
    )


def _clearance_mm(lung: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Distance (mm) from each lung voxel to the nearest non-lung voxel; computed on the lungs' bounding
    box (plus a background margin), which is several times cheaper than on the whole volume."""
    occupied = np.argwhere(lung)
    low = np.maximum(occupied.min(axis=0) - 1, 0)
    high = occupied.max(axis=0) + 2
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    clearance = np.zeros(lung.shape, dtype=np.float32)
    clearance[box] = ndimage.distance_transform_edt(np.pad(lung[box], 1), sampling=spacing_zyx)[
        1:-1, 1:-1, 1:-1
    ]
    return clearance


def _series_uid(rng: np.random.Generator) -> str:
    """A 64-character DICOM-style UID; the suffix has no leading zero, as DICOM requires."""
    digits = [int(rng.integers(1, 10)), *rng.integers(0, 10, size=29).tolist()]
    return UID_PREFIX + "".join(str(d) for d in digits)


def _sample_geometry(rng: np.random.Generator, shape_zyx: tuple[int, int, int]) -> _Geometry:
    """Scanner-like geometry: in-plane spacing = FOV/512 (exact binary fractions such as 0.703125 mm),
    a standard slice spacing, and origins in the range real LUNA16 scans report."""
    in_plane = round(rng.uniform(0.6, 0.9) * 512) / 512
    slice_spacing = float(rng.choice(SLICE_SPACINGS_MM))
    origin_xy = np.round(rng.uniform(-170.0, -120.0, size=2), 2)
    origin_z = round(float(rng.uniform(-300.0, -100.0)), 2)
    return _Geometry(
        shape_zyx=shape_zyx,
        spacing_zyx=np.array([slice_spacing, in_plane, in_plane]),
        origin_xyz=np.array([origin_xy[0], origin_xy[1], origin_z]),
    )


def _write_scan(image: np.ndarray, geometry: _Geometry, path: Path) -> None:
    """MetaImage ``.mhd`` + uncompressed ``.raw``, int16 HU, identity direction, as in LUNA16."""
    itk_image = sitk.GetImageFromArray(image)
    itk_image.SetSpacing([float(s) for s in geometry.spacing_zyx[::-1]])
    itk_image.SetOrigin([float(o) for o in geometry.origin_xyz])
    itk_image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(itk_image, str(path), useCompression=False)


def _simulate_acquisition(rng: np.random.Generator, hu: np.ndarray) -> np.ndarray:
    """Quantum noise filtered by an in-plane reconstruction kernel, then int16 like a real scanner.

    Only x/y are blurred: along z the slice profile, not the kernel, sets resolution. The white noise
    is scaled by the kernel's exact noise gain so the output noise σ is 10-25 HU.
    """
    noise_sd = rng.uniform(10.0, 25.0)
    kernel_sigma = rng.uniform(0.5, 0.8)
    impulse = np.zeros(33)
    impulse[16] = 1.0
    noise_gain = float(np.sum(ndimage.gaussian_filter1d(impulse, kernel_sigma) ** 2))  # 2-D separable
    noisy = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd / noise_gain)
    image = ndimage.gaussian_filter(noisy, sigma=(0.0, kernel_sigma, kernel_sigma), mode="nearest")
    return np.clip(np.rint(image), HU_FLOOR, np.iinfo(np.int16).max).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Anatomy: body wall, ribs, spine, mediastinum, lungs. Shapes are fractions of the array size so that
# small test volumes still look like a chest; vessels and nodules are drawn in millimetres.


@dataclass(frozen=True)
class _Torso:
    """Broadcastable coordinates (voxels; t = 0 at the lung base, 1 at the apex) and body outline."""

    t: np.ndarray  # (nz, 1, 1)
    z_mm: np.ndarray  # (nz, 1, 1)
    y: np.ndarray  # (1, ny, 1)
    x: np.ndarray  # (1, 1, nx)
    centre_x: float
    centre_y: float
    cavity_x: np.ndarray  # semi-axes of the thoracic cavity inside the chest wall, per slice
    cavity_y: np.ndarray
    muscle: float  # chest-wall muscle thickness (voxels), where the ribs sit


@dataclass
class _Anatomy:
    hu: np.ndarray  # float32 (z, y, x), drawn into by vessels and nodules
    body: np.ndarray
    lung: np.ndarray
    midline_x: float  # column separating the right lung (smaller x: LPS world) from the left


def _ellipse(
    torso: _Torso,
    centre_x: float | np.ndarray,
    centre_y: float | np.ndarray,
    half_x: float | np.ndarray,
    half_y: float | np.ndarray,
) -> np.ndarray:
    """Axial ellipse mask; per-slice parameters of shape (nz, 1, 1) make it vary along z."""
    return ((torso.x - centre_x) / half_x) ** 2 + ((torso.y - centre_y) / half_y) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Unit-variance low-frequency noise: a coarse random grid upsampled linearly (cheap and smooth)."""
    coarse_shape = (max(2, shape[0] // 8), max(2, shape[1] // 12), max(2, shape[2] // 12))
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.zoom(coarse, np.divide(shape, coarse_shape), order=1, mode="nearest")
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _build_anatomy(rng: np.random.Generator, geometry: _Geometry) -> _Anatomy:
    """Air, skin, subcutaneous fat, chest-wall muscle with ribs, spine, mediastinum and two lungs."""
    nz, ny, nx = geometry.shape_zyx
    t = np.linspace(0.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    widest_mid_chest = 1.0 + 0.04 * np.sin(np.pi * t)
    body_x = nx * rng.uniform(0.40, 0.46) * widest_mid_chest
    body_y = ny * rng.uniform(0.30, 0.36) * widest_mid_chest
    typical_half_width = 0.43 * nx  # wall layers are fractions of it, so they scale with the array
    skin = 0.02 * typical_half_width
    fat = rng.uniform(0.05, 0.11) * typical_half_width
    muscle = rng.uniform(0.06, 0.10) * typical_half_width
    torso = _Torso(
        t=t,
        z_mm=t * (nz - 1) * geometry.spacing_zyx[0],
        y=y,
        x=x,
        centre_x=nx * rng.uniform(0.48, 0.52),
        centre_y=ny * rng.uniform(0.47, 0.53),
        cavity_x=body_x - skin - fat - muscle,
        cavity_y=body_y - skin - fat - muscle,
        muscle=muscle,
    )
    cx, cy = torso.centre_x, torso.centre_y
    body = _ellipse(torso, cx, cy, body_x, body_y)
    inside_fat = _ellipse(torso, cx, cy, body_x - skin - fat, body_y - skin - fat)
    hu = np.full(geometry.shape_zyx, AIR_HU, dtype=np.float32)
    hu[body] = 30.0  # skin
    hu[_ellipse(torso, cx, cy, body_x - skin, body_y - skin)] = FAT_HU + rng.uniform(-10.0, 15.0)
    hu[inside_fat] = 50.0  # chest-wall muscle
    hu[_ellipse(torso, cx, cy, torso.cavity_x, torso.cavity_y)] = SOFT_TISSUE_HU
    _add_ribs(rng, hu, torso)
    spine_keep_out = _add_spine(rng, hu, torso, inside_fat)
    mediastinum = _add_mediastinum(rng, hu, torso)
    trachea = (torso.t > rng.uniform(0.55, 0.7)) & _ellipse(
        torso, cx, cy + 0.3 * torso.cavity_y, 0.07 * torso.cavity_x, 0.07 * torso.cavity_x
    )
    lung = _lung_mask(rng, torso) & ~(spine_keep_out | mediastinum | trachea)
    parenchyma = LUNG_HU + 35.0 * (torso.y - cy) / torso.cavity_y + 12.0 * _smooth_noise(rng, hu.shape)
    hu[lung] = parenchyma[lung]  # posterior (larger y) is denser: the dependent-lung gradient
    hu[trachea] = AIR_HU
    return _Anatomy(hu=hu, body=body, lung=lung, midline_x=cx)


def _add_ribs(rng: np.random.Generator, hu: np.ndarray, torso: _Torso) -> None:
    """Oblique rib cross-sections in the chest wall: each rib appears in a band of slices."""
    period_mm = rng.uniform(18.0, 26.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    rib_hu = rng.uniform(450.0, 700.0)
    ring_x, ring_y = torso.cavity_x + 0.5 * torso.muscle, torso.cavity_y + 0.5 * torso.muscle
    radius = 0.4 * torso.muscle
    for angle in np.deg2rad(np.concatenate([np.linspace(110, 250, 6), np.linspace(-70, 70, 6)])):
        in_slice = np.sin(2.0 * np.pi * torso.z_mm / period_mm + phase + 1.5 * np.sin(angle)) > 0.1
        centre_x = torso.centre_x + ring_x * np.cos(angle)
        centre_y = torso.centre_y + ring_y * np.sin(angle)
        hu[in_slice & _ellipse(torso, centre_x, centre_y, radius, radius)] = rib_hu


def _add_spine(rng: np.random.Generator, hu: np.ndarray, torso: _Torso, inside_fat: np.ndarray) -> np.ndarray:
    """Vertebral body (cortex, cancellous bone, discs), canal and spinous process at the posterior midline.

    Returns the region the lungs must stay out of.
    """
    cx = torso.centre_x
    radius = 0.22 * torso.cavity_y
    body_y = torso.centre_y + torso.cavity_y - 0.5 * radius
    distance = np.sqrt((torso.x - cx) ** 2 + (torso.y - body_y) ** 2)
    vertebra = distance <= radius
    disc = (torso.z_mm + rng.uniform(0.0, 25.0)) % rng.uniform(20.0, 28.0) < 5.0
    hu[vertebra] = rng.uniform(220.0, 320.0)
    hu[vertebra & (distance >= 0.8 * radius)] = rng.uniform(650.0, 900.0)
    hu[vertebra & disc] = 80.0
    canal_radius = 0.45 * radius
    canal_y = body_y + radius + canal_radius
    canal_distance = np.sqrt((torso.x - cx) ** 2 + (torso.y - canal_y) ** 2)
    arch = (
        (canal_distance > canal_radius)
        & (canal_distance <= canal_radius + 0.3 * radius)
        & (torso.y >= canal_y)
    )
    spinous = _ellipse(torso, cx, canal_y + canal_radius + 0.8 * radius, 0.25 * radius, 0.8 * radius)
    hu[(arch | spinous) & inside_fat] = rng.uniform(500.0, 750.0)
    hu[(canal_distance <= canal_radius) & inside_fat] = 20.0  # cord and CSF
    return _ellipse(torso, cx, body_y + radius, 1.4 * radius, 2.2 * radius)


def _add_mediastinum(rng: np.random.Generator, hu: np.ndarray, torso: _Torso) -> np.ndarray:
    """Heart and great vessels between the lungs (widest low in the chest, bulging to the patient's left,
    i.e. larger x), with anterior mediastinal fat. Returns the mediastinum mask."""
    heart = np.exp(-(((torso.t - rng.uniform(0.25, 0.4)) / 0.22) ** 2))
    mediastinum = _ellipse(
        torso,
        torso.centre_x + 0.12 * torso.cavity_x * heart,
        torso.centre_y - 0.1 * torso.cavity_y,
        torso.cavity_x * (0.14 + 0.18 * heart),
        0.8 * torso.cavity_y,
    )
    anterior_fat = _ellipse(
        torso,
        torso.centre_x,
        torso.centre_y - 0.6 * torso.cavity_y,
        0.1 * torso.cavity_x,
        0.2 * torso.cavity_y,
    )
    hu[mediastinum & anterior_fat] = FAT_HU + 10.0
    return mediastinum


def _lung_mask(rng: np.random.Generator, torso: _Torso) -> np.ndarray:
    """Two rounded-rectangle lungs with wavy outlines, narrowing to the apex and sitting on domed
    hemidiaphragms (the right one higher, over the liver), kept inside the pleura."""
    boundary_noise = _smooth_noise(rng, (torso.t.shape[0], torso.y.shape[1], torso.x.shape[2]))
    apex_taper = np.clip((rng.uniform(0.92, 0.98) - torso.t) / 0.3, 0.0, 1.0) ** 0.6
    lungs = np.zeros(boundary_noise.shape, dtype=bool)
    for side in (-1.0, 1.0):  # -1: patient right (smaller x), +1: patient left
        half_x = 0.47 * torso.cavity_x * apex_taper + 1e-3
        half_y = 0.88 * torso.cavity_y * np.sqrt(apex_taper) + 1e-3
        level = (np.abs(torso.x - torso.centre_x - side * 0.5 * torso.cavity_x) / half_x) ** 2.6
        level = level + (np.abs(torso.y - torso.centre_y - 0.03 * torso.cavity_y) / half_y) ** 2.6
        level = level * (1.0 + 0.12 * boundary_noise)
        dome = rng.uniform(0.12, 0.22) * (1.25 if side < 0 else 1.0)
        lungs |= (level < 1.0) & (torso.t > rng.uniform(0.02, 0.06) + dome * (1.0 - level))
    pleura = max(1.0, 0.02 * float(torso.cavity_x.min()))
    return lungs & _ellipse(
        torso, torso.centre_x, torso.centre_y, torso.cavity_x - pleura, torso.cavity_y - pleura
    )


# --------------------------------------------------------------------------------------------------
# Vessels: one tree per pulmonary artery/vein trunk, grown from the hilum by binary branching.


@dataclass(frozen=True)
class _VesselSegment:
    start: np.ndarray  # offset mm (z, y, x)
    end: np.ndarray
    radius_start: float
    radius_end: float
    bifurcates: bool


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _grow_vessels(rng: np.random.Generator, anatomy: _Anatomy, geometry: _Geometry) -> list[_VesselSegment]:
    columns = np.arange(geometry.shape_zyx[2])[None, None, :]
    segments = []
    for side in (-1.0, 1.0):
        side_lung = anatomy.lung & (
            (columns < anatomy.midline_x) if side < 0 else (columns >= anatomy.midline_x)
        )
        segments += _grow_tree(rng, side_lung, side, geometry.spacing_zyx)
    return segments


def _hilum(lung: np.ndarray, side: float, spacing_zyx: np.ndarray) -> np.ndarray:
    """The medial lung voxel at mid-height, where the vessels enter (offset mm)."""
    nz = lung.shape[0]
    mid_height = np.exp(-((((np.arange(nz) / (nz - 1)) - 0.55) / 0.15) ** 2))
    slice_index = int(np.argmax(lung.sum(axis=(1, 2)) * mid_height))
    points = np.argwhere(lung[slice_index])
    medial_x = points[:, 1].max() if side < 0 else points[:, 1].min()
    target = np.array([points[:, 0].mean(), medial_x])
    nearest = points[np.argmin(((points - target) ** 2).sum(axis=1))]
    return np.array([slice_index, *nearest], dtype=np.float64) * spacing_zyx


def _grow_tree(
    rng: np.random.Generator, lung: np.ndarray, side: float, spacing_zyx: np.ndarray
) -> list[_VesselSegment]:
    """Branch until the radius drops below 0.5 mm or the vessel reaches the pleura.

    Segment length scales with the lung's extent along the branch direction, so trees fill lungs of
    any aspect ratio; children are ~0.77x thinner (Murray's law) and bend outward from the hilum.
    """
    voxels = np.argwhere(lung)
    half_extent = (voxels.max(axis=0) - voxels.min(axis=0) + 1) * spacing_zyx / 2.0
    hilum = _hilum(lung, side, spacing_zyx)
    trunks = (
        (1.0, -0.2, 0.3 * side),  # upper lobe
        (0.6, 0.4, 0.5 * side),
        (-1.0, 0.2, 0.3 * side),  # lower lobe
        (-0.6, 0.6, 0.4 * side),
        (0.1, -0.7, side),  # anterior / middle lobe
        (-0.1, 0.7, side),  # posterior
    )
    trunk_radius = min(3.0, 0.16 * float(half_extent[1:].min()))  # thinner trees in small lungs
    stack = [
        (hilum, _unit(np.array(d) + rng.normal(0.0, 0.15, 3)), trunk_radius * rng.uniform(0.75, 1.0), 0)
        for d in trunks
    ]
    segments = []
    while stack:
        start, direction, radius, generation = stack.pop()
        extent = 1.0 / np.sqrt(np.sum((direction / half_extent) ** 2))
        wanted = rng.uniform(0.2, 0.35) * extent * 0.88**generation
        length, reached_pleura = _length_inside(start, direction, wanted, lung, spacing_zyx)
        if length < 1.0:
            continue
        end = start + direction * length
        radius_end = radius * 0.93
        child_radii = radius_end * rng.uniform(0.75, 0.9, size=2)
        bifurcates = not reached_pleura and child_radii.min() >= MIN_VESSEL_RADIUS_MM
        segments.append(_VesselSegment(start, end, radius, radius_end, bifurcates))
        if bifurcates:
            for child_direction, child_radius in zip(
                _branch_directions(rng, direction, _unit(end - hilum)), child_radii, strict=True
            ):
                stack.append((end, child_direction, child_radius, generation + 1))
    return segments


def _length_inside(
    start: np.ndarray, direction: np.ndarray, length: float, lung: np.ndarray, spacing_zyx: np.ndarray
) -> tuple[float, bool]:
    """How far the vessel can run inside the lung (and whether it was stopped by the pleura)."""
    step = 0.5 * float(spacing_zyx.min())
    distances = np.arange(step, length + step, step)
    indices = np.rint((start + distances[:, None] * direction) / spacing_zyx).astype(int)
    in_volume = np.all((indices >= 0) & (indices < lung.shape), axis=1)
    inside = in_volume.copy()
    inside[in_volume] = lung[tuple(indices[in_volume].T)]
    if inside.all():
        return length, False
    return float(distances[np.argmin(inside)] - step), True


def _branch_directions(
    rng: np.random.Generator, direction: np.ndarray, outward: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two children rotated to opposite sides in a random plane, pulled outward from the hilum."""
    axis = _unit(np.cross(direction, rng.normal(size=3)))
    children = []
    for angle in (np.deg2rad(rng.uniform(15.0, 40.0)), -np.deg2rad(rng.uniform(20.0, 45.0))):
        rotated = direction * np.cos(angle) + np.cross(axis, direction) * np.sin(angle)
        children.append(_unit(rotated + 0.3 * outward))
    return children[0], children[1]


def _local_grid(
    low_mm: np.ndarray, high_mm: np.ndarray, geometry: _Geometry
) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The array region covering a mm box, with broadcastable voxel-centre offsets (mm) per axis."""
    shape = np.array(geometry.shape_zyx)
    low = np.clip(np.floor(low_mm / geometry.spacing_zyx).astype(int), 0, shape - 1)
    high = np.clip(np.ceil(high_mm / geometry.spacing_zyx).astype(int) + 1, low + 1, shape)
    region = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    axes = [np.arange(lo, hi) * s for lo, hi, s in zip(low, high, geometry.spacing_zyx, strict=True)]
    return region, (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])


def _capsule_fraction(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    start: np.ndarray,
    end: np.ndarray,
    radius_start: float,
    radius_end: float,
    edge_mm: float,
) -> np.ndarray:
    """Voxel fraction covered by a tapered capsule, with a one-voxel linear edge for partial volume."""
    relative = [axis - s for axis, s in zip(grid, start, strict=True)]
    direction = end - start
    along = sum(r * d for r, d in zip(relative, direction, strict=True)) / max(
        float(direction @ direction), 1e-12
    )
    along = np.clip(along, 0.0, 1.0)
    distance = np.sqrt(sum((r - along * d) ** 2 for r, d in zip(relative, direction, strict=True)))
    radius = radius_start + along * (radius_end - radius_start)
    return np.clip(0.5 + (radius - distance) / edge_mm, 0.0, 1.0)


def _render_vessels(segments: list[_VesselSegment], geometry: _Geometry) -> np.ndarray:
    """Vessel occupancy in [0, 1]; each capsule is drawn only in its own bounding box."""
    occupancy = np.zeros(geometry.shape_zyx, dtype=np.float32)
    edge = geometry.in_plane_spacing
    for segment in segments:
        reach = segment.radius_start + edge
        low = np.minimum(segment.start, segment.end) - reach
        high = np.maximum(segment.start, segment.end) + reach
        region, grid = _local_grid(low, high, geometry)
        fraction = _capsule_fraction(
            grid, segment.start, segment.end, segment.radius_start, segment.radius_end, edge
        )
        np.maximum(occupancy[region], fraction, out=occupancy[region])
    return occupancy


# --------------------------------------------------------------------------------------------------
# Nodules


@dataclass(frozen=True)
class _Appearance:
    kind: str  # "solid", "part_solid" or "calcified"
    solid_hu: float
    ground_glass_hu: float
    core_fraction: float  # solid-core size relative to the whole nodule (1 unless part-solid)
    axes: np.ndarray  # relative ellipsoid semi-axes, the largest is 1
    rotation: np.ndarray  # 3x3 orthonormal, nodule frame -> (z, y, x)
    lobulation: float  # relative amplitude of the surface modulation
    lobe_waves: np.ndarray  # (k, 3) spatial frequencies of the modulation on the unit sphere
    lobe_phases: np.ndarray  # (k,)
    lobe_weights: np.ndarray  # (k,), sum 1, so the modulation stays within [-1, 1]
    spicule_directions: np.ndarray  # (n, 3) unit vectors
    spicule_lengths: np.ndarray  # (n,) mm beyond the nominal radius


@dataclass(frozen=True)
class _Nodule:
    centre: np.ndarray  # offset mm (z, y, x)
    diameter_mm: float  # largest extent of the nodule body, ground-glass halo included
    malignant: bool
    ratings: tuple[int, ...]
    appearance: _Appearance


def _draw_diameter(rng: np.random.Generator, looks_malignant: bool) -> float:
    """Log-normal sizes: malignant-looking nodules are typically about twice as large."""
    median = 13.0 if looks_malignant else 6.0
    return float(np.clip(rng.lognormal(np.log(median), 0.45), MIN_NODULE_DIAMETER_MM, MAX_NODULE_DIAMETER_MM))


def _draw_ratings(rng: np.random.Generator, malignant: bool) -> tuple[int, ...]:
    """1-4 LIDC reader scores (1-5) whose mean is > 3 exactly when the nodule is malignant."""
    readers = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.2, 0.25, 0.4]))
    if malignant:
        ratings = rng.choice([3, 4, 5], size=readers, p=[0.25, 0.45, 0.3])
        if ratings.mean() <= 3:  # all readers said "indeterminate": make one lean malignant
            ratings[0] = 4
    else:
        ratings = rng.choice([1, 2, 3], size=readers, p=[0.3, 0.45, 0.25])
    return tuple(int(r) for r in ratings)


def _draw_appearance(rng: np.random.Generator, looks_malignant: bool, diameter_mm: float) -> _Appearance:
    """Malignant-looking: less dense, more often part-solid, lobulated, elongated and spiculated.
    Benign-looking: smooth, round, denser, sometimes calcified. Small nodules look round either way."""
    irregularity = min(1.0, diameter_mm / 10.0)
    can_be_part_solid = diameter_mm >= 8.0
    if looks_malignant:
        kind = "part_solid" if can_be_part_solid and rng.random() < 0.4 else "solid"
        solid_hu = rng.uniform(-10.0, 60.0)
        lobulation = rng.uniform(0.18, 0.4) * irregularity
        flattest_axis = 1.0 - 0.4 * irregularity
        spicule_count = int(rng.integers(3, 10)) if rng.random() < 0.6 else 0
    else:
        roll = rng.random()
        kind = "calcified" if roll < 0.2 else ("part_solid" if roll < 0.25 and can_be_part_solid else "solid")
        solid_hu = rng.uniform(200.0, 400.0) if kind == "calcified" else rng.uniform(30.0, 110.0)
        lobulation = rng.uniform(0.0, 0.08) * irregularity
        flattest_axis = 1.0 - 0.2 * irregularity
        spicule_count = 0
    axes = np.sort(rng.uniform(flattest_axis, 1.0, size=3))[::-1]
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    body_radius = diameter_mm / 2.0 / (1.0 + lobulation)
    core_fraction = max(rng.uniform(0.35, 0.6), min(1.0, 2.0 / body_radius)) if kind == "part_solid" else 1.0
    lobe_weights = rng.uniform(0.5, 1.0, size=4)
    return _Appearance(
        kind=kind,
        solid_hu=float(solid_hu),
        ground_glass_hu=float(rng.uniform(-600.0, -400.0)),
        core_fraction=float(core_fraction),
        axes=axes / axes[0],
        rotation=q * np.sign(np.diag(r)),
        lobulation=float(lobulation),
        lobe_waves=np.array([_unit(v) for v in rng.normal(size=(4, 3))]) * rng.uniform(2.0, 5.0, size=(4, 1)),
        lobe_phases=rng.uniform(0.0, 2.0 * np.pi, size=4),
        lobe_weights=lobe_weights / lobe_weights.sum(),
        spicule_directions=np.array([_unit(v) for v in rng.normal(size=(spicule_count, 3))]).reshape(-1, 3),
        spicule_lengths=np.minimum(rng.uniform(0.3, 0.8, size=spicule_count) * diameter_mm / 2.0, 8.0),
    )


def _malignancy_labels(seed: int, first: int, count: int) -> list[bool]:
    """Labels of nodules ``first .. first + count - 1`` of the dataset.

    A golden-ratio sequence from a seed-dependent start instead of coin flips: any run of consecutive
    nodules (a scan, a few scans, the dataset) is malignant in close to ``MALIGNANT_FRACTION`` of cases,
    so even a 10-scan dataset is balanced; which nodules are malignant still changes with the seed.
    """
    start = np.random.default_rng(seed).random()
    return [
        bool((start + n * GOLDEN_RATIO_FRACTION) % 1.0 < MALIGNANT_FRACTION)
        for n in range(first, first + count)
    ]


def _place_nodules(
    rng: np.random.Generator,
    labels: list[bool],
    lung: np.ndarray,
    clearance_mm: np.ndarray,
    geometry: _Geometry,
) -> list[_Nodule]:
    """Centres on lung voxels with room for the nodule, 3 mm apart; sizes shrink where lungs are small.

    The centre is jittered < 0.2 voxel from a voxel centre, so it always rounds to a voxel inside it.
    """
    voxels = np.argwhere(lung)
    sites = voxels * geometry.spacing_zyx
    site_clearance = clearance_mm[tuple(voxels.T)]
    nodules: list[_Nodule] = []
    for malignant in labels:
        looks_malignant = malignant != bool(rng.random() < MISLEADING_LOOK_FRACTION)
        diameter = _draw_diameter(rng, looks_malignant)
        allowed = _nodule_sites(diameter, sites, site_clearance, nodules)
        while not allowed.any():
            if diameter <= MIN_NODULE_DIAMETER_MM:
                raise RuntimeError(
                    "no room left for a nodule: use a larger shape_zyx or fewer nodules_per_scan"
                )
            diameter = max(MIN_NODULE_DIAMETER_MM, 0.8 * diameter)
            allowed = _nodule_sites(diameter, sites, site_clearance, nodules)
        centre = sites[rng.choice(np.flatnonzero(allowed))] + rng.uniform(-0.2, 0.2, 3) * geometry.spacing_zyx
        nodules.append(
            _Nodule(
                centre=centre,
                diameter_mm=diameter,
                malignant=malignant,
                ratings=_draw_ratings(rng, malignant),
                appearance=_draw_appearance(rng, looks_malignant, diameter),
            )
        )
    return nodules


def _nodule_sites(
    diameter: float, sites: np.ndarray, clearance: np.ndarray, placed: list[_Nodule]
) -> np.ndarray:
    radius = diameter / 2.0
    allowed = clearance >= 0.8 * radius
    for other in placed:
        gap = radius + other.diameter_mm / 2.0 + NEGATIVE_EXCLUSION_MARGIN_MM
        allowed &= np.linalg.norm(sites - other.centre, axis=1) > gap
    return allowed


def _render_nodule(hu: np.ndarray, nodule: _Nodule, geometry: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Blend a lobulated ellipsoid (ground-glass halo + solid core if part-solid) and its spicules into
    ``hu``; returns the (z, y, x) offset bounding box of the nodule body's voxels (outer voxel faces)."""
    look = nodule.appearance
    radius = nodule.diameter_mm / 2.0
    edge = geometry.in_plane_spacing
    reach = radius + look.spicule_lengths.max(initial=0.0) + 2.0 * float(geometry.spacing_zyx.max())
    region, grid = _local_grid(nodule.centre - reach, nodule.centre + reach, geometry)
    relative = [axis - c for axis, c in zip(grid, nodule.centre, strict=True)]
    local = [sum(relative[j] * look.rotation[j, i] for j in range(3)) for i in range(3)]
    distance = np.sqrt(sum(u**2 for u in local)) + 1e-6
    scaled = np.sqrt(sum((u / a) ** 2 for u, a in zip(local, look.axes, strict=True)))
    modulation = sum(
        w * np.cos(sum(u * k for u, k in zip(local, wave, strict=True)) / distance + phase)
        for wave, phase, w in zip(look.lobe_waves, look.lobe_phases, look.lobe_weights, strict=True)
    )
    surface = radius / (1.0 + look.lobulation) * (1.0 + look.lobulation * modulation)
    body = np.clip(0.5 - (scaled - surface) / edge, 0.0, 1.0)
    view = hu[region]
    if look.kind == "part_solid":
        view += body * (np.maximum(view, look.ground_glass_hu) - view)  # vessels stay visible through GGO
        solid = np.clip(0.5 - (scaled - look.core_fraction * surface) / edge, 0.0, 1.0)
    else:
        solid = body
    for direction, length in zip(look.spicule_directions, look.spicule_lengths, strict=True):
        tip = nodule.centre + direction * (radius + length)
        solid = np.maximum(solid, _capsule_fraction(grid, nodule.centre, tip, 0.6, 0.2, edge))
    view += solid * (look.solid_hu - view)
    inside = np.argwhere(body >= 0.5) + [s.start for s in region]
    low_face = (inside.min(axis=0) - 0.5) * geometry.spacing_zyx
    high_face = (inside.max(axis=0) + 0.5) * geometry.spacing_zyx
    return low_face, high_face


def _malignancy_row(
    seriesuid: str, nodule: _Nodule, bbox: tuple[np.ndarray, np.ndarray], geometry: _Geometry
) -> dict:
    centre = _offset_to_world(nodule.centre, geometry.origin_xyz)
    low, high = (_offset_to_world(corner, geometry.origin_xyz) for corner in bbox)
    return {
        "seriesuid": seriesuid,
        "coordX": centre[0],
        "coordY": centre[1],
        "coordZ": centre[2],
        "diameter_mm": nodule.diameter_mm,
        "mal_bool": nodule.malignant,
        "mal_details": str(list(nodule.ratings)),
        "bboxLowX": low[0],
        "bboxLowY": low[1],
        "bboxLowZ": low[2],
        "bboxHighX": high[0],
        "bboxHighY": high[1],
        "bboxHighZ": high[2],
        "len_mal_details": len(nodule.ratings),
    }


# --------------------------------------------------------------------------------------------------
# Candidates


def _sample_negatives(
    rng: np.random.Generator,
    count: int,
    segments: list[_VesselSegment],
    occupancy: np.ndarray,
    anatomy: _Anatomy,
    clearance_mm: np.ndarray,
    nodules: list[_Nodule],
    geometry: _Geometry,
) -> np.ndarray:
    """False-positive-like candidates (offset mm): mostly on vessels, some on the pleura, some in plain
    parenchyma, all farther than radius + 3 mm from every nodule. A short pool passes its quota on."""
    pools = (
        _vessel_sites(rng, segments, occupancy, geometry.spacing_zyx),
        np.argwhere(_pleural_shell(anatomy)),
        np.argwhere(anatomy.lung & (occupancy < 0.05) & (clearance_mm >= 2.0)),
    )
    quotas = [round(share * count) for share in NEGATIVE_SHARES[:-1]]
    quotas.append(count - sum(quotas))
    chosen, shortfall = [], 0
    for pool, quota in zip(pools, quotas, strict=True):
        picked = _pick_away_from_nodules(rng, pool, quota + shortfall, nodules, geometry.spacing_zyx)
        chosen.append(picked)
        shortfall = quota + shortfall - len(picked)
    return np.concatenate(chosen)


def _vessel_sites(
    rng: np.random.Generator, segments: list[_VesselSegment], occupancy: np.ndarray, spacing_zyx: np.ndarray
) -> np.ndarray:
    """Voxels on visible vessels: bifurcations and points along segments, snapped to the most
    vessel-filled neighbour so the candidate lands on the bright tube, not beside it."""
    points = []
    for segment in segments:
        if segment.radius_end < MIN_CANDIDATE_VESSEL_RADIUS_MM:
            continue
        points.append(segment.start + rng.uniform(0.2, 0.8) * (segment.end - segment.start))
        if segment.bifurcates:
            points.append(segment.end)
    sites = []
    for point in points:
        centre = np.rint(point / spacing_zyx).astype(int)
        low = np.maximum(centre - 1, 0)
        neighbourhood = occupancy[tuple(slice(lo, c + 2) for lo, c in zip(low, centre, strict=True))]
        best = np.array(np.unravel_index(np.argmax(neighbourhood), neighbourhood.shape)) + low
        if occupancy[tuple(best)] >= 0.75:
            sites.append(best)
    return np.unique(np.array(sites, dtype=int).reshape(-1, 3), axis=0)


def _pleural_shell(anatomy: _Anatomy) -> np.ndarray:
    """Chest-wall and mediastinal voxels touching the lung in-plane."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(anatomy.lung, in_plane) & ~anatomy.lung & anatomy.body


def _pick_away_from_nodules(
    rng: np.random.Generator, voxels: np.ndarray, wanted: int, nodules: list[_Nodule], spacing_zyx: np.ndarray
) -> np.ndarray:
    """Up to ``wanted`` random voxels, jittered < 0.25 voxel, outside every nodule's exclusion zone."""
    offsets = voxels[rng.permutation(len(voxels))] * spacing_zyx
    offsets = offsets + rng.uniform(-0.25, 0.25, size=offsets.shape) * spacing_zyx
    keep = np.ones(len(offsets), dtype=bool)
    for nodule in nodules:
        keep &= (
            np.linalg.norm(offsets - nodule.centre, axis=1)
            > nodule.diameter_mm / 2.0 + NEGATIVE_EXCLUSION_MARGIN_MM
        )
    return offsets[keep][:wanted].reshape(-1, 3)


def _candidate_rows(
    rng: np.random.Generator,
    seriesuid: str,
    nodules: list[_Nodule],
    negatives: np.ndarray,
    geometry: _Geometry,
) -> list[dict]:
    """One class-1 candidate per nodule, off-centre by < radius/2 as a detector's hit would be, and the
    negatives, in shuffled order like the real candidate list."""
    positives = [
        nodule.centre + _unit(rng.normal(size=3)) * rng.uniform(0.0, 0.4) * nodule.diameter_mm / 2.0
        for nodule in nodules
    ]
    labelled = [(p, 1) for p in positives] + [(n, 0) for n in negatives]
    rows = []
    for shuffled in rng.permutation(len(labelled)):
        offset, label = labelled[shuffled]
        world = _offset_to_world(offset, geometry.origin_xyz)
        rows.append(
            {
                "seriesuid": seriesuid,
                "coordX": world[0],
                "coordY": world[1],
                "coordZ": world[2],
                "class": label,
            }
        )
    return rows
