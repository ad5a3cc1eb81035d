"""``check(cfg, entry_point)``: the one check of a composed config, before any slow work.

Each Hydra entry point calls it once, first thing. It runs the checks its config needs (the schema of
:mod:`lungexp.config.schema`, the typed options of ``data``, ``eval``, ``target`` and ``cv``) and returns the
config read-only with those options (:class:`~lungexp.training.run_options.RunOptions` for a training run), so nothing
on the way changes what the run was given and nothing below parses the groups again: a step that needs other
values works on a changed copy (``dataclasses.replace``, :func:`lungexp.utils.dictconfig.with_values`).

Library layers name their own parameters (``depth=11``, ``split.method='subset'``); this is where the
config meets them, so their :class:`~lungexp.utils.errors.ArgumentError` becomes a
:class:`~lungexp.utils.errors.ConfigError` naming the key as it is typed on the command line
(``model.net.depth=11``): :func:`check` for ``data.*``, :func:`lungexp.config.keys.report_user_errors`
for what Hydra instantiates later.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, overload

from omegaconf import DictConfig, OmegaConf

from lungexp.config.schema import check_config, check_top_level, resolve
from lungexp.data.labels.covariates import COVARIATE_STARTS, check_rating_covariates, covariate_names
from lungexp.data.labels.targets import PRIMARY_NAME, TargetOptions
from lungexp.data.options import DataOptions
from lungexp.evaluation.split_metrics import check_strata_column
from lungexp.evaluation.types import EvaluationOptions
from lungexp.metrics.calibration import check_calibration
from lungexp.metrics.threshold import check_rule_for_task
from lungexp.models.heads import head_outputs
from lungexp.training.run_options import CrossValidationOptions, RunOptions, stored_data_config
from lungexp.utils.dictconfig import check_required, with_values
from lungexp.utils.errors import ArgumentError, ConfigError, did_you_mean, look_up_option, named_under

log = logging.getLogger(__name__)

BINARY_LOSS = "torch.nn.BCEWithLogitsLoss"  # model.loss's default: the only one a non-binary primary head leaves alone

# Each entry point's primary config file in conf/, and the top-level nodes it uses (None: all).
PRIMARY = {"run": "config", "preprocess": "config", "evaluate": "evaluate", "predict": "predict",
           "register": "register"}
SECTIONS: dict[str, tuple[str, ...] | None] = {"run": None, "preprocess": ("data", "aug", "paths")}
DATAMODULE_TARGET = "lungexp.data.loading.datamodule.NoduleDataModule"
DATAMODULE_KEYS = frozenset({"_target_", "train_transform"})  # the data node's keys that are no data option


def cross_validation_options(cfg: DictConfig) -> CrossValidationOptions | None:
    """``cv.folds`` with the options it needs, checked before any slow work; None without ``cv.folds``."""
    folds = cfg.cv.folds
    if folds is None:
        return None
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
    return CrossValidationOptions(folds=folds)


@dataclass(frozen=True)
class CheckedConfig:
    """What :func:`check` returns for the entry points other than ``run``: the config as the entry point uses it,
    and the typed ``data.*`` options where it builds a datamodule from them (``preprocess``).

    Args:
        config: the composed config, read-only.
        data: the ``data.*`` options.
    """

    config: DictConfig
    data: DataOptions | None = None


@overload
def check(cfg: DictConfig, entry_point: Literal["run"]) -> RunOptions: ...


@overload
def check(cfg: DictConfig, entry_point: str) -> CheckedConfig | RunOptions: ...


def check(cfg: DictConfig, entry_point: str) -> CheckedConfig | RunOptions:
    """Check ``cfg``, composed for ``entry_point`` (``run``, ``preprocess``, ``evaluate``, ``predict`` or ``register``).

    Checks that need no imports come first, so most mistakes fail in about a second; ``_target_`` arguments
    and metric names import torch and Lightning. Every problem is a :class:`ConfigError` naming its key. A
    training run (``run``) gets its typed options (:class:`~lungexp.training.run_options.RunOptions`).
    """
    look_up_option("entry_point", entry_point, PRIMARY, error=ArgumentError)
    check_required(cfg)
    check_top_level(cfg, PRIMARY[entry_point])  # first: data.* interpolates some of them (data.split.seed: ${seed})
    if entry_point not in SECTIONS:  # evaluate, predict, register: their checkpoints bring the model and data
        return CheckedConfig(read_only(cfg))
    data = data_options(cfg)
    target = target_options(cfg, data) if entry_point == "run" else None
    if target is not None and not target.is_default:  # the network's outputs: one per logit of the heads
        cfg = with_values(cfg, {"model.net.num_classes": sum(head_outputs(head.kind, head.num_classes)
                                                              for head in target.heads)})
    check_config(cfg, sections=SECTIONS[entry_point])
    if target is None:  # preprocess: the patch cache holds no labels
        return CheckedConfig(read_only(cfg), data=data)
    check_covariates(resolve(cfg)["model"], data)
    evaluation = EvaluationOptions.from_config(resolve(cfg).get("eval"))
    check_strata_column(evaluation.strata, data)
    check_rule_for_task(evaluation.threshold, data.task)
    check_target_run(resolve(cfg)["model"], target, data, evaluation)
    if not data.images:
        check_without_images(evaluation)
    config = read_only(cfg)
    return RunOptions(config, data=data, evaluation=evaluation, target=target, cv=cross_validation_options(cfg),
                      train_transform=config.data.get("train_transform"), stored_data=stored_data_config(cfg.data))


def check_target_run(model: Mapping[str, Any], target: TargetOptions, data: DataOptions,
                     evaluation: EvaluationOptions) -> None:
    """What only a binary primary head has, refused for a multiclass or ordinal one before any data is read, each
    with one line saying what to use instead: ``model.pos_weight``, ``model.loss``, ``data.balance.sampler=balanced``,
    ``eval.threshold``, ``eval.strata``, the LUNA16 FROC (``data.task=candidates``) and the ``eval.calibration``
    the head's kind does not have (:func:`~lungexp.metrics.calibration.check_calibration`: a multiclass head's is a
    temperature, an ordinal head has none). The pictures on CT (worst errors, Grad-CAM) show one logit: not made for
    other targets, as one line of the log says."""
    if target.auxiliary or target.primary.kind != "binary":
        log.info("%s: the pictures on CT (eval.montage_k, eval.gradcam) show one logit's errors and saliency and are "
                 "not made for it; each head's metrics and the predictions table are", target.describe())
    kind = target.primary.kind
    if kind == "binary":
        return
    what = f"the primary head of target={target.kind} is {kind}"
    check_calibration(evaluation.calibration, "eval.calibration", kind)
    loss = (model.get("loss") or {}).get("_target_")
    refusals = [
        (model.get("pos_weight") is not None, f"model.pos_weight={model.get('pos_weight')} weighs a binary head's "
         f"positives, but {what}: set model.pos_weight=null (class_weights=auto weighs a multiclass head's classes)"),
        (loss != BINARY_LOSS, f"model.loss._target_={loss} is a binary head's loss, but {what}, trained with its "
         f"head's own loss (cross-entropy or CORN): leave model.loss at {BINARY_LOSS}"),
        (data.balance.sampler == "balanced", f"data.balance.sampler=balanced draws a binary label's positives, but "
         f"{what}: set data.balance.sampler=none (and class_weights=auto for a multiclass head)"),
        (evaluation.threshold != EvaluationOptions().threshold, f"eval.threshold={evaluation.threshold} is a binary "
         f"head's decision threshold, but {what}, which predicts its most probable class (multiclass) or median "
         "level (ordinal): drop eval.threshold"),
        (evaluation.strata is not None, f"eval.strata stratifies a binary head's AUROC, but {what}: set "
         "eval.strata=null"),
        (data.task == "candidates", f"data.task=candidates scores the LUNA16 FROC/CPM of a binary nodule label, but "
         f"{what}: use data.task=malignancy or points with a labels CSV of ratings"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)


def check_covariates(model: Mapping[str, Any], data: DataOptions) -> None:
    """``model.covariates``: column names, none of them a reader's rating unless ``model.allow_rating_covariates``
    (:func:`~lungexp.data.labels.covariates.check_rating_covariates`), and the datamodule's (``data.covariates``
    follows them)."""
    names = covariate_names(model.get("covariates", []), key="model.covariates")
    allow = model.get("allow_rating_covariates", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"model.allow_rating_covariates={allow!r} must be true or false")
    look_up_option("model.covariate_start", model.get("covariate_start", "fitted"), COVARIATE_STARTS)
    check_rating_covariates(names, allow)
    if names != data.covariates:
        raise ConfigError(f"data.covariates={list(data.covariates)} but model.covariates={list(names)}: the data "
                          "follow the model's covariates; set model.covariates only")
    if model.get("images", True) != data.images:
        raise ConfigError(f"data.images={data.images} but model.images={model.get('images', True)}: the data follow "
                          "the model (model=tabular reads no image); set model.images only")


def check_without_images(evaluation: EvaluationOptions) -> None:
    """A model that reads no image (``model=tabular``): what is image-only is refused where it would claim what did
    not happen (``eval.tta=flips``), else not used, as one line of the log says."""
    if evaluation.tta != "none":
        raise ConfigError(f"eval.tta={evaluation.tta} mirrors the image, and model=tabular reads none: set eval.tta=none")
    log.info("model=tabular reads no image: aug, eval.gradcam, eval.montage_k and the patch options (data.patch, "
             "data.hu_window, data.normalize, data.cache_memory) are not used; it is fitted on the whole training "
             "split at once (data.batch_size and data.balance are not used; weigh classes with model.pos_weight)")


def data_options(cfg: DictConfig) -> DataOptions:
    """``cfg.data`` as checked options; a problem names its ``data.*`` key."""
    target = cfg.data.get("_target_")
    if target != DATAMODULE_TARGET:
        raise ConfigError(f"data._target_={target}: the datamodule is made from the data.* options, by "
                          f"{DATAMODULE_TARGET}; drop data._target_ from your data config (it comes with "
                          "conf/base_datamodule.yaml)")
    return typed_data_options(resolve(cfg)["data"])


def target_options(cfg: DictConfig, data: DataOptions) -> TargetOptions:
    """``cfg.target`` as checked options (the default binary target where the config has none), and what it asks
    of the ``data`` options; a problem names its ``target.*`` key and what to do."""
    node = resolve(cfg).get("target")
    if not isinstance(node, Mapping | None):
        raise ConfigError(f"target={node!r} must be one of the options of conf/target: target=binary, multiclass, "
                          "ordinal, multitask or lidc_attributes")
    with named_under("target", ConfigError):
        target = TargetOptions.from_config(node)
    if target.is_default:
        return target
    if data.labels_csv is None:
        columns = ", ".join(dict.fromkeys(f"'{head.column}'" for head in target.heads))
        raise ConfigError(f"target.kind={target.kind} reads the column(s) {columns} of the labels CSV, but "
                          "data.labels_csv=null samples candidates labelled 0/1 only; give data.labels_csv a CSV "
                          "with those columns, or use target=binary")
    if data.label_rule is not None and target.primary.column != PRIMARY_NAME:
        key = target.config_key(target.primary, "column")
        raise ConfigError(f"data.label_rule={data.label_rule.as_config()} makes the binary `label`, but the primary "
                          f"target reads '{target.primary.column}' ({key}), so the rule would only drop rows: set "
                          "data.label_rule=null and drop values with the target's rule (a drop list) instead")
    return target


def typed_data_options(data: Mapping[str, Any], strict: bool = False) -> DataOptions:
    """The resolved ``data`` group as checked options; a problem names its ``data.*`` key. ``strict``: an unknown
    key is an error here (else it is left to :func:`~lungexp.config.schema.check_config`, which names the closest
    option too)."""
    declared = {item.name for item in fields(DataOptions)}
    unknown = sorted(set(data) - declared - DATAMODULE_KEYS)
    if strict and unknown:
        raise ConfigError(f"data.{unknown[0]}: no such data option{did_you_mean(unknown[0], sorted(declared))}; "
                          "see the table of data options in docs/data.md")
    with named_under("data", ConfigError):
        return DataOptions(**{key: value for key, value in data.items() if key in declared})


def read_only(cfg: DictConfig) -> DictConfig:
    """A read-only copy of ``cfg``: the config the run was given, whatever each step does with it."""
    frozen = copy.deepcopy(cfg)
    OmegaConf.set_readonly(frozen, True)
    return frozen
