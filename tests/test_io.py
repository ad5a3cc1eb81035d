"""Scan I/O on small synthetic volumes: MetaImage, NIfTI/NRRD, DICOM series and the scan index."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from lungexp.convert import main as convert_main
from lungexp.data.scans import (
    ScanReadError,
    index_scans,
    read_dicom_series,
    read_scan,
    read_scan_header,
    write_mhd,
)
from lungexp.data.scans.scan import Scan
from tests.helpers.data import dicom_tag, shared_data_dir, stored_pixel_values, write_dicom_series

FLIP_YZ = np.diag([1.0, -1.0, -1.0])
ROTATE_Z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # not symmetric: catches transposes


IDENTITY = np.eye(3)


def make_scan(direction: np.ndarray = IDENTITY) -> Scan:
    rng = np.random.default_rng(0)
    return Scan(
        array=rng.integers(-1024, 3000, size=(4, 5, 6)).astype(np.int16),
        origin=(-12.5, 30.25, -300.125),
        spacing=(0.703125, 0.8, 2.5),
        direction=direction,
    )


def mhd_fields(path: Path) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in path.read_text().splitlines())


def write_mhd_fields(path: Path, fields: dict[str, str]) -> None:
    """Write header fields, ElementDataFile last as MetaIO requires (it stops reading there)."""
    data_file = fields.pop("ElementDataFile", None)
    text = "".join(f"{k} = {v}\n" for k, v in fields.items())
    path.write_text(text + (f"ElementDataFile = {data_file}\n" if data_file is not None else ""))


def set_mhd_field(path: Path, key: str, value: str) -> None:
    write_mhd_fields(path, {**mhd_fields(path), key: value})


def assert_same_geometry(actual: Scan, expected: Scan) -> None:
    np.testing.assert_allclose(actual.origin, expected.origin, atol=1e-6)
    np.testing.assert_allclose(actual.spacing, expected.spacing, atol=1e-6)
    np.testing.assert_allclose(actual.direction, expected.direction, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# MetaImage


@pytest.mark.parametrize("direction", [IDENTITY, FLIP_YZ, ROTATE_Z], ids=["identity", "flip_yz", "rotate_z"])
def test_mhd_round_trip_preserves_voxels_and_geometry(tmp_path: Path, direction: np.ndarray) -> None:
    scan = make_scan(direction)
    path = write_mhd(scan, tmp_path / "1.2.840.1.mhd")
    back = read_scan(path)

    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, scan.array)
    assert_same_geometry(back, scan)
    assert back.source == path
    assert mhd_fields(path)["ElementDataFile"] == "1.2.840.1.raw"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.840.1.mhd", "1.2.840.1.raw"]  # no temporaries

    # Scan's world -> voxel mapping agrees with ITK's on the file as written.
    image = sitk.ReadImage(str(path))
    for voxel_zyx in ([0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.75]):
        world = back.voxel_to_world(np.array(voxel_zyx, dtype=float))
        itk_index_xyz = image.TransformPhysicalPointToContinuousIndex(world.tolist())
        np.testing.assert_allclose(back.world_to_voxel(world), itk_index_xyz[::-1], atol=1e-9)
        np.testing.assert_allclose(back.world_to_voxel(world), voxel_zyx, atol=1e-9)


@pytest.mark.parametrize("direction", [IDENTITY, FLIP_YZ, ROTATE_Z], ids=["identity", "flip_yz", "rotate_z"])
def test_mhd_header_matches_itk_writer(tmp_path: Path, direction: np.ndarray) -> None:
    """Same fields and values as ITK writes (LUNA16 files were written by ITK); numbers may be shorter."""
    scan = make_scan(direction)
    ours = mhd_fields(write_mhd(scan, tmp_path / "ours.mhd"))
    sitk.WriteImage(scan.to_sitk(), str(tmp_path / "itk.mhd"))
    theirs = mhd_fields(tmp_path / "itk.mhd")
    assert ours.pop("ElementDataFile") == "ours.raw"
    assert theirs.pop("ElementDataFile") == "itk.raw"
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        if key in ("TransformMatrix", "Offset", "ElementSpacing"):
            np.testing.assert_array_equal(np.array(value.split(), float), np.array(theirs[key].split(), float))
        else:
            assert value == theirs[key], key


def test_write_mhd_overwrites_and_leaves_old_files_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "scan.mhd"
    write_mhd(make_scan(), path)
    newer = Scan(make_scan().array + 1, origin=(1, 2, 3), spacing=(1, 1, 1), direction=IDENTITY)
    write_mhd(newer, path)
    np.testing.assert_array_equal(read_scan(path).array, newer.array)

    def disk_full(image, name, *args, **kwargs):
        Path(name).with_suffix(".raw").write_bytes(b"half a volume")
        raise OSError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_mhd(make_scan(), path)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_scan(path).array, newer.array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.mhd", "scan.raw"]


def test_write_mhd_stores_int16_hu(tmp_path: Path) -> None:
    scan = make_scan()
    as_float = Scan(scan.array.astype(np.float32) + 0.2, scan.origin, scan.spacing, scan.direction)
    np.testing.assert_array_equal(read_scan(write_mhd(as_float, tmp_path / "a.mhd")).array, scan.array)
    for bad, problem in ((40000.0, "outside int16"), (np.nan, "NaN")):
        array = as_float.array.copy()
        array[0, 0, 0] = bad
        with pytest.raises(ValueError, match=problem):
            write_mhd(Scan(array, scan.origin, scan.spacing, scan.direction), tmp_path / "b.mhd")
    assert not (tmp_path / "b.mhd").exists()


def test_missing_raw_names_raw_and_mhd(tmp_path: Path) -> None:
    path = write_mhd(make_scan(), tmp_path / "a.mhd")
    (tmp_path / "a.raw").unlink()
    for read in (read_scan, read_scan_header):
        with pytest.raises(ScanReadError, match=r"a\.raw.*missing") as info:
            read(path)
        assert str(path) in str(info.value)


def test_truncated_raw_reports_expected_and_actual_bytes(tmp_path: Path) -> None:
    path = write_mhd(make_scan(), tmp_path / "a.mhd")  # 4 * 5 * 6 voxels * 2 bytes = 240
    raw = tmp_path / "a.raw"
    raw.write_bytes(raw.read_bytes()[:200])
    with pytest.raises(ScanReadError, match=r"truncated.*240 bytes.*200 bytes"):
        read_scan(path)


@pytest.mark.parametrize(
    ("field", "value", "problem", "expected_bytes"),
    [
        ("DimSize", "6 5 5", "truncated", 300),
        ("DimSize", "6 5 3", "too large", 180),
        ("ElementType", "MET_FLOAT", "truncated", 480),
        ("ElementType", "MET_UCHAR", "too large", 120),
        ("HeaderSize", "16", "truncated", 256),
    ],
)
def test_header_that_does_not_match_raw_size(tmp_path: Path, field, value, problem, expected_bytes) -> None:
    path = write_mhd(make_scan(), tmp_path / "a.mhd")
    set_mhd_field(path, field, value)
    with pytest.raises(ScanReadError, match=rf"{problem}.*{expected_bytes} bytes.*240 bytes"):
        read_scan(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ElementType", "MET_LONG_LONG", "unsupported ElementType MET_LONG_LONG"),
        ("DimSize", "6 5", "expected three positive sizes"),
        ("DimSize", None, "no DimSize field"),
        ("ElementDataFile", "slice%03d.raw 1 4 1", "several files"),
        ("ElementSpacing", "0 0.8 2.5", "ElementSpacing = 0 0.8 2.5; expected three positive voxel sizes"),
        ("ElementSpacing", "0.703125 -0.8 2.5", "ElementSpacing = 0.703125 -0.8 2.5; expected three positive"),
        ("ElementSpacing", "0.7 0.8", "ElementSpacing = 0.7 0.8; expected three positive"),
        ("ElementSpacing", "0.7 nan 2.5", "ElementSpacing = 0.7 nan 2.5; expected three positive"),
        ("Offset", "nan 0 0", "Offset = nan 0 0; expected 3 finite numbers"),  # MetaIO reads nan as 0
        ("TransformMatrix", "1 0 0 0 1 0 0 0", "TransformMatrix = 1 0 0 0 1 0 0 0; expected 9 finite numbers"),
        ("TransformMatrix", "1 0 0 1 0 0 0 0 1", r"direction \[1\.0, 1\.0, .* is damaged \(not finite, or axes that "
                                                 r"coincide\)"),
    ],
)
def test_bad_mhd_header(tmp_path: Path, field, value, message) -> None:
    path = write_mhd(make_scan(), tmp_path / "a.mhd")
    fields = mhd_fields(path)
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    write_mhd_fields(path, fields)
    for read in (read_scan, read_scan_header):
        with pytest.raises(ScanReadError, match=f"{re.escape(str(path))}: .*{message}"):
            read(path)


# Headers that name their data file: MetaImage (.mhd, or .mha) and NRRD (a detached .nhdr, or a .nrrd).
DETACHED_HEADERS = {".mhd": ".mhd", ".mha": ".mhd", ".nrrd": ".nhdr", ".nhdr": ".nhdr"}
DATA_FILE_FIELD = r"(ElementDataFile = |data file: ).*"


def write_detached_header(scan: Scan, header: Path, data_file: str, written_in: Path) -> None:
    """Write ``scan`` in ``written_in`` as its format's header + ``a.raw``, then a copy of that header as
    ``header``, naming ``data_file`` as its data."""
    written_in.mkdir(parents=True, exist_ok=True)
    original = written_in / f"a{DETACHED_HEADERS[header.suffix]}"
    sitk.WriteImage(scan.to_sitk(), str(original), useCompression=False)
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(re.sub(DATA_FILE_FIELD, lambda field: field.group(1) + data_file, original.read_text()))


@pytest.mark.parametrize("suffix", DETACHED_HEADERS)
@pytest.mark.parametrize("data_file", ["../data/a.raw", "sub/../../data/a.raw", "{tmp_path}/data/a.raw", "link.raw"])
def test_data_file_outside_the_header_folder_is_refused(tmp_path: Path, suffix: str, data_file: str) -> None:
    """Also through a link: a header from elsewhere must not make lungexp read any other file."""
    header = tmp_path / "headers" / f"a{suffix}"
    write_detached_header(make_scan(), header, data_file.format(tmp_path=tmp_path), written_in=tmp_path / "data")
    (tmp_path / "headers" / "link.raw").symlink_to(tmp_path / "data" / "a.raw")
    for read in (read_scan, read_scan_header):
        with pytest.raises(ScanReadError, match=rf"{re.escape(str(header))}: (ElementDataFile = |data file: ).* points "
                                                r"outside the header's folder"):
            read(header)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
@pytest.mark.parametrize("data_file", ["LIST\na.raw", "a%d.raw 1 4 1 2"])
def test_nrrd_data_spread_over_several_files_is_refused(tmp_path: Path, suffix: str, data_file: str) -> None:
    """Each named file could lie anywhere; lungexp reads scans whose data is in one file."""
    header = tmp_path / f"a{suffix}"
    write_detached_header(make_scan(), header, data_file, written_in=tmp_path)
    with pytest.raises(ScanReadError, match=rf"{re.escape(str(header))}: data file: .* spreads the volume over several"):
        read_scan_header(header)


@pytest.mark.parametrize("suffix", DETACHED_HEADERS)
def test_data_file_below_the_header_folder_is_read(tmp_path: Path, suffix: str) -> None:
    scan = make_scan()
    write_detached_header(scan, tmp_path / f"b{suffix}", "raw/../raw/a.raw", written_in=tmp_path / "raw")
    np.testing.assert_array_equal(read_scan(tmp_path / f"b{suffix}").array, scan.array)


def test_scan_linked_from_another_folder_is_read(tmp_path: Path) -> None:
    """A folder of links to the header and data of a scan stored elsewhere (e.g. a LUNA16 subset assembled
    from a shared store): the data file stays next to the header the link points at."""
    scan = make_scan()
    write_mhd(scan, tmp_path / "store" / "a.mhd")
    (tmp_path / "subset0").mkdir()
    for name in ("a.mhd", "a.raw"):
        (tmp_path / "subset0" / name).symlink_to(tmp_path / "store" / name)
    np.testing.assert_array_equal(read_scan(tmp_path / "subset0" / "a.mhd").array, scan.array)


def test_mhd_with_local_data_is_checked_and_read(tmp_path: Path) -> None:
    scan = make_scan()
    path = write_mhd(scan, tmp_path / "a.mhd")
    set_mhd_field(path, "ElementDataFile", "LOCAL")
    path.write_bytes(path.read_bytes() + (tmp_path / "a.raw").read_bytes())
    (tmp_path / "a.raw").unlink()
    np.testing.assert_array_equal(read_scan(path).array, scan.array)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ScanReadError, match="truncated"):
        read_scan(path)


def test_unreadable_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError, match="not found"):
        read_scan(tmp_path / "absent.mhd")
    (tmp_path / "scan.dcm").write_bytes(b"x")
    with pytest.raises(ScanReadError, match=r"unsupported scan format.*lungexp\.convert"):
        read_scan(tmp_path / "scan.dcm")
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"not a nifti file at all")
    with pytest.raises(ScanReadError, match=r"broken\.nii\.gz: .*check that the file is a complete, uncorrupted scan"):
        read_scan(garbage)


# --------------------------------------------------------------------------------------------------
# NIfTI / NRRD and headers


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha"])
def test_other_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    scan = make_scan(FLIP_YZ)
    path = tmp_path / f"case7{suffix}"
    sitk.WriteImage(scan.to_sitk(), str(path))
    back = read_scan(path)
    np.testing.assert_array_equal(back.array, scan.array)
    assert_same_geometry(back, scan)


def test_nrrd_with_a_zero_voxel_axis_is_refused(tmp_path: Path) -> None:
    """ITK gives the axis a spacing of 0, which would fail far from the file, in a coordinate check."""
    path = tmp_path / "a.nrrd"
    sitk.WriteImage(make_scan().to_sitk(), str(path), useCompression=False)
    path.write_bytes(re.sub(rb"space directions: .*\n", b"space directions: (0.7,0,0) (0,0.8,0) (0,0,0)\n",
                            path.read_bytes(), count=1))
    for read in (read_scan, read_scan_header):
        with pytest.raises(ScanReadError, match=rf"{re.escape(str(path))}: voxel spacing \[.*, 0\.0\] must be three "
                                                "positive sizes"):
            read(path)


# Byte patches of a NIfTI-1 header (little-endian, as ITK writes it here): pixdim is float32[8] at 76
# (pixdim[0] is qfac; 1-3 are the voxel sizes), magic char[4] at 344.
DAMAGED_NIFTI_HEADERS = {
    "negative pixdim": (76 + 4 * 2, struct.pack("<f", -0.8), r"pixdim = \(0\.703125, -0\.8, 2\.5\) \(the voxel sizes in mm\) must be positive"),
    "zero pixdim": (76 + 4 * 3, struct.pack("<f", 0.0), r"pixdim = \(0\.703125, 0\.8, 0\) .* must be positive"),
    "NaN pixdim": (76 + 4 * 1, struct.pack("<f", np.nan), r"pixdim = \(nan, 0\.8, 2\.5\) .* must be positive"),
    "pair header": (344, b"ni1\0", r"magic b'ni1'.* is not a single-file NIfTI"),
}


@pytest.mark.parametrize(("offset", "patch", "message"), DAMAGED_NIFTI_HEADERS.values(), ids=DAMAGED_NIFTI_HEADERS)
def test_damaged_nifti_header_is_refused(tmp_path: Path, offset: int, patch: bytes, message: str) -> None:
    """ITK reads a voxel size of -0.8 as 0.8 with the axis flipped (its header-only reader keeps -0.8, then
    fails far away), 0 or NaN as 1, and a pair header's voxels from the .img beside it."""
    path = tmp_path / "a.nii"
    sitk.WriteImage(make_scan(ROTATE_Z).to_sitk(), str(path))
    header = bytearray(path.read_bytes())
    header[offset : offset + len(patch)] = patch
    path.write_bytes(header)
    for read in (read_scan, read_scan_header):
        with pytest.raises(ScanReadError, match=rf"{re.escape(str(path))}: .*{message}"):
            read(path)


def test_nifti_whose_qform_and_sform_disagree_is_refused(tmp_path: Path) -> None:
    """ITK reads one of the two transforms; lungexp refuses to guess which is right, naming both."""
    scan = make_scan(ROTATE_Z)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)  # NIfTI's world is RAS, ITK's (and lungexp's) LPS
    affine[:3, :3] = lps_to_ras @ scan.direction * scan.spacing
    affine[:3, 3] = lps_to_ras @ scan.origin
    image = nibabel.Nifti1Image(scan.array.transpose(2, 1, 0), affine)  # nibabel indexes (x, y, z)
    image.set_qform(affine, code=1)
    shifted = affine.copy()
    shifted[0, 3] += 30
    cases = {"agree": (affine, 1), "disagree": (shifted, 2), "sform only": (shifted, 2)}
    for case, (sform, code) in cases.items():
        if case == "sform only":
            image.set_qform(None, code=0)
        image.set_sform(sform, code=code)
        image.to_filename(tmp_path / f"{case}.nii")
    back = read_scan(tmp_path / "agree.nii")
    np.testing.assert_array_equal(back.array, scan.array)
    assert_same_geometry(back, scan)
    with pytest.raises(ScanReadError, match=r"disagree\.nii: its qform \(qform_code 1\) and sform \(sform_code 2\) disagree: "
                                            r"the first voxel at \(12\.5, -30\.25, -300\.125\) vs \(42\.5, -30\.25, "
                                            r"-300\.125\) mm \(RAS, 30\.000 mm apart\)"):
        read_scan_header(tmp_path / "disagree.nii")
    np.testing.assert_allclose(read_scan_header(tmp_path / "sform only.nii").origin, scan.origin - [30, 0, 0])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mhd"])
def test_voxels_without_data_are_refused(tmp_path: Path, suffix: str) -> None:
    """NaN ("no data") voxels would otherwise read as 0 HU from NIfTI (ITK zeroes them), or reach the cache."""
    scan = make_scan()
    hu = scan.array.astype(np.float32)
    path = tmp_path / f"case7{suffix}"
    sitk.WriteImage(dataclasses.replace(scan, array=hu).to_sitk(), str(path))
    np.testing.assert_array_equal(read_scan(path).array, hu)  # finite floats read as they are
    hu[1, 2, 3] = hu[0, 0, 0] = np.nan
    hu[3, 4, 5] = np.inf
    sitk.WriteImage(dataclasses.replace(scan, array=hu).to_sitk(), str(path))
    with pytest.raises(ScanReadError, match=rf"case7{re.escape(suffix)}: 3 of 120 voxels are NaN or infinite"):
        read_scan(path)


def test_read_scan_header_matches_scan_without_voxels(tmp_path: Path) -> None:
    scan = make_scan(ROTATE_Z)
    path = write_mhd(scan, tmp_path / "a.mhd")
    header = read_scan_header(path)
    np.testing.assert_array_equal(header.size_xyz, scan.size_xyz)
    assert header.shape_zyx == scan.shape_zyx
    assert_same_geometry(header.geometry(), scan)
    assert header.path == path

    points = scan.voxel_to_world(np.array([[0, 0, 0], [3.4, 4.4, 5.4], [3.6, 0, 0], [-0.6, 2, 2], [1, 1, 6]]))
    np.testing.assert_array_equal(header.contains_world(points), [True, True, False, False, False])
    np.testing.assert_array_equal(header.contains_world(points), scan.contains_world(points))
    low, high = header.world_extent()
    corners = scan.voxel_to_world(np.array([[-0.5, -0.5, -0.5], [3.5, 4.5, 5.5]]))
    np.testing.assert_allclose(low, corners.min(axis=0))
    np.testing.assert_allclose(high, corners.max(axis=0))


# --------------------------------------------------------------------------------------------------
# DICOM


def ct_volume(shape_zyx: tuple[int, int, int] = (5, 6, 7), seed: int = 1) -> np.ndarray:
    """Even HU values from air to bone, so a slope of 2 stores them exactly."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-550, 1500, size=shape_zyx) * 2).astype(np.int16)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (2.0, -1000.0)])
def test_dicom_series_read_back_in_hu(tmp_path: Path, slope: float, intercept: float) -> None:
    hu = ct_volume()
    files = write_dicom_series(tmp_path / "series", hu, "1.2.3.4", slope=slope, intercept=intercept)
    # The files really store rescaled values, so equal HU below means the reader applied the rescale.
    first = files[0]
    assert float(dicom_tag(first, "0028|1053")) == slope
    np.testing.assert_array_equal(stored_pixel_values(first, 6, 7), (hu[0] - intercept) / slope)

    scans = read_dicom_series(tmp_path)
    assert list(scans) == ["1.2.3.4"]
    scan = scans["1.2.3.4"]
    assert scan.array.dtype == np.int16
    np.testing.assert_array_equal(scan.array, hu)  # slices sorted by position, not by file name
    np.testing.assert_allclose(scan.origin, [-100, -120, -300])
    np.testing.assert_allclose(scan.spacing, [0.7, 0.8, 2.5])
    np.testing.assert_allclose(scan.direction, IDENTITY)
    assert scan.source == tmp_path / "series"


def test_nested_folders_with_several_series(tmp_path: Path) -> None:
    volumes = {"1.2.3.1": ct_volume((3, 4, 5), 1), "1.2.3.2": ct_volume((4, 4, 5), 2), "1.2.3.3": ct_volume((2, 3, 3), 3)}
    write_dicom_series(tmp_path / "patientA" / "study" / "mixed", volumes["1.2.3.1"], "1.2.3.1")
    write_dicom_series(tmp_path / "patientA" / "study" / "mixed", volumes["1.2.3.2"], "1.2.3.2",
                       origin_xyz=(0, 0, 0), spacing_xyz=(1, 1, 1.25))
    write_dicom_series(tmp_path / "patientB" / "s", volumes["1.2.3.3"], "1.2.3.3")
    (tmp_path / "patientA" / "readings.xml").write_text("<xml/>")

    scans = read_dicom_series(tmp_path)
    assert sorted(scans) == sorted(volumes)
    for uid, hu in volumes.items():
        np.testing.assert_array_equal(scans[uid].array, hu)
    np.testing.assert_allclose(scans["1.2.3.2"].spacing, [1, 1, 1.25])


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(ScanReadError, match=rf"{tmp_path}: no DICOM series found"):
        read_dicom_series(tmp_path)
    with pytest.raises(ScanReadError, match="DICOM folder not found"):
        read_dicom_series(tmp_path / "absent")


def test_missing_middle_slice_names_series_and_gap(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, ct_volume(), "1.2.3.9", slice_z=[0, 2.5, 5, 10, 12.5])
    # The files are named in reverse order: ...slice003 is at 5 mm, ...slice002 at 10 mm.
    with pytest.raises(ScanReadError, match=r"series 1\.2\.3\.9 .*missing slices.*5\.00 mm between "
                                            r"1\.2\.3\.9-slice003\.dcm \(at -295\.00 mm\) and 1\.2\.3\.9-slice002\.dcm"):
        read_dicom_series(tmp_path)


CORRUPTIONS = {
    "preamble zeroed": lambda data: bytes(2000) + data[2000:],
    "cut to 100 bytes": lambda data: data[:100],
    "empty": lambda data: b"",
    "overwritten": lambda data: np.random.default_rng(0).bytes(len(data)),
}


def assert_names_the_corrupt_slice(folder: Path, files: list[Path], corrupt) -> None:
    """Corrupting one middle slice is reported as that file, not as "missing slices" around it."""
    files[2].write_bytes(corrupt(files[2].read_bytes()))
    with pytest.raises(ScanReadError, match=rf"1 DICOM file\(s\) cannot be read.*: {re.escape(str(files[2]))};") as info:
        read_dicom_series(folder)
    assert "missing slices" not in str(info.value)


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_corrupt_slice_is_named(tmp_path: Path, corrupt) -> None:
    assert_names_the_corrupt_slice(tmp_path, write_dicom_series(tmp_path, ct_volume(), "1.2.3.9"), corrupt)


@pytest.mark.real_data
def test_corrupt_slice_of_a_real_series_is_named(tmp_path: Path) -> None:
    series = next((shared_data_dir() / "lidc-idri" / "LIDC-IDRI-0001").rglob("000001.dcm")).parent
    files = [Path(shutil.copyfile(series / f"{number:06d}.dcm", tmp_path / f"{number:06d}.dcm"))
             for number in range(60, 66)]  # copyfile: the copies must be writable
    assert_names_the_corrupt_slice(tmp_path, files, CORRUPTIONS["preamble zeroed"])


@pytest.mark.parametrize(
    ("slice_z", "message"),
    [
        ([0, 2.5, 5, 8, 10.5], r"inconsistent slice spacing: 3\.000 mm"),
        ([0, 0, 2.5, 2.5, 5], "2 pairs of slices share a position"),
    ],
)
def test_uneven_slices_are_rejected(tmp_path: Path, slice_z: list[float], message: str) -> None:
    write_dicom_series(tmp_path, ct_volume(), "1.2.3.9", slice_z=slice_z)
    with pytest.raises(ScanReadError, match=message):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("tilt", [15.0, 0.5])
def test_gantry_tilted_series_is_refused(tmp_path: Path, tilt: float) -> None:
    """ITK stacks the slices along their normal: a tilted stack would be read sheared, with a wrong z spacing."""
    write_dicom_series(tmp_path / "tilted", ct_volume(), "1.2.3.9", tilt_degrees=tilt)
    with pytest.raises(ScanReadError, match=rf"series 1\.2\.3\.9 in {re.escape(str(tmp_path / 'tilted'))}: its slices "
                                            rf"are not stacked along their normal \(a gantry tilt of about {tilt:.1f} "
                                            r"degrees\?\): 1\.2\.3\.9-slice001\.dcm lies .* mm sideways .*dcm2niix"):
        read_dicom_series(tmp_path)


def test_single_slice_series_is_rejected(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, ct_volume((1, 4, 4)), "1.2.3.9")
    with pytest.raises(ScanReadError, match="single slice"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------------------------------
# Conversion (on real data: tests/test_real_data.py)


def test_convert_checks_every_series_before_writing(tmp_path: Path, capsys) -> None:
    write_dicom_series(tmp_path / "dicom" / "good", ct_volume(), "1.2.3.1")
    write_dicom_series(tmp_path / "dicom" / "gappy", ct_volume(), "1.2.3.2", slice_z=[0, 2.5, 5, 10, 12.5])
    with pytest.raises(SystemExit) as exit_:
        convert_main([str(tmp_path / "dicom"), str(tmp_path / "out")])
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: series 1.2.3.2 in ")
    assert "missing slices" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()

    (tmp_path / "dicom" / "gappy" / "1.2.3.2-slice002.dcm").unlink()  # now 3 evenly spaced slices
    (tmp_path / "dicom" / "gappy" / "1.2.3.2-slice001.dcm").unlink()
    assert convert_main([str(tmp_path / "dicom"), str(tmp_path / "out")]) == 0
    assert "converted 2 series" in capsys.readouterr().out
    np.testing.assert_array_equal(read_scan(tmp_path / "out" / "1.2.3.1.mhd").array, ct_volume())
    assert read_scan(tmp_path / "out" / "1.2.3.2.mhd").shape_zyx == (3, 6, 7)


def test_convert_reports_missing_folder(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        convert_main([str(tmp_path / "absent"), str(tmp_path / "out")])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent'}: DICOM folder not found; check the path\n"


# --------------------------------------------------------------------------------------------------
# Scan index


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_index_scans_finds_formats_and_subsets(tmp_path: Path) -> None:
    for name in ["subset0/1.3.6.1.mhd", "subset0/1.3.6.1.raw", "subset3/deeper/b.nii.gz", "other/c.nrrd", "d.nii",
                 "subset1/.x.mhd.0123.tmp", "subset1/.x.mhd.4567.tmp/x.mhd", "notes/readme.txt"]:
        touch(tmp_path / name)
    table = index_scans(tmp_path)
    assert list(table.columns) == ["seriesuid", "path", "subset"]
    assert table["seriesuid"].tolist() == ["1.3.6.1", "b", "c", "d"]
    assert table["subset"].tolist() == [0, 3, -1, -1]
    assert table["path"].tolist() == [str(tmp_path / p) for p in
                                      ["subset0/1.3.6.1.mhd", "subset3/deeper/b.nii.gz", "other/c.nrrd", "d.nii"]]
    assert index_scans(tmp_path / "subset3")["subset"].tolist() == [3]


def test_index_scans_reports_duplicates_and_missing_root(tmp_path: Path) -> None:
    touch(tmp_path / "subset0" / "a.mhd")
    touch(tmp_path / "subset2" / "a.nii.gz")
    with pytest.raises(ScanReadError, match=r"several scan files.*subset0/a\.mhd.*subset2/a\.nii\.gz"):
        index_scans(tmp_path)
    with pytest.raises(ScanReadError, match="scan folder not found"):
        index_scans(tmp_path / "absent")
    assert index_scans(tmp_path / "subset0").shape == (1, 3)
