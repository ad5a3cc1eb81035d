"""A model a colleague loads by name: ``lungexp.register`` into the MLflow Model Registry, then ``load_model`` and
``lungexp.predict model_uri=models:/NAME@champion`` (and ``ckpt_path=[..]``) on a tiny generated scan; a multiclass
model with its class columns and its temperature too."""

from __future__ import annotations

import pickle
import py_compile
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lungexp.data.labels.class_maps import CLASS_MAPS
from lungexp.data.labels.targets import HeadSpec, TargetOptions
from lungexp.data.names import COORD_COLUMNS
from lungexp.inference.candidate_scoring import SUBMISSION_COLUMNS, predict_candidates, read_candidates
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.registered import (
    MODEL_CODE,
    MODEL_CODE_FILE,
    REGISTRY_EXPERIMENT,
    load_registered,
    register_model,
    write_manifest,
)
from lungexp.inference.scans import open_scans
from lungexp.training.checkpoint import RECIPE_KEY
from lungexp.training.module import VALIDATION_PREDICTIONS
from lungexp.utils.errors import ConfigError, LungexpError
from tests.helpers.checkpoints import write_checkpoint
from tests.helpers.cli import printed, run_entry_point
from tests.helpers.fork_server import ForkServer


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


def test_a_registered_multiclass_model_signs_its_class_columns_and_scores_as_predict_does(
        store: str, synthetic_root: Path, tmp_path: Path) -> None:
    """A tiny untrained multiclass checkpoint whose stored validation predictions are over-confident: registered
    with calibration=temperature, it returns the class probabilities predict gives with the same calibration."""
    target = TargetOptions(HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"]))
    columns = list(target.probability_columns)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) * 4
    logits[np.arange(60), labels] += 2
    validation = {"label": labels, **dict(zip(columns, (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).T,
                                              strict=True))}
    checkpoint = write_checkpoint(tmp_path / "texture.ckpt", target=target, validation=validation)
    registered = register_model([checkpoint], "texture", calibration="temperature", tracking_uri=store,
                                artifact_location=str(tmp_path / "artifacts"))
    loaded = mlflow.pyfunc.load_model(registered.uri, model_config={"device": "cpu"})
    [output] = loaded.metadata.get_output_schema().inputs
    assert (output.name, output.shape) == (f"multiclass: {', '.join(columns)}", (-1, 3))

    ensemble = Ensemble([Predictor(checkpoint, device="cpu")])
    ensemble.calibrate("temperature")  # as `predict ckpt_path=... calibration=temperature`
    patches = hu_patches(ensemble)
    scores = loaded.predict(patches)
    np.testing.assert_array_equal(scores, ensemble.patch_probabilities(patches))
    plain = Predictor(checkpoint, device="cpu").patch_probabilities(patches)
    assert np.abs(scores - plain).max() > 1e-4 and np.array_equal(scores.argmax(axis=1), plain.argmax(axis=1))

    source = open_scans(synthetic_root)
    candidates = read_candidates(synthetic_root / "annotations.csv", source).head(4)
    by_name = predict_candidates(load_registered(registered.uri, device="cpu"), source, candidates)
    assert list(by_name.columns) == [*SUBMISSION_COLUMNS[:4], *columns, "prediction"]
    pd.testing.assert_frame_equal(by_name, predict_candidates(ensemble, source, candidates))


@pytest.fixture(scope="module")
def registered_folder(trained_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of a registered, calibrated model as its store keeps them (once per module: registering takes
    seconds)."""
    previous, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    root = tmp_path_factory.mktemp("registered")
    register_model([trained_run.best_checkpoint], "stored", calibration="temperature",
                   tracking_uri=f"sqlite:///{root}/registry.db", artifact_location=str(root / "artifacts"))
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous_registry)
    return next((root / "artifacts").rglob("MLmodel")).parent


def payload(marker: Path) -> str:
    """Python that leaves ``marker`` behind when it runs."""
    return f"open({str(marker)!r}, 'w').close()\n"


def edit_mlmodel(model: Path, edit: Callable[[dict], None]) -> None:
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    edit(mlmodel["flavors"]["python_function"])
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def pyc_model_code(model: Path, marker: Path) -> None:
    """Compiled model code (MLflow runs a .pyc named by model_code_path as readily as a .py)."""
    py_compile.compile(str(write(model / "payload.py", payload(marker))), cfile=str(model / "lungexp_model.pyc"))
    (model / "payload.py").unlink()
    edit_mlmodel(model, lambda flavor: flavor.update(model_code_path="lungexp_model.pyc"))


def code_folder_loader(model: Path, marker: Path) -> None:
    """A code/ folder put on sys.path with a compiled loader_module of its own, as MLflow's pyfunc format allows."""
    source = write(model / "evil_loader.py", payload(marker) + "def _load_pyfunc(path, config=None):\n    pass\n")
    (model / "code").mkdir()
    py_compile.compile(str(source), cfile=str(model / "code" / "evil_loader.pyc"))
    source.unlink()
    edit_mlmodel(model, lambda flavor: flavor.update(code="code", loader_module="evil_loader"))


def cached_bytecode(model: Path, marker: Path) -> None:
    """A __pycache__ .pyc of the model code that Python runs instead of the (unchanged) source."""
    cache = model / "__pycache__" / f"lungexp_model.{sys.implementation.cache_tag}.pyc"
    cache.parent.mkdir()
    py_compile.compile(str(write(model / "payload.py", payload(marker))), cfile=str(cache),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    (model / "payload.py").unlink()


def pickled_model(model: Path, marker: Path) -> None:
    """A python_model pickle next to the model code."""
    write(model / "python_model.pkl", "").write_bytes(pickle.dumps(Runs(payload(marker))))
    edit_mlmodel(model, lambda flavor: flavor.update(python_model="python_model.pkl"))


class Runs:
    """Unpickled, it runs ``source``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return exec, (self.source,)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# Each way to make a stored model run code, or score with other weights, and what the refusal names. With
# `+manifest` the attacker also rewrote the manifest, so only the check of what lungexp writes stands.
TAMPERING = {
    "edited code": (lambda model, marker: write(model / MODEL_CODE_FILE, payload(marker) + MODEL_CODE),
                    r"changed since registration lungexp_model\.py.*lungexp_model\.py is not lungexp's model code"),
    "extra module": (lambda model, marker: write(model / "helper.py", payload(marker)), r"extra helper\.py"),
    "pyc model code": (pyc_model_code, r"extra lungexp_model\.pyc; changed since registration MLmodel"),
    "pyc model code +manifest": (pyc_model_code, r"model_code_path: lungexp_model\.pyc"),
    "code folder +manifest": (code_folder_loader, r"never writes: code/evil_loader\.pyc.*loader_module: evil_loader; "
                                                  r"MLmodel code: code"),
    "cached bytecode +manifest": (cached_bytecode, r"never writes: __pycache__/lungexp_model\."),
    "pickled model +manifest": (pickled_model, r"python_function\.python_model"),
    "second member in the config": (lambda model, marker: edit_mlmodel(model, lambda f: f["config"].update(members=2)),
                                    r"changed since registration MLmodel.*config members: 2 with the artifacts calibrator0, member0"),
    "missing member": (lambda model, marker: next((model / "artifacts").glob("*.ckpt")).unlink(),
                       r"missing artifacts/epoch\d+\.ckpt.*MLmodel artifact member0"),
    "extra file": (lambda model, marker: write(model / "artifacts" / "notes.txt", "hi"), r"extra artifacts/notes\.txt"),
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_a_stored_model_that_is_not_what_register_wrote_is_refused_before_any_of_it_runs(
        registered_folder: Path, tmp_path: Path, tamper: str) -> None:
    model = Path(shutil.copytree(registered_folder, tmp_path / "model"))
    marker = tmp_path / "ran"
    change, refusal = TAMPERING[tamper]
    change(model, marker)
    if tamper.endswith("+manifest"):
        write_manifest(model)
    with pytest.raises(ConfigError, match=f"refused before loading it: .*{refusal}"):
        load_registered(str(model), device="cpu")
    assert not marker.exists()  # refused before MLflow ran any of it


def test_a_swapped_member_is_refused_and_one_that_disagrees_with_the_signature_too(
        registered_folder: Path, trained_run, tmp_path: Path) -> None:
    model = Path(shutil.copytree(registered_folder, tmp_path / "model"))
    load_registered(str(model), device="cpu")  # as registered: it loads
    member = next((model / "artifacts").glob("*.ckpt"))
    checkpoint = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)
    checkpoint[RECIPE_KEY]["patch"] = {**checkpoint[RECIPE_KEY]["patch"], "size": 24}  # another model's patches
    torch.save(checkpoint, member)
    with pytest.raises(ConfigError, match=f"changed since registration artifacts/{member.name}"):
        load_registered(str(model), device="cpu")
    write_manifest(model)  # consistent again, but not with the signature register wrote
    with pytest.raises(ConfigError, match=r"members take patches of shape \(-1, 1, 24, 24, 24\) but its signature "
                                          r"says patches of shape \(-1, 1, 16, 16, 16\)"):
        load_registered(str(model), device="cpu")


def test_register_checks_its_options_first_and_leaves_nothing_half_made(trained_run, store: str, tmp_path: Path,
                                                                       fork_server: ForkServer) -> None:
    """A name or alias the registry refuses, or a calibration that cannot be fitted, failed after a run (or a
    version) was made; now each is one message naming register's own key, and the store stays empty."""
    checkpoint = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)
    del checkpoint[VALIDATION_PREDICTIONS]
    unvalidated = tmp_path / "unvalidated.ckpt"
    torch.save(checkpoint, unvalidated)
    missing = tmp_path / "missing.ckpt"  # the options are checked before the checkpoints are read
    cases = [(missing, {"name": "a/b"}, r"name=a/b: the MLflow Model Registry refuses it: .*cannot contain '/'"),
             (missing, {"alias": "latest"}, r"alias=latest: .*reserved"),
             (missing, {"alias": "v2"}, r"alias=v2: .*reserved"),
             (missing, {"calibration": "platt"}, r"^calibration='platt' is not a valid choice"),
             (missing, {"tta": "rotations"}, r"^tta='rotations' is not a valid choice"),
             (missing, {"tracking_uri": "nowhere://store"}, r"nowhere://store: the MLflow tracking store cannot be opened"),
             (unvalidated, {"calibration": "temperature"}, r"calibration=temperature cannot be fitted for .*unvalidated")]
    for ckpt, options, refusal in cases:
        with pytest.raises(LungexpError, match=refusal):
            register_model([ckpt], **{"name": "fpr", "tracking_uri": store, **options})
    client = mlflow.MlflowClient(store)
    assert client.get_experiment_by_name(REGISTRY_EXPERIMENT) is None and not client.search_registered_models()

    done = run_entry_point("register", [f"ckpt_path={missing}", "name=a/b", f"tracking_uri={store}"], tmp_path,
                           fork_server=fork_server)
    assert (done.returncode, done.stderr.splitlines()) == (1, [
        "error: name=a/b: the MLflow Model Registry refuses it: Invalid model name 'a/b'. Names cannot contain '/' "
        "or ':'."])


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
    assert "with models:/fpr@champion (1 checkpoint(s)" in by_name.stdout  # the model's URI, not its download folder
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
