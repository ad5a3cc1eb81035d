"""Self-contained lungexp checkpoints: the weights plus the recipe to rebuild the network and its input.

Every checkpoint that ``python -m lungexp.run`` writes carries, under the key ``"lungexp"``, a
:class:`ModelRecipe`: the network config (``_target_`` + arguments), the patch geometry, HU window
and normalisation, the task, the training precision, the data config and the MLflow run that trained
it, all as plain containers. ``torch.load(..., weights_only=True)`` reads it, and a checkpoint copied
to another machine rebuilds the same model and preprocessing without the training config.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra._internal.instantiate._instantiate2 import _Keys
from hydra._internal.utils import _locate
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from torch import nn

from lungexp.data.labels.targets import TargetOptions
from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.data.patches.extraction import PatchSpec
from lungexp.data.patches.normalization import HUWindow
from lungexp.models import CNN3D, CBAMResNet3D, DenseNet3D, ResNet3D, SEResNet3D, TabularNet
from lungexp.models.fusion import with_covariates
from lungexp.tracking.artifacts import mlflow_run_reference
from lungexp.tracking.provenance import data_fingerprint
from lungexp.training.module import CALIBRATION, VALIDATION_PREDICTIONS, stored_validation_predictions
from lungexp.training.run_options import RELOCATABLE, RunOptions
from lungexp.utils.atomic import disk_full_named
from lungexp.utils.dictconfig import to_dict
from lungexp.utils.errors import ArgumentError, ConfigError, LungexpError

RECIPE_KEY = "lungexp"
# The run's config as composed (interpolations unresolved), compared on resume (lungexp.training.resume);
# kept apart from the recipe: it is only ever compared, never resolved or built.
RUN_CONFIG_KEY = "lungexp_run_config"
# What the run's data resolved to: {"locations": {data key: absolute path}, "fingerprint": data fingerprint};
# compared on resume too, since the stored config has the paths as written (`${paths.data_dir}/luna16`).
DATA_IDENTITY_KEY = "lungexp_data"
FORMAT_VERSION = 1

# What a checkpoint file may build, compared as the objects its `_target_`s resolve to: Hydra resolves a
# dotted path through module attributes, so `lungexp.models.pretrained.os.write` is `os.write`. These take
# only plain values, so a `_target_` below the top of a stored node is refused too.
NETWORKS: frozenset[type] = frozenset({CNN3D, ResNet3D, SEResNet3D, CBAMResNet3D, DenseNet3D, TabularNet})
DATAMODULES: frozenset[type] = frozenset({NoduleDataModule})
# Hydra's keys that change what instantiating a node builds (a partial, positional arguments, ...): a stored config
# is the class and its keyword arguments, nothing else.
_BUILD_KEYS = frozenset(key.value for key in _Keys) - {_Keys.TARGET.value}


def best_checkpoint_callback(callbacks: Iterable[Callback]) -> ModelCheckpoint | None:
    """The checkpoint callback that keeps the best epoch by a monitored metric (``callbacks.model_checkpoint``),
    not ``callbacks.last_checkpoint``, which Lightning's ``Trainer.checkpoint_callback`` may return."""
    return next((callback for callback in callbacks
                 if isinstance(callback, ModelCheckpoint) and callback.monitor is not None), None)


def last_checkpoint_path(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint of the callback that saves every epoch (``callbacks.last_checkpoint``), if any."""
    return next((callback.best_model_path for callback in trainer.checkpoint_callbacks
                 if isinstance(callback, ModelCheckpoint) and callback.monitor is None and callback.best_model_path),
                None)


class DiskFullNamedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (``Trainer(plugins=[...])``), with a full disk as one :class:`DiskFullError`
    naming the checkpoint file and the space free there, instead of a long traceback from inside Lightning.

    Lightning writes each checkpoint to a temporary file first, so the previous ``last.ckpt`` is intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with disk_full_named(path, "free space there (or point paths.log_dir elsewhere), then run the same command "
                                   "with ckpt_path=last to go on from the last checkpoint that was saved"):
            super().save_checkpoint(checkpoint, path, storage_options)


class CheckpointError(LungexpError):
    """A checkpoint file that is missing, unreadable or not written by lungexp; the message names it."""


@dataclass(frozen=True)
class ModelRecipe:
    """What a trained network needs besides its weights.

    Args:
        task: the data task it was trained on (``candidates``, ``malignancy``, ``points``).
        net: the network config, ``_target_`` plus its arguments (``model.net`` resolved).
        patch: the patch geometry its inputs were sampled with.
        hu_window: ``(low, high)`` HU clipped before normalising.
        normalize: the :class:`~lungexp.data.loading.dataset.HUWindow` normalisation.
        precision: the Trainer precision it was trained and tested with (e.g. ``32-true``, ``bf16-mixed``).
        data: the data config, plain values except paths derived from ``data.*`` keys and the data folders.
        mlflow: ``{run_id, experiment_id, tracking_uri}`` of the training run, empty without MLflow.
        covariates: the columns it reads besides the image (``model.covariates``), in its input order; the
            network is then a :class:`~lungexp.models.fusion.CovariateFusion` of ``net``.
        images: whether it reads the image patch; false (``model=tabular``): its covariates alone, so no scan
            is read to score a sample.
        target: what its outputs mean, the ``target`` group as
            :meth:`~lungexp.data.labels.targets.TargetOptions.to_config` writes it (checkpoints from before
            targets: the default, one binary logit).
    """

    task: str
    net: dict[str, Any]
    patch: PatchSpec
    hu_window: tuple[float, float]
    normalize: str
    precision: str = "32-true"
    data: dict[str, Any] = field(default_factory=dict)
    mlflow: dict[str, str] = field(default_factory=dict)
    covariates: tuple[str, ...] = ()
    images: bool = True
    target: dict[str, Any] = field(default_factory=lambda: TargetOptions().to_config())

    @property
    def targets(self) -> TargetOptions:
        """:attr:`target` as typed options."""
        return TargetOptions.from_config(self.target)

    @property
    def in_channels(self) -> int:
        return self.patch.channels

    @property
    def window(self) -> HUWindow:
        return HUWindow(*self.hu_window, normalize=self.normalize)

    @classmethod
    def from_run(cls, run: RunOptions) -> ModelRecipe:
        """The recipe of a checked ``lungexp.run`` run."""
        low, high = run.data.hu_window
        return cls(
            task=run.data.task,
            net=to_dict(run.config.model.net, resolve=True),
            patch=run.data.patch,
            hu_window=(float(low), float(high)),
            normalize=run.data.normalize,
            precision=str(run.config.trainer.get("precision", "32-true")),
            data=dict(run.stored_data),
            covariates=run.data.covariates,
            images=run.data.images,
            target=run.target.to_config(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only, so ``torch.load(weights_only=True)`` reads them back."""
        recipe = asdict(self)
        recipe["patch"]["spacing_mm"] = list(self.patch.spacing_mm)
        recipe["hu_window"] = list(self.hu_window)
        recipe["covariates"] = list(self.covariates)
        return {"format_version": FORMAT_VERSION, "in_channels": self.in_channels, **recipe}

    @classmethod
    def from_dict(cls, recipe: Mapping[str, Any], source: Path) -> ModelRecipe:
        version = recipe.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{source}: lungexp checkpoint format {version!r} is newer than this lungexp "
                                  f"reads (format {FORMAT_VERSION}); update lungexp")
        try:
            built = cls(task=recipe["task"], net=dict(recipe["net"]), patch=PatchSpec(**recipe["patch"]),
                        hu_window=tuple(recipe["hu_window"]), normalize=recipe["normalize"],
                        precision=recipe["precision"], data=_moved_targets(dict(recipe["data"])),
                        mlflow=dict(recipe["mlflow"]), covariates=tuple(recipe.get("covariates", ())),
                        images=recipe.get("images", True), target=dict(recipe.get("target", TargetOptions().to_config())))
            built.targets  # noqa: B018  # checked here, so that a damaged target is named with its file
        except (KeyError, TypeError, ValueError, ArgumentError) as error:
            raise CheckpointError(f"{source}: its lungexp recipe is incomplete or damaged ({error!r}); "
                                  "use a checkpoint written by `python -m lungexp.run`") from None
        check_buildable(built.net, NETWORKS, "network", source)
        check_buildable(built.data, DATAMODULES, "data", source)
        check_plain({**recipe, "data": {}}, "recipe", source)
        check_plain(built.data, "data", source, keep=RELOCATABLE)
        if not isinstance(built.images, bool) or not all(isinstance(name, str) for name in built.covariates):
            raise CheckpointError(f"{source}: its recipe's covariates {list(built.covariates)!r} (images={built.images!r}) are "
                                  "not column names (and true or false); "
                                  "the file is damaged")
        if recipe.get("in_channels", built.in_channels) != built.in_channels:
            raise CheckpointError(f"{source}: recipe says in_channels={recipe['in_channels']} but its patch has "
                                  f"{built.in_channels} channel(s); the file is damaged")
        return built


def check_target(stored: Mapping[str, Any] | None, target: TargetOptions, source: str) -> None:
    """Refuse to go on with a checkpoint whose ``stored`` target (its recipe's; None: from before targets, the
    default) is not ``target``: its outputs mean something else. One :class:`ConfigError` naming both."""
    trained = TargetOptions() if stored is None else TargetOptions.from_config(stored)
    if trained != target:
        raise ConfigError(f"{source}: the checkpoint was trained for {trained.describe()}, but this run asks for "
                          f"{target.describe()}; its outputs mean other classes: use the checkpoint's own target, or "
                          "start a new run from its weights with model.pretrained.path=FILE (the head is new)")


# Classes a checkpoint may name that have since moved: the old dotted path and where the class is now.
MOVED_TARGETS = {"lungexp.data.datamodule.NoduleDataModule": "lungexp.data.loading.datamodule.NoduleDataModule"}


def _moved_targets(data: dict[str, Any]) -> dict[str, Any]:
    """A stored data config with a moved ``_target_`` (see :data:`MOVED_TARGETS`) renamed to the class's new path."""
    target = data.get("_target_")
    return {**data, "_target_": MOVED_TARGETS[target]} if target in MOVED_TARGETS else data


def check_buildable(config: Mapping[str, Any], allowed: frozenset[type], where: str, source: Path) -> None:
    """Refuse a stored config unless its only ``_target_`` is at its top and resolves to one of ``allowed``.

    Checked before anything is instantiated: instantiating runs the target. Only ``lungexp.*`` paths are
    resolved at all, since importing a module runs it. Hydra's other instantiate keys (``_partial_``, ``_args_``,
    ...) are refused anywhere in it: they would build something else than the class from its arguments.
    """
    for key, target in _keys_named(config, frozenset({_Keys.TARGET.value})):
        built = _locate_own(target)
        if key == "_target_" and any(built is cls for cls in allowed):  # identity: what it resolves to may not hash
            continue
        resolved = f" (resolves to {_dotted(built)})" if built is not None else ""
        names = ", ".join(sorted(map(_dotted, allowed)))
        raise CheckpointError(f"{source}: its {where} config sets {key}={target!r}{resolved}; a lungexp checkpoint "
                              f"builds only {names}, so the file is refused")
    build_keys = _keys_named(config, _BUILD_KEYS)
    if build_keys:
        key, value = build_keys[0]
        raise CheckpointError(f"{source}: its {where} config sets {key}={value!r}; a lungexp checkpoint stores a "
                              "class and its keyword arguments only (no Hydra instantiate key but _target_), so the "
                              "file is refused")


def _locate_own(target: Any) -> Any:
    """The object a project ``_target_`` names, as Hydra resolves it; None for anything else."""
    if not isinstance(target, str) or not target.startswith("lungexp."):
        return None
    try:
        return _locate(target)
    except Exception:  # any failure to resolve means: not one of ours
        return None


def _dotted(obj: Any) -> str:
    """``module.name`` of a class or function, the name of a module, else the type of the object."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    name = getattr(obj, "__qualname__", None)
    if not isinstance(name, str):
        return f"a {_dotted(type(obj))} object"
    return f"{getattr(obj, '__module__', None) or '?'}.{name}"


def _keys_named(config: Any, names: frozenset[str], prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every key in ``names`` anywhere in a nested config."""
    if isinstance(config, Mapping):
        own = [(f"{prefix}{key}", value) for key, value in config.items() if key in names]
        return own + [found for key, value in config.items() for found in _keys_named(value, names, f"{prefix}{key}.")]
    if isinstance(config, list | tuple):
        return [found for index, value in enumerate(config) for found in _keys_named(value, names, f"{prefix}{index}.")]
    return []


def check_plain(config: Any, where: str, source: Path, keep: re.Pattern[str] | None = None, key: str = "") -> None:
    """Refuse interpolations in a stored config (``${oc.env:...}`` would read the environment into MLflow),
    except those wholly made of ``keep`` (references to other data or paths keys)."""
    if isinstance(config, Mapping):
        for name, value in config.items():
            check_plain(name, where, source, keep, key)
            check_plain(value, where, source, keep, f"{key}.{name}" if key else str(name))
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            check_plain(value, where, source, keep, f"{key}.{index}" if key else str(index))
    elif isinstance(config, str) and "${" in (keep.sub("", config) if keep else config):
        raise CheckpointError(f"{source}: its {where} config has {key or 'a key'}={config!r}, an interpolation that "
                              "reaches outside the stored values; a lungexp checkpoint stores plain values, so the "
                              "file is refused")


class SaveRecipe(pl.Callback):
    """Adds the :class:`ModelRecipe`, the MLflow run id, the run's config and what its data resolved to (the
    ``data_locations`` given, and the datamodule's fingerprint) to every checkpoint the Trainer writes."""

    def __init__(self, recipe: ModelRecipe, run_config: dict[str, Any], data_locations: dict[str, str | None]) -> None:
        self.recipe = recipe
        self.run_config = run_config
        self.data_locations = data_locations
        self._run: dict[str, str] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._run is None:  # under DDP only rank 0 has a run (and writes the file)
            self._run = mlflow_run_reference(trainer.loggers)
        checkpoint[RECIPE_KEY] = {**self.recipe.to_dict(), "mlflow": self._run}
        checkpoint[RUN_CONFIG_KEY] = self.run_config
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning when fit starts, undeclared
        checkpoint[DATA_IDENTITY_KEY] = {"locations": self.data_locations, "fingerprint": data_fingerprint(datamodule)}


@dataclass(frozen=True)
class TrainedNetwork:
    """A network rebuilt from a checkpoint (in eval mode, on CPU) with its recipe and source file.

    ``evaluation`` is the ``eval`` config it was trained with and ``validation_predictions`` the
    ``label, probability`` (and ``seriesuid``) of its own weights on validation (what its decision threshold
    and calibration are chosen on); ``calibration`` the ``eval.calibration`` fitted on them, as
    :meth:`~lungexp.metrics.calibration.Calibrator.to_dict` wrote it (``None``: none).
    """

    net: nn.Module
    recipe: ModelRecipe
    path: Path
    evaluation: dict[str, Any] | None = None
    validation_predictions: pd.DataFrame | None = None
    calibration: dict[str, Any] | None = None


def load_checkpoint(path: str | Path) -> TrainedNetwork:
    """Rebuild the network of a lungexp checkpoint with its trained weights.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable, not a lungexp
    checkpoint (e.g. a plain Lightning checkpoint of another project) or its weights do not fit.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(RECIPE_KEY), Mapping):
        keys = f" (it holds {sorted(map(str, checkpoint))[:8]})" if isinstance(checkpoint, Mapping) else ""
        raise CheckpointError(f"{path}: not a lungexp checkpoint: it has no '{RECIPE_KEY}' recipe{keys}; it comes "
                              "from another project, or from lungexp before checkpoints carried their recipe. Use a "
                              ".ckpt written by `python -m lungexp.run` (to start from other weights, train with "
                              "model.pretrained.path=...)")
    recipe = ModelRecipe.from_dict(checkpoint[RECIPE_KEY], path)
    with _damaged_part(path, "state_dict"):
        weights = {key.removeprefix("net."): value for key, value in (checkpoint.get("state_dict") or {}).items()
                   if key.startswith("net.")}
    if not weights:
        raise CheckpointError(f"{path}: has a lungexp recipe but no network weights (state_dict 'net.*'); "
                              "the file is damaged")
    with _damaged_part(path, "hyper_parameters"):
        evaluation = (checkpoint.get("hyper_parameters") or {}).get("evaluation")
    check_plain(evaluation, "eval", path)
    try:  # an allowed class (ModelRecipe.from_dict checked it) with arguments it does not take
        net: nn.Module = with_covariates(hydra.utils.instantiate(recipe.net, _convert_="partial"), recipe.covariates,
                                         recipe.images)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot rebuild its network {recipe.net['_target_']!r} from the stored "
                              f"arguments ({str(error).strip().splitlines()[-1]}); the file is damaged or from "
                              "another lungexp version") from None
    try:
        net.load_state_dict(weights)
    except Exception as error:  # RuntimeError for shapes and names; anything else for values that are no tensors
        raise CheckpointError(f"{path}: its weights do not fit its own network config: {_one_line(error)}") from None
    with _damaged_part(path, VALIDATION_PREDICTIONS):
        validation = stored_validation_predictions(checkpoint)
    return TrainedNetwork(net=net.eval(), recipe=recipe, path=path, evaluation=evaluation,
                          validation_predictions=validation, calibration=checkpoint.get(CALIBRATION))


@contextmanager
def _damaged_part(path: Path, key: str) -> Iterator[None]:
    """Reading the part ``key`` of a loaded checkpoint inside: whatever fails there (a list where a mapping belongs,
    a key that is no string, columns of unequal length, ...) is one :class:`CheckpointError` naming the file and
    the key, not a traceback."""
    try:
        yield
    except Exception as error:  # the shapes a damaged or hand-made file can take are not enumerable
        raise CheckpointError(f"{path}: its '{key}' is damaged or not what lungexp writes ({_one_line(error)}); use "
                              "a checkpoint written by `python -m lungexp.run`") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def read_checkpoint(path: Path) -> Any:
    """A checkpoint's contents, loaded with ``weights_only=True``; :class:`CheckpointError` naming the file when
    it is missing, damaged or holds objects (never the advice to load it unsafely)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check ckpt_path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise CheckpointError(f"{path}: holds objects other than tensors and plain containers, so it is not a "
                                  "lungexp checkpoint and is not loaded (unpickling it could run code)") from None
        reason = "its contents are not a PyTorch pickle"  # torch's own text here advises loading unsafely
    except Exception as error:  # torch.load fails on other files with anything from EOFError to IndexError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); is it complete? "
                          "copy it again or pick another .ckpt")
