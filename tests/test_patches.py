"""Patch extraction: geometry against SimpleITK's resampler, centring, padding, multi-scale."""

from __future__ import annotations

import numpy as np
import pytest

from lungexp.data.patches.extraction import PatchExtractor, PatchSpec
from lungexp.data.scans.scan import Scan

DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_x": np.diag([-1.0, 1.0, 1.0]),
    "permuted_flipped": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
}


def random_scan(direction: np.ndarray, shape=(40, 64, 72)) -> Scan:
    array = np.random.default_rng(0).integers(-1000, 400, size=shape).astype(np.int16)
    return Scan(array, origin=(-120.0, -110.0, -300.0), spacing=(0.7, 0.8, 2.5), direction=direction)


def sitk_reference(scan: Scan, spec: PatchSpec, center: np.ndarray) -> np.ndarray:
    return PatchExtractor(scan, spec, use_sitk=True).extract(center)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_separable_sampling_equals_sitk_resampling(name: str) -> None:
    scan = random_scan(DIRECTIONS[name])
    spec = PatchSpec(size=12, spacing_mm=(1.0, 2.0))
    for voxel in ([20, 32, 36], [0, 1, 70], [39, 63, 0]):  # interior and at the borders
        center = scan.voxel_to_world(np.array(voxel, dtype=float))
        np.testing.assert_allclose(PatchExtractor(scan, spec).extract(center),
                                   sitk_reference(scan, spec, center), atol=0.05)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_candidate_lies_at_the_patch_centre(name: str) -> None:
    array = np.full((40, 64, 72), -1000, dtype=np.int16)
    array[18:23, 30:35, 34:39] = 100  # a bright block around voxel (20, 32, 36)
    scan = Scan(array, origin=(-120.0, -110.0, -300.0), spacing=(0.7, 0.8, 2.5), direction=DIRECTIONS[name])
    patch = PatchExtractor(scan, PatchSpec(size=16)).extract(scan.voxel_to_world(np.array([20.0, 32.0, 36.0])))[0]
    assert patch[8, 8, 8] == pytest.approx(100)
    bright = np.argwhere(patch > 0)
    np.testing.assert_allclose(bright.mean(axis=0), [8, 8, 8], atol=1.0)


def test_outside_the_scan_is_air_and_int16_cache_rounding() -> None:
    scan = random_scan(np.eye(3))
    far_away = scan.voxel_to_world(np.array([-100.0, -100.0, -100.0]))
    patches = PatchExtractor(scan, PatchSpec(size=8)).extract_many(np.stack([far_away]))
    assert patches.dtype == np.int16 and patches.shape == (1, 1, 8, 8, 8)
    assert np.all(patches == -1000)


def test_multiscale_channels_cover_wider_fields_of_view() -> None:
    array = np.full((40, 64, 72), -1000, dtype=np.int16)
    array[20, 32, 36 + 12] = 500  # 12 voxels * 0.7 mm = 8.4 mm along +x from the centre
    scan = Scan(array, origin=(0, 0, 0), spacing=(0.7, 0.8, 2.5), direction=np.eye(3))
    patch = PatchExtractor(scan, PatchSpec(size=8, spacing_mm=(1.0, 4.0))).extract(
        scan.voxel_to_world(np.array([20.0, 32.0, 36.0])))
    assert patch.shape == (2, 8, 8, 8)
    assert patch[0].max() < -900  # 1 mm grid reaches only 4 mm out
    assert patch[1].max() > -900  # 4 mm grid reaches 12 mm out and sees the bright voxel


def test_patch_size_in_mm() -> None:
    assert PatchSpec.from_config(size=None, size_mm=48, spacing_mm=[1.5]).size == 32
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        PatchSpec(size=8, spacing_mm=(0.0,))
