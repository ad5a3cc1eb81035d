"""Lung masks and negatives sampled from the scan: on a synthetic chest phantom and on real LIDC-IDRI CT.

The phantom is defined analytically in world millimetres, so samples are checked against the
shapes themselves, independently of any voxel-index arithmetic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data.labels.negatives import lung_mask, sample_negatives
from lungexp.data.scans import read_dicom_series
from lungexp.data.scans.scan import Scan
from tests.helpers.data import shared_data_dir

# Phantom geometry, world mm with the volume centred on 0.
SHAPE_ZYX = (40, 112, 128)
SPACING_XYZ = np.array([0.8, 0.8, 2.5])
ORIGIN_XYZ = -(np.array(SHAPE_ZYX[::-1]) - 1) / 2 * SPACING_XYZ
RECONSTRUCTION_RADIUS_MM = 50.0
BODY_SEMI_AXES_XY = np.array([44.0, 34.0])
# Two lungs of different sizes, so a mirrored sample would fall outside them.
LUNGS = [  # (centre xyz, semi-axes xyz)
    (np.array([-20.0, 0.0, 0.0]), np.array([16.0, 22.0, 40.0])),
    (np.array([21.0, 2.0, 4.0]), np.array([13.0, 20.0, 34.0])),
]
VESSELS_XY = [(-28.0, -8.0), (-12.0, 10.0), (20.0, -6.0)]  # tubes along z through the lungs
VESSEL_RADIUS_MM = 1.5
NODULE_XYZ = np.array([-20.0, 4.0, 10.0])
NODULE_DIAMETER_MM = 10.0
GAS_BUBBLE_XYZ, GAS_BUBBLE_RADIUS_MM = np.array([0.0, -28.0, -30.0]), 4.0  # bowel gas: in the body, not lung
MARGIN_MM = 10.0
LUNG_TOLERANCE_MM = 1.5  # the mask is built on a 2x subsampled grid and closed: its edge may move ~1 voxel


def inside_lungs(world_xyz: np.ndarray, tolerance_mm: float = 0.0) -> np.ndarray:
    """Whether world points lie inside either phantom lung (grown by ``tolerance_mm``)."""
    return np.any([np.sum(((world_xyz - centre) / (axes + tolerance_mm)) ** 2, axis=-1) <= 1
                   for centre, axes in LUNGS], axis=0)


def inside_body(world_xyz: np.ndarray) -> np.ndarray:
    return np.sum((world_xyz[..., :2] / BODY_SEMI_AXES_XY) ** 2, axis=-1) <= 1


def phantom_world_grid() -> np.ndarray:
    """World ``(x, y, z)`` of every voxel centre of the phantom, ``(z, y, x, 3)``."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE_ZYX), indexing="ij")
    return ORIGIN_XYZ + np.stack([x, y, z], axis=-1) * SPACING_XYZ


def phantom_scan() -> Scan:
    """A chest phantom: padding outside the reconstruction circle, air, a +40 HU body, two -850 HU lungs
    crossed by +40 HU vessels, a +40 HU nodule in the right lung and a bubble of gas in the abdomen."""
    world = phantom_world_grid()
    lungs = inside_lungs(world)
    hu = np.full(SHAPE_ZYX, -1000.0)
    hu[np.linalg.norm(world[..., :2], axis=-1) > RECONSTRUCTION_RADIUS_MM] = -2048
    hu[inside_body(world)] = 40
    hu[lungs] = -850
    for x, y in VESSELS_XY:
        hu[lungs & (np.hypot(world[..., 0] - x, world[..., 1] - y) <= VESSEL_RADIUS_MM)] = 40
    hu[np.linalg.norm(world - NODULE_XYZ, axis=-1) <= NODULE_DIAMETER_MM / 2] = 40
    hu[np.linalg.norm(world - GAS_BUBBLE_XYZ, axis=-1) <= GAS_BUBBLE_RADIUS_MM] = -1000
    hu += np.random.default_rng(0).normal(0, 15, SHAPE_ZYX)
    return Scan(hu.round().astype(np.int16), ORIGIN_XYZ, SPACING_XYZ, np.eye(3), source=Path("phantom-chest"))


def x_flipped(scan: Scan) -> Scan:
    """The same physical volume stored with the x axis reversed: direction diag(-1, 1, 1)."""
    origin = scan.voxel_to_world(np.array([0.0, 0.0, scan.shape_zyx[2] - 1]))
    return Scan(scan.array[:, :, ::-1].copy(), origin, scan.spacing, np.diag([-1.0, 1.0, 1.0]),
                source=scan.source)


def hu_at(scan: Scan, world_xyz: np.ndarray) -> np.ndarray:
    z, y, x = np.round(scan.world_to_voxel(world_xyz)).astype(int).T
    return scan.array[z, y, x]


def sample_phantom(scan: Scan, count: int, vessel_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    return sample_negatives(scan, NODULE_XYZ[np.newaxis], np.array([NODULE_DIAMETER_MM]), count,
                            vessel_fraction=vessel_fraction, margin_mm=MARGIN_MM, seed=seed)


@pytest.fixture(scope="module")
def phantom() -> Scan:
    return phantom_scan()


def test_lung_mask_covers_lungs_and_nothing_outside_body(phantom: Scan) -> None:
    mask = lung_mask(phantom)
    world = phantom_world_grid()
    lungs = inside_lungs(world)
    assert mask.shape == phantom.shape_zyx and mask.dtype == bool
    assert mask[lungs].mean() > 0.9
    assert not mask[~inside_body(world)].any()
    assert not mask[~inside_lungs(world, LUNG_TOLERANCE_MM)].any()  # e.g. no gas bubble, no mediastinum
    # Vessels and the nodule inside the lungs are filled in.
    assert mask[lungs & (phantom.array > -500)].mean() > 0.9


def test_samples_lie_in_lungs_away_from_nodule_with_requested_vessel_share(phantom: Scan) -> None:
    points = sample_phantom(phantom, count=200, vessel_fraction=0.3)
    assert points.shape == (200, 3)
    assert len(np.unique(points, axis=0)) == 200
    assert inside_lungs(points, LUNG_TOLERANCE_MM).all()
    assert np.all(np.linalg.norm(points - NODULE_XYZ, axis=1) > NODULE_DIAMETER_MM / 2 + MARGIN_MM)
    bright = hu_at(phantom, points) > -500
    assert bright[:60].all() and not bright[60:].any()


def test_samples_are_deterministic_by_seed(phantom: Scan) -> None:
    no_nodules = (np.empty((0, 3)), np.empty(0))
    first = sample_negatives(phantom, *no_nodules, count=30, seed=1)
    np.testing.assert_array_equal(first, sample_negatives(phantom, *no_nodules, count=30, seed=1))
    assert not np.array_equal(first, sample_negatives(phantom, *no_nodules, count=30, seed=2))


def test_samples_honour_a_flipped_direction(phantom: Scan) -> None:
    flipped = x_flipped(phantom)
    np.testing.assert_allclose(flipped.voxel_to_world(np.array([3.0, 5.0, 7.0])),
                               phantom.voxel_to_world(np.array([3.0, 5.0, 120.0])))  # same physical voxel
    points = sample_phantom(flipped, count=200, vessel_fraction=0.3)
    assert flipped.contains_world(points).all()
    assert inside_lungs(points, LUNG_TOLERANCE_MM).all()
    assert np.all(np.linalg.norm(points - NODULE_XYZ, axis=1) > NODULE_DIAMETER_MM / 2 + MARGIN_MM)
    assert (hu_at(phantom, points[:60]) > -500).all()


def test_too_many_negatives_raise_with_the_count_placed(phantom: Scan) -> None:
    with pytest.raises(ValueError, match=r"phantom-chest: only \d+ of 1000000 negatives could be placed"):
        sample_phantom(phantom, count=1_000_000)


# --------------------------------------------------------------------------------------------------
# Real LIDC-IDRI scans

PATIENTS = {  # patient folder -> number of LUNA16 annotations of its series
    "LIDC-IDRI-0001": 1,
    "LIDC-IDRI-0003": 3,
}


@dataclass(frozen=True)
class RealCase:
    scan: Scan
    mask: np.ndarray
    mask_seconds: float
    nodules: pd.DataFrame  # the series' rows of annotations.csv


@pytest.fixture(scope="module")
def real_cases() -> dict[str, RealCase]:
    data_dir = shared_data_dir()
    annotations = pd.read_csv(data_dir / "luna16" / "annotations.csv")
    cases = {}
    for patient in PATIENTS:
        (uid, scan), = read_dicom_series(data_dir / "lidc-idri" / patient).items()
        start = time.perf_counter()
        mask = lung_mask(scan)
        cases[patient] = RealCase(scan, mask, time.perf_counter() - start, annotations[annotations["seriesuid"] == uid])
    return cases


@pytest.mark.real_data
@pytest.mark.parametrize("patient", PATIENTS)
def test_real_lung_mask_is_plausible(real_cases: dict[str, RealCase], patient: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    case = real_cases[patient]
    litres = case.mask.sum() * np.prod(case.scan.spacing) / 1e6
    with capsys.disabled():
        print(f"\n{patient}: lung mask of {case.scan.shape_zyx} in {case.mask_seconds:.2f} s, {litres:.2f} L")
    assert 2.0 <= litres <= 8.0
    assert -900 <= case.scan.array[case.mask].mean() <= -650


@pytest.mark.real_data
@pytest.mark.parametrize("patient", PATIENTS)
def test_real_negatives_avoid_annotated_nodules(real_cases: dict[str, RealCase], patient: str) -> None:
    case = real_cases[patient]
    assert len(case.nodules) == PATIENTS[patient]
    centres = case.nodules[["coordX", "coordY", "coordZ"]].to_numpy()
    diameters = case.nodules["diameter_mm"].to_numpy()
    points = sample_negatives(case.scan, centres, diameters, count=50, margin_mm=MARGIN_MM)
    assert points.shape == (50, 3)
    assert case.scan.contains_world(points).all()
    z, y, x = np.round(case.scan.world_to_voxel(points)).astype(int).T
    assert case.mask[z, y, x].all()
    distances = np.linalg.norm(points[:, np.newaxis] - centres[np.newaxis], axis=2)
    assert np.all(distances > diameters / 2 + MARGIN_MM)
