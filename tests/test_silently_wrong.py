"""Inputs that used to run to the end on wrong data without a word: each now reaches the run or stops it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
from pytorch_lightning.accelerators import CUDAAccelerator

from lungexp.config import schema
from lungexp.convert import main as convert_main
from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.labels.sample_table import read_labels
from lungexp.data.scans import ScanReadError, iter_dicom_series, read_scan, write_mhd
from lungexp.data.scans.hounsfield_check import check_hounsfield
from lungexp.data.scans.scan import Scan
from lungexp.inference.scans import open_scans
from lungexp.utils.errors import ConfigError
from tests.helpers.config import compose_config
from tests.helpers.data import shared_data_dir, write_dicom_series


def _datamodule(make_config, *overrides: str):
    datamodule = hydra.utils.instantiate(make_config(*overrides).data, _convert_="partial")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# --------------------------------------------------------------------------------------------------
# Labels and rows


def test_relabelled_csv_reaches_the_datasets(make_config, synthetic_root: Path, tmp_path: Path) -> None:
    """The patch cache is keyed by points and geometry only; a rerun after editing labels trains on the new ones."""
    original = _datamodule(make_config)
    table = pd.read_csv(synthetic_root / "candidates_V2.csv")
    relabelled = tmp_path / "candidates_relabelled.csv"
    table.assign(**{"class": 1 - table["class"]}).to_csv(relabelled, index=False)
    rerun = _datamodule(make_config, f"data.labels_csv={relabelled}")
    assert rerun.cache.folder == original.cache.folder  # same points: patches reused, not rebuilt
    for name, dataset in rerun.datasets.items():
        np.testing.assert_array_equal(dataset.rows, original.datasets[name].rows)
        np.testing.assert_array_equal(dataset.labels, 1 - original.datasets[name].labels, err_msg=name)


def test_duplicate_rows_do_not_inflate_the_test_set(make_config, synthetic_root: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    reference = _datamodule(make_config)
    table = pd.read_csv(synthetic_root / "candidates_V2.csv")
    repeated = pd.concat([table, table.iloc[[0, 5, 5]]], ignore_index=True)
    csv = tmp_path / "candidates_with_repeats.csv"
    repeated.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="lungexp.data.labels.sample_table"):
        deduplicated = _datamodule(make_config, f"data.labels_csv={csv}")
    assert "dropped 3 duplicate row(s)" in caplog.text
    assert {name: len(d) for name, d in deduplicated.datasets.items()} == {
        name: len(d) for name, d in reference.datasets.items()}


def test_same_point_within_rounding_is_a_duplicate(tmp_path: Path) -> None:
    """Coordinates equal to 1e-4 mm (the cache key's rounding) are one point; 1e-3 mm apart are two."""
    rows = pd.DataFrame({"seriesuid": ["1.2"] * 3, "coordX": [10.0, 10.00001, 10.001], "coordY": [5.0] * 3,
                         "coordZ": [-3.0] * 3, "class": [0, 0, 0]})
    rows.to_csv(tmp_path / "c.csv", index=False)
    assert len(read_labels("candidates", tmp_path / "c.csv")) == 2


def test_contradicting_rows_are_an_error_naming_their_lines(tmp_path: Path) -> None:
    rows = pd.DataFrame({"seriesuid": ["1.2", "1.2", "1.3", "1.2"], "coordX": [10.0, 11.0, 10.0, 10.0],
                         "coordY": [5.0] * 4, "coordZ": [-3.0] * 4, "class": [1, 0, 0, 0]})
    rows.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(AnnotationError, match=r"c\.csv: 1 point\(s\) are labelled both 0 and 1: lines 2, 5 "
                                              r"\(1\.2 at \(10, 5, -3\) mm: labels 1, 0\)"):
        read_labels("candidates", tmp_path / "c.csv")


# --------------------------------------------------------------------------------------------------
# Config keys


def test_an_unknown_top_level_key_fails_and_declaring_it_is_all_it_takes(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config(["+resume_from=last"], tmp_path)
    with pytest.raises(ConfigError, match="unknown top-level key 'resume_from'"):
        schema.check_top_level(cfg)
    conf = tmp_path / "conf"
    shutil.copytree(schema.CONFIG_DIR, conf)
    with open(conf / "config.yaml", "a") as handle:
        handle.write("resume_from: null  # a new top-level key\n")
    monkeypatch.setattr(schema, "CONFIG_DIR", conf)
    schema.check_top_level(cfg)


@pytest.mark.parametrize("overrides", [
    ["data=synthetic"], ["data=synthetic_malignancy"], ["data=nifti", "data.root=/data"],
    ["data=luna16", "data.root=/data"], ["data=luna16_malignancy", "data.root=/data"],
    ["model=resnet3d"], ["model=se_resnet3d"], ["model=cbam_resnet3d"], ["model=densenet3d"],
    ["trainer=debug"], ["trainer=cpu"], ["trainer=gpu"], ["trainer=ddp"], ["aug=none"], ["aug=strong"],
    ["experiment=demo"], ["experiment=pretrain_candidates"], ["experiment=finetune_malignancy"],
    ["experiment=scratch_malignancy"], ["model.pos_weight=auto", "model.loss._target_=lungexp.training.losses"
                                        ".BinaryFocalLoss", "+model.loss.gamma=2"],
], ids=lambda overrides: " ".join(overrides))
def test_every_shipped_option_passes_the_checks(overrides: list[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine with a GPU: trainer=gpu without one is refused (test_configs.py).
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    schema.check_config(compose_config(overrides, tmp_path))


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=abc", r"^trainer\.max_epochs='abc' must be a whole number: 1 or more \(or -1 to train until"),
    ("trainer.max_epochs=2.5", r"^trainer\.max_epochs=2\.5 must be a whole number"),
    ("trainer.max_epochs=0", r"^trainer\.max_epochs=0 would train nothing; use 1 or more"),
    ("trainer.max_steps=x", r"^trainer\.max_steps='x' must be a whole number: 1 or more \(or -1: no limit\)"),
    ("trainer.max_steps=-5", r"^trainer\.max_steps=-5 would train nothing"),
])
def test_a_count_of_epochs_or_steps_is_a_whole_number_that_trains(override: str, message: str,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        schema.check_config(compose_config([override], tmp_path))


# --------------------------------------------------------------------------------------------------
# Voxel values


def _scan(array: np.ndarray, name: str = "scan.mhd") -> Scan:
    return Scan(array=array, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=np.eye(3),
                source=Path("/data") / name)


@pytest.fixture(scope="module")
def synthetic_hu(synthetic_root: Path) -> np.ndarray:
    return read_scan(sorted(synthetic_root.glob("subset*/*.mhd"))[0]).array


def test_synthetic_scans_are_plausible_hu(synthetic_root: Path) -> None:
    for path in synthetic_root.glob("subset*/*.mhd"):
        read_scan(path)  # checks the values


@pytest.mark.parametrize(("broken", "problem", "field"), [
    (lambda hu: hu.astype("<i2").byteswap(), "far outside CT's range", "BinaryDataByteOrderMSB"),
    (lambda hu: hu.astype(np.int16).view(np.uint16), "far outside CT's range", "ElementType"),
    (lambda hu: hu.astype(np.int32) + 1024, "no air or lung", "RescaleSlope/RescaleIntercept"),
    (lambda hu: np.full_like(hu, -1000), "barely vary", "ElementType"),
    (lambda hu: np.where(hu > 0, np.nan, hu.astype(np.float32)), "NaN", "ElementType"),
], ids=["byte-order", "unsigned", "no-rescale", "constant", "nan"])
def test_implausible_voxel_values_name_the_file_and_header_field(synthetic_hu: np.ndarray, broken, problem: str,
                                                                  field: str) -> None:
    with pytest.raises(ScanReadError, match="/data/scan.mhd") as error:
        check_hounsfield(_scan(broken(synthetic_hu)))
    assert problem in str(error.value) and field in str(error.value)


def test_stored_values_without_rescale_are_refused_on_every_read_path(tmp_path: Path, capsys) -> None:
    """DICOM values without RescaleSlope/RescaleIntercept (air near 0, not -1000 HU) are refused by ``predict``'s
    readers too, not only by the cache and ``convert``: the check is inside the one function that reads scan
    files and the one that reads DICOM series."""
    stored = np.random.default_rng(0).integers(0, 2500, size=(3, 8, 8)).astype(np.int16)  # HU + 1024
    (tmp_path / "files").mkdir()
    write_mhd(_scan(stored), tmp_path / "files" / "1.2.3.mhd")
    write_dicom_series(tmp_path / "dicom", stored, "1.2.3.4", intercept=0)
    for folder in ("files", "dicom"):
        scans = open_scans(tmp_path / folder)
        with pytest.raises(ScanReadError, match="no air or lung.*RescaleIntercept"):
            list(scans.read(scans.seriesuids))
    with pytest.raises(SystemExit):
        convert_main([str(tmp_path / "dicom"), str(tmp_path / "out")])
    assert capsys.readouterr().err.startswith(f"error: DICOM series in {tmp_path / 'dicom'}: no air or lung")


@pytest.mark.real_data
def test_real_lidc_scans_are_plausible_and_their_broken_copies_are_not() -> None:
    for _, scan in iter_dicom_series(shared_data_dir() / "lidc-idri"):
        check_hounsfield(scan)
        with pytest.raises(ScanReadError, match="RescaleIntercept"):  # as if the intercept were missing
            check_hounsfield(Scan(scan.array.astype(np.int32) + 1024, scan.origin, scan.spacing, scan.direction,
                                  scan.source))
        with pytest.raises(ScanReadError, match="far outside"):
            check_hounsfield(Scan(scan.array.byteswap(), scan.origin, scan.spacing, scan.direction, scan.source))
