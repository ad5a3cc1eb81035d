"""A model a colleague loads by name: ``lungexp.register`` into the MLflow Model Registry, then ``load_model`` and
``lungexp.predict model_uri=models:/NAME@champion`` (and ``ckpt_path=[..]``) on a tiny generated scan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from lungexp.data.names import COORD_COLUMNS
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.registered import MODEL_CODE_FILE, load_registered, register_model
from lungexp.inference.scans import open_scans
from lungexp.inference.submission import SUBMISSION_COLUMNS, predict_candidates, read_candidates
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import printed, run_entry_point


@pytest.fixture
def restored_uris() -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs are put back after the test."""
    previous, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous_registry)


@pytest.fixture
def store(tmp_path: Path, restored_uris: None) -> str:
    """A temporary SQLite store."""
    return f"sqlite:///{tmp_path}/registry.db"


def hu_patches(predictor: Predictor | Ensemble, count: int = 5) -> np.ndarray:
    patch = predictor.recipe.patch
    shape = (count, patch.channels, patch.size, patch.size, patch.size)
    return np.random.default_rng(1).uniform(-1000, 400, shape).astype(np.float32)


def test_a_registered_model_round_trips_and_scores_patches_as_predict_does(trained_run, store: str,
                                                                           tmp_path: Path) -> None:
    predictor = Predictor(trained_run.best_checkpoint, device="cpu")
    patches = hu_patches(predictor)

    registered = register_model([trained_run.best_checkpoint], "nodule-fpr", tracking_uri=store,
                                artifact_location=str(tmp_path / "artifacts"))
    assert (registered.uri, registered.version, registered.members) == ("models:/nodule-fpr@champion", "1", 1)
    loaded = mlflow.pyfunc.load_model("models:/nodule-fpr@champion", model_config={"device": "cpu"})

    probabilities = loaded.predict(patches)
    np.testing.assert_array_equal(probabilities, predictor.patch_probabilities(patches))
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 1, 16, 16, 16)
    np.testing.assert_array_equal(loaded.input_example, np.full((1, 1, 16, 16, 16), -1000, np.float32))  # air
    stored = Path(mlflow.artifacts.download_artifacts(registered.uri, dst_path=str(tmp_path / "model")))
    files = {path.name for path in stored.rglob("*")}
    assert "lungexp_model.py" in files and "python_model.pkl" not in files  # its code as source, no pickle to run
    with pytest.raises(Exception, match="shape"):  # MLflow's signature check or the model's own
        loaded.predict(patches[:, :, :8])

    # A second version with flips takes the alias; the first stays loadable by number.
    register_model([trained_run.best_checkpoint], "nodule-fpr", tta="flips", tracking_uri=store)
    flipped = mlflow.pyfunc.load_model("models:/nodule-fpr@champion", model_config={"device": "cpu"})
    assert np.abs(flipped.predict(patches) - probabilities).max() > 1e-6
    np.testing.assert_array_equal(mlflow.pyfunc.load_model("models:/nodule-fpr/1").predict(patches), probabilities)


@pytest.mark.parametrize("tamper", ["edited code", "extra module"])
def test_a_registered_model_whose_code_was_changed_is_refused_before_it_runs(trained_run, store: str,
                                                                             tmp_path: Path, tamper: str) -> None:
    artifacts = tmp_path / "artifacts"
    register_model([trained_run.best_checkpoint], "shared", tracking_uri=store, artifact_location=str(artifacts))
    load_registered("models:/shared@champion", tracking_uri=store, device="cpu")  # as registered: it loads
    code = next(artifacts.rglob(MODEL_CODE_FILE))
    marker = tmp_path / "ran"
    payload = f"open({str(marker)!r}, 'w').close()\n"
    if tamper == "edited code":
        code.write_text(payload + code.read_text())
    else:
        (code.parent / "helper.py").write_text(payload)
    with pytest.raises(ConfigError, match="its code is not the one lungexp.register writes.*refused"):
        load_registered("models:/shared@champion", tracking_uri=store, device="cpu")
    assert not marker.exists()  # refused before MLflow ran any of it


@pytest.mark.parametrize("method", ["none", "temperature", "isotonic"])
def test_a_calibrated_model_carries_its_calibrator_and_logs_no_conflicting_params(
        method: str, trained_run, store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calibrated = Predictor(trained_run.best_checkpoint, device="cpu")
    calibrated.calibrate(method)
    patches = hu_patches(calibrated)

    registered = register_model([trained_run.best_checkpoint], "calibrated", calibration=method, tracking_uri=store,
                                artifact_location=str(tmp_path / "artifacts"))
    params = mlflow.MlflowClient().get_run(registered.run_id).data.params
    assert (params["calibration"], params["tta"], params["device"]) == (method, "none", "auto")
    # MLflow logs the model_config as params too: a value clashing with ours is a warning on every registration.
    assert not [record for record in caplog.records if "Failed to log model config" in record.getMessage()]
    loaded = mlflow.pyfunc.load_model("models:/calibrated@champion", model_config={"device": "cpu"})
    np.testing.assert_allclose(loaded.predict(patches), calibrated.patch_probabilities(patches), rtol=0, atol=1e-7)
    plain = Predictor(trained_run.best_checkpoint, device="cpu").patch_probabilities(patches)
    assert (np.abs(loaded.predict(patches) - plain).max() > 1e-4) == (method != "none")  # applied, not dropped


@pytest.mark.slow
def test_register_and_predict_by_name_and_by_list_end_to_end(trained_run, synthetic_root: Path,
                                                              tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_entry_point("register", [f"ckpt_path={trained_run.best_checkpoint}", "name=fpr",
                                        f"tracking_uri={store}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Registered 1 checkpoint(s) (tta=none, calibration=none) as fpr version 1 -> models:/fpr@champion" in done.stdout

    points = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    candidates = tmp_path / "points.csv"
    points[["seriesuid", *COORD_COLUMNS]].head(6).to_csv(candidates, index=False)
    common = [f"scans={synthetic_root}", f"candidates={candidates}", "device=cpu", f"tracking_uri={store}"]
    by_name = run_entry_point("predict", ["model_uri=models:/fpr@champion", f"out={tmp_path}/by_name.csv", *common],
                              tmp_path)
    assert by_name.returncode == 0, by_name.stderr[-3000:]
    assert "Scored 6 candidate(s)" in by_name.stdout
    ckpt = trained_run.best_checkpoint
    by_list = run_entry_point("predict", [f"ckpt_path=[{ckpt},{ckpt}]", f"out={tmp_path}/by_list.csv", *common],
                              tmp_path)
    assert by_list.returncode == 0, by_list.stderr[-3000:]
    assert "with an ensemble of 2 checkpoints" in by_list.stdout

    source = open_scans(synthetic_root)
    single = predict_candidates(Predictor(ckpt, device="cpu"), source, read_candidates(candidates, source))
    for name in ("by_name", "by_list"):
        written = pd.read_csv(tmp_path / f"{name}.csv", dtype={"seriesuid": str})
        assert list(written.columns) == SUBMISSION_COLUMNS
        np.testing.assert_allclose(written["probability"], single["probability"], atol=1e-6)

    both = run_entry_point("predict", ["model_uri=models:/fpr@champion", f"ckpt_path={ckpt}", f"out={tmp_path}/x.csv",
                                       *common], tmp_path)
    assert both.returncode == 1 and both.stderr.startswith("error: model_uri=models:/fpr@champion carries its")


@pytest.mark.slow
def test_register_a_cv_by_its_run_id_as_the_ensemble_of_its_fold_checkpoints(tiny_cv, mlflow_dir: Path,
                                                                             restored_uris: None,
                                                                             tmp_path: Path) -> None:
    done = run_entry_point("register", [f"cv_run={tiny_cv.result.parent_run_id}", "name=cv-folds",
                                        f"tracking_uri={tiny_cv.tracking_uri}",
                                        f"paths.mlflow_artifacts={mlflow_dir}/artifacts"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Registered 3 checkpoint(s) (tta=none, calibration=none) as cv-folds version" in done.stdout
    uri = printed(r"-> (models:/cv-folds@champion) ", done.stdout)

    mlflow.set_tracking_uri(tiny_cv.tracking_uri)
    mlflow.set_registry_uri(tiny_cv.tracking_uri)
    loaded = mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})
    folds = Ensemble([Predictor(path, device="cpu") for path in tiny_cv.checkpoints])
    patches = hu_patches(folds)
    probabilities = loaded.predict(patches)
    np.testing.assert_array_equal(probabilities, folds.patch_probabilities(patches))
    alone = [member.patch_probabilities(patches) for member in folds.members]
    assert min(np.abs(fold - probabilities).max() for fold in alone) > 1e-3  # no fold is the mean: a real average
