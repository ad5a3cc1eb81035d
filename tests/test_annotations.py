"""Reading and validating the LUNA16-style CSVs, and checking points against scan headers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungexp.data.labels.annotations import (
    OUTSIDE_CHOICES,
    AnnotationError,
    check_points_inside,
    read_annotations,
    read_candidates,
    read_malignancy_annotations,
    read_world_points,
)
from lungexp.data.scans import ScanHeader, ScanReadError
from lungexp.utils.errors import ConfigError

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.265775376735520890308424143898"

ANNOTATIONS = f"""seriesuid,coordX,coordY,coordZ,diameter_mm
{UID_A},-128.6994211,-175.3192718,-298.3875064,5.651470635
{UID_A},103.7836509,-211.9251487,-227.12125,4.224708481
{UID_B},-69.1757411,218.0526254,-668.5012726,4.441200069
"""

CANDIDATES = f"""seriesuid,coordX,coordY,coordZ,class
{UID_A},-56.08,-67.85,-311.92,0
{UID_A},53.21,-244.41,-245.17,1
{UID_B},103.66,-121.8,-286.62,0
"""

MALIGNANCY = f"""seriesuid,coordX,coordY,coordZ,diameter_mm,mal_bool,mal_details,bboxLowX,len_mal_details
{UID_A},-128.6994211,-175.31927180000002,-298.38750639999995,5.651470635,True,"[4, 2, 4, 2]",-131.89648,4
{UID_B},-69.1757411,218.0526254,-668.5012726,4.441200069,False,"[3, 2, 3]",-71.81593874999999,3
"""

POINTS = """seriesuid,coordX,coordY,coordZ,label,site
case_001,1.5,2.5,3.5,1,left
case_002,-4.0,5.0,6.0,0,right
"""


def write_csv(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------
# Readers on good input


def test_read_annotations(tmp_path: Path) -> None:
    table = read_annotations(write_csv(tmp_path, ANNOTATIONS))
    assert list(table.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert table["seriesuid"].tolist() == [UID_A, UID_A, UID_B]
    assert table["coordZ"].dtype == np.float64
    assert table.loc[1, "coordX"] == pytest.approx(103.7836509)
    assert table["diameter_mm"].tolist() == pytest.approx([5.651470635, 4.224708481, 4.441200069])


def test_read_candidates_parses_class_to_int(tmp_path: Path) -> None:
    table = read_candidates(write_csv(tmp_path, CANDIDATES.replace(",1\n", ",1.0\n")))
    assert table["class"].dtype == np.int64
    assert table["class"].tolist() == [0, 1, 0]


def test_read_malignancy_annotations_keeps_details(tmp_path: Path) -> None:
    table = read_malignancy_annotations(write_csv(tmp_path, MALIGNANCY))
    assert table["mal_bool"].dtype == bool
    assert table["mal_bool"].tolist() == [True, False]
    assert table["mal_details"].tolist() == ["[4, 2, 4, 2]", "[3, 2, 3]"]
    assert table["bboxLowX"].dtype == np.float64
    assert table["len_mal_details"].tolist() == [4, 3]


def test_read_world_points_keeps_ids_as_text_and_extra_columns(tmp_path: Path) -> None:
    table = read_world_points(write_csv(tmp_path, POINTS.replace("case_", "")))  # uids "001", "002"
    assert table["seriesuid"].tolist() == ["001", "002"]
    assert table["label"].tolist() == [1, 0]
    assert table["site"].tolist() == ["left", "right"]


def test_header_only_file_gives_empty_table(tmp_path: Path) -> None:
    table = read_candidates(write_csv(tmp_path, "seriesuid,coordX,coordY,coordZ,class\n"))
    assert table.empty
    assert list(table.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]


# --------------------------------------------------------------------------------------------------
# Broken input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"absent\.csv: CSV not found"):
        read_annotations(tmp_path / "absent.csv")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(AnnotationError, match=rf"{path}: the file is empty; expected a header line "
                                              "'seriesuid,coordX,coordY,coordZ,diameter_mm'"):
        read_annotations(path)


def test_renamed_column_suggests_closest_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ANNOTATIONS.replace("coordX", "coord_x").replace("diameter_mm", "Diameter"))
    with pytest.raises(AnnotationError) as info:
        read_annotations(path)
    message = str(info.value)
    assert str(path) in message
    assert "missing column(s) ['coordX', 'diameter_mm']" in message
    assert "found ['seriesuid', 'coord_x', 'coordY', 'coordZ', 'Diameter']" in message
    assert "did you mean 'coord_x' for 'coordX', 'Diameter' for 'diameter_mm'?" in message


def test_missing_column_without_close_match(tmp_path: Path) -> None:
    path = write_csv(tmp_path, CANDIDATES.replace(",class", ",score"))
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['class'\]; found .*'score'\]\. Expected") as info:
        read_candidates(path)
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "column", "rows"),
    [
        ("-211.9251487", "", "coordY", r"row\(s\) 3 \(empty\)"),
        ("-211.9251487", "abc", "coordY", r"row\(s\) 3 \('abc'\)"),
        ("-298.3875064", "inf", "coordZ", r"row\(s\) 2 \(inf\)"),
    ],
)
def test_bad_coordinates_name_rows(tmp_path: Path, old: str, new: str, column: str, rows: str) -> None:
    path = write_csv(tmp_path, ANNOTATIONS.replace(old, new))
    with pytest.raises(AnnotationError, match=rf"{path}: column '{column}' must hold a finite number "
                                              rf"\(world mm\), but 1 row\(s\) do not: {rows}"):
        read_annotations(path)


def test_non_positive_diameter(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ANNOTATIONS.replace("4.224708481", "0").replace("4.441200069", "-3"))
    with pytest.raises(AnnotationError, match=r"'diameter_mm' must hold a positive number.*row\(s\) 3 \(0\.0\), 4 \(-3\.0\)$"):
        read_annotations(path)


def test_bad_class_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path, CANDIDATES.replace(",1\n", ",2\n").replace(",0\n", ",yes\n", 1))
    with pytest.raises(AnnotationError, match=r"'class' must hold 0 or 1, but 2 row\(s\) do not: row\(s\) 2 \('yes'\), 3 \('2'\)"):
        read_candidates(path)


def test_bad_mal_bool_and_missing_uid(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"'mal_bool' must hold True or False.*row\(s\) 3 \('maybe'\)"):
        read_malignancy_annotations(write_csv(tmp_path, MALIGNANCY.replace("False", "maybe")))
    with pytest.raises(AnnotationError, match=r"'seriesuid' must hold a non-empty series UID.*row\(s\) 2"):
        read_annotations(write_csv(tmp_path, ANNOTATIONS.replace(f"{UID_A},-128", ",-128")))


def test_many_bad_rows_are_summarised(tmp_path: Path) -> None:
    rows = "".join(f"{UID_A},x,1,1,1\n" for _ in range(8))
    path = write_csv(tmp_path, "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + rows)
    with pytest.raises(AnnotationError, match=r"8 row\(s\) do not: row\(s\) 2 .*6 \('x'\) and 3 more$"):
        read_annotations(path)


# --------------------------------------------------------------------------------------------------
# Points against scans


def header(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0), size_xyz=(10, 10, 5)) -> ScanHeader:
    """A scan spanning x, y in [-0.5, 9.5] mm and z in [-1, 9] mm with the defaults."""
    return ScanHeader(size_xyz=np.array(size_xyz), origin=np.array(origin), spacing=np.array(spacing),
                      direction=np.eye(3), path=Path("scan.mhd"))


def points_table() -> pd.DataFrame:
    return pd.DataFrame({
        "seriesuid": ["a", "a", "b", "c", "a"],
        "coordX": [1.0, 9.4, 5.0, 1.0, 12.0],
        "coordY": [1.0, 0.0, 5.0, 1.0, 1.0],
        "coordZ": [0.0, 8.9, -10.0, 1.0, 1.0],
        "label": [1, 0, 1, 0, 1],
    })


def test_points_inside_pass_through() -> None:
    points = points_table().iloc[:2]
    kept = check_points_inside(points, {"a": header()}, source="labels.csv")
    pd.testing.assert_frame_equal(kept, points)


def test_unknown_seriesuid_is_an_error_listing_uids() -> None:
    headers = {"a": header(), "b": header(origin=(0, 0, -20))}
    with pytest.raises(AnnotationError, match=r"labels\.csv: 1 seriesuid\(s\) in 1 row\(s\) have no scan: c;"):
        check_points_inside(points_table(), headers, source="labels.csv")


def test_points_outside_are_an_error_with_row_uid_coordinate_and_extent() -> None:
    headers = {"a": header(), "b": header(), "c": header()}
    with pytest.raises(AnnotationError) as info:
        check_points_inside(points_table(), headers, source="labels.csv")
    message = str(info.value)
    assert message.startswith("labels.csv: 2 point(s) lie outside their scan")
    assert "row 4 (b) at (5.0, 5.0, -10.0) mm, scan spans x [-0.5, 9.5], y [-0.5, 9.5], z [-1.0, 9.0] mm" in message
    assert "row 6 (a) at (12.0, 1.0, 1.0) mm" in message


@pytest.mark.parametrize("on_outside", OUTSIDE_CHOICES)
def test_points_that_fit_the_size_in_another_order_blame_the_header(on_outside: str) -> None:
    """DimSize written z y x: the header, not the CSV, is wrong (and the voxels would be read scrambled)."""
    points = pd.DataFrame({"seriesuid": "a", "coordX": [1.0, 5.0, 6.0], "coordY": [1.0, 7.0, 8.0],
                           "coordZ": [0.0, 2.0, 4.0]})
    swapped = header(size_xyz=(10, 4, 10))  # y [-0.5, 3.5] mm: two of the three points outside
    with pytest.raises(ScanReadError, match=r"scan\.mhd: DimSize 10 4 10 \(x y z\) puts 2 of the 3 points of "
                                            r"labels\.csv for this scan outside it, but 10 10 4 holds them all"):
        check_points_inside(points, {"a": swapped}, on_outside=on_outside, source="labels.csv")
    assert len(check_points_inside(points, {"a": header(size_xyz=(10, 10, 4))}, source="labels.csv")) == 3


def test_skip_mode_drops_unknown_and_outside_with_warnings(caplog) -> None:
    headers = {"a": header(), "b": header()}
    with caplog.at_level(logging.WARNING):
        kept = check_points_inside(points_table(), headers, on_outside="skip", source="labels.csv")
    assert kept.index.tolist() == [0, 1]  # the original rows, for tracing back to the CSV
    assert "skipping 1 row(s) of 1 seriesuid(s) without a scan" in caplog.text
    assert "skipping 2 point(s) outside their scan" in caplog.text


def test_on_outside_must_be_error_or_skip() -> None:
    with pytest.raises(ConfigError, match="data.outside='ignore' is not a valid choice"):
        check_points_inside(points_table(), {}, on_outside="ignore")
