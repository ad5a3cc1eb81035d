"""Where a checkpoint's stored ``data`` and ``eval`` groups meet the command line of ``lungexp.evaluate``.

The model and its preprocessing come from the checkpoint; the data and ``eval`` settings are those stored with
it (the training run's) unless the command line overrides them (``data=luna16 data.root=...``, ``data.root=...``
alone, ``eval.threshold=...``). :func:`checkpoint_evaluation` merges them, checks them as typed options before
any data is read, and returns what :func:`lungexp.inference.checkpoint_evaluation.evaluate_checkpoint` judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lungexp.config.check import typed_data_options
from lungexp.config.schema import resolve
from lungexp.evaluation.split_metrics import check_strata_column
from lungexp.evaluation.types import EvaluationOptions
from lungexp.inference.checkpoint_evaluation import SPLITS, CheckpointEvaluation
from lungexp.inference.ensemble import DATA_LOCATION_KEYS, Ensemble, check_unseen_data, load_members
from lungexp.metrics.threshold import check_rule_for_task
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.dictconfig import to_dict, with_values
from lungexp.utils.errors import ConfigError, look_up_option

# What the network was trained on: always the checkpoint's, never overridden.
PREPROCESSING_KEYS = ("patch", "hu_window", "normalize", "in_channels", "covariates", "images")


def checkpoint_evaluation(cfg: DictConfig, overrides: Sequence[str] = ()) -> CheckpointEvaluation:
    """The checkpoint(s) of ``cfg`` (``ckpt_path`` or ``cv_run``) with the data, ``eval`` options and split to
    judge them on, every option checked before any data is read. ``overrides``: the command line's."""
    split = look_up_option("split", cfg.split, SPLITS)
    members = load_members(cfg.ckpt_path, cfg.cv_run, cfg.paths.mlflow_uri, device=cfg.device,
                           precision=cfg.precision)
    recipe = members[0].recipe
    data = data_config(cfg, recipe, overrides)
    if split == "all":  # every sample is scored: none is a training negative to leave out of the cache
        data["max_negatives_per_scan"] = None
    # The effective settings, in a copy (``cfg`` stays as composed), so that they are what gets logged.
    config = with_values(cfg, {"data": data,
                               "eval": group_config(cfg, "eval", members[0].evaluation, overrides),
                               "experiment_name": cfg.experiment_name or recipe.mlflow.get("experiment_name")
                               or "lungexp"})
    evaluation = EvaluationOptions.from_config(config.eval)
    predictor = Ensemble(members, tta=evaluation.tta)
    check_unseen_data(predictor, data_location(config, config.data), lambda stored: data_location(config, stored))
    data_options = typed_data_options(resolve(config.data), strict=True)
    check_strata_column(evaluation.strata, data_options)
    check_rule_for_task(evaluation.threshold, data_options.task)
    return CheckpointEvaluation(config, predictor, split, data_options, evaluation)


def group_config(cfg: DictConfig, group: str, stored: dict[str, Any] | None, overrides: Sequence[str]) -> dict[str, Any]:
    """A config group as stored with the checkpoint, with the command line's changes.

    ``GROUP=OPTION`` on the command line takes that option's config (``cfg[group]``) instead of the stored
    one; ``GROUP.KEY=VALUE`` (and ``~GROUP.KEY``) overrides apply on top of whichever it is. Without a
    stored config, ``cfg[group]`` is the base.
    """
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
              if o.key_or_group == group or o.key_or_group.startswith(f"{group}.")]
    if stored is None or any(o.key_or_group == group for o in parsed):
        return to_dict(cfg[group], resolve=False)
    config = OmegaConf.create(stored)
    for override in parsed:
        key = override.key_or_group.removeprefix(f"{group}.")
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(config, parent) if parent else config
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(config, key, override.value(), force_add=True)
    return to_dict(config, resolve=False)


def data_config(cfg: DictConfig, recipe: ModelRecipe, overrides: Sequence[str]) -> dict[str, Any]:
    """The data to evaluate on: the checkpoint's data config with the command line's changes, and always the
    checkpoint's preprocessing (patch geometry, HU window, normalisation) and covariates: what the network knows.
    Where files are written is this config's, never the file's: the patch cache (``data.cache_dir``), and the
    generated demo dataset, made only in the ``data.root`` this config names, with its ``data.synthetic``."""
    preprocessing = {"patch": {"size": recipe.patch.size, "size_mm": None, "spacing_mm": list(recipe.patch.spacing_mm),
                               "pad_hu": recipe.patch.pad_hu},
                     "hu_window": list(recipe.hu_window), "normalize": recipe.normalize,
                     "in_channels": recipe.in_channels, "covariates": list(recipe.covariates),
                     "images": recipe.images}
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    fixed = [key for key in keys if key.split(".")[0] == "data" and key.split(".")[1:2]
             and key.split(".")[1] in PREPROCESSING_KEYS]
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: the checkpoint fixes the preprocessing its network was trained "
                          f"with ({', '.join(f'{k}={v}' for k, v in preprocessing.items())}); evaluate without "
                          "overriding it")
    own = to_dict(cfg.data, resolve=False)
    data = group_config(cfg, "data", recipe.data, overrides)
    # A data.root of the command line is the user's dataset, never a place to generate the demo data in (a real
    # LUNA16 folder lacks the generator's manifest), unless the same command asks for the generator itself.
    asked_for_generator = any(key == "data" or key.startswith("data.synthetic") for key in keys)
    generates = data.get("root") == own.get("root") and ("data.root" not in keys or asked_for_generator)
    synthetic = own.get("synthetic") if generates else None
    return {**data, **preprocessing, "cache_dir": own["cache_dir"], "synthetic": synthetic, "train_transform": None}


def data_location(cfg: DictConfig, data: Any) -> dict[str, Any]:
    """The files a data config names (``root``, ``labels_csv``), resolved as ``cfg`` resolves them: a checkpoint
    stores ``${paths.data_dir}/...`` and ``${data.root}/...`` unresolved, and they mean what this command finds."""
    view = with_values(cfg, {"data": data})
    return {key: OmegaConf.select(view, f"data.{key}") for key in DATA_LOCATION_KEYS}
