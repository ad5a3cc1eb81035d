"""A detector's boxes as candidates: the three file forms, merging, bad files, ``predict detections=`` and the
FROC of the detector alone, the classifier alone and their fusion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data.labels.annotations import read_annotations
from lungexp.data.labels.detector_boxes import (
    DETECTOR_SCORE,
    DetectionError,
    merge_duplicates,
    read_detections,
)
from lungexp.data.names import COORD_COLUMNS, POINT_COLUMNS
from lungexp.data.scans import read_scan_header
from lungexp.data.synthetic.simulated_detector import BOX_SIZE_COLUMNS, monai_entries, simulate_detections
from lungexp.froc import main as froc_main
from lungexp.inference.false_positive_reduction import (
    DETECTION_SUBMISSION_COLUMNS,
    check_candidate_options,
    fused,
    score_detections,
)
from lungexp.inference.model import Predictor
from lungexp.inference.scans import open_scans
from lungexp.metrics.luna16_froc import compute_froc
from lungexp.utils.errors import ConfigError, LungexpError
from tests.helpers.checkpoints import write_checkpoint
from tests.helpers.cli import entry_point_command, entry_point_env
from tests.helpers.config import PROJECT_ROOT


def synthetic_detector(root: Path, seriesuids: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The simulated detector's boxes (two false marks a scan) and the points they must become."""
    detections = simulate_detections(root, seriesuids, false_marks_per_scan=2)
    return detections.boxes, detections.expected


def canonical(points: pd.DataFrame) -> pd.DataFrame:
    return points[POINT_COLUMNS + [DETECTOR_SCORE]].sort_values(POINT_COLUMNS).reset_index(drop=True)


def as_corners(boxes: pd.DataFrame) -> pd.DataFrame:
    corners = boxes[["seriesuid"]].copy()
    for axis, centre, size in zip("xyz", COORD_COLUMNS, BOX_SIZE_COLUMNS, strict=True):
        corners[f"{axis}_min"] = boxes[centre] - boxes[size] / 2
        corners[f"{axis}_max"] = boxes[centre] + boxes[size] / 2
    return corners.assign(score=boxes["score"])


@pytest.fixture(scope="module")
def detector(synthetic_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_detector(synthetic_root)


def test_boxes_around_nodules_and_false_marks_become_the_expected_points(detector, tmp_path: Path) -> None:
    boxes, expected = detector
    path = tmp_path / "boxes.csv"
    boxes.to_csv(path, index=False)

    read = read_detections(path)
    points = merge_duplicates(read, 5.0)

    assert len(read) == len(boxes) and len(points) == len(expected) < len(boxes)
    pd.testing.assert_frame_equal(canonical(points), canonical(expected), check_exact=False, rtol=1e-12)
    assert list(points.index) == sorted(points.index)  # file order and row numbers kept


def test_duplicates_within_the_radius_merge_into_the_highest_scoring_box() -> None:
    boxes = pd.DataFrame({"seriesuid": ["a", "a", "a", "a", "b"],
                          "coordX": [0.0, 4.0, 10.0, 4.0 + 4.9, 0.0], "coordY": 0.0, "coordZ": 0.0,
                          DETECTOR_SCORE: [0.9, 0.95, 0.1, 0.5, 0.2]})
    merged = merge_duplicates(boxes, 5.0)
    # 0.95 at x=4 removes x=0 (4 mm) and x=8.9 (4.9 mm); x=10 is 6 mm from it and stays; series b is apart.
    assert merged.index.tolist() == [1, 2, 4]
    assert merged[DETECTOR_SCORE].tolist() == [0.95, 0.1, 0.2]
    assert merge_duplicates(boxes, 0.0).equals(boxes)
    assert merge_duplicates(boxes, 20.0).index.tolist() == [1, 4]


def test_corners_and_monai_json_give_the_same_points_as_centres(detector, tmp_path: Path) -> None:
    boxes, _ = detector
    boxes.to_csv(tmp_path / "centres.csv", index=False)
    as_corners(boxes).to_csv(tmp_path / "corners.csv", index=False)
    (tmp_path / "bundle.json").write_text(json.dumps(monai_entries(boxes, "label_scores")))
    (tmp_path / "tutorial.json").write_text(json.dumps({"validation": monai_entries(boxes, "score")}))
    submission = boxes[POINT_COLUMNS].assign(probability=boxes["score"])  # a detector's LUNA16 submission
    submission.to_csv(tmp_path / "submission.csv", index=False)

    centres = canonical(read_detections(tmp_path / "centres.csv"))
    for name in ("corners.csv", "bundle.json", "tutorial.json", "submission.csv"):
        pd.testing.assert_frame_equal(canonical(read_detections(tmp_path / name)), centres, check_exact=False,
                                      rtol=1e-12, obj=name)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("no_score.csv", "seriesuid,coordX,coordY,coordZ\na,1,2,3\n", "missing column(s) ['score']"),
    ("logits.csv", "seriesuid,coordX,coordY,coordZ,score\na,1,2,3,0.5\na,1,2,3,2.3\n",
     "column 'score' must hold a detector score in [0, 1], but 1 row(s) do not: row(s) 3 (2.3); rescale"),
    ("text.csv", "seriesuid,coordX,coordY,coordZ,score\na,1,x,3,0.5\n", "column 'coordY' must hold a finite"),
    ("flipped.csv", "seriesuid,x_min,y_min,z_min,x_max,y_max,z_max,score\na,0,0,0,1,1,1,.5\na,0,0,5,1,1,1,.5\n",
     "column 'x_max, y_max, z_max' must hold at least x_min, y_min, z_min (max corner >= min corner, world mm), "
     "but 1 row(s) do not: row(s) 3"),
    ("negative_size.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm,score\na,1,2,3,-4,0.5\n",
     "column 'diameter_mm' must hold a size >= 0 (mm), but 1 row(s) do not: row(s) 2 (-4.0)"),
    ("no_uid.csv", "coordX,coordY,coordZ,score\n1,2,3,0.5\n", "has no seriesuid column; add one"),
    ("empty.csv", "", "the file is empty"),
    ("counts.json", json.dumps([{"box": [[1, 2, 3, 4, 4, 4]], "label_scores": [0.5, 0.4], "image": "a.nii.gz"}]),
     "entry 0 (a): 1 box(es) but 2 score(s) in 'label_scores'"),
    ("short_box.json", json.dumps([{"box": [[1, 2, 3, 4, 4]], "label_scores": [0.5], "image": "a.mhd"}]),
     "entry 0 (a): 'box' must be a list of boxes of 6 numbers each (cccwhd"),
    ("no_box.json", json.dumps({"validation": [{"boxes": [], "score": [], "image": "a.mhd"}]}),
     "'validation'[0] is not an image's detections (its keys are ['boxes', 'image', 'score'])"),
    ("logits.json", json.dumps([{"box": [[1, 2, 3, 4, 4, 4]] * 2, "label_scores": [0.5, -3], "image": "a.mhd"}]),
     "entry 0 (a): 'label_scores' must hold detector scores in [0, 1], but 1 box(es) do not: entry 0, box 1; rescale"),
    ("nan_box.json", json.dumps({"validation": [{"box": [[1, 2, 3, 4, 4, 4]], "score": [0.5], "image": "a.mhd"},
                                                {"box": [[1, 2, 3, 4, -4, 4]], "score": [0.5], "image": "b.mhd"}]}),
     "'validation'[1] (b): 'box' must hold finite cccwhd boxes with sizes >= 0, but 1 box(es) do not: "
     "'validation'[1], box 0"),
    ("broken.json", "[{", "not a readable JSON file"),
])
def test_a_bad_detections_file_is_one_message_naming_it(tmp_path: Path, name: str, content: str,
                                                        expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DetectionError) as error:
        read_detections(path)
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_a_csv_without_seriesuid_is_read_for_a_single_scan(tmp_path: Path) -> None:
    path = tmp_path / "one_scan.csv"
    path.write_text("coordX,coordY,coordZ,score\n1,2,3,0.5\n")
    assert read_detections(path, seriesuid="1.2.3").to_dict("records") == [
        {"seriesuid": "1.2.3", "coordX": 1.0, "coordY": 2.0, "coordZ": 3.0, DETECTOR_SCORE: 0.5}]


@pytest.mark.parametrize(("options", "expected"), [
    ({"candidates": "p.csv", "detections": "d.csv"}, "got both"),
    ({}, "got neither"),
    ({"candidates": "p.csv", "fuse": "product"}, "fuse=product fuses a detector's scores"),
    ({"detections": "d.csv", "fuse": "prod"}, "fuse='prod' is not a valid choice (did you mean 'product'?)"),
    ({"detections": "d.csv", "merge_radius_mm": -1.0}, "merge_radius_mm=-1.0 must be a number >= 0"),
])
def test_predict_options_need_one_source_of_candidates(options: dict, expected: str) -> None:
    settings = {"candidates": None, "detections": None, "fuse": "none", "merge_radius_mm": 5.0, **options}
    with pytest.raises(ConfigError) as error:
        check_candidate_options(**settings)
    assert expected in str(error.value)


def test_fusions() -> None:
    detector, classifier = pd.Series([0.2, 1.0, 0.5]), pd.Series([0.5, 0.3, 0.0])
    np.testing.assert_allclose(fused(detector, classifier, "product"), [0.1, 0.3, 0.0])
    np.testing.assert_allclose(fused(detector, classifier, "mean"), [0.35, 0.65, 0.25])
    np.testing.assert_array_equal(fused(detector, classifier, "none"), classifier)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("detections") / "tiny.ckpt")


@pytest.fixture(scope="module")
def one_scan(synthetic_root: Path) -> Path:
    return sorted(synthetic_root.glob("subset*/*.mhd"))[0]


def test_a_box_outside_its_scan_is_named_with_its_row(tiny_checkpoint: Path, one_scan: Path, tmp_path: Path) -> None:
    low, high = read_scan_header(one_scan).world_extent()
    x, y, z = (low + high) / 2
    path = tmp_path / "boxes.csv"  # no seriesuid column: the scans are one series
    pd.DataFrame({"coordX": [x, 9000.0], "coordY": y, "coordZ": z, "score": 0.5}).to_csv(path, index=False)
    with pytest.raises(LungexpError, match=rf"boxes.csv: 1 candidate\(s\) of {one_scan.stem} lie outside its scan "
                                           rf".*: row 3 at \(9000.0, {y:.1f}, {z:.1f}\) mm"):
        score_detections(Predictor(tiny_checkpoint, device="cpu"), open_scans(one_scan), path)


@pytest.mark.parametrize(("image", "expected"), [
    ("scan", r"1 candidate\(s\) of {uid} lie outside its scan .*: entry 1, box 1 at \(9000\.0, "),
    ("/data/1.2.3.other.nii.gz", r"unknown seriesuid 1\.2\.3\.other \(entry 1, box 0; entry 1, box 1\)"),
], ids=["outside", "unknown"])
def test_a_json_box_that_cannot_be_scored_is_named_by_entry_and_box(tiny_checkpoint: Path, one_scan: Path,
                                                                     tmp_path: Path, image: str, expected: str) -> None:
    low, high = read_scan_header(one_scan).world_extent()
    centre = ((low + high) / 2).tolist()
    entries = [{"box": [[*centre, 4, 4, 4]], "label_scores": [0.5], "image": str(one_scan)},
               {"box": [[*centre, 4, 4, 4], [9000.0, *centre[1:], 4, 4, 4]], "label_scores": [0.5, 0.6],
                "image": str(one_scan) if image == "scan" else image}]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(LungexpError, match=expected.format(uid=one_scan.stem)) as error:
        score_detections(Predictor(tiny_checkpoint, device="cpu"), open_scans(one_scan), path, merge_radius_mm=0)
    assert "row " not in str(error.value)  # not spreadsheet rows: a JSON has none


@pytest.mark.slow
def test_predict_detections_writes_three_scores_and_froc_reports_each(tiny_checkpoint: Path, one_scan: Path,
                                                                      synthetic_root: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    boxes, expected = synthetic_detector(synthetic_root, [one_scan.stem])
    detections = tmp_path / "boxes.json"
    detections.write_text(json.dumps(monai_entries(boxes, "label_scores")))
    out = tmp_path / "predictions.csv"

    command = entry_point_command("predict", [f"ckpt_path={tiny_checkpoint}", f"scans={one_scan}",
                                              f"detections={detections}", "fuse=product", f"out={out}", "device=cpu"])
    done = subprocess.run(command, cwd=tmp_path, env={**entry_point_env(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)},
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(boxes)} box(es) -> {len(expected)} candidate(s) (duplicates within 5 mm merged); " \
           "probability = detector_score × classifier_probability" in done.stdout
    table = pd.read_csv(out, dtype={"seriesuid": str})
    assert list(table.columns) == DETECTION_SUBMISSION_COLUMNS
    pd.testing.assert_frame_equal(canonical(table), canonical(expected), check_exact=False, rtol=1e-12)
    np.testing.assert_allclose(table["probability"], table[DETECTOR_SCORE] * table["classifier_probability"],
                               rtol=1e-6)
    assert table["classifier_probability"].between(0, 1).all() and table["classifier_probability"].std() > 0

    annotations = synthetic_root / "annotations.csv"
    assert froc_main([str(out), str(annotations), "--out", str(tmp_path / "froc")]) == 0
    printed = capsys.readouterr().out
    nodules = read_annotations(annotations)
    cpms = {column: compute_froc(table.assign(probability=table[column]), nodules).cpm
            for column in (DETECTOR_SCORE, "classifier_probability", "probability")}
    for column, cpm in cpms.items():
        assert any(line.split()[:2] == [column, f"{cpm:.4f}"] for line in printed.splitlines()), printed
    written = pd.read_csv(tmp_path / "froc" / "froc_scores.csv")
    assert written["score"].tolist() == list(cpms)
    np.testing.assert_allclose(written["cpm"], list(cpms.values()))


def test_the_simulation_script_writes_monai_json_of_one_subset(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "result_fold0.json"
    script = [sys.executable, str(PROJECT_ROOT / "scripts" / "simulate_detections.py"), str(synthetic_root)]
    done = subprocess.run([*script, "--subset", "0", "--out", str(out)], capture_output=True, text=True, check=True)
    subset = sorted(path.stem for path in (synthetic_root / "subset0").glob("*.mhd"))
    expected = simulate_detections(synthetic_root, subset).expected
    points = merge_duplicates(read_detections(out))
    pd.testing.assert_frame_equal(canonical(points), canonical(expected), check_exact=False, rtol=1e-12)
    assert set(points["seriesuid"]) == set(subset)
    assert f"({len(expected)} after merging duplicates)" in done.stdout
    missing = subprocess.run([*script, "--subset", "9", "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "subset9 holds no .mhd" in missing.stderr
