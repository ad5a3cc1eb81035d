"""`python -m lungexp.froc` as a user runs it: printed figures, written files, one-line errors."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from lungexp.data.labels.annotations import read_annotations, read_excluded_annotations
from lungexp.froc import main as froc_main
from lungexp.froc import read_seriesuids
from lungexp.metrics.luna16_froc import FP_RATES, compute_froc
from tests.helpers.config import PROJECT_ROOT
from tests.helpers.data import shared_data_dir
from tests.helpers.fork_server import ForkServer

from .test_froc import random_case

RunFroc = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run_froc(fork_server: ForkServer) -> RunFroc:
    """``python -m lungexp.froc *args`` as a child of the warm fork server: a process of its own (exit status,
    stdout, stderr), without the seconds of a fresh interpreter's imports."""
    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return fork_server.run("lungexp.froc", [str(arg) for arg in args], env=dict(os.environ), cwd=PROJECT_ROOT,
                               timeout=300)
    return run


@pytest.fixture(scope="module")
def luna_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("froc_cli")
    predictions, truth, excluded, scans = random_case(1)
    files = {name: folder / f"{name}.csv" for name in ("predictions", "annotations", "excluded")}
    predictions.assign(extra="ignored").to_csv(files["predictions"], index=False)
    truth.to_csv(files["annotations"], index=False)
    excluded.to_csv(files["excluded"], index=False)
    files["seriesuids"] = folder / "seriesuids.csv"
    files["seriesuids"].write_text("\n".join(scans) + "\n")
    return files


def test_prints_the_cpm_and_writes_the_curve(run_froc: RunFroc, luna_files: dict[str, Path],
                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_froc(luna_files["predictions"], luna_files["annotations"], "--excluded", luna_files["excluded"],
                    "--seriesuids", luna_files["seriesuids"], "--out", out, "--bootstrap", "50")
    assert proc.returncode == 0, proc.stderr
    expected = compute_froc(pd.read_csv(luna_files["predictions"]), pd.read_csv(luna_files["annotations"]),
                            excluded=pd.read_csv(luna_files["excluded"]),
                            seriesuids=luna_files["seriesuids"].read_text().split())
    assert f"CPM: {expected.cpm:.4f}  95% CI [" in proc.stdout
    for rate in FP_RATES:
        assert f"FP/scan: {expected.sensitivities[rate]:.4f}" in proc.stdout
    assert f"{expected.num_scans} scans, {expected.num_nodules} nodules" in proc.stdout
    assert "\n".join(script_lines(expected)) in proc.stdout
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(out / "froc.csv")
    assert list(curve.columns) == ["fps_per_scan", "sensitivity", "threshold"]
    pd.testing.assert_frame_equal(curve, expected.curve, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("break_it, message", [
    (lambda files: files["annotations"].with_name("missing.csv"), "missing.csv: CSV not found"),
    (lambda files: files["predictions"], "missing column(s) ['diameter_mm']"),
])
def test_bad_input_is_one_line_without_traceback(run_froc: RunFroc, luna_files: dict[str, Path], break_it,
                                                 message: str) -> None:
    proc = run_froc(luna_files["predictions"], break_it(luna_files))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_csv(run_froc: RunFroc, luna_files: dict[str, Path], tmp_path: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    proc = run_froc(binary, luna_files["annotations"])
    assert proc.returncode == 1 and "not a readable CSV" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad_row, message", [
    ("a,0,0,0,0", "row(s) 3 (0)"),  # a nodule that can never be hit
    ("a,0,0,0,-5", "row(s) 3 (-5)"),  # only -1 means "size unknown", and only for excluded findings
])
def test_annotations_follow_the_training_reader(run_froc: RunFroc, luna_files: dict[str, Path], tmp_path: Path,
                                                bad_row: str, message: str) -> None:
    annotations = tmp_path / "annotations.csv"
    annotations.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,1,1,8\n{bad_row}\n")
    proc = run_froc(luna_files["predictions"], annotations)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{annotations}: column 'diameter_mm' must hold a positive number" in proc.stderr and message in proc.stderr


def froc_refused(argv: list[str | Path], capsys: pytest.CaptureFixture) -> str:
    """The one ``error:`` line of a froc that must exit 1, as the other tools do for bad input."""
    with pytest.raises(SystemExit) as exited:
        froc_main(list(map(str, argv)))
    error = capsys.readouterr().err
    assert exited.value.code == 1 and error.startswith("error: ") and "Traceback" not in error
    return error


def test_repeated_rows_count_once_and_a_point_scored_twice_is_refused(
        luna_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every row twice doubled the false positives (CPM 0.121 -> 0.086) without a word."""
    predictions = pd.read_csv(luna_files["predictions"])
    twice = tmp_path / "twice.csv"
    pd.concat([predictions, predictions]).to_csv(twice, index=False)
    assert froc_main([str(twice), str(luna_files["annotations"]), "--out", str(tmp_path)]) == 0
    expected = compute_froc(predictions, pd.read_csv(luna_files["annotations"]))
    assert f"CPM: {expected.cpm:.4f}" in capsys.readouterr().out
    assert f"{twice}: dropped {len(predictions)} duplicate row(s)" in caplog.text
    rescored = tmp_path / "rescored.csv"
    pd.concat([predictions, predictions.iloc[[0]].assign(probability=0.01)]).to_csv(rescored, index=False)
    error = froc_refused([rescored, luna_files["annotations"]], capsys)
    assert f"{rescored}: 1 point(s) are given different probability: lines 2, {len(predictions) + 2}" in error


def test_scans_without_a_nodule_of_the_annotations_are_an_error(luna_files: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A --seriesuids file of other scans exited 0 with "0 nodules" and CPM 0.0000."""
    other = tmp_path / "other_seriesuids.csv"
    other.write_text("1.2.3.other\n1.2.3.another\n")
    error = froc_refused([luna_files["predictions"], luna_files["annotations"], "--seriesuids", other], capsys)
    assert f"{luna_files['annotations']}: none of its " in error and f"2 scan(s) evaluated (listed in {other})" in error


def script_lines(result) -> list[str]:
    return ["Candidate detection results:", *(f"    {label}: {count}" for label, count in result.script_counts().items())]


@pytest.mark.real_data
def test_real_luna16_files_side_by_side_with_the_script(run_froc: RunFroc, tmp_path: Path) -> None:
    """The published annotations_excluded.csv (35,192 rows) and seriesuids.csv (888 series, CRLF)."""
    luna = shared_data_dir() / "luna16"
    uids = read_seriesuids(luna / "seriesuids.csv")
    truth = read_annotations(luna / "annotations.csv")
    excluded = read_excluded_annotations(luna / "annotations_excluded.csv")
    assert len(uids) == len(set(uids)) == 888 and len(excluded) == 35_192
    assert set(truth["seriesuid"]) <= set(uids)  # no "\r" left on a seriesuid
    hits = truth.iloc[[0, 1, 2, 2]].assign(probability=[0.9, 0.8, 0.7, 0.6])  # the third nodule twice,
    hits.iloc[3, hits.columns.get_loc("coordX")] += 0.5  # 0.5 mm apart (one point scored twice is an error)
    on_excluded = excluded.iloc[[0]].assign(probability=0.95)
    elsewhere = pd.DataFrame({"seriesuid": [uids[-1], "1.2.3.not.listed"], "coordX": 999.0, "coordY": 999.0,
                              "coordZ": 999.0, "probability": [0.5, 0.99]})
    predictions = pd.concat([hits, on_excluded, elsewhere])[["seriesuid", "coordX", "coordY", "coordZ",
                                                             "probability"]]
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    proc = run_froc(tmp_path / "predictions.csv", luna / "annotations.csv", "--excluded",
                    luna / "annotations_excluded.csv", "--seriesuids", luna / "seriesuids.csv", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"left out 1 prediction(s) of 1 series not in {luna / 'seriesuids.csv'}" in proc.stdout
    expected = compute_froc(predictions.iloc[:-1], truth, excluded=excluded, seriesuids=uids)
    assert expected.script_counts() == {
        "True positives": 3, "False positives": 1, "False negatives": 1186 - 3, "Total number of candidates": 6,
        "Total number of nodules": 1186, "Ignored candidates on excluded nodules": 1,
        "Ignored candidates which were double detections on a nodule": 1,
    }
    assert "\n".join(script_lines(expected)) in proc.stdout
    assert "888 scans, 1186 nodules (3 hit by a candidate)" in proc.stdout
