"""A checkpoint, or an ensemble of them, as one model of the MLflow Model Registry (``python -m lungexp.register``).

The registered model is an ``mlflow.pyfunc`` model: its artifacts are the checkpoint files (read back with
:func:`~lungexp.training.checkpoint.load_checkpoint`, ``weights_only``: the network is never pickled) and, when
calibrated, each member's fitted calibrator (JSON); its ``model_config`` holds the TTA mode. The checkpoints carry their own
preprocessing (patch geometry, HU window,
normalisation), so the model takes raw HU patches::

    loaded = mlflow.pyfunc.load_model("models:/NAME@champion")
    probabilities = loaded.predict(hu_patches)  # float32 (N, C, S, S, S) in HU -> float32 (N,)

``C`` is the number of patch scales and ``S`` the patch size (the signature records both);
``lungexp.predict model_uri=models:/NAME@champion`` extracts such patches around candidates of new scans. A model
trained with covariates (``model.covariates``) takes them too, by name, as its signature says::

    probabilities = loaded.predict({"image": hu_patches, "diameter_mm": diameters})  # float64 (N,) each

and one that reads no image (``model=tabular``) its covariates alone: ``loaded.predict({"diameter_mm": diameters})``
(or a DataFrame with those columns).

Loading a pyfunc model runs the code it carries, and on a shared registry anyone may add a version. So
:func:`register_model` stores a manifest in the model (``lungexp_manifest.json``: every file's sha256), and
:func:`load_registered` loads only a model that is exactly what it wrote, checked before MLflow imports or
unpickles anything: every file as the manifest lists it (nothing extra, missing or changed: a swapped member
checkpoint too), and, since a manifest in the model proves only that the files agree with each other, an
MLmodel whose pyfunc flavor runs nothing but lungexp's own model code (:data:`MODEL_CODE`, byte for byte).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
import pandas as pd
import yaml  # type: ignore[import-untyped]  # PyYAML comes with MLflow, without type stubs
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec
from mlflow.utils.validation import (
    _validate_model_alias_name,
    _validate_model_alias_name_reserved,
    _validate_model_name,
)

from lungexp.evaluation.head_report import is_one_logit
from lungexp.evaluation.operating_point import OperatingPoint
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.metrics.calibration import check_calibration
from lungexp.models.tta import check_tta
from lungexp.tracking.logger_setup import open_tracking_store
from lungexp.tracking.runs import ensure_experiment
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.digests import file_sha256
from lungexp.utils.errors import ConfigError

MODEL_ARTIFACT = "model"  # the name of the pyfunc model inside its MLflow run
# MLflow's "models from code": the model is this source, run at load time, instead of a pickled EnsembleModel (a
# pickle from a shared registry could run anything, and MLflow warns of it); what it runs is lungexp's own class.
MODEL_CODE_FILE = "lungexp_model.py"
MODEL_CODE = """import mlflow

from lungexp.inference.registered import EnsembleModel

mlflow.models.set_model(EnsembleModel())
"""
MEMBER_ARTIFACT = "member"  # + member index: the checkpoints
CALIBRATOR_ARTIFACT = "calibrator"  # + member index: the fitted calibrators of a calibrated model
REGISTRY_EXPERIMENT = "lungexp-registry"  # the experiment of the runs that log registered models
MANIFEST_FILE = "lungexp_manifest.json"  # {"sha256": {file: digest}} of every other file of the model
# Written by MLflow's client into a `models:/` download (the name and version, as YAML), never stored in the model.
DOWNLOAD_FILES = frozenset({"registered_model_meta"})
# What MLflow writes into a pyfunc model besides the model code and the artifacts: data it reads, never code.
MLFLOW_FILES = frozenset({"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
                          "serving_input_example.json"})
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # MLflow's loader of "models from code"
# The keys of the python_function flavor that lungexp's models have; any other (`python_model`: a pickle, `data`,
# `predict_fn`, ...) is refused. Of these, `loader_module`, `code` and `model_code_path` are pinned below.
PYFUNC_KEYS = frozenset({"artifacts", "cloudpickle_version", "code", "config", "env", "loader_module",
                         "model_code_path", "python_version", "streamable"})
_ARTIFACT_NAME = re.compile(rf"({MEMBER_ARTIFACT}|{CALIBRATOR_ARTIFACT})(\d+)")
IMAGE_INPUT = "image"  # the patches' name among the inputs of a model with covariates


def input_schema(recipe: ModelRecipe) -> Schema:
    """What a model of ``recipe`` takes: HU patches ``(N, C, S, S, S)`` float32; with covariates, the same named
    :data:`IMAGE_INPUT` (none for a model that reads no image) and one ``(N,)`` float64 input named after each
    covariate column."""
    patches = TensorSpec(np.dtype(np.float32), (-1, *recipe.patch.shape))
    if not recipe.covariates:
        return Schema([patches])
    image = [TensorSpec(patches.type, patches.shape, name=IMAGE_INPUT)] if recipe.images else []
    return Schema([*image, *(TensorSpec(np.dtype(np.float64), (-1,), name=name) for name in recipe.covariates)])


def output_schema(recipe: ModelRecipe) -> Schema:
    """What the model returns: ``(N,)`` probabilities of one binary logit, else ``(N, columns)`` of its target's
    heads, the tensor named by the target's kind and columns (``ordinal: probability_ge2, ...``)."""
    target = recipe.targets
    if is_one_logit(target):
        return Schema([TensorSpec(np.dtype(np.float32), (-1,))])
    columns = target.probability_columns
    return Schema([TensorSpec(np.dtype(np.float32), (-1, len(columns)), name=f"{target.kind}: {', '.join(columns)}")])


def describe_inputs(schema: Schema | None) -> str:
    """``patches of shape (-1, 1, 16, 16, 16)``, or ``image (-1, 1, 16, 16, 16), diameter_mm (-1,)``."""
    specs = [spec for spec in (schema.inputs if schema is not None else []) if isinstance(spec, TensorSpec)]
    if len(specs) == 1 and not specs[0].name:
        return f"patches of shape {specs[0].shape}"
    return ", ".join(f"{spec.name} {spec.shape}" for spec in specs) or "no tensors"


class EnsembleModel(PythonModel):
    """The pyfunc model: an :class:`~lungexp.inference.ensemble.Ensemble` of the artifacts ``member0``, ``member1``, ...

    ``model_config``: ``{"members": N, "tta": "none"|"flips", "device": "auto"}``, and the artifacts
    ``calibrator0``, ``calibrator1``, ... (each member's fitted calibrator as JSON) when calibrated; ``device`` may be overridden
    at load time (``mlflow.pyfunc.load_model(uri, model_config={"device": "cpu"})``).
    """

    ensemble: Ensemble

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config
        members = [Predictor(context.artifacts[f"{MEMBER_ARTIFACT}{index}"], device=config.get("device", "auto"))
                   for index in range(int(config["members"]))]
        for index, member in enumerate(members):
            calibrator = context.artifacts.get(f"{CALIBRATOR_ARTIFACT}{index}")
            if calibrator is not None:  # else uncalibrated, as loaded
                member.operating_point = OperatingPoint.restored(
                    member.validation_predictions, json.loads(Path(calibrator).read_text()),
                    source=f"the registered model's {Path(calibrator).name}", head=member.recipe.targets.primary)
        self.ensemble = Ensemble(members, tta=config["tta"])

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        """Probabilities of HU patches ``(N, C, S, S, S)``; for a model with covariates, of the mapping
        ``{"image": patches, "<covariate>": (N,) values, ...}`` (the annotation is the one MLflow validates silently)."""
        recipe = self.ensemble.recipe
        names = recipe.covariates
        covariates = None
        if names:
            model_input = cast(Any, model_input)
            wanted = [*([IMAGE_INPUT] if recipe.images else []), *names]
            if not isinstance(model_input, Mapping | pd.DataFrame) or any(name not in model_input for name in wanted):
                given = list(model_input) if isinstance(model_input, Mapping | pd.DataFrame) else \
                    type(model_input).__name__
                raise ConfigError(f"this model takes the inputs {wanted} by name (its signature); got {given}")
            covariates = np.stack([np.asarray(model_input[name], np.float64).reshape(-1) for name in names], axis=1)
            if not np.isfinite(covariates).all():
                raise ConfigError(f"the covariates {list(names)} must hold a finite number for every sample")
            if not recipe.images:
                return self.ensemble.patch_probabilities(None, covariates=covariates)
            model_input = model_input[IMAGE_INPUT]
        patches = np.asarray(model_input, dtype=np.float32)
        expected = self.ensemble.recipe.patch.shape
        if patches.ndim != 5 or patches.shape[1:] != expected:
            raise ConfigError(f"this model scores HU patches of shape (N, {', '.join(map(str, expected))}); got "
                              f"an array of shape {patches.shape}")
        if covariates is not None and len(covariates) != len(patches):
            raise ConfigError(f"the covariates {list(names)} must hold one number for each of the {len(patches)} "
                              "patches")
        return self.ensemble.patch_probabilities(patches, covariates=covariates)


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
    ``paths.mlflow_artifacts``). Every argument is checked, the store opened, and the members loaded and
    calibrated, before anything is logged: a name or alias the registry refuses, a store that cannot be opened, a
    checkpoint that is not lungexp's, members that cannot be ensembled or a calibration that cannot be fitted
    leave no run and no version behind.
    """
    name, alias = check_registration(name, alias, tta, calibration)
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    open_tracking_store(mlflow.get_tracking_uri(), REGISTRY_EXPERIMENT)  # one message if it cannot be used
    ensemble = Ensemble([Predictor(path, device="cpu") for path in ckpt_paths], tta=tta)
    uncalibrated = ensemble.calibrate(calibration)  # fitted now, stored in the model: loading it never refits
    if uncalibrated:
        raise ConfigError(f"calibration={calibration} cannot be fitted for {uncalibrated[0]}: its checkpoint has no "
                          "validation predictions of both classes (see the warning above); register it with "
                          "calibration=none")
    patch = ensemble.recipe.patch
    signature = ModelSignature(inputs=input_schema(ensemble.recipe), outputs=output_schema(ensemble.recipe))
    # One patch of air: the input's form on the model's page; MLflow loads the model and scores it once when logging
    # (a warning, not an error, if that fails). As JSON it takes ~30 bytes a voxel: ~1 MB for a 32³ patch.
    air = np.full((1, *patch.shape), patch.pad_hu, dtype=np.float32)
    example: np.ndarray | dict[str, np.ndarray] = air if not ensemble.recipe.covariates else {
        **({IMAGE_INPUT: air} if ensemble.recipe.images else {}),
        **{name: np.zeros(1) for name in ensemble.recipe.covariates}}
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(client, REGISTRY_EXPERIMENT, artifact_location)
    artifacts = {f"{MEMBER_ARTIFACT}{index}": str(path) for index, path in enumerate(ensemble.paths)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register {name}") as run, \
            tempfile.TemporaryDirectory() as folder, _no_bytecode_files():
        mlflow.log_params({"calibration": calibration, **artifacts})  # MLflow logs the model_config's own
        # Files, not model_config (whose values MLflow logs as params): an isotonic fit has a value per probability.
        for index, calibrator in enumerate(ensemble.calibrators or []):
            artifacts[f"{CALIBRATOR_ARTIFACT}{index}"] = str(Path(folder) / f"calibrator{index}.json")
            Path(artifacts[f"{CALIBRATOR_ARTIFACT}{index}"]).write_text(json.dumps(calibrator.to_dict()))
        code = Path(folder) / MODEL_CODE_FILE
        code.write_text(MODEL_CODE)
        # `mlflow.pyfunc.log_model` with this module as the flavor: its save_model adds the manifest.
        info = Model.log(
            artifact_path=None, name=MODEL_ARTIFACT, flavor=sys.modules[__name__], python_model=str(code),
            signature=signature, input_example=example, artifacts=artifacts,
            model_config={"members": len(ensemble.members), "tta": ensemble.tta, "device": "auto"},
            pip_requirements=_requirements(), registered_model_name=name)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    if description:
        client.update_model_version(name, version, description=str(description))
    return RegisteredVersion(name, version, alias, run.info.run_id, len(ensemble.members))


def save_model(path: str, **kwargs: Any) -> None:
    """The flavor :func:`register_model` logs a model with (``mlflow.models.Model.log`` calls this): MLflow's
    ``mlflow.pyfunc.save_model``, then the manifest of the files it wrote."""
    mlflow.pyfunc.save_model(path, **kwargs)
    write_manifest(Path(path))


def write_manifest(model: Path) -> None:
    """:data:`MANIFEST_FILE` in the model folder ``model``: the sha256 of every other file in it."""
    digests = {file.relative_to(model).as_posix(): file_sha256(file) for file in sorted(model.rglob("*"))
               if file.is_file() and file.name != MANIFEST_FILE}
    (model / MANIFEST_FILE).write_text(json.dumps({"sha256": digests}, indent=1))


@contextmanager
def _no_bytecode_files() -> Iterator[None]:
    """No ``__pycache__`` while MLflow logs the model: it loads the model to validate the input example after
    :func:`save_model` wrote the manifest, and a cached ``.pyc`` next to the model code would be an extra file."""
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def check_registration(name: Any, alias: Any, tta: str, calibration: str) -> tuple[str, str]:
    """``name`` and ``alias`` as the registry takes them, checked with MLflow's own rules before anything is loaded
    or logged (a name with ``/`` or ``:``, or the reserved aliases ``latest`` and ``v<number>``, would fail only
    after a run and a version were made), and ``tta`` and ``calibration`` named as ``lungexp.register`` names them."""
    check_tta(tta)
    check_calibration(calibration, key="calibration")
    if name is None or not str(name).strip():
        raise ConfigError("name=...: give the registered model a name")
    if alias is None or not str(alias).strip():
        raise ConfigError("alias=...: give the new version an alias (e.g. alias=champion)")
    name, alias = str(name), str(alias)
    for key, value, validations in (("name", name, [_validate_model_name]),
                                    ("alias", alias, [_validate_model_alias_name, _validate_model_alias_name_reserved])):
        try:
            for validate in validations:
                validate(value)
        except MlflowException as error:
            raise ConfigError(f"{key}={value}: the MLflow Model Registry refuses it: {error.message}") from None
    return name, alias


def load_registered(uri: str, tracking_uri: str | None = None, device: str = "auto") -> Ensemble:
    """The :class:`Ensemble` inside a registered lungexp model (``models:/NAME@ALIAS``, ``runs:/...``), loaded only
    when it is exactly what :func:`register_model` wrote (see the module's docstring)."""
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=folder))
        except mlflow.exceptions.MlflowException as error:
            raise ConfigError(f"model_uri={uri}: cannot load it from {mlflow.get_tracking_uri()}: "
                              f"{str(error).splitlines()[0]}") from None
        problems = _unregistered_files(local) + _foreign_code(local)
        if problems:
            raise ConfigError(f"model_uri={uri}: refused before loading it: loading a model runs the code it "
                              f"carries, and this one is not exactly what lungexp.register wrote "
                              f"({'; '.join(problems)}). Register the checkpoints again with `python -m lungexp.register`")
        loaded = mlflow.pyfunc.load_model(str(local), model_config={"device": device})
    model = loaded.unwrap_python_model()
    if not isinstance(model, EnsembleModel):
        raise ConfigError(f"model_uri={uri}: not a lungexp model (it is a {type(model).__name__}); register one with "
                          "`python -m lungexp.register`")
    expected, signed = input_schema(model.ensemble.recipe), loaded.metadata.get_input_schema()
    if signed != expected:
        raise ConfigError(f"model_uri={uri}: its members take {describe_inputs(expected)} but its signature says "
                          f"{describe_inputs(signed)}; register the checkpoints again with `python -m lungexp.register`")
    return model.ensemble


def _unregistered_files(model: Path) -> list[str]:
    """How the files of ``model`` differ from its manifest: extra, missing, changed or linked files."""
    try:
        listed = json.loads((model / MANIFEST_FILE).read_text())["sha256"]
        if not isinstance(listed, dict):
            raise TypeError(listed)
    except (OSError, ValueError, KeyError, TypeError):
        return [f"no readable {MANIFEST_FILE}"]
    entries = {path.relative_to(model).as_posix(): path for path in model.rglob("*")}
    linked = sorted(name for name, path in entries.items() if path.is_symlink())
    files = {name for name, path in entries.items() if path.is_file() and not path.is_symlink()}
    extra = sorted(files - set(listed) - {MANIFEST_FILE, *DOWNLOAD_FILES})
    missing = sorted(set(listed) - files)
    changed = sorted(name for name in set(listed) & files if file_sha256(entries[name]) != listed[name])
    return [f"{what} {', '.join(names)}" for what, names in
            (("linked", linked), ("extra", extra), ("missing", missing), ("changed since registration", changed))
            if names]


def _foreign_code(model: Path) -> list[str]:
    """What in the MLmodel's pyfunc flavor would run anything but :data:`MODEL_CODE`: another loader, code paths,
    a pickle, another model code file, artifacts outside the model, or a member count its artifacts do not have."""
    try:
        flavors = yaml.safe_load((model / "MLmodel").read_text())["flavors"]
        pyfunc = flavors["python_function"]
        if not isinstance(pyfunc, dict):
            raise TypeError(pyfunc)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return ["no readable MLmodel with a python_function flavor"]
    artifacts = pyfunc.get("artifacts") or {}
    paths = {str(artifact.get("path")) for artifact in artifacts.values() if isinstance(artifact, dict)} \
        if isinstance(artifacts, dict) else set()
    # Python runs a cached .pyc of the model code (__pycache__) instead of its source: only known files may be there.
    unknown = sorted(path.relative_to(model).as_posix() for path in model.rglob("*") if not path.is_dir()
                     and path.relative_to(model).as_posix() not in
                     {*MLFLOW_FILES, *DOWNLOAD_FILES, MANIFEST_FILE, MODEL_CODE_FILE, *paths})
    problems = [f"files lungexp.register never writes: {', '.join(unknown)}"] if unknown else []
    problems += [f"MLmodel flavor {flavor}" for flavor in flavors if flavor != "python_function"]
    problems += [f"MLmodel python_function.{key}" for key in pyfunc if key not in PYFUNC_KEYS]
    if pyfunc.get("loader_module") != CODE_LOADER:
        problems.append(f"MLmodel loader_module: {pyfunc.get('loader_module')}")
    if pyfunc.get("code") is not None:
        problems.append(f"MLmodel code: {pyfunc.get('code')}")
    code = model / MODEL_CODE_FILE
    # MLflow runs the file of this name in the model folder (os.path.basename of model_code_path).
    if str(pyfunc.get("model_code_path")).rsplit("/", 1)[-1] != MODEL_CODE_FILE:
        problems.append(f"MLmodel model_code_path: {pyfunc.get('model_code_path')}")
    elif code.is_symlink() or not code.is_file() or code.read_bytes() != MODEL_CODE.encode():
        problems.append(f"{MODEL_CODE_FILE} is not lungexp's model code")
    return problems + _artifact_problems(model, artifacts, pyfunc.get("config") or {})


def _artifact_problems(model: Path, artifacts: Any, config: Any) -> list[str]:
    """The artifacts must be ``member0..N-1`` (``config.members``: N) and none or all of ``calibrator0..N-1``,
    each a file inside the model."""
    if not isinstance(artifacts, dict) or not isinstance(config, dict):
        return ["MLmodel artifacts or config is not a mapping"]
    problems = []
    indices: dict[str, set[int]] = {MEMBER_ARTIFACT: set(), CALIBRATOR_ARTIFACT: set()}
    for name, artifact in artifacts.items():
        kind = _ARTIFACT_NAME.fullmatch(str(name))
        path = str(artifact.get("path")) if isinstance(artifact, dict) else ""
        file = model / path
        if kind is None or not file.resolve().is_relative_to(model.resolve()) or not file.is_file():
            problems.append(f"MLmodel artifact {name}: {path}")
        else:
            indices[kind.group(1)].add(int(kind.group(2)))
    members = config.get("members")
    expected = set(range(members)) if isinstance(members, int) and members > 0 else None
    if expected is None or indices[MEMBER_ARTIFACT] != expected or indices[CALIBRATOR_ARTIFACT] not in (set(), expected):
        problems.append(f"MLmodel config members: {members} with the artifacts {', '.join(map(str, artifacts))}")
    return problems


def _requirements() -> list[str]:
    """The environment a model server needs: lungexp at this version (which pins the rest)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [f"lungexp=={version('lungexp')}"]
    except PackageNotFoundError:
        return ["lungexp"]
