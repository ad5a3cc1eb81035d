"""A checkpoint, or an ensemble of them, as one model of the MLflow Model Registry (``python -m lungexp.register``).

The registered model is an ``mlflow.pyfunc`` model: its artifacts are the checkpoint files (read back with
:func:`~lungexp.training.checkpoint.load_checkpoint`, ``weights_only``: the network is never pickled) and, when
calibrated, each member's fitted calibrator (JSON); its ``model_config`` holds the TTA mode. The checkpoints carry their own
preprocessing (patch geometry, HU window,
normalisation), so the model takes raw HU patches::

    loaded = mlflow.pyfunc.load_model("models:/NAME@champion")
    probabilities = loaded.predict(hu_patches)  # float32 (N, C, S, S, S) in HU -> float32 (N,)

``C`` is the number of patch scales and ``S`` the patch size (the signature records both);
``lungexp.predict model_uri=models:/NAME@champion`` extracts such patches around candidates of new scans.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec

from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.metrics.calibration import calibrator_from_dict
from lungexp.models.tta import check_tta
from lungexp.tracking.runs import ensure_experiment
from lungexp.utils.errors import ConfigError

MODEL_ARTIFACT = "model"  # the name of the pyfunc model inside its MLflow run
# MLflow's "models from code": the model is this source, run at load time, instead of a pickled EnsembleModel (a
# pickle from a shared registry could run anything, and MLflow warns of it); what it runs is lungexp's own class.
MODEL_CODE_FILE = "lungexp_model.py"
MODEL_CODE = """import mlflow

from lungexp.inference.registered import EnsembleModel

mlflow.models.set_model(EnsembleModel())
"""
CALIBRATOR_ARTIFACT = "calibrator"  # + member index: the fitted calibrators of a calibrated model
REGISTRY_EXPERIMENT = "lungexp-registry"  # the experiment of the runs that log registered models


class EnsembleModel(PythonModel):
    """The pyfunc model: an :class:`~lungexp.inference.ensemble.Ensemble` of the artifacts ``member0``, ``member1``, ...

    ``model_config``: ``{"members": N, "tta": "none"|"flips", "device": "auto"}``, and the artifacts
    ``calibrator0``, ``calibrator1``, ... (each member's fitted calibrator as JSON) when calibrated; ``device`` may be overridden
    at load time (``mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})``).
    """

    ensemble: Ensemble

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config
        members = [Predictor(context.artifacts[f"member{index}"], device=config.get("device", "auto"))
                   for index in range(int(config["members"]))]
        for index, member in enumerate(members):
            calibrator = context.artifacts.get(f"{CALIBRATOR_ARTIFACT}{index}")
            member.calibrator = None if calibrator is None else calibrator_from_dict(json.loads(Path(calibrator).read_text()))
        self.ensemble = Ensemble(members, tta=config["tta"])

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        """Probabilities of HU patches ``(N, C, S, S, S)``."""
        patches = np.asarray(model_input, dtype=np.float32)
        patch = self.ensemble.recipe.patch
        expected = (patch.channels, patch.size, patch.size, patch.size)
        if patches.ndim != 5 or patches.shape[1:] != expected:
            raise ConfigError(f"this model scores HU patches of shape (N, {', '.join(map(str, expected))}); got "
                              f"an array of shape {patches.shape}")
        return self.ensemble.patch_probabilities(patches)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    run_id: str
    members: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def register_model(ckpt_paths: Sequence[str | Path], name: str, alias: str = "champion", tta: str = "none",
                   calibration: str = "none", tracking_uri: str | None = None, artifact_location: str | None = None,
                   description: str | None = None) -> RegisteredVersion:
    """Log the checkpoints as one pyfunc model to a new run and register it as a new version of ``name``,
    pointed to by ``alias``.

    ``artifact_location``: where a new registry experiment of a local store keeps the model files (as
    ``paths.mlflow_artifacts``). The members are loaded first, so a checkpoint that is not lungexp's, or members whose preprocessing differs,
    fail before anything is logged.
    """
    ensemble = Ensemble([Predictor(path, device="cpu") for path in ckpt_paths], tta=check_tta(tta))
    ensemble.calibrate(calibration)  # fitted now, stored in the model: loading it never refits
    if not name:
        raise ConfigError("name=...: give the registered model a name")
    patch = ensemble.recipe.patch
    shape = (patch.channels, patch.size, patch.size, patch.size)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    # One patch of air: the input's form on the model's page; MLflow loads the model and scores it once when logging
    # (a warning, not an error, if that fails). As JSON it takes ~30 bytes a voxel: ~1 MB for a 32³ patch.
    example = np.full((1, *shape), patch.pad_hu, dtype=np.float32)
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(client, REGISTRY_EXPERIMENT, artifact_location)
    artifacts = {f"member{index}": str(path) for index, path in enumerate(ensemble.paths)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register {name}") as run, \
            tempfile.TemporaryDirectory() as folder:
        mlflow.log_params({"calibration": calibration, **artifacts})  # MLflow logs the model_config's own
        # Files, not model_config (whose values MLflow logs as params): an isotonic fit has a value per probability.
        for index, calibrator in enumerate(ensemble.calibrators or []):
            artifacts[f"{CALIBRATOR_ARTIFACT}{index}"] = str(Path(folder) / f"calibrator{index}.json")
            Path(artifacts[f"{CALIBRATOR_ARTIFACT}{index}"]).write_text(json.dumps(calibrator.to_dict()))
        code = Path(folder) / MODEL_CODE_FILE
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=str(code), signature=signature, input_example=example,
            artifacts=artifacts, model_config={"members": len(ensemble.members), "tta": ensemble.tta, "device": "auto"},
            pip_requirements=_requirements(), registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    if description:
        client.update_model_version(name, version, description=description)
    return RegisteredVersion(name, version, alias, run.info.run_id, len(ensemble.members))


def load_registered(uri: str, tracking_uri: str | None = None, device: str = "auto") -> Ensemble:
    """The :class:`Ensemble` inside a registered lungexp model (``models:/NAME@ALIAS``, ``runs:/...``)."""
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=folder))
        except mlflow.exceptions.MlflowException as error:
            raise ConfigError(f"model_uri={uri}: cannot load it from {mlflow.get_tracking_uri()}: "
                              f"{str(error).splitlines()[0]}") from None
        _check_runs_only_lungexp(uri, local)
        model = mlflow.pyfunc.load_model(str(local), model_config={"device": device}).unwrap_python_model()
    if not isinstance(model, EnsembleModel):
        raise ConfigError(f"model_uri={uri}: not a lungexp model (it is a {type(model).__name__}); register one with "
                          "`python -m lungexp.register`")
    return model.ensemble


def _check_runs_only_lungexp(uri: str, model: Path) -> None:
    """Loading a pyfunc model runs its code (its source, a pickle, or modules of its ``code_paths`` put first on
    ``sys.path``): a model from a shared registry may hold only the source :func:`register_model` wrote."""
    code = [path for path in model.rglob("*") if path.suffix in {".py", ".pkl", ".pickle", ".cloudpickle"}]
    if [path.name for path in code] != [MODEL_CODE_FILE] or code[0].read_text() != MODEL_CODE:
        raise ConfigError(f"model_uri={uri}: its code is not the one lungexp.register writes "
                          f"({', '.join(sorted(str(path.relative_to(model)) for path in code)) or 'none'}); "
                          "loading it would run that code, so it is refused. Register the checkpoints again with "
                          "`python -m lungexp.register`")


def _requirements() -> list[str]:
    """The environment a model server needs: lungexp at this version (which pins the rest)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [f"lungexp=={version('lungexp')}"]
    except PackageNotFoundError:
        return ["lungexp"]
