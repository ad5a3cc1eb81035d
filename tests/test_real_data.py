"""The readers on real LIDC-IDRI CT (DICOM) and the official LUNA16 CSVs from ``../shared/data``.

Skipped, with the reason, where the shared data is absent. Each series is read once per module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lungexp.convert import main as convert_main
from lungexp.data.labels.annotations import check_points_inside, read_annotations, read_malignancy_annotations
from lungexp.data.names import ANNOTATION_COLUMNS, MALIGNANCY_COLUMNS
from lungexp.data.scans import ScanHeader, read_dicom_series, read_scan
from lungexp.data.scans.scan import Scan
from tests.helpers.data import dicom_numbers, dicom_tag, shared_data_dir, stored_pixel_values

pytestmark = pytest.mark.real_data


@dataclass(frozen=True)
class Expected:
    """A series as the data README describes it."""

    uid: str
    slices: int
    pixel_mm: float
    nodules: int


EXPECTED = {
    "LIDC-IDRI-0001": Expected("1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192", 133, 0.703, 1),
    "LIDC-IDRI-0003": Expected("1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264", 140, 0.820, 3),
}
SLICE_MM = 2.5


@dataclass(frozen=True)
class RealSeries:
    folder: Path  # the patient folder given to the reader
    files: list[Path]  # the slice files, in file-name order (which is NOT their spatial order)
    scan: Scan


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="module")
def series(data_dir: Path) -> dict[str, RealSeries]:
    loaded = {}
    for patient, expected in EXPECTED.items():
        folder = data_dir / "lidc-idri" / patient
        scans = read_dicom_series(folder)
        assert list(scans) == [expected.uid]
        loaded[patient] = RealSeries(folder, sorted(folder.rglob("*.dcm")), scans[expected.uid])
    return loaded


@pytest.mark.parametrize("patient", EXPECTED)
def test_geometry_matches_dicom_headers(series: dict[str, RealSeries], patient: str) -> None:
    real, expected = series[patient], EXPECTED[patient]
    scan = real.scan
    assert len(real.files) == expected.slices
    assert scan.shape_zyx == (expected.slices, 512, 512)
    assert scan.array.dtype == np.int16
    np.testing.assert_allclose(scan.direction, np.eye(3))

    positions = np.array([dicom_numbers(f, "0020|0032") for f in real.files])
    z = np.sort(positions[:, 2])
    np.testing.assert_allclose(np.diff(z), SLICE_MM)
    row_mm, column_mm = dicom_numbers(real.files[0], "0028|0030")
    np.testing.assert_allclose(scan.spacing, [column_mm, row_mm, SLICE_MM], atol=1e-6)
    assert scan.spacing[0] == pytest.approx(expected.pixel_mm, abs=5e-4)
    # The origin is the position of the lowest slice: array index 0 is the most inferior slice.
    np.testing.assert_allclose(scan.origin, [*positions[0, :2], z[0]], atol=1e-5)
    np.testing.assert_allclose(scan.voxel_to_world(np.array([expected.slices - 1, 0, 0])),
                               [*positions[0, :2], z[-1]], atol=1e-4)


@pytest.mark.parametrize("patient", EXPECTED)
def test_values_are_rescaled_stored_pixels(series: dict[str, RealSeries], patient: str) -> None:
    """HU = stored * RescaleSlope + RescaleIntercept, slice by slice at the right array index."""
    real = series[patient]
    for file in real.files[::40]:
        assert dicom_tag(file, "0028|0103") == "1"  # signed 16-bit storage, as stored_pixel_values reads it
        slope, intercept = float(dicom_tag(file, "0028|1053")), float(dicom_tag(file, "0028|1052"))
        assert (slope, intercept) == (1.0, -1024.0)
        z_index = real.scan.world_to_voxel(dicom_numbers(file, "0020|0032"))[0]
        assert z_index == pytest.approx(round(z_index), abs=1e-4)
        stored = stored_pixel_values(file, 512, 512)
        np.testing.assert_array_equal(real.scan.array[round(z_index)], stored * slope + intercept)


@pytest.mark.parametrize("patient", EXPECTED)
def test_air_lung_and_soft_tissue_have_plausible_hu(series: dict[str, RealSeries], patient: str) -> None:
    hu = series[patient].scan.array
    # Outside the reconstruction circle GE stores padding (-2048 HU); in front of the chest it is air.
    assert np.all(hu[:, :3, :3] == -2048)
    air = hu[:, 2:20, 246:266].mean(axis=(1, 2))
    np.testing.assert_allclose(air, -1000, atol=50)
    depth = hu.shape[0]
    thorax = hu[depth // 4 : 3 * depth // 4, 128:384, 96:416]
    assert np.mean((thorax >= -950) & (thorax <= -700)) > 0.25  # lung parenchyma
    assert np.mean((thorax >= -100) & (thorax <= 100)) > 0.1  # soft tissue
    assert hu.min() >= -2048
    assert hu.max() > 1000  # bone


@pytest.mark.parametrize("patient", EXPECTED)
def test_luna16_nodules_lie_on_soft_tissue(series: dict[str, RealSeries], data_dir: Path, patient: str) -> None:
    scan, expected = series[patient].scan, EXPECTED[patient]
    annotations = read_annotations(data_dir / "luna16" / "annotations.csv")
    nodules = annotations[annotations["seriesuid"] == expected.uid]
    assert len(nodules) == expected.nodules

    header = ScanHeader(scan.size_xyz, scan.origin, scan.spacing, scan.direction, Path(series[patient].folder))
    kept = check_points_inside(nodules, {expected.uid: header}, source="annotations.csv")
    assert len(kept) == expected.nodules
    for world in nodules[["coordX", "coordY", "coordZ"]].to_numpy():
        z, y, x = np.rint(scan.world_to_voxel(world)).astype(int)
        assert all(1 <= v < n - 1 for v, n in zip((z, y, x), scan.shape_zyx, strict=True))
        neighbourhood = scan.array[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].astype(float)
        assert neighbourhood.mean() > -300, f"nodule at {world} mm sits on {neighbourhood.mean():.0f} HU"


def test_official_csvs_read_in_full(data_dir: Path) -> None:
    annotations = read_annotations(data_dir / "luna16" / "annotations.csv")
    assert len(annotations) == 1186
    assert annotations["seriesuid"].nunique() == 601
    malignancy = read_malignancy_annotations(data_dir / "luna16" / "annotations_with_malignancy.csv")
    assert len(malignancy) == 1182
    assert int(malignancy["mal_bool"].sum()) == 378
    ours = malignancy[malignancy["seriesuid"].isin([e.uid for e in EXPECTED.values()])]
    assert len(ours) == 4 and ours["mal_bool"].all()
    assert ours["mal_details"].str.startswith("[").all()
    # The column lists the generator writes and the readers expect are those of the release.
    assert list(annotations.columns) == ANNOTATION_COLUMNS
    assert list(malignancy.columns) == MALIGNANCY_COLUMNS


def test_convert_writes_luna16_mhd(series: dict[str, RealSeries], tmp_path: Path, capsys) -> None:
    real, uid = series["LIDC-IDRI-0001"], EXPECTED["LIDC-IDRI-0001"].uid
    assert convert_main([str(real.folder), str(tmp_path), "--subset", "0"]) == 0
    output = capsys.readouterr().out
    assert f"{uid}  shape (z, y, x) (133, 512, 512)  spacing (x, y, z) (0.703, 0.703, 2.500) mm" in output
    assert "converted 1 series" in output

    path = tmp_path / "subset0" / f"{uid}.mhd"
    image = sitk.ReadImage(str(path))  # plain SimpleITK, as LUNA16 code reads it
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), real.scan.array)
    np.testing.assert_allclose(image.GetSpacing(), real.scan.spacing)
    np.testing.assert_allclose(image.GetOrigin(), real.scan.origin)

    back = read_scan(path)
    np.testing.assert_array_equal(back.array, real.scan.array)
    np.testing.assert_allclose(back.origin, real.scan.origin)
    np.testing.assert_allclose(back.spacing, real.scan.spacing)
    np.testing.assert_allclose(back.direction, real.scan.direction)

