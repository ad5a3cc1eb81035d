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
from dataclasses import dataclass
from typing import Any

import hydra
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from lungexp.data.names import IMAGE_KEY
from lungexp.inference.model import Predictor
from lungexp.metrics.bootstrap import summary_names, with_interval
from lungexp.reporting.options import EvaluationOptions
from lungexp.reporting.report import evaluate_predictions, evaluation_settings, patch_figures
from lungexp.tracking.artifacts import log_config, log_figure, log_table, mlflow_loggers
from lungexp.tracking.provenance import git_tags
from lungexp.tracking.runs import run_name
from lungexp.tracking.stale_runs import instantiate_loggers
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.config import with_values
from lungexp.utils.errors import ConfigError, look_up_option

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "all")
TRAINING_RUN_TAG = "lungexp.training_run_id"
# What the network was trained on: always the checkpoint's, never overridden.
PREPROCESSING_KEYS = ("patch", "hu_window", "normalize", "in_channels")


@dataclass(frozen=True)
class EvaluationResult:
    checkpoint: str
    split: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    mlflow_run_id: str | None
    training_run_id: str | None


def group_config(cfg: DictConfig, group: str, stored: dict[str, Any] | None, overrides: Sequence[str]) -> dict[str, Any]:
    """A config group as stored with the checkpoint, with the command line's changes.

    ``GROUP=OPTION`` on the command line takes that option's config (``cfg[group]``) instead of the stored
    one; ``GROUP.KEY=VALUE`` (and ``~GROUP.KEY``) overrides apply on top of whichever it is. Without a
    stored config, ``cfg[group]`` is the base.
    """
    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
              if o.key_or_group == group or o.key_or_group.startswith(f"{group}.")]
    if stored is None or any(o.key_or_group == group for o in parsed):
        return OmegaConf.to_container(cfg[group], resolve=False)
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
    return OmegaConf.to_container(config, resolve=False)


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
    own = OmegaConf.to_container(cfg.data, resolve=False)
    data = group_config(cfg, "data", recipe.data, overrides)
    synthetic = own.get("synthetic") if data.get("root") == own.get("root") else None
    return {**data, **preprocessing, "cache_dir": own["cache_dir"], "synthetic": synthetic, "train_transform": None}


def evaluate_checkpoint(cfg: DictConfig, overrides: Sequence[str] = ()) -> EvaluationResult:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` and log the report to a new MLflow run."""
    split = look_up_option("split", cfg.split, SPLITS)
    predictor = Predictor(cfg.ckpt_path, device=cfg.device, precision=cfg.precision)
    recipe = predictor.recipe
    # The effective settings, in a copy (``cfg`` stays as composed), so that they are what gets logged.
    cfg = with_values(cfg, {"data": data_config(cfg, recipe, overrides),
                            "eval": group_config(cfg, "eval", predictor.evaluation, overrides),
                            "experiment_name": cfg.experiment_name or recipe.mlflow.get("experiment_name") or "lungexp"})
    options = EvaluationOptions.from_config(cfg.eval)  # checked before any slow work
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    datamodule.prepare_data()
    if split == "all":
        datamodule.setup_all()
    else:
        datamodule.setup("test")
    predictions = _predict(predictor, datamodule, split)
    settings = evaluation_settings(datamodule, split, predictor.decision_threshold(options.threshold), options)
    report = evaluate_predictions(predictions, settings, prefix=f"{split}/", title=split.capitalize())
    report.figures.update(patch_figures(predictor.net, predictions, datamodule.cache.patches, datamodule.window,
                                        options, settings.threshold))

    training_run = recipe.mlflow.get("run_id")
    loggers = instantiate_loggers(cfg.get("logger"), {"run_name": run_name(cfg), "tags": git_tags()})
    log_config(loggers, cfg)
    for logger in mlflow_loggers(loggers):
        logger.experiment.set_tag(logger.run_id, TRAINING_RUN_TAG, training_run or "unknown")
        logger.log_metrics(report.metrics)
    for path, figure in report.figures.items():
        log_figure(loggers, figure, path)
    log_table(loggers, predictions, f"predictions/{split}_predictions.csv")
    run_id = None
    for logger in mlflow_loggers(loggers):
        run_id = logger.run_id
        logger.finalize("success")
    return EvaluationResult(str(predictor.path), split, report.metrics, predictions, run_id, training_run)


def print_summary(result: EvaluationResult) -> None:
    data = result.predictions
    lines = ["", "=" * 72, f"Evaluation of {result.checkpoint}",
             f"  on split '{result.split}': {len(data)} patches ({int(data['label'].sum())} positive) from "
             f"{data['seriesuid'].nunique()} series"]
    lines += [f"  {name:<34} {with_interval(result.metrics, name)}" for name in summary_names(result.metrics)]
    lines.append(f"  training MLflow run id   {result.training_run_id or '(none recorded)'}")
    if result.mlflow_run_id:
        lines.append(f"  MLflow run id            {result.mlflow_run_id}")
    lines.append("=" * 72)
    print("\n".join(lines))


def _predict(predictor: Predictor, datamodule: Any, split: str) -> pd.DataFrame:
    """Per-patch probabilities of a split, joined with the sample table as the training test stage does."""
    dataset = datamodule.datasets[split]
    loader = DataLoader(dataset, batch_size=datamodule.options.batch_size, num_workers=datamodule.options.num_workers)
    probabilities = predictor.probabilities(batch[IMAGE_KEY] for batch in loader)
    table = datamodule.cache.index.iloc[dataset.rows].reset_index(names="cache_row")
    return table.assign(probability=probabilities.astype("float64").round(6)).reset_index(drop=True)


def _describe(preprocessing: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in preprocessing.items())
