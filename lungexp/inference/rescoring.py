"""``evaluate``: a trained checkpoint judged on a split of a dataset, logged as a new MLflow run.

The model and its preprocessing come from the checkpoint; the data and ``eval`` settings are those
stored with it (the training run's) unless the command line overrides them (``data=luna16
data.root=...``, ``data.root=...`` alone, ``eval.threshold=...``). The metrics and figures are made
by the same report as the training test stage, with the decision threshold chosen on the
checkpoint's own validation predictions, so ``split=test`` reproduces the training run's test metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import hydra
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lungexp.data.names import IMAGE_KEY
from lungexp.evaluation.console_summary import metric_lines, print_summary
from lungexp.evaluation.logged_report import PatchPictures, report_split
from lungexp.evaluation.operating_point import with_calibrated
from lungexp.evaluation.table_report import evaluation_settings, predictions_table
from lungexp.evaluation.types import EvaluationOptions, EvaluationResult
from lungexp.inference.ensemble import DATA_LOCATION_KEYS, Ensemble, check_unseen_data, load_members
from lungexp.tracking.artifacts import log_config, mlflow_loggers
from lungexp.tracking.logger_setup import instantiate_loggers
from lungexp.tracking.provenance import git_tags
from lungexp.tracking.run_predictions import predictions_artifact
from lungexp.tracking.runs import run_name
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.config import to_dict, with_values
from lungexp.utils.errors import ConfigError, look_up_option

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "all")
TRAINING_RUN_TAG = "lungexp.training_run_id"
# What the network was trained on: always the checkpoint's, never overridden.
PREPROCESSING_KEYS = ("patch", "hu_window", "normalize", "in_channels")


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
    checkpoint's preprocessing (patch geometry, HU window, normalisation): that is what the network knows.
    Where files are written is this config's, never the file's: the patch cache (``data.cache_dir``), and the
    generated demo dataset, made only in the ``data.root`` this config names, with its ``data.synthetic``."""
    preprocessing = {"patch": {"size": recipe.patch.size, "size_mm": None, "spacing_mm": list(recipe.patch.spacing_mm),
                               "pad_hu": recipe.patch.pad_hu},
                     "hu_window": list(recipe.hu_window), "normalize": recipe.normalize,
                     "in_channels": recipe.in_channels}
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


def evaluate_checkpoint(cfg: DictConfig, overrides: Sequence[str] = ()) -> EvaluationResult:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` and log the report to a new MLflow run."""
    split = look_up_option("split", cfg.split, SPLITS)
    members = load_members(cfg.ckpt_path, cfg.cv_run, cfg.paths.mlflow_uri, device=cfg.device,
                           precision=cfg.precision)
    recipe = members[0].recipe
    data = data_config(cfg, recipe, overrides)
    if split == "all":  # every sample is scored: none is a training negative to leave out of the cache
        data["max_negatives_per_scan"] = None
    # The effective settings, in a copy (``cfg`` stays as composed), so that they are what gets logged.
    cfg = with_values(cfg, {"data": data,
                            "eval": group_config(cfg, "eval", members[0].evaluation, overrides),
                            "experiment_name": cfg.experiment_name or recipe.mlflow.get("experiment_name") or "lungexp"})
    options = EvaluationOptions.from_config(cfg.eval)  # checked before any slow work
    predictor = Ensemble(members, tta=options.tta)
    check_unseen_data(predictor, data_location(cfg, cfg.data), lambda stored: data_location(cfg, stored))
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    datamodule.prepare_data()
    if split == "all":
        datamodule.setup_all()
    else:
        datamodule.setup("test")
    predictor.calibrate(options.calibration, key="eval.calibration")
    predictions = _predict(predictor, datamodule, split)
    settings = evaluation_settings(datamodule.options, datamodule.split_series(split),
                                   predictor.decision_threshold(options.threshold), options)

    training_run = cfg.cv_run or recipe.mlflow.get("run_id")
    loggers = instantiate_loggers(cfg.get("logger"), {"run_name": run_name(cfg), "tags": git_tags()})
    log_config(loggers, cfg)
    pictures = PatchPictures(predictor.net, datamodule.cache.patches, datamodule.window, options)
    report = report_split(predictions, settings, loggers, prefix=f"{split}/", title=split.capitalize(),
                          artifact=predictions_artifact(split), pictures=pictures)
    for logger in mlflow_loggers(loggers):
        logger.experiment.set_tag(logger.run_id, TRAINING_RUN_TAG, training_run or "unknown")
        logger.log_metrics(report.metrics)
    run_id = None
    for logger in mlflow_loggers(loggers):
        run_id = logger.run_id
        logger.finalize("success")
    return EvaluationResult(predictor.description, split, report.metrics, predictions, run_id, training_run)


def print_evaluation(result: EvaluationResult) -> None:
    """The console summary of an evaluation: the split, every metric and both MLflow runs."""
    data = result.predictions
    lines = [f"  on split '{result.split}': {len(data)} patches ({int(data['label'].sum())} positive) from "
             f"{data['seriesuid'].nunique()} series", *metric_lines(result.metrics, 34),
             f"  training MLflow run id   {result.training_run_id or '(none recorded)'}"]
    if result.mlflow_run_id:
        lines.append(f"  MLflow run id            {result.mlflow_run_id}")
    print_summary(f"Evaluation of {result.checkpoint}", lines)


def _predict(predictor: Ensemble, datamodule: Any, split: str) -> pd.DataFrame:
    """Per-patch probabilities of a split, joined with the sample table as the training test stage does."""
    dataset = datamodule.datasets[split]
    loader = DataLoader(dataset, batch_size=datamodule.options.batch_size, num_workers=datamodule.options.num_workers)
    plain, calibrated = predictor.scores(batch[IMAGE_KEY] for batch in loader)
    table = predictions_table(dataset.rows, plain, samples=datamodule.cache.index)
    return table if calibrated is None else with_calibrated(table, calibrated)

