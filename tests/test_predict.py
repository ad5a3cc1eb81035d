"""``python -m lungexp.predict``: self-contained checkpoints scored on LUNA16 folders, scan files and DICOM."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from lungexp.convert import main as convert_main
from lungexp.data.labels.annotations import COORD_COLUMNS, read_annotations
from lungexp.data.scans import read_scan
from lungexp.inference.candidate_scoring import (
    SUBMISSION_COLUMNS,
    check_predict_options,
    predict_candidates,
    read_candidates,
    write_submission,
)
from lungexp.inference.model import Predictor
from lungexp.inference.scans import open_scans
from lungexp.training.checkpoint import RECIPE_KEY, CheckpointError, load_checkpoint
from lungexp.utils.atomic import DiskFullError
from lungexp.utils.errors import ConfigError, LungexpError
from tests.helpers.cli import run_entry_point
from tests.helpers.config import CONFIG_DIR, PROJECT_ROOT
from tests.helpers.data import shared_data_dir, write_dicom_series
from tests.helpers.fork_server import ForkServer


@pytest.fixture(scope="module")
def predictor(trained_run) -> Predictor:
    return Predictor(trained_run.best_checkpoint, device="cpu")


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def score(predictor: Predictor, scans: Path, candidates: Path) -> pd.DataFrame:
    source = open_scans(scans)
    return predict_candidates(predictor, source, read_candidates(candidates, source), source=candidates)


def test_checkpoint_carries_what_rebuilds_model_and_preprocessing(trained_run) -> None:
    recipe = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)[RECIPE_KEY]
    assert recipe["format_version"] == 1 and recipe["task"] == "candidates"
    assert recipe["net"] == {"_target_": "lungexp.models.CNN3D", "in_channels": 1, "num_classes": 1, "widths": [4, 8],
                             "convs_per_block": 1, "dropout": 0.3}
    assert recipe["patch"] == {"size": 16, "spacing_mm": [1.0], "pad_hu": -1000}
    assert (recipe["hu_window"], recipe["normalize"], recipe["in_channels"]) == ([-1000.0, 400.0], "unit", 1)
    assert recipe["precision"] == "32-true"
    assert recipe["mlflow"]["run_id"] == trained_run.mlflow_run_id
    # Paths derived from data.root stay relative to it, so evaluate can point data.root elsewhere.
    assert recipe["data"]["labels_csv"] == "${data.root}/candidates_V2.csv"
    assert recipe["data"]["train_transform"] is None


def test_predict_reproduces_the_test_stage_on_a_copied_checkpoint(trained_run, synthetic_root: Path,
                                                                  tmp_path: Path) -> None:
    """A checkpoint moved elsewhere scores the test candidates exactly as the training test stage did."""
    copied = Path(shutil.copy(trained_run.best_checkpoint, tmp_path / "moved.ckpt"))
    tested = trained_run.test_predictions
    candidates = write_csv(tested[["seriesuid", *COORD_COLUMNS]], tmp_path / "candidates.csv")

    table = score(Predictor(copied, device="cpu"), synthetic_root, candidates)

    assert list(table.columns) == SUBMISSION_COLUMNS
    pd.testing.assert_frame_equal(table[["seriesuid", *COORD_COLUMNS]], tested[["seriesuid", *COORD_COLUMNS]])
    np.testing.assert_allclose(table["probability"], tested["probability"], atol=1e-6)
    assert table["probability"].std() > 0  # a real model, not a constant


def test_dicom_folder_and_the_same_scan_as_mhd_give_the_same_probabilities(predictor: Predictor, synthetic_root: Path,
                                                                            tmp_path: Path) -> None:
    """A generated scan written as DICOM slices: scored on the fly, and after `lungexp.convert` to .mhd."""
    mhd = sorted(synthetic_root.glob("subset*/*.mhd"))[0]
    uid, scan = mhd.stem, read_scan(mhd)
    write_dicom_series(tmp_path / "dicom", scan.array, uid, spacing_xyz=scan.spacing, origin_xyz=scan.origin)
    assert convert_main([str(tmp_path / "dicom"), str(tmp_path / "converted")]) == 0
    points = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    candidates = write_csv(points.loc[points["seriesuid"] == uid, COORD_COLUMNS], tmp_path / "no_uid.csv")

    from_dicom = score(predictor, tmp_path / "dicom", candidates)  # one series: seriesuid may be left out
    from_mhd = score(predictor, tmp_path / "converted" / f"{uid}.mhd", candidates)

    assert (from_dicom["seriesuid"] == uid).all() and len(from_dicom) == len(candidates.read_text().splitlines()) - 1
    np.testing.assert_array_equal(from_dicom["probability"], from_mhd["probability"])
    original = score(predictor, mhd, candidates)  # the generator's own file: same voxels, same geometry
    np.testing.assert_allclose(from_dicom["probability"], original["probability"], atol=1e-5)


@pytest.mark.real_data
def test_real_lidc_dicom_and_converted_mhd_give_the_same_probabilities(predictor: Predictor, tmp_path: Path) -> None:
    data = shared_data_dir()
    folder = data / "lidc-idri" / "LIDC-IDRI-0003"
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"
    nodules = read_annotations(data / "luna16" / "annotations.csv")
    nodules = nodules.loc[nodules["seriesuid"] == uid, ["seriesuid", *COORD_COLUMNS]]
    shifted = nodules.assign(coordX=nodules["coordX"] + 15.0)  # next to each nodule: other tissue
    candidates = write_csv(pd.concat([nodules, shifted]), tmp_path / "candidates.csv")
    assert convert_main([str(folder), str(tmp_path / "converted")]) == 0

    from_dicom = score(predictor, folder, candidates)
    from_mhd = score(predictor, tmp_path / "converted", candidates)

    assert len(from_dicom) == 2 * len(nodules) == 6
    np.testing.assert_array_equal(from_dicom["probability"], from_mhd["probability"])


class Unpicklable:
    """Anything but tensors and plain containers: weights_only loading refuses it."""


def _plain_lightning_checkpoint(path: Path) -> Path:
    torch.save({"epoch": 3, "state_dict": {"net.fc.weight": torch.zeros(1, 4)}, "hyper_parameters": {}}, path)
    return path


def _object_checkpoint(path: Path) -> Path:
    torch.save({"state_dict": {}, "model": Unpicklable()}, path)
    return path


def _foreign_target_checkpoint(path: Path, source: Path) -> Path:
    """Our checkpoint with its network recipe pointed at a function: building it would run that function."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint[RECIPE_KEY]["net"] = {"_target_": "os.system", "command": "echo pwned"}
    torch.save(checkpoint, path)
    return path


def _truncated_checkpoint(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes()[:2000])
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("other_project", "not a lungexp checkpoint"),
    ("objects", "holds objects other than tensors"),
    ("truncated", "not a readable PyTorch checkpoint"),
    ("missing", "checkpoint not found"),
    ("foreign_target", "network config sets _target_='os.system'; a lungexp checkpoint builds only"),
])
def test_checkpoints_that_are_not_ours_are_refused_naming_the_file(trained_run, tmp_path: Path, case: str,
                                                                   expected: str) -> None:
    path = tmp_path / f"{case}.ckpt"
    if case == "other_project":
        _plain_lightning_checkpoint(path)
    elif case == "objects":
        _object_checkpoint(path)
    elif case == "truncated":
        _truncated_checkpoint(path, Path(trained_run.best_checkpoint))
    elif case == "foreign_target":
        _foreign_target_checkpoint(path, Path(trained_run.best_checkpoint))
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert "weights_only=False" not in str(error.value)


@pytest.fixture
def scan_points(synthetic_root: Path) -> pd.DataFrame:
    points = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    return points[["seriesuid", *COORD_COLUMNS]].head(4).reset_index(drop=True)


def test_a_candidate_outside_its_scan_is_named_before_any_scan_is_read(predictor: Predictor, synthetic_root: Path,
                                                                       scan_points: pd.DataFrame, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scan_points.loc[2, "coordX"] = 5000.0
    candidates = write_csv(scan_points, tmp_path / "outside.csv")
    monkeypatch.setattr("lungexp.inference.scans.read_scan", lambda path: pytest.fail("read a scan first"))
    with pytest.raises(LungexpError, match=r"outside its scan") as error:
        score(predictor, synthetic_root, candidates)
    message = str(error.value)
    assert "row 4" in message and scan_points.loc[2, "seriesuid"] in message and "5000.0" in message


def test_a_candidate_outside_a_dicom_series_is_named(predictor: Predictor, synthetic_root: Path,
                                                      tmp_path: Path) -> None:
    mhd = sorted(synthetic_root.glob("subset*/*.mhd"))[0]
    scan = read_scan(mhd)
    write_dicom_series(tmp_path / "dicom", scan.array[:4], mhd.stem, spacing_xyz=scan.spacing, origin_xyz=scan.origin)
    candidates = write_csv(pd.DataFrame({"coordX": [scan.origin[0]], "coordY": [scan.origin[1]],
                                         "coordZ": [scan.origin[2] + 500.0]}), tmp_path / "far.csv")
    with pytest.raises(LungexpError, match=r"outside its scan .*: row 2 at"):
        score(predictor, tmp_path / "dicom", candidates)


def test_unknown_seriesuid_is_named_with_its_rows(predictor: Predictor, synthetic_root: Path,
                                                  scan_points: pd.DataFrame, tmp_path: Path) -> None:
    scan_points.loc[1, "seriesuid"] = "1.2.3.no.such.scan"
    candidates = write_csv(scan_points, tmp_path / "unknown.csv")
    with pytest.raises(LungexpError, match=r"unknown seriesuid 1\.2\.3\.no\.such\.scan \(row\(s\) 3\)"):
        score(predictor, synthetic_root, candidates)


def test_candidates_without_seriesuid_need_a_single_scan(predictor: Predictor, synthetic_root: Path,
                                                          scan_points: pd.DataFrame, tmp_path: Path) -> None:
    candidates = write_csv(scan_points[COORD_COLUMNS], tmp_path / "coordinates.csv")
    with pytest.raises(LungexpError, match="no seriesuid column, but the scans hold 10 series"):
        score(predictor, synthetic_root, candidates)


@pytest.mark.parametrize("missing", ["scans", "candidates"])
def test_missing_inputs_are_named(predictor: Predictor, synthetic_root: Path, scan_points: pd.DataFrame,
                                  tmp_path: Path, missing: str) -> None:
    scans, candidates = synthetic_root, write_csv(scan_points, tmp_path / "points.csv")
    absent = tmp_path / "absent"
    with pytest.raises(LungexpError, match=f"{missing}={absent}"):
        score(predictor, absent if missing == "scans" else scans, absent if missing == "candidates" else candidates)


@pytest.mark.slow
def test_predict_command_writes_a_submission_and_reports_errors_in_one_line(trained_run, synthetic_root: Path,
                                                                            scan_points: pd.DataFrame,
                                                                            tmp_path: Path) -> None:
    candidates = write_csv(scan_points, tmp_path / "points.csv")
    out = tmp_path / "out" / "submission.csv"
    command = [sys.executable, "-m", "lungexp.predict", f"ckpt_path={trained_run.best_checkpoint}",
               f"scans={synthetic_root}", f"candidates={candidates}", f"out={out}", "device=cpu"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    written = pd.read_csv(out, dtype={"seriesuid": str})
    assert list(written.columns) == SUBMISSION_COLUMNS and len(written) == 4
    assert "Scored 4 candidate(s) on 1 scan(s)" in done.stdout
    assert not list(tmp_path.glob(".hydra")) and not list(tmp_path.glob("outputs"))  # writes only `out`

    foreign = _plain_lightning_checkpoint(tmp_path / "foreign.ckpt")
    failed = subprocess.run([*command[:3], f"ckpt_path={foreign}", *command[4:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"error: {foreign}: not a lungexp checkpoint")
    assert "Traceback" not in failed.stderr + failed.stdout


def predict_config(folder: Path, *overrides: str) -> DictConfig:
    """``conf/predict.yaml`` composed as ``python -m lungexp.predict`` would, with inputs in ``folder`` (a
    candidates file and a checkpoint file, neither read by the option checks)."""
    (folder / "points.csv").write_text("seriesuid,coordX,coordY,coordZ\n1.2.3,0,0,0\n")
    (folder / "best.ckpt").write_bytes(b"weights")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("predict", overrides=[f"ckpt_path={folder / 'best.ckpt'}", f"scans={folder}",
                                             f"candidates={folder / 'points.csv'}", f"out={folder / 'out.csv'}",
                                             *overrides])


@pytest.mark.parametrize("link", ["same path", "symlink to the input", "input is a symlink to it", "hard link"])
def test_out_that_is_an_input_is_refused_before_any_work(tmp_path: Path, link: str) -> None:
    """out= equal to the candidates file replaced the input with the results, exit 0."""
    cfg = predict_config(tmp_path)
    points = tmp_path / "points.csv"
    out = {"same path": points, "symlink to the input": tmp_path / "link.csv",
           "input is a symlink to it": tmp_path / "real.csv", "hard link": tmp_path / "hard.csv"}[link]
    if link == "symlink to the input":
        out.symlink_to(points)
    elif link == "hard link":
        os.link(points, out)
    elif link == "input is a symlink to it":
        points.rename(out)
        points.symlink_to(out)
    cfg.out = str(tmp_path / "sub" / ".." / out.name)  # spelled another way too
    with pytest.raises(ConfigError, match=rf"out=.*{out.name} is the file of candidates={points}: .* replace the input"):
        check_predict_options(cfg)


@pytest.mark.parametrize("out, message", [
    ("{tmp}/best.ckpt", "out={tmp}/best.ckpt: out is written as a .csv file"),  # a checkpoint, a scan's .raw ...
    ("{tmp}", "out={tmp} is a folder; give a file in it, e.g. out={tmp}/predictions.csv"),
    ("{tmp}/points.csv/x/out.csv", "out={tmp}/points.csv/x/out.csv: {tmp}/points.csv is a file, not a folder"),
])
def test_out_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, out: str, message: str) -> None:
    cfg = predict_config(tmp_path, f"out={out.format(tmp=tmp_path)}")
    with pytest.raises(ConfigError) as refused:
        check_predict_options(cfg)
    assert str(refused.value).startswith(message.format(tmp=tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_out_in_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """It failed only after all the scoring."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=f"out={locked}/out.csv: {locked} is not writable"):
        check_predict_options(predict_config(tmp_path, f"out={locked}/out.csv"))


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0 must be a whole number >= 1"),
    ("batch_size=-3", "batch_size=-3 must be a whole number >= 1"),
    ("device=cuda", "device=cuda: this machine has no CUDA GPU that PyTorch can use; use device=cpu"),
    ("device=cuda:1", "device=cuda:1: this machine has no CUDA GPU"),
    ("device=gpu", "device='gpu' is not a device lungexp runs on; use auto, cpu, cuda or cuda:N"),
    ("calibration=platt", "calibration='platt' is not a valid choice"),
])
def test_predict_options_are_checked_by_their_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      override: str, message: str) -> None:
    """batch_size=0 / -3 and device=cuda without CUDA were tracebacks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(ConfigError) as refused:
        check_predict_options(predict_config(tmp_path, override))
    assert str(refused.value).startswith(message)


def test_a_full_disk_while_writing_out_is_one_line_and_leaves_nothing_half_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "predictions.csv"
    out.write_text("the previous results\n")

    def fill_the_disk(self: pd.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_text("seriesuid,coo")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", fill_the_disk)
    with pytest.raises(DiskFullError, match=rf"^{out}: No space left on device \(.* free on that file system\); "
                                            "free some space there, or give another out="):
        write_submission(pd.DataFrame({"seriesuid": ["1.2.3"]}), out)
    assert out.read_text() == "the previous results\n" and sorted(tmp_path.iterdir()) == [out]


def test_predict_command_refuses_out_equal_to_its_candidates(tmp_path: Path, fork_server: ForkServer) -> None:
    """As a user runs it: one error line, exit 1, the candidates untouched (no checkpoint is even read)."""
    predict_config(tmp_path)
    points = tmp_path / "points.csv"
    before = points.read_text()
    done = run_entry_point("predict", [f"ckpt_path={tmp_path / 'best.ckpt'}", f"scans={tmp_path}",
                                       f"candidates={points}", f"out={points}"], tmp_path, fork_server=fork_server)
    assert done.returncode == 1 and done.stderr.startswith(f"error: out={points} is the file of candidates=")
    assert "Traceback" not in done.stderr and points.read_text() == before
