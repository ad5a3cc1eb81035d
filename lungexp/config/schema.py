"""The application's config schema: checks that run before any slow work, so a typo costs seconds.

Every problem is a :class:`~lungexp.utils.errors.ConfigError` naming the key as it is typed on the
command line. Checked here:

* top-level keys: only the keys of the primary config file (``conf/config.yaml``) and its config
  groups exist, so ``+seeed=1`` or ``+ckpt_path=…`` fails instead of being ignored (a new top-level
  key is declared by adding it to ``conf/config.yaml``); each value has the type of its default;
* every ``_target_`` node: each key must be an argument of the class or function it names (a
  misspelt Trainer argument, a focal-loss ``gamma`` given to the BCE loss), with the closest
  argument suggested;
* interpolations resolve;
* values and combinations that would run, exit 0 and be wrong (:func:`check_training_values`,
  :func:`check_monitoring`);
* an accelerator or a precision the hardware cannot run (:func:`check_accelerator`, :func:`check_precision`).

``data.*``, ``eval``, ``target`` and ``cv`` are checked by their typed options (:func:`lungexp.config.check`).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lungexp.data.labels.targets import TargetOptions
from lungexp.training.devices import FP16_PRECISIONS, selects_cuda
from lungexp.utils.dictconfig import CONFIG_DIR, to_dict
from lungexp.utils.errors import ConfigError, check_number, did_you_mean, look_up_option

# Keys of a `_target_` node that Hydra's instantiate consumes itself.
INSTANTIATE_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def check_config(cfg: DictConfig, primary: str = "config", sections: Sequence[str] | None = None) -> None:
    """All checks of this module on a composed config.

    Args:
        cfg: the composed config.
        primary: its file in ``conf/`` (``config`` for ``lungexp.run``).
        sections: the top-level nodes the entry point uses (default: all); the training checks run
            when ``trainer`` and ``model`` are among them.

    Checks that need no imports come first, so most mistakes fail in about a second; checking
    ``_target_`` arguments and metric names imports torch and Lightning.
    """
    check_top_level(cfg, primary)
    resolved = resolve(cfg)
    used = {key: value for key, value in resolved.items() if sections is None or key in sections}
    training = {"trainer", "model"} <= used.keys()
    if training:
        check_training_values(resolved)
    raw = to_dict(cfg, resolve=False)
    check_targets({key: value for key, value in raw.items() if key in used})
    if training:
        check_monitoring(resolved)
        check_accelerator(resolved["trainer"])
        check_precision(resolved["trainer"])


def check_accelerator(trainer: Mapping[str, Any]) -> None:
    """A ``trainer.accelerator`` this machine has: Lightning finds out only when the Trainer is built, after
    the data are loaded, and its message ("No supported gpu backend found!") names no way out."""
    from pytorch_lightning.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "gpu":  # Lightning's alias for CUDA or Apple's MPS
        available = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
    elif accelerator in AcceleratorRegistry and accelerator != "cpu":
        available = AcceleratorRegistry[accelerator]["accelerator"].is_available()
    else:  # auto, cpu, or a name Lightning itself refuses
        return
    if not available:
        raise ConfigError(f"trainer.accelerator={accelerator} needs a {accelerator.upper()} device, but PyTorch "
                          "finds none on this machine; train on the CPU with trainer=cpu (with trainer=ddp: "
                          "trainer.accelerator=cpu), or run where there is one")


def check_precision(trainer: Mapping[str, Any]) -> None:
    """fp16 only on CUDA: Lightning would start it on CPU too, where fp16 convolutions are slow or missing."""
    precision = str(trainer.get("precision", "32-true"))
    if precision in FP16_PRECISIONS and not selects_cuda(trainer):
        where = (f"trainer.accelerator={trainer.get('accelerator')}" if trainer.get("accelerator") != "auto"
                 else "no CUDA GPU here (trainer.accelerator=auto picks the CPU)")
        raise ConfigError(f"trainer.precision={precision} (fp16) needs a CUDA GPU, but {where}; use "
                          "trainer.precision=bf16-mixed or 32-true, or run on a GPU (trainer=gpu)")


def declared_top_level(primary: str = "config") -> tuple[dict[str, Any], set[str]]:
    """The top-level keys of ``conf/<primary>.yaml`` with their defaults, and the names of its config groups."""
    path = Path(CONFIG_DIR) / f"{primary}.yaml"
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a primary config must be a mapping of keys, not a list")
    raw = to_dict(loaded, resolve=False)
    groups = {"hydra"}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, Mapping):
            for name in entry:
                name = str(name).removeprefix("optional ").removeprefix("override ").strip()
                groups.add(name.lstrip("/").split("/")[0].split("@")[0])
    raw.pop("hydra", None)
    return raw, groups


def check_top_level(cfg: DictConfig, primary: str = "config") -> None:
    """Unknown top-level keys and top-level values of the wrong type."""
    defaults, groups = declared_top_level(primary)
    known = set(defaults) | groups
    for key in map(str, cfg):  # config keys are strings
        if key not in known:
            named = sorted(groups - {"hydra"})
            raise ConfigError(f"unknown top-level key '{key}'{did_you_mean(key, sorted(known))}: nothing reads it, "
                              f"so it would be ignored; the top-level keys are {', '.join(sorted(defaults))}"
                              + (f" and the groups {', '.join(named)}" if named else ""))
    values = to_dict(cfg, resolve=False)
    for key, default in defaults.items():
        if key in values and not _same_kind(values[key], default):
            shown = str(default).lower() if isinstance(default, bool) else repr(default)  # as YAML and Hydra spell it
            raise ConfigError(f"{key}={cfg[key]!r} must be {_KINDS.get(type(default), 'a string')}, like its "
                              f"default {key}={shown}")


_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def _same_kind(value: Any, default: Any) -> bool:
    if default is None or (isinstance(default, str) and "${" in default) or (isinstance(value, str) and "${" in value):
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real) and (isinstance(default, float) or isinstance(value, int))
    return isinstance(value, type(default))


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, every interpolation resolved; a broken one names its key."""
    try:
        return to_dict(cfg, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None


def check_targets(node: Any, path: str = "") -> None:
    """Every ``_target_`` node (in the unresolved ``node``) gives only arguments its target accepts."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if isinstance(target, str) and "${" not in target:
            _check_arguments(path, target, [key for key in node if key not in INSTANTIATE_KEYS])
        for key, value in node.items():
            check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_targets(value, f"{path}.{index}")


def _check_arguments(path: str, target: str, keys: list[str]) -> None:
    try:
        factory = get_object(target)
    except Exception as error:  # noqa: BLE001  any import failure means the same: a wrong _target_
        raise ConfigError(f"{path}._target_={target!r} cannot be imported ({error}); check the spelling") from None
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind != p.VAR_POSITIONAL]
    for key in keys:
        if key not in accepted:
            listing = f"; its arguments are: {', '.join(accepted)}" if len(accepted) <= 12 else ""
            raise ConfigError(f"{path}.{key} is not an argument of {target}{did_you_mean(key, accepted)}{listing}")


# --------------------------------------------------------------------------------------------------
# Values and combinations of the training run


def check_training_values(cfg: Mapping[str, Any]) -> None:
    """Values of ``trainer``, ``model`` and ``callbacks`` (resolved ``cfg``) that would give a broken
    run that still exits 0, alone or in combination. Imports nothing."""
    trainer, callbacks = cfg["trainer"], cfg.get("callbacks") or {}
    _check_trainer(trainer)
    _check_model(cfg["model"], trainer)
    for name, node in callbacks.items():
        if isinstance(node, Mapping):
            _check_callback(f"callbacks.{name}", node)
    if trainer.get("fast_dev_run"):
        return  # fast_dev_run replaces the batch limits with its own, and checkpoints nothing
    monitors = [f"callbacks.{name}.monitor" for name, node in callbacks.items()
                if isinstance(node, Mapping) and node.get("monitor")]
    if monitors:
        _check_validation_runs(trainer, monitors[0])
    limit = trainer.get("limit_test_batches")
    if cfg.get("test_after_fit") and limit is not None and check_number("trainer.limit_test_batches", limit) <= 0:
        raise ConfigError(f"trainer.limit_test_batches={limit} skips the test that test_after_fit=true asks for; "
                          "raise it, or set test_after_fit=false")


def check_monitoring(cfg: Mapping[str, Any]) -> None:
    """``optimized_metric`` and the callbacks' ``monitor``/``mode`` against what the model logs, and a
    checkpoint for ``test_after_fit`` to test. Imports the model class and Lightning."""
    callbacks = {name: node for name, node in (cfg.get("callbacks") or {}).items() if isinstance(node, Mapping)}
    metrics = _monitored_metrics(cfg["model"], TargetOptions.from_config(cfg.get("target")))
    if metrics:
        look_up_option("optimized_metric", cfg.get("optimized_metric"), list(metrics))
        for name, node in callbacks.items():
            if node.get("monitor"):
                _check_monitor(f"callbacks.{name}", node, metrics)
    if not cfg.get("test_after_fit") or cfg["trainer"].get("fast_dev_run"):
        return
    # Only a checkpoint that monitors a metric keeps the best epoch (callbacks.last_checkpoint does not).
    best = [node for node in callbacks.values() if _is_checkpoint(node) and node.get("monitor")]
    if not best or all(node.get("save_top_k", 1) == 0 for node in best):
        raise ConfigError("test_after_fit=true tests the best checkpoint, but none is kept "
                          "(callbacks.model_checkpoint is null, has no monitor or its save_top_k=0); restore it, "
                          "or set test_after_fit=false")


def _monitored_metrics(model: Mapping[str, Any], target: TargetOptions) -> dict[str, str]:
    """``{metric: "max" | "min"}`` the model logs in validation of ``target``'s heads, if its class says
    (``monitored_metrics``)."""
    factory_path = model.get("_target_")
    factory = get_object(factory_path) if isinstance(factory_path, str) else None
    listing = getattr(factory, "monitored_metrics", None)
    return dict(listing(target)) if callable(listing) else {}


def _check_trainer(trainer: Mapping[str, Any]) -> None:
    max_epochs = trainer.get("max_epochs")
    _check_count("trainer.max_epochs", max_epochs, "or -1 to train until early stopping")
    min_epochs = trainer.get("min_epochs")
    if _is_int(min_epochs) and _is_int(max_epochs) and max_epochs >= 1 and min_epochs > max_epochs:
        raise ConfigError(f"trainer.min_epochs={min_epochs} is more than trainer.max_epochs={max_epochs}")
    _check_count("trainer.max_steps", trainer.get("max_steps", -1), "or -1: no limit")
    limit = trainer.get("limit_train_batches")
    if not trainer.get("fast_dev_run") and limit is not None and check_number("trainer.limit_train_batches", limit) <= 0:
        raise ConfigError(f"trainer.limit_train_batches={limit} would train nothing; use a fraction in (0, 1] "
                          "or a number of batches")


def _check_count(key: str, value: Any, unlimited: str) -> None:
    """``value``, of ``key`` (a count of epochs or steps, -1 for no limit), or None: a whole number, and one that
    trains."""
    if value is None:
        return
    if not _is_int(value):
        raise ConfigError(f"{key}={value!r} must be a whole number: 1 or more ({unlimited})")
    if not (value == -1 or value >= 1):
        raise ConfigError(f"{key}={value!r} would train nothing; use 1 or more ({unlimited})")


def _check_model(model: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    optimizer = model.get("optimizer") or {}
    if "lr" in optimizer and check_number("model.optimizer.lr", optimizer["lr"]) <= 0:
        raise ConfigError(f"model.optimizer.lr={optimizer['lr']} must be positive (0 would train nothing)")
    if "weight_decay" in optimizer and check_number("model.optimizer.weight_decay", optimizer["weight_decay"]) < 0:
        raise ConfigError(f"model.optimizer.weight_decay={optimizer['weight_decay']} must be 0 or more")
    t_max = (model.get("scheduler") or {}).get("T_max")
    if t_max is not None and (not _is_int(t_max) or t_max < 1):
        raise ConfigError(f"model.scheduler.T_max={t_max!r} must be 1 or more (it follows trainer.max_epochs; "
                          "set it yourself when trainer.max_epochs=-1)")
    pos_weight = model.get("pos_weight")
    if isinstance(pos_weight, str):
        look_up_option("model.pos_weight", pos_weight, ["auto"])
    elif pos_weight is not None and check_number("model.pos_weight", pos_weight) <= 0:
        raise ConfigError(f"model.pos_weight={pos_weight} must be positive (or null, or auto)")
    _check_finetune(model.get("finetune") or {}, trainer.get("max_epochs"))


def _check_finetune(finetune: Mapping[str, Any], max_epochs: Any) -> None:
    frozen = finetune.get("freeze_backbone_epochs", 0)
    if not _is_int(frozen) or frozen < 0:
        raise ConfigError(f"model.finetune.freeze_backbone_epochs={frozen!r} must be 0 (no freezing) or more")
    if frozen > 0 and _is_int(max_epochs) and max_epochs >= 1 and frozen >= max_epochs:
        raise ConfigError(f"model.finetune.freeze_backbone_epochs={frozen} >= trainer.max_epochs={max_epochs}: "
                          "the backbone would never train; freeze fewer epochs or train more")
    head_lr_mult = finetune.get("head_lr_mult", 1.0)
    if check_number("model.finetune.head_lr_mult", head_lr_mult) <= 0:
        raise ConfigError(f"model.finetune.head_lr_mult={head_lr_mult} must be positive (0 freezes the head)")
    if not isinstance(finetune.get("freeze_bn", False), bool):
        raise ConfigError(f"model.finetune.freeze_bn={finetune['freeze_bn']!r} must be true or false")


def _check_callback(key: str, node: Mapping[str, Any]) -> None:
    if node.get("monitor"):
        look_up_option(f"{key}.mode", node.get("mode", "min"), ["min", "max"])
    if "patience" in node and (not _is_int(node["patience"]) or node["patience"] < 0):
        raise ConfigError(f"{key}.patience={node['patience']!r} must be 0 or more (validation epochs without "
                          "improvement before stopping)")


def _check_monitor(key: str, node: Mapping[str, Any], metrics: Mapping[str, str]) -> None:
    monitor = look_up_option(f"{key}.monitor", node["monitor"], list(metrics))
    mode = node.get("mode", "min")
    if mode != metrics[monitor]:
        better = "higher" if metrics[monitor] == "max" else "lower"
        raise ConfigError(f"{key}.mode={mode} but {monitor} is better when {better}: set {key}.mode={metrics[monitor]}")


def _check_validation_runs(trainer: Mapping[str, Any], monitor: str) -> None:
    """Validation computes what callbacks monitor: it must run at least once."""
    limit = trainer.get("limit_val_batches")
    if limit is not None and check_number("trainer.limit_val_batches", limit) <= 0:
        raise ConfigError(f"trainer.limit_val_batches={limit} skips validation, but {monitor} needs a validation "
                          "metric: let validation run at least one batch")
    every, max_epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if _is_int(every) and _is_int(max_epochs) and max_epochs >= 1 and every > max_epochs:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={max_epochs}: validation "
                          f"never runs, but {monitor} needs a validation metric")


def _is_checkpoint(node: Mapping[str, Any]) -> bool:
    from pytorch_lightning.callbacks import ModelCheckpoint

    target = node.get("_target_")
    factory = get_object(target) if isinstance(target, str) else None
    return isinstance(factory, type) and issubclass(factory, ModelCheckpoint)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)

