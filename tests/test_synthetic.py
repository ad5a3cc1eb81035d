"""The synthetic LUNA16-format generator: layout, geometry, content, labels, determinism, atomicity."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lungexp.data.names import DEMO_RATING_COLUMNS, MALIGNANCY_COLUMNS
from lungexp.data.synthetic import SyntheticDataset, generate_luna16_dataset, generator, nodules
from lungexp.data.synthetic.geometry import Geometry
from lungexp.data.synthetic.manifest import SyntheticDataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (40, 96, 96)
PARAMS = {
    "num_scans": 4,
    "num_subsets": 2,
    "shape_zyx": SHAPE,
    "nodules_per_scan": (2, 3),
    "negatives_per_scan": 12,
    "seed": 11,
}
TINY = {"num_scans": 2, "shape_zyx": (24, 64, 64), "nodules_per_scan": (1, 1), "negatives_per_scan": 4}
LUNA_ANNOTATION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
LUNA_CANDIDATE_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "class"]
CSV_NAMES = ("annotations.csv", "candidates_V2.csv", "annotations_with_malignancy.csv", ".synthetic.json")


@dataclass(frozen=True)
class Scan:
    array: np.ndarray  # (z, y, x) HU
    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    body: np.ndarray

    def voxel(self, world_xyz: tuple[float, float, float]) -> tuple[int, int, int]:
        """World (x, y, z) mm -> array index (z, y, x), written out independently of the generator."""
        index_xyz = np.rint((np.asarray(world_xyz) - self.origin_xyz) / self.spacing_xyz).astype(int)
        return int(index_xyz[2]), int(index_xyz[1]), int(index_xyz[0])


def body_mask(array: np.ndarray) -> np.ndarray:
    """Everything inside the skin: per axial slice, the non-air region with its holes (lungs) filled."""
    return np.stack([ndimage.binary_fill_holes(axial) for axial in array > -400])


def world(row) -> tuple[float, float, float]:
    return row.coordX, row.coordY, row.coordZ


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_luna16_dataset(tmp_path_factory.mktemp("synthetic") / "luna16", **PARAMS)


@pytest.fixture(scope="module")
def manifest(dataset: SyntheticDataset) -> dict:
    return json.loads((dataset.root / ".synthetic.json").read_text())


@pytest.fixture(scope="module")
def scans(dataset: SyntheticDataset, manifest: dict) -> dict[str, Scan]:
    loaded = {}
    for entry in manifest["scans"]:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset.mhd_path(entry["seriesuid"]))))
        loaded[entry["seriesuid"]] = Scan(
            array, np.array(entry["origin_xyz"]), np.array(entry["spacing_xyz"]), body_mask(array)
        )
    return loaded


@pytest.fixture(scope="module")
def annotations(dataset: SyntheticDataset) -> pd.DataFrame:
    return pd.read_csv(dataset.annotations_csv)


def test_scans_are_luna16_metaimages_with_the_recorded_geometry(
    dataset: SyntheticDataset, manifest: dict
) -> None:
    assert [entry["seriesuid"] for entry in manifest["scans"]] == list(dataset.series_uids)
    assert len(set(dataset.series_uids)) == PARAMS["num_scans"]
    for index, entry in enumerate(manifest["scans"]):
        uid = entry["seriesuid"]
        suffix = uid.removeprefix("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
        assert suffix != uid and suffix.isdigit() and not suffix.startswith("0") and len(uid) <= 64
        mhd = dataset.root / f"subset{index % PARAMS['num_subsets']}" / f"{uid}.mhd"
        assert mhd.is_file() and mhd.with_suffix(".raw").is_file() and dataset.mhd_path(uid) == mhd
        assert "CompressedData = False" in mhd.read_text()

        image = sitk.ReadImage(str(mhd))
        assert image.GetPixelID() == sitk.sitkInt16
        assert image.GetSize() == SHAPE[::-1]
        assert sitk.GetArrayFromImage(image).shape == SHAPE
        assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        np.testing.assert_allclose(image.GetSpacing(), entry["spacing_xyz"], atol=1e-9)
        np.testing.assert_allclose(image.GetOrigin(), entry["origin_xyz"], atol=1e-6)

        spacing_x, spacing_y, spacing_z = entry["spacing_xyz"]
        assert spacing_x == spacing_y and 0.6 <= spacing_x <= 0.9
        assert spacing_z in (1.25, 1.5, 2.0, 2.5)
        origin_x, origin_y, origin_z = entry["origin_xyz"]
        assert -170 <= origin_x <= -120 and -170 <= origin_y <= -120 and -300 <= origin_z <= -100


def test_every_annotation_maps_onto_a_nodule_voxel(
    dataset: SyntheticDataset, annotations: pd.DataFrame, scans: dict[str, Scan]
) -> None:
    assert list(annotations.columns) == LUNA_ANNOTATION_COLUMNS
    per_scan = annotations["seriesuid"].value_counts().reindex(list(dataset.series_uids), fill_value=0)
    assert per_scan.between(*PARAMS["nodules_per_scan"]).all()
    assert annotations["diameter_mm"].between(3.0, 30.0).all()
    for row in annotations.itertuples():
        scan = scans[row.seriesuid]
        index = scan.voxel(world(row))
        assert all(0 <= i < n for i, n in zip(index, SHAPE, strict=True)), (
            f"annotation outside its scan: {row}"
        )
        assert scan.array[index] > -300, f"annotation not on a nodule: {row}"


def test_candidates_hit_nodules_and_negatives_are_hard(
    dataset: SyntheticDataset, annotations: pd.DataFrame, scans: dict[str, Scan]
) -> None:
    candidates = pd.read_csv(dataset.candidates_csv)
    assert list(candidates.columns) == LUNA_CANDIDATE_COLUMNS
    assert set(candidates["class"]) == {0, 1}
    nodules = {uid: group for uid, group in annotations.groupby("seriesuid")}

    def distances(row) -> tuple[np.ndarray, np.ndarray]:
        group = nodules[row.seriesuid]
        centres = group[["coordX", "coordY", "coordZ"]].to_numpy()
        return np.linalg.norm(centres - np.array(world(row)), axis=1), group["diameter_mm"].to_numpy() / 2

    positives = candidates[candidates["class"] == 1]
    assert len(positives) == len(annotations)
    for row in positives.itertuples():
        distance, radius = distances(row)
        assert (distance < radius / 2).any(), f"class-1 candidate away from every nodule: {row}"

    negatives = candidates[candidates["class"] == 0]
    assert (negatives["seriesuid"].value_counts() == PARAMS["negatives_per_scan"]).all()
    on_bright = []
    for row in negatives.itertuples():
        distance, radius = distances(row)
        assert (distance > radius + 3.0 - 0.05).all(), f"negative inside a nodule's exclusion zone: {row}"
        scan = scans[row.seriesuid]
        index = scan.voxel(world(row))
        assert scan.body[index], f"negative outside the body: {row}"
        on_bright.append(scan.array[index] > -400)
    # Mostly on vessels and pleura, but some in plain parenchyma.
    assert 0.6 <= np.mean(on_bright) <= 0.95


def test_tissues_have_chest_ct_intensities(scans: dict[str, Scan]) -> None:
    for scan in scans.values():
        outside = ~ndimage.binary_dilation(scan.body, iterations=3)
        assert abs(scan.array[outside].mean() + 1000) < 15
        lung = scan.body & (scan.array < -400)
        assert 0.1 < lung.sum() / scan.body.sum() < 0.7
        assert -900 <= scan.array[lung].mean() <= -750
        body = scan.array[scan.body]
        assert ((body >= -20) & (body <= 100)).mean() > 0.15  # muscle, mediastinum
        assert ((body >= -150) & (body <= -60)).mean() > 0.03  # subcutaneous fat
        assert (body > 300).mean() > 0.002  # spine and ribs


def test_malignancy_table_matches_annotations(
    dataset: SyntheticDataset, manifest: dict, annotations: pd.DataFrame
) -> None:
    table = pd.read_csv(dataset.malignancy_csv)
    # The release's columns (tests/test_real_data.py), then the readers' ratings (test_ratings_follow_the_image).
    assert list(table.columns) == [*MALIGNANCY_COLUMNS, *DEMO_RATING_COLUMNS]
    pd.testing.assert_frame_equal(table[LUNA_ANNOTATION_COLUMNS], annotations)
    assert table["mal_bool"].dtype == bool
    assert 0.3 <= table["mal_bool"].mean() <= 0.5
    ratings = table["mal_details"].map(ast.literal_eval)
    assert (ratings.map(len) == table["len_mal_details"]).all()
    assert table["len_mal_details"].between(1, 4).all()
    assert all(1 <= score <= 5 for scores in ratings for score in scores)
    assert ((ratings.map(np.mean) > 3) == table["mal_bool"]).all()
    spacing = pd.DataFrame(
        {entry["seriesuid"]: entry["spacing_xyz"] for entry in manifest["scans"]}, index=list("XYZ")
    )
    for axis in "XYZ":
        low, high, centre = table[f"bboxLow{axis}"], table[f"bboxHigh{axis}"], table[f"coord{axis}"]
        assert (low < centre).all() and (centre < high).all()
        voxel = table["seriesuid"].map(spacing.loc[axis])  # the box spans whole voxels
        assert (high - low <= table["diameter_mm"] + voxel + 1e-6).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_run_of_nodules_is_about_40_percent_malignant(seed: int) -> None:
    labels = np.array(nodules.malignancy_labels(seed, 0, 500))
    assert 0.38 <= labels.mean() <= 0.42
    windows = np.convolve(labels, np.ones(10), mode="valid") / 10
    assert windows.min() >= 0.3 and windows.max() <= 0.5
    assert labels[:50].tolist() == nodules.malignancy_labels(seed, 0, 50)
    assert labels[20:30].tolist() == nodules.malignancy_labels(seed, 20, 10)
    assert labels.tolist() != nodules.malignancy_labels(seed + 10, 0, 500)


def test_malignancy_is_learnable_but_not_trivial() -> None:
    """Over many nodules, size, texture and shape differ by class but overlap."""
    lung = np.zeros((44, 44, 44), dtype=bool)
    lung[2:-2, 2:-2, 2:-2] = True
    geometry = Geometry(lung.shape, np.ones(3), np.zeros(3))
    clearance = ndimage.distance_transform_edt(lung)
    rng = np.random.default_rng(0)
    malignant = np.arange(400) % 5 < 2
    placed = [nodules.place_nodules(rng, [label], lung, clearance, geometry)[0] for label in malignant]
    assert [n.malignant for n in placed] == malignant.tolist()
    diameter = np.array([n.diameter_mm for n in placed])
    kind = np.array([n.appearance.kind for n in placed])
    lobulation = np.array([n.appearance.lobulation for n in placed])
    assert np.median(diameter[malignant]) > 1.4 * np.median(diameter[~malignant])
    assert (kind[malignant] == "part_solid").mean() > (kind[~malignant] == "part_solid").mean()
    assert (kind[~malignant] == "calcified").mean() > 0.1 > (kind[malignant] == "calcified").mean()
    assert lobulation[malignant].mean() > 2 * lobulation[~malignant].mean()
    ranks = pd.Series(diameter).rank().to_numpy()
    n_pos, n_neg = malignant.sum(), (~malignant).sum()
    size_auc = (ranks[malignant].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert 0.65 < size_auc < 0.95


# SHA-256 (16 hex digits) of what the generator wrote for BYTES_PARAMS before the ratings were added (commit
# 9b9e3e5): adding them must move no scan, label or candidate, so `make run`'s figures stay where they were.
BYTES_PARAMS = {"num_scans": 3, "num_subsets": 2, "shape_zyx": (24, 64, 64), "nodules_per_scan": (2, 3),
                "negatives_per_scan": 4, "seed": 7}
BYTES_BEFORE_RATINGS = {
    "annotations.csv": "85f423c69eef69bb",
    "annotations_with_malignancy.csv": "bb2f3077f9a7d5e5",  # without the rating columns
    "candidates_V2.csv": "8f5c060af5aca9cd",
    "subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.372085689771804720131518740905.mhd": "8d51a06ea923c130",
    "subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.372085689771804720131518740905.raw": "e4a5dbe8e02c54f3",
    "subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.467440266680603205553079775031.mhd": "0114cf0e2702838e",
    "subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.467440266680603205553079775031.raw": "aeb9f65922ca8af5",
    "subset1/1.3.6.1.4.1.14519.5.2.1.6279.6001.743042314083230843211002978664.mhd": "01300cf6937cb974",
    "subset1/1.3.6.1.4.1.14519.5.2.1.6279.6001.743042314083230843211002978664.raw": "36c923b7fa18b82c",
    "manifest scans": "8b177f0840410d7f",  # the scans' geometry in .synthetic.json
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def test_the_ratings_left_every_scan_label_and_candidate_byte_for_byte(tmp_path: Path) -> None:
    root = generate_luna16_dataset(tmp_path / "luna16", **BYTES_PARAMS).root
    written = {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*")
               if path.is_file() and path.name != ".synthetic.json"}
    malignancy = written["annotations_with_malignancy.csv"].decode().splitlines()
    assert malignancy[0].endswith("," + ",".join(DEMO_RATING_COLUMNS))  # the ratings are the last columns
    written["annotations_with_malignancy.csv"] = "".join(
        line.rsplit(",", len(DEMO_RATING_COLUMNS))[0] + "\n" for line in malignancy).encode()
    digests = {name: _digest(data) for name, data in written.items()}
    digests["manifest scans"] = _digest(json.dumps(json.loads((root / ".synthetic.json").read_text())["scans"],
                                                   sort_keys=True).encode())
    assert digests == BYTES_BEFORE_RATINGS


def test_ratings_follow_the_image(dataset: SyntheticDataset) -> None:
    """Texture, spiculation and calcification are what the nodule looks like (up to reader noise); malignancy is
    the readers' mean rating, so 4-5 are malignant and 1-2 benign: targets on them have something to learn."""
    lung = np.zeros((60, 60, 60), dtype=bool)
    lung[2:-2, 2:-2, 2:-2] = True
    geometry = Geometry(lung.shape, np.ones(3), np.zeros(3))
    clearance = ndimage.distance_transform_edt(lung)
    rng, ratings_rng = np.random.default_rng(0), np.random.default_rng(1)
    placed = [nodules.place_nodules(rng, [index % 5 < 2], lung, clearance, geometry)[0] for index in range(400)]
    rated = pd.DataFrame([nodules.reader_ratings(ratings_rng, nodule) for nodule in placed])
    kind = np.array([nodule.appearance.kind for nodule in placed])
    spicules = np.array([len(nodule.appearance.spicule_lengths) for nodule in placed])
    malignant = np.array([nodule.malignant for nodule in placed])
    assert list(rated.columns) == DEMO_RATING_COLUMNS
    assert ((rated["calcification"] == 3) == (kind == "calcified")).all()
    assert set(rated["calcification"]) == {3, 6}
    assert rated.loc[kind != "part_solid", "texture"].isin([4, 5]).all()
    assert rated.loc[kind == "part_solid", "texture"].between(1, 5).all()
    assert rated.loc[kind == "part_solid", "texture"].mean() < 3.6 < rated.loc[kind == "solid", "texture"].mean()
    assert rated.loc[spicules > 0, "spiculation"].min() >= 2 and rated.loc[spicules == 0, "spiculation"].max() <= 3
    assert 0.03 < (rated.loc[kind != "part_solid", "texture"] == 4).mean() < 0.2  # reader noise, as READER_NOISE
    assert ((rated["malignancy"] >= 4) <= malignant).all() and ((rated["malignancy"] <= 2) <= ~malignant).all()
    table = pd.read_csv(dataset.malignancy_csv)  # and the generated CSV holds them, as whole numbers in range
    assert table[DEMO_RATING_COLUMNS].dtypes.eq(np.int64).all() and table[DEMO_RATING_COLUMNS[:3]].isin(range(1, 6)).all().all()


def test_same_seed_gives_identical_files_and_another_seed_differs(
    dataset: SyntheticDataset, tmp_path: Path
) -> None:
    again = generate_luna16_dataset(tmp_path / "again", **PARAMS)
    assert again.series_uids == dataset.series_uids
    for name in CSV_NAMES:
        assert (again.root / name).read_bytes() == (dataset.root / name).read_bytes(), name
    for uid in dataset.series_uids:
        for suffix in (".mhd", ".raw"):
            assert (
                again.mhd_path(uid).with_suffix(suffix).read_bytes()
                == dataset.mhd_path(uid).with_suffix(suffix).read_bytes()
            )

    other = generate_luna16_dataset(tmp_path / "other", **{**PARAMS, "seed": 12, "num_scans": 1})
    assert other.series_uids[0] != dataset.series_uids[0]
    other_raw = other.mhd_path(other.series_uids[0]).with_suffix(".raw").read_bytes()
    assert other_raw != dataset.mhd_path(dataset.series_uids[0]).with_suffix(".raw").read_bytes()
    other_annotations = pd.read_csv(other.annotations_csv)
    assert not np.isin(other_annotations["coordX"], pd.read_csv(dataset.annotations_csv)["coordX"]).any()


def test_complete_dataset_is_reused_and_other_parameters_are_refused(
    dataset: SyntheticDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("regenerated a dataset that was already complete")

    monkeypatch.setattr(generator, "_write_dataset", fail)
    # Hydra passes lists; they mean the same parameters.
    as_lists = {**PARAMS, "shape_zyx": list(SHAPE), "nodules_per_scan": list(PARAMS["nodules_per_scan"])}
    assert generate_luna16_dataset(dataset.root, **as_lists) == dataset
    with pytest.raises(ValueError, match="overwrite=True"):
        generate_luna16_dataset(dataset.root, **{**PARAMS, "seed": 99})


def test_interrupted_run_leaves_nothing_and_overwrite_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "luna16"
    generate_scan = generator._generate_scan

    def interrupted_on_second_scan(params, index, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt
        return generate_scan(params, index, *args, **kwargs)

    monkeypatch.setattr(generator, "_generate_scan", interrupted_on_second_scan)
    with pytest.raises(KeyboardInterrupt):
        generate_luna16_dataset(root, **TINY)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset at root nor a staging folder
    monkeypatch.undo()

    first = generate_luna16_dataset(root, **TINY)
    replaced = generate_luna16_dataset(root, **TINY, seed=5, overwrite=True)
    assert replaced.series_uids != first.series_uids
    assert json.loads((root / ".synthetic.json").read_text())["params"]["seed"] == 5
    assert list(tmp_path.iterdir()) == [root]
    assert all(replaced.mhd_path(uid).is_file() for uid in replaced.series_uids)


@pytest.mark.parametrize("case", ["other files", "a file", "under a file", "damaged manifest"])
def test_refuses_a_folder_that_holds_something_else_naming_it(tmp_path: Path, case: str) -> None:
    """paths.data_dir at a folder that is not generated data was a FileExistsError traceback."""
    root = tmp_path / "synthetic_luna16"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset")
    if case == "other files":
        root.mkdir()
        (root / "scan.nii.gz").write_bytes(b"mine")
    elif case == "a file":
        root = notes
    elif case == "under a file":
        root = notes / "synthetic_luna16"
    else:
        root.mkdir()
        (root / ".synthetic.json").write_text("{not json")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(SyntheticDataError) as refused:
        generate_luna16_dataset(root, **TINY)
    message = str(refused.value)
    expected = {"other files": f"{root} exists but holds no dataset generated by lungexp",
                "a file": f"{root} exists but holds no dataset generated by lungexp",
                "under a file": f"{root}: {notes} is a file, not a folder",
                "damaged manifest": f"{root / '.synthetic.json'}: the manifest of the synthetic dataset is damaged"}
    assert message.startswith(expected[case]) and ("data.root" in message or f"delete {root}" in message)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before  # nothing written


def test_command_line_writes_a_dataset(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "scripts" / "generate_synthetic.py"),
            str(tmp_path / "cli"),
            "--num-scans",
            "1",
            "--shape",
            "24",
            "64",
            "64",
            "--nodules-per-scan",
            "1",
            "1",
            "--negatives-per-scan",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "scans:      1" in result.stdout
    assert (tmp_path / "cli" / "candidates_V2.csv").is_file()
