"""`python -m lungexp.froc` as a user runs it: printed figures, written files, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lungexp.evaluation.froc import FP_RATES, compute_froc
from tests.helpers.config import PROJECT_ROOT

from .test_froc import random_case


def run_froc(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungexp.froc", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


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


def test_prints_the_cpm_and_writes_the_curve(luna_files: dict[str, Path], tmp_path: Path) -> None:
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
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(out / "froc.csv")
    assert list(curve.columns) == ["fps_per_scan", "sensitivity", "threshold"]
    pd.testing.assert_frame_equal(curve, expected.curve, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("break_it, message", [
    (lambda files: files["annotations"].with_name("missing.csv"), "missing.csv: annotations CSV not found"),
    (lambda files: files["predictions"], "missing column(s) ['diameter_mm']"),
])
def test_bad_input_is_one_line_without_traceback(luna_files: dict[str, Path], break_it, message: str) -> None:
    proc = run_froc(luna_files["predictions"], break_it(luna_files))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_csv(luna_files: dict[str, Path], tmp_path: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    proc = run_froc(binary, luna_files["annotations"])
    assert proc.returncode == 2 and "not a readable CSV" in proc.stderr and "Traceback" not in proc.stderr
