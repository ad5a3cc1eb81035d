"""Bad input, run as a user would: each case is a real entry point in a subprocess.

Every case must exit non-zero with one ``error:`` message that names the culprit (file, CSV row,
config key) and no traceback. Cases share one set of broken inputs made from the session's tiny
synthetic dataset; most fail within seconds because every check runs before the slow work. The
processes run two at a time (see ``outcomes``), forked from the warm ``fork_server`` (a process of its own
each, as ``python -m`` runs it, without importing torch, Lightning and MLflow anew).
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from lungexp.models import CNN3D
from tests.helpers.cli import run_entry_point
from tests.helpers.config import FAST_OVERRIDES, compose_config, tiny_run_overrides
from tests.helpers.data import write_dicom_series
from tests.helpers.fork_server import ForkServer


@dataclass(frozen=True)
class Case:
    """``python -m lungexp.<entry> <args>``; ``names``: what the message must name.

    In ``args`` and ``names``, ``{bad}`` is the folder of broken inputs, ``{root}`` the good dataset;
    an argument ``@run`` expands to the overrides of a fast run on the good dataset, ``@scan:NAME``
    to those reading only the broken scan NAME.
    """

    id: str
    entry: str
    args: tuple[str, ...]
    names: tuple[str, ...]


def _case(id: str, entry: str, args: str, *names: str) -> Case:
    return Case(id, entry, tuple(args.split()), names)


CASES = [
    # scans (one broken scan each, read by the cache build)
    _case("raw-truncated", "preprocess", "@scan:truncated", "{bad}/scans/truncated/subset0/", ".raw is truncated"),
    _case("mhd-without-element-type", "preprocess", "@scan:no_element_type", "no ElementType field"),
    _case("mhd-wrong-byte-order", "preprocess", "@scan:byte_order", "{bad}/scans/byte_order/", "BinaryDataByteOrderMSB"),
    _case("scan-without-rescale", "preprocess", "@scan:stored_values", "{bad}/scans/stored_values/",
          "no air or lung", "RescaleIntercept"),
    _case("scan-constant", "preprocess", "@scan:constant", "{bad}/scans/constant/", "barely vary"),
    _case("scan-nan-voxels", "preprocess", "@scan:nan_voxels", "{bad}/scans/nan_voxels/",
          "3 of", "voxels are NaN or infinite"),
    _case("mhd-spacing-zero", "preprocess", "@scan:spacing_zero", "{bad}/scans/spacing_zero/",
          "ElementSpacing = 0 ", "expected three positive voxel sizes"),
    _case("mhd-data-outside-folder", "preprocess", "@scan:data_outside", "{bad}/scans/data_outside/",
          "points outside the header's folder"),
    _case("mhd-dimsize-order", "preprocess", "@scan:dimsize_order", "{bad}/scans/dimsize_order/", "DimSize 48 96 96",
          "but 96 96 48 holds them all"),
    # labels CSVs
    _case("csv-renamed-column", "preprocess", "@run data.labels_csv={bad}/csv/renamed.csv",
          "{bad}/csv/renamed.csv", "coordX", "did you mean 'coord_x'"),
    _case("csv-empty-coordinate", "preprocess", "@run data.labels_csv={bad}/csv/empty_cell.csv",
          "{bad}/csv/empty_cell.csv", "coordY", "row(s) 5 (empty)"),
    _case("csv-class-not-binary", "preprocess", "@run data.labels_csv={bad}/csv/class2.csv", "{bad}/csv/class2.csv",
          "'class'", "row(s) 4 (2"),
    _case("csv-point-outside", "preprocess", "@run data.labels_csv={bad}/csv/outside.csv", "{bad}/csv/outside.csv",
          "row 6", "outside their scan"),
    _case("csv-contradicting-rows", "preprocess", "@run data.labels_csv={bad}/csv/contradiction.csv",
          "{bad}/csv/contradiction.csv", "labelled both 0 and 1", "lines 4, "),
    _case("csv-empty-file", "preprocess", "@run data.labels_csv={bad}/csv/empty.csv", "{bad}/csv/empty.csv",
          "the file is empty"),
    _case("csv-not-found", "preprocess", "@run data.labels_csv={bad}/csv/absent.csv", "{bad}/csv/absent.csv",
          "data.labels_csv"),
    # covariates (model.covariates)
    _case("covariate-column-missing", "preprocess", "@run model.covariates=[diameter_mm]",
          "{root}/candidates_V2.csv: no column 'diameter_mm'", "model.covariates"),
    _case("covariate-not-numeric", "run", "@run data.labels_csv={bad}/csv/covariate_text.csv model.covariates=[size]",
          "{bad}/csv/covariate_text.csv", "covariate column 'size'", "row 4 ('big')"),
    _case("covariate-rating", "run", "@run model.covariates=[diameter_mm,malignancy]",
          "malignancy is a reader's rating", "model.allow_rating_covariates=true"),
    # DICOM
    _case("dicom-no-series", "convert", "{bad}/dicom/no_series {bad}/out", "{bad}/dicom/no_series",
          "no DICOM series"),
    _case("dicom-missing-slice", "convert", "{bad}/dicom/gap {bad}/out", "missing slices", "1.2.3.2"),
    _case("dicom-truncated-slice", "convert", "{bad}/dicom/truncated {bad}/out",
          "{bad}/dicom/truncated/1.2.3.3-slice003.dcm"),
    _case("dicom-slice-without-preamble", "convert", "{bad}/dicom/no_preamble {bad}/out",
          "{bad}/dicom/no_preamble/1.2.3.5-slice003.dcm", "cannot be read"),
    _case("dicom-without-rescale", "convert", "{bad}/dicom/stored_values {bad}/out", "{bad}/dicom/stored_values",
          "RescaleIntercept (0028,1052)"),
    _case("dicom-folder-missing", "convert", "{bad}/dicom/absent {bad}/out", "{bad}/dicom/absent", "not found"),
    # config keys and values
    _case("unknown-top-level-ckpt-path", "run", "@run +ckpt_paht={bad}/x.ckpt", "unknown top-level key 'ckpt_paht'",
          "did you mean 'ckpt_path'"),
    _case("resume-checkpoint-missing", "run", "@run ckpt_path={bad}/x.ckpt", "{bad}/x.ckpt", "ckpt_path"),
    _case("unknown-top-level-typo", "run", "@run +seeed=1", "'seeed'", "did you mean 'seed'"),
    _case("unknown-top-level-epochs", "run", "@run +epochs=3", "'epochs'"),
    _case("unknown-trainer-argument", "run", "@run +trainer.max_epoch=3", "trainer.max_epoch",
          "did you mean 'max_epochs'"),
    _case("trainer-key-misspelt", "run", "@run trainer.max_epoch=3", "trainer.max_epoch=3 on the command line",
          "trainer has no key 'max_epoch' (did you mean 'max_epochs'?)"),
    _case("predict-key-misspelt", "predict", "ckpt_path={bad}/x.ckpt candidate={bad}/points.csv",
          "candidate={bad}/points.csv", "did you mean 'candidates'"),
    _case("unknown-data-option", "preprocess", "@run +data.patch_sise=16", "data.patch_sise"),
    _case("wrong-type-bool", "run", "@run test_after_fit=maybe", "test_after_fit='maybe'", "true or false",
          "like its default test_after_fit=true"),
    _case("seed-not-a-number", "run", "@run seed=abc", "seed='abc' must be an integer, like its default seed=42"),
    _case("zero-epochs", "run", "@run trainer.max_epochs=0", "trainer.max_epochs=0"),
    _case("no-training-batches", "run", "@run trainer.limit_train_batches=0", "trainer.limit_train_batches=0"),
    _case("no-validation-but-monitored", "run", "@run trainer.limit_val_batches=0", "trainer.limit_val_batches=0",
          "callbacks.model_checkpoint.monitor"),
    _case("validation-never-runs", "run", "@run trainer.max_epochs=2 trainer.check_val_every_n_epoch=5",
          "trainer.check_val_every_n_epoch=5"),
    _case("negative-patience", "run", "@run callbacks.early_stopping.patience=-1",
          "callbacks.early_stopping.patience=-1"),
    _case("zero-learning-rate", "run", "@run model.optimizer.lr=0", "model.optimizer.lr=0"),
    _case("pos-weight-typo", "run", "@run model.pos_weight=atuo", "model.pos_weight='atuo'", "did you mean 'auto'"),
    _case("pos-weight-negative", "run", "@run model.pos_weight=-2", "model.pos_weight=-2"),
    _case("head-lr-zero", "run", "@run model.finetune.head_lr_mult=0", "model.finetune.head_lr_mult=0"),
    _case("backbone-never-trains", "run", "@run model.finetune.freeze_backbone_epochs=3 trainer.max_epochs=3",
          "model.finetune.freeze_backbone_epochs=3", "trainer.max_epochs=3"),
    _case("metric-typo", "run", "@run optimized_metric=val/aucroc", "optimized_metric", "did you mean 'val/auroc'"),
    _case("metric-direction", "run", "@run optimized_metric=val/loss", "callbacks.model_checkpoint.mode=min"),
    _case("test-without-checkpoint", "run", "@run callbacks.model_checkpoint=null", "test_after_fit",
          "callbacks.model_checkpoint"),
    _case("broken-interpolation", "run", "@run experiment_name=${{nosuchkey}}", "experiment_name", "nosuchkey"),
    _case("unavailable-accelerator", "run", "@run trainer.accelerator=mps", "trainer.accelerator=mps", "trainer=cpu"),
    _case("resnet-depth", "run", "@run model=resnet3d model.net.depth=11", "model.net.depth=11", "10, 18, 34, 50"),
    _case("data-root-missing", "run", "@run data.root={bad}/nowhere", "data.root={bad}/nowhere"),
    _case("data-root-missing-preprocess", "preprocess", "@run data.root={bad}/nowhere", "data.root={bad}/nowhere"),
    _case("data-root-unset", "run", "data=luna16", "data.root=/path/to/scans"),
    _case("split-fold-absent", "run", "@run trainer=debug data.split.fold=7", "fold=7", "subsets [0, 1, 2, 3, 4]"),
    _case("strata-edges-unsorted", "run", "@run eval.strata={{column:coordZ,edges:[0,-100]}}",
          "eval.strata.edges=[0, -100] must increase strictly"),
    _case("strata-column-missing", "run", "@run eval.strata={{column:diameter_mm,edges:[0,6]}}",
          "eval.strata.column='diameter_mm'", "{root}/candidates_V2.csv", "has no column 'diameter_mm'",
          "its columns are ['seriesuid', 'coordX', 'coordY', 'coordZ', 'class']"),
    _case("covariate-start-misspelt", "run", "@run model.covariates=[diameter_mm] model.covariate_start=Fitted",
          "model.covariate_start='Fitted' is not a valid choice", "fitted, random"),
    _case("threshold-fp-per-scan-on-crops", "run", "@run data=synthetic_malignancy eval.threshold=fp_per_scan@1",
          "eval.threshold=fp_per_scan@1", "data.task=malignancy", "sensitivity@<level>"),
    _case("target-calibrated", "run", "@run data=synthetic_malignancy target=ordinal eval.calibration=temperature",
          "eval.calibration=temperature is not offered for an ordinal head", "use eval.calibration=none"),
    # checkpoints handed in as pretrained weights
    _case("checkpoint-missing", "run", "@run model.pretrained.path={bad}/absent.pth", "{bad}/absent.pth",
          "model.pretrained.path"),
    _case("checkpoint-truncated", "run", "@run model.pretrained.path={bad}/truncated.pth", "{bad}/truncated.pth",
          "truncated"),
    _case("checkpoint-with-code", "run", "@run model.pretrained.path={bad}/pickled.pth", "{bad}/pickled.pth",
          "Refusing to load"),
    _case("checkpoint-wrong-shapes", "run", "@run model.pretrained.path={bad}/wider.pth", "{bad}/wider.pth",
          "wrong shape"),
    # caches and the MLflow store
    _case("cache-array-truncated", "preprocess", "@run data.cache_dir={bad}/cache", "patches.npy: truncated",
          "{bad}/cache/"),
    _case("mlflow-store-corrupt", "run", "@run trainer.max_epochs=1 paths.mlflow_uri=sqlite:///{bad}/mlflow.db",
          "{bad}/mlflow.db", "MLflow tracking store"),
]


# --------------------------------------------------------------------------------------------------
# The broken inputs


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """One folder holding every broken input the cases read."""
    folder = tmp_path_factory.mktemp("bad_input")
    _broken_scans(folder / "scans", synthetic_root)
    _broken_csvs(folder / "csv", synthetic_root / "candidates_V2.csv")
    _broken_dicom(folder / "dicom")
    _broken_checkpoints(folder)
    _truncated_cache(folder / "cache", synthetic_root)
    (folder / "mlflow.db").write_bytes(b"this is not an SQLite database\n" * 64)
    # A sound store for the cases that get as far as building the loggers, made once: subprocesses
    # creating one store at the same time would race on its schema migrations.
    MlflowClient(f"sqlite:///{folder}/mlflow/mlflow.db").search_experiments()
    return folder


def _broken_scans(folder: Path, source_root: Path) -> None:
    """``folder/<case>/subset0/<uid>.mhd`` + ``labels.csv`` with the scan's candidates, one broken scan per case."""
    mhd = sorted(source_root.glob("subset*/*.mhd"))[0]
    labels = pd.read_csv(source_root / "candidates_V2.csv")
    hu = np.fromfile(mhd.with_suffix(".raw"), dtype="<i2")
    header = mhd.read_text()
    dims = next(line for line in header.splitlines() if line.startswith("DimSize = ")).removeprefix("DimSize = ")
    nan_voxels = hu.astype("<f4")
    nan_voxels[[10, 1000, 5000]] = np.nan
    variants = {
        "truncated": (header, hu[: hu.size // 2]),
        "nan_voxels": (header.replace("MET_SHORT", "MET_FLOAT"), nan_voxels),
        "spacing_zero": (re.sub(r"ElementSpacing = \S+", "ElementSpacing = 0", header), hu),
        "data_outside": (header.replace(f"ElementDataFile = {mhd.stem}.raw", f"ElementDataFile = ../{mhd.stem}.raw"),
                         hu),
        "dimsize_order": (header.replace(f"DimSize = {dims}", f"DimSize = {' '.join(dims.split()[::-1])}"), hu),
        "no_element_type": ("".join(line for line in header.splitlines(True) if not line.startswith("ElementType")), hu),
        "byte_order": (header.replace("BinaryDataByteOrderMSB = False", "BinaryDataByteOrderMSB = True"), hu),
        "stored_values": (header, hu + 1024),  # CT without RescaleIntercept: air near 0
        "constant": (header, np.zeros_like(hu)),
    }
    assert "BinaryDataByteOrderMSB = False" in header
    for name, (text, voxels) in variants.items():
        case = folder / name / "subset0"
        case.mkdir(parents=True)
        (case / mhd.name).write_text(text)
        voxels.astype(voxels.dtype.newbyteorder("<")).tofile(case / mhd.with_suffix(".raw").name)
        labels[labels["seriesuid"] == mhd.stem].to_csv(folder / name / "labels.csv", index=False)
    (folder / "data_outside" / "subset0" / mhd.with_suffix(".raw").name).rename(
        folder / "data_outside" / mhd.with_suffix(".raw").name)  # beside its header's folder, not in it


def _broken_csvs(folder: Path, candidates: Path) -> None:
    folder.mkdir()
    good = pd.read_csv(candidates)
    good.rename(columns={"coordX": "coord_x"}).to_csv(folder / "renamed.csv", index=False)
    good.assign(coordY=good["coordY"].where(good.index != 3)).to_csv(folder / "empty_cell.csv", index=False)
    good.assign(**{"class": good["class"].where(good.index != 2, 2)}).to_csv(folder / "class2.csv", index=False)
    good.assign(coordX=good["coordX"].where(good.index != 4, 9999.0)).to_csv(folder / "outside.csv", index=False)
    flipped = good.iloc[[2]].assign(**{"class": 1 - good["class"].iloc[2]})
    pd.concat([good, flipped], ignore_index=True).to_csv(folder / "contradiction.csv", index=False)
    (folder / "empty.csv").write_text("")
    sizes = pd.Series(np.linspace(4.0, 30.0, len(good)), dtype=object).where(good.index != 2, "big")
    good.assign(size=sizes).to_csv(folder / "covariate_text.csv", index=False)


def _broken_dicom(folder: Path) -> None:
    hu = (np.random.default_rng(1).integers(-550, 1500, size=(5, 8, 8)) * 2).astype(np.int16)
    (folder / "no_series").mkdir(parents=True)
    (folder / "no_series" / "readme.txt").write_text("no DICOM here")
    write_dicom_series(folder / "gap", hu, "1.2.3.2", slice_z=[0, 2.5, 5, 10, 12.5])
    files = write_dicom_series(folder / "truncated", hu, "1.2.3.3")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 100])
    files = write_dicom_series(folder / "no_preamble", hu, "1.2.3.5")
    files[2].write_bytes(bytes(1000) + files[2].read_bytes()[1000:])
    # Stored values without a rescale to HU, as a series whose RescaleIntercept went missing.
    write_dicom_series(folder / "stored_values", hu + 1024, "1.2.3.4", intercept=0.0)


def _broken_checkpoints(folder: Path) -> None:
    torch.save(CNN3D(widths=(4, 8)).state_dict(), folder / "truncated.pth")
    data = (folder / "truncated.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": CNN3D(widths=(4, 8)).state_dict(), "config": _Unpicklable()}, folder / "pickled.pth")
    torch.save(CNN3D(widths=(6, 12)).state_dict(), folder / "wider.pth")


class _Unpicklable:
    """Any object beyond tensors and containers: torch.load(weights_only=True) must refuse it."""


def _truncated_cache(cache_dir: Path, root: Path) -> None:
    """The patch cache ``@run`` would use, built, then with half of ``patches.npy`` cut off."""
    cfg = compose_config([f"data.root={root}", "data.synthetic=null", f"data.cache_dir={cache_dir}", *FAST_OVERRIDES],
                         cache_dir.parent / "compose")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    patches = datamodule.build_cache().patches_path  # prepare_data keeps no state
    with open(patches, "r+b") as handle:
        handle.truncate(patches.stat().st_size // 2)


# --------------------------------------------------------------------------------------------------
# Running the cases


def _arguments(case: Case, bad: Path, root: Path, cache_dir: Path) -> list[str]:
    args: list[str] = []
    for arg in case.args:
        if arg == "@run":
            args += tiny_run_overrides(root, cache_dir, bad / "mlflow")
        elif arg.startswith("@scan:"):
            scans = bad / "scans" / arg.removeprefix("@scan:")
            args += [*tiny_run_overrides(scans, bad / "cache_scans", bad / "mlflow"),
                     f"data.labels_csv={scans}/labels.csv"]
        else:
            args.append(arg.format(bad=bad, root=root))
    return args


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, bad: Path, synthetic_root: Path, fork_server: ForkServer,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """Every selected case started at once, two subprocesses at a time (the tests only wait for theirs)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input_ends_with_one_clean_message"]
    output_root = tmp_path_factory.mktemp("bad_input_runs")
    cache_dir = synthetic_root.parent / "cache"  # the session's, as make_config uses
    pool = ThreadPoolExecutor(max_workers=2)
    request.addfinalizer(pool.shutdown)
    return {case.id: pool.submit(run_entry_point, case.entry, _arguments(case, bad, synthetic_root, cache_dir),
                                 output_root, 300, fork_server=fork_server)
            for case in selected}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_ends_with_one_clean_message(case: Case, outcomes: dict[str, Future], bad: Path,
                                               synthetic_root: Path) -> None:
    proc: subprocess.CompletedProcess = outcomes[case.id].result()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    messages = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(messages) == 1, proc.stderr[-4000:]
    message = proc.stderr[proc.stderr.index("error: "):]
    for name in case.names:
        assert name.format(bad=bad, root=synthetic_root) in message, message
    assert "weights_only=False" not in message


def test_case_ids_are_unique() -> None:
    """``outcomes`` is keyed by id: two cases with one id would both check one subprocess's output."""
    ids = [case.id for case in CASES]
    assert sorted(ids) == sorted(set(ids)), [case_id for case_id in set(ids) if ids.count(case_id) > 1]


def test_the_folder_of_a_refused_run_says_why(tmp_path: Path, fork_server: ForkServer) -> None:
    """Hydra makes the run folder before the checks: its log holds the message the console printed."""
    proc = run_entry_point("run", ["trainer.max_epochs=0"], tmp_path, fork_server=fork_server)
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1, proc.stderr
    (log_file,) = tmp_path.glob("logs/train/runs/*/run.log")
    assert "error: trainer.max_epochs=0 would train nothing" in log_file.read_text()


def test_debug_switch_shows_the_traceback(tmp_path: Path, fork_server: ForkServer) -> None:
    proc = run_entry_point("run", ["+seeed=1"], tmp_path, env={"LUNGEXP_DEBUG": "1"}, fork_server=fork_server)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConfigError: unknown top-level key 'seeed'" in proc.stderr


@pytest.mark.slow
def test_a_bad_job_in_a_sweep_fails_alone(bad: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """In a ``-m`` sweep the job with bad input fails with its message; the other jobs still run."""
    args = ["-m", "model.optimizer.lr=0,0.001", "trainer=debug",
            *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", bad / "mlflow")]
    proc = run_entry_point("run", args, tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert "Results" in proc.stdout  # the good job (lr=0.001) ran after the bad one
    assert "Error executing job with overrides" in proc.stderr and "model.optimizer.lr=0" in proc.stderr
    assert "error: model.optimizer.lr=0 must be positive" in proc.stderr
