"""``check(cfg, entry_point)``: the one check of a composed config, before any slow work.

Each Hydra entry point calls it once, first thing. It runs the checks its config needs (the schema of
:mod:`lungexp.config.checks`, the typed options of ``data``, ``eval`` and ``cv``) and returns the config
read-only, so nothing on the way changes what the run was given: a step that needs other values works on
a changed copy (:func:`lungexp.utils.config.with_values`).

Library layers name their own parameters (``depth=11``, ``split.method='subset'``); this is where the
config meets them, so their :class:`~lungexp.utils.errors.ArgumentError` becomes a
:class:`~lungexp.utils.errors.ConfigError` naming the key as it is typed on the command line
(``model.net.depth=11``): :func:`check` for ``data.*``, :func:`lungexp.config.keys.report_user_errors`
for what Hydra instantiates later.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from lungexp.config.checks import check_config, check_top_level, resolve
from lungexp.data.options import DataOptions
from lungexp.evaluation.types import EvaluationOptions
from lungexp.utils.config import check_required
from lungexp.utils.errors import ArgumentError, ConfigError, look_up_option, named_under

# Each entry point's primary config file in conf/, and the top-level nodes it uses (None: all).
PRIMARY = {"run": "config", "preprocess": "config", "evaluate": "evaluate", "predict": "predict",
           "register": "register"}
SECTIONS: dict[str, tuple[str, ...] | None] = {"run": None, "preprocess": ("data", "aug", "paths")}
DATAMODULE_TARGET = "lungexp.data.loading.datamodule.NoduleDataModule"


@dataclass(frozen=True)
class CrossValidationOptions:
    """``cv.folds``-fold cross-validation (:mod:`lungexp.training.cross_validation`).

    Args:
        folds: K >= 2 folds (e.g. 10 for LUNA16's ten subsets).
    """

    folds: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> CrossValidationOptions:
        """``cv.folds`` with the options it needs, checked before any slow work."""
        folds = cfg.cv.folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"cv.folds={folds!r}: give a whole number >= 2 (e.g. cv.folds=10 for LUNA16's ten "
                              "subsets), or null for a single run")
        if not cfg.test_after_fit:
            raise ConfigError("cv.folds needs test_after_fit=true: the folds' test predictions are what CV pools")
        if cfg.get("ckpt_path") is not None:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} with cv.folds: a cross-validation continues by itself; run "
                              "the same command again without ckpt_path (finished folds are kept, and a fold that "
                              "was stopped continues from its last.ckpt)")
        if "ddp" in str(cfg.trainer.get("strategy", "")):
            raise ConfigError("cv.folds does not run with a ddp strategy (Lightning re-launches the whole command "
                              "per device); use one device per fold, e.g. trainer=gpu")
        return cls(folds=folds)


@dataclass(frozen=True)
class CheckedConfig:
    """What :func:`check` returns: the config as the run uses it, and the typed options of its groups.

    Args:
        config: the composed config, read-only.
        data: the ``data.*`` options, where the entry point builds a :class:`NoduleDataModule` from them.
        evaluation: the ``eval`` options of a training run.
        cv: the cross-validation options, with ``cv.folds`` set.
    """

    config: DictConfig
    data: DataOptions | None = None
    evaluation: EvaluationOptions | None = None
    cv: CrossValidationOptions | None = None


def check(cfg: DictConfig, entry_point: str) -> CheckedConfig:
    """Check ``cfg``, composed for ``entry_point`` (``run``, ``preprocess``, ``evaluate``, ``predict`` or ``register``).

    Checks that need no imports come first, so most mistakes fail in about a second; ``_target_`` arguments
    and metric names import torch and Lightning. Every problem is a :class:`ConfigError` naming its key.
    """
    look_up_option("entry_point", entry_point, PRIMARY, error=ArgumentError)
    check_required(cfg)
    if entry_point not in SECTIONS:  # evaluate, predict, register: their checkpoints bring the model and data
        check_top_level(cfg, PRIMARY[entry_point])
        return CheckedConfig(read_only(cfg))
    data = data_options(cfg)
    check_config(cfg, sections=SECTIONS[entry_point])
    if entry_point == "preprocess":
        return CheckedConfig(read_only(cfg), data=data)
    evaluation = EvaluationOptions.from_config(resolve(cfg).get("eval"))
    cv = CrossValidationOptions.from_config(cfg) if cfg.cv.folds is not None else None
    return CheckedConfig(read_only(cfg), data=data, evaluation=evaluation, cv=cv)


def data_options(cfg: DictConfig) -> DataOptions | None:
    """``cfg.data`` as checked options, if it makes a :class:`NoduleDataModule` (which checks the same again
    when it is made); a problem names its ``data.*`` key."""
    if cfg.data.get("_target_") != DATAMODULE_TARGET:
        return None
    # An unknown key is left to check_config, which names the closest option.
    declared = {item.name for item in fields(DataOptions)}
    options = {key: value for key, value in resolve(cfg)["data"].items() if key in declared}
    with named_under("data", ConfigError):
        return DataOptions(**options)


def read_only(cfg: DictConfig) -> DictConfig:
    """A read-only copy of ``cfg``: the config the run was given, whatever each step does with it."""
    frozen = copy.deepcopy(cfg)
    OmegaConf.set_readonly(frozen, True)
    return frozen
