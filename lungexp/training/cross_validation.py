"""K-fold cross-validation in one command: ``python -m lungexp.run experiment=NAME cv.folds=K``.

The folds: with ``data.split.method=subsets`` the LUNA16 subsets are the folds (fold k tests on the
k-th subset and validates on the next one, cyclically; ``cv.folds`` must equal the number of
subsets, 10 for LUNA16's protocol); otherwise K seeded folds of whole series (or of patients, with
``data.split.group_by``), stratified by whether a series has a positive (``data.split.method=folds``).

Each fold is an ordinary training run (:func:`~lungexp.training.pipeline.train`) whose config differs
only in ``data.split`` and its output folder. In MLflow the folds are nested runs under one parent
run that holds the mean and standard deviation of every test metric over the folds
(``cv_mean/test/auroc``, ``cv_std/test/auroc``, ...) and the report of the pooled test predictions
of all folds under the usual names (``test/cpm``, ``froc.png``, ...): LUNA16 reports one FROC
over all ten folds. Running the same command again skips the folds that already finished and continues a
fold that was stopped (pre-empted by SIGTERM, killed, or failed) from its ``last.ckpt``, in the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from lungexp.data.labels.splits import SplitSpec, check_splits, split_samples
from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.evaluation.console_summary import print_summary
from lungexp.evaluation.head_report import report_target
from lungexp.evaluation.operating_point import pooled_threshold
from lungexp.evaluation.split_metrics import evaluation_settings
from lungexp.metrics.bootstrap import CI_HIGH, CI_LOW, with_interval
from lungexp.tracking.artifacts import log_config, log_table
from lungexp.tracking.folds import FoldRuns, FoldScores
from lungexp.tracking.logger_setup import mlflow_logger_config
from lungexp.tracking.run_predictions import predictions_artifact
from lungexp.tracking.runs import run_name
from lungexp.training.checkpoint import read_checkpoint
from lungexp.training.pipeline import train
from lungexp.training.resume import LAST, check_resumable, resolve_checkpoint
from lungexp.training.run_options import RunOptions
from lungexp.utils.dictconfig import to_dict, with_values
from lungexp.utils.errors import ConfigError, LungexpError, Terminated

log = logging.getLogger(__name__)

POOLED_ARTIFACT = predictions_artifact("pooled_test")
THRESHOLD = "test/threshold"  # each fold's decision threshold, chosen on its validation split


class FoldFailedError(LungexpError):
    """A fold stopped the cross-validation; the message names the fold and its cause."""


@dataclass(frozen=True)
class Fold:
    """One fold: its number, the ``data.split`` values of its run and a description for people."""

    index: int
    split: dict[str, Any]
    description: str


@dataclass(frozen=True)
class FoldResult(FoldScores):
    """A fold of this cross-validation: its test metrics and optimised metric, its test predictions and run."""

    fold: Fold
    predictions: pd.DataFrame | None
    run_id: str | None
    reused: bool  # finished in an earlier invocation of the same command


@dataclass(frozen=True)
class CrossValidationResult:
    folds: list[FoldResult]
    metrics: dict[str, float]  # cv_mean/..., cv_std/... and the pooled test/...
    parent_run_id: str | None

    @property
    def optimized_metric(self) -> float | None:
        """Mean over folds of each fold's optimised (validation) metric, for Hydra sweepers."""
        values = [f.optimized_metric for f in self.folds if f.optimized_metric is not None]
        return float(np.mean(values)) if values else None


def cross_validate(run: RunOptions) -> CrossValidationResult:
    """Run (or continue) the ``cv.folds``-fold cross-validation of the checked ``run`` (``run.cv`` is set:
    :func:`lungexp.config.check.check` checked ``cv.folds``, a whole number >= 2)."""
    assert run.cv is not None, "cross_validate runs the folds of run.cv"
    num_folds = run.cv.folds
    # One cache of every sample, which every fold finds and uses (data.max_negatives_per_scan then caps each
    # fold's training split in memory): every scan is some fold's test scan, so all of them are needed anyway.
    datamodule = NoduleDataModule.from_options(replace(run.data, max_negatives_per_scan=None), target=run.target)
    samples, _ = datamodule.sample_table()  # the rows the cache will serve: a wrong cv.folds fails before the build
    folds = plan_folds(run.data.split, num_folds, samples)
    datamodule.build_cache()
    runs = _fold_runs(run.config)
    results: list[FoldResult] = []
    for fold in folds:
        results.append(_run_fold(run, fold, num_folds, runs))
    metrics = fold_statistics([r.metrics for r in results])
    pooled = pd.concat([r.predictions.assign(fold=r.fold.index) for r in results if r.predictions is not None],
                       ignore_index=True)
    metrics.update(_pooled_report(run, datamodule, pooled, results, runs))
    if runs is not None:
        logger = runs.parent_logger()
        logger.log_metrics(metrics)
        log_table([logger], _fold_table(results), "cv/folds.csv")
        runs.finish()
    result = CrossValidationResult(folds=results, metrics=metrics, parent_run_id=runs.parent_id if runs else None)
    _print_summary(result)
    return result


def plan_folds(split: SplitSpec, num_folds: int, samples: pd.DataFrame) -> list[Fold]:
    """The folds for ``data.split``, each checked (disjoint, non-empty, both classes) before any training."""
    if split.method == "subsets":
        subsets = sorted(int(s) for s in samples["subset"].unique())
        if len(subsets) != num_folds:
            raise ConfigError(f"cv.folds={num_folds} with data.split.method=subsets: the folds are the subsets, "
                              f"and the scans are in {len(subsets)} subset(s) {subsets}; set cv.folds={len(subsets)}, "
                              f"or data.split.method=series for {num_folds} folds of series")
        folds = [Fold(k, {"fold": subset, "val_fold": subsets[(k + 1) % num_folds]},
                      f"test subset{subset}, validation subset{subsets[(k + 1) % num_folds]}")
                 for k, subset in enumerate(subsets)]
    else:  # series (or already folds): K seeded folds of series
        folds = [Fold(k, {"method": "folds", "num_folds": num_folds, "fold": k, "val_fold": (k + 1) % num_folds},
                      f"test fold {k}, validation fold {(k + 1) % num_folds} of {num_folds} series folds")
                 for k in range(num_folds)]
    for fold in folds:
        try:
            spec = fold_split(split, fold)
            check_splits(split_samples(samples, spec), group_by=spec.group_by)
        except LungexpError as error:
            raise FoldFailedError(f"cross-validation fold {fold.index} ({fold.description}): {error}") from None
    return folds


def fold_split(split: SplitSpec, fold: Fold) -> SplitSpec:
    """The ``data.split`` of ``fold``'s run: ``split`` with the fold's values, checked."""
    return SplitSpec.from_config(**{**asdict(split), **fold.split})


def fold_run(run: RunOptions, fold: Fold, run_id: str | None, resume_from: Path | None = None) -> RunOptions:
    """The run of one fold: its ``data.split`` (in the options, the config it logs and the data config its
    checkpoints store), its own output folder, (with MLflow) its nested run and, continuing a stopped fold, the
    ``last.ckpt`` it resumes."""
    fold_cfg = with_values(run.config, {**{f"data.split.{key}": value for key, value in fold.split.items()},
                                        "paths.output_dir": fold_output_dir(run.config, fold),
                                        "ckpt_path": str(resume_from) if resume_from is not None else None})
    logger = mlflow_logger_config(fold_cfg)
    if logger is not None:
        with open_dict(logger):
            logger.run_id = run_id
    stored_split = {**run.stored_data.get("split", {}), **fold.split}
    return replace(run, config=fold_cfg, data=replace(run.data, split=fold_split(run.data.split, fold)),
                   stored_data={**run.stored_data, "split": stored_split})


def fold_output_dir(cfg: DictConfig, fold: Fold) -> str:
    """Where this invocation writes ``fold``'s run (a continued fold keeps writing checkpoints in its first one)."""
    return f"{cfg.paths.output_dir}/fold{fold.index}"


def command_hash(cfg: DictConfig) -> str:
    """Hash of the composed config, blind to the per-invocation output folder: "the same command". Unlike the
    ``config.hash`` tag (settings only, see :func:`lungexp.tracking.params.config_hash`) it covers paths too:
    folds of a CV on other data are never reused."""
    frozen = with_values(cfg, {"paths.output_dir": "<output_dir>"})
    container = OmegaConf.to_container(frozen, resolve=True)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fold_statistics(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """``cv_mean/<name>`` and ``cv_std/<name>`` (sample standard deviation) of every test metric (not of the
    bounds of its interval: the pooled report has those)."""
    names = sorted({name for metrics in fold_metrics for name in metrics
                    if name.startswith("test/") and not name.endswith((CI_LOW, CI_HIGH))})
    statistics = {}
    for name in names:
        values = np.array([metrics.get(name, np.nan) for metrics in fold_metrics], dtype=np.float64)
        finite = values[np.isfinite(values)]
        statistics[f"cv_mean/{name}"] = float(finite.mean()) if finite.size else float("nan")
        statistics[f"cv_std/{name}"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return statistics


def _run_fold(run: RunOptions, fold: Fold, num_folds: int, runs: FoldRuns | None) -> FoldResult:
    if runs is not None:
        finished = runs.finished_fold(fold.index)
        if finished is not None:
            log.info("Fold %d/%d (%s): already FINISHED in run %s, not retrained", fold.index + 1, num_folds,
                     fold.description, finished.run_id)
            return FoldResult(metrics=_test_metrics(finished.metrics), optimized_metric=finished.optimized_metric,
                              fold=fold, predictions=runs.table_artifact(finished.run_id, predictions_artifact("test")),
                              run_id=finished.run_id, reused=True)
    stopped = _resumable_fold(run, fold, runs) if runs is not None else None
    if stopped is not None:
        run_id, resume_from = stopped
        log.info("Fold %d/%d (%s): continues its run %s from %s", fold.index + 1, num_folds, fold.description,
                 run_id, resume_from)
    else:
        run_id, resume_from = None, None
        if runs is not None:
            run_id = runs.start_fold(fold.index, fold_output_dir(run.config, fold))
        log.info("Fold %d/%d (%s)", fold.index + 1, num_folds, fold.description)
    try:
        result = train(fold_run(run, fold, run_id, resume_from))
    except Terminated as stop:  # pre-empted: the fold's run marked itself KILLED
        if runs is None:
            then = "this cross-validation logs to no MLflow store, so it cannot continue: run it again from the start"
        else:
            runs.kill()
            then = (f"finished folds are kept: run the same command again (without ckpt_path) and fold {fold.index} "
                    + (f"continues from {stop.checkpoint}" if stop.checkpoint else "starts again (it saved no checkpoint)"))
        raise Terminated(f"{stop.where} in cross-validation fold {fold.index} ({fold.description})", then,
                         stop.checkpoint) from None
    except BaseException as error:
        if runs is not None:
            runs.fail(run_id)
        message = (f"cross-validation stopped: fold {fold.index} ({fold.description}) failed: {error}. Finished "
                   "folds are kept; fix the cause and re-run the same command to continue from this fold")
        if isinstance(error, LungexpError):
            raise FoldFailedError(message) from error
        log.error(message)
        raise
    if runs is not None and run_id is not None:  # run_id is None exactly when runs is
        if result.best_checkpoint:
            runs.record_checkpoint(fold.index, run_id, result.best_checkpoint)
        runs.complete_fold(run_id, result.optimized_metric)
    return FoldResult(metrics=_test_metrics(result.metrics), optimized_metric=result.optimized_metric, fold=fold,
                      predictions=result.test_predictions, run_id=run_id, reused=False)


def _test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if name.startswith("test/")}


def _resumable_fold(run: RunOptions, fold: Fold, runs: FoldRuns) -> tuple[str, Path] | None:
    """The run of ``fold`` that an earlier invocation left unfinished and the ``last.ckpt`` it can resume from;
    None (the fold trains anew) when there is none, or the checkpoint cannot be resumed."""
    stopped = runs.interrupted_fold(fold.index)
    if stopped is None:
        return None
    try:
        last = resolve_checkpoint(LAST, stopped.output_dir)
    except ConfigError:
        log.info("Fold %d: its %s run %s saved no last.ckpt; the fold trains anew", fold.index, stopped.status,
                 stopped.run_id)
        return None
    assert last is not None  # resolve_checkpoint returns a file for `last`, or raises
    try:
        check_resumable(last, read_checkpoint(last), fold_run(run, fold, stopped.run_id, last), stopped.status)
    except LungexpError as error:  # a damaged checkpoint, or one that cannot go on (e.g. other data)
        log.warning("Fold %d: its %s run %s is not continued, the fold trains anew: %s", fold.index,
                    stopped.status, stopped.run_id, error)
        return None
    return stopped.run_id, last


def _fold_runs(cfg: DictConfig) -> FoldRuns | None:
    """MLflow bookkeeping, when the run config logs to MLflow (fast_dev_run never does: Lightning mutes loggers)."""
    logger = mlflow_logger_config(cfg)
    if logger is None or cfg.trainer.get("fast_dev_run"):
        return None
    runs = FoldRuns(tracking_uri=logger.tracking_uri, experiment_name=logger.experiment_name,
                    artifact_location=logger.get("artifact_location"), config_hash=command_hash(cfg),
                    run_name=logger.get("run_name") or run_name(cfg),
                    tags=to_dict(logger.tags, resolve=True) if logger.get("tags") else None)
    if not runs.resumed:
        log_config([runs.parent_logger()], cfg)
    return runs


def _pooled_report(run: RunOptions, datamodule: NoduleDataModule, pooled: pd.DataFrame,
                   results: list[FoldResult], runs: FoldRuns | None) -> dict[str, float]:
    """The report of the pooled test predictions (one FROC over all folds, as LUNA16 reports; every head of the
    target), its figures and the pooled table logged to the parent run. Thresholded metrics of a binary primary
    head use the mean of the folds' validation-chosen thresholds."""
    binary = run.target.primary.kind == "binary"
    threshold = pooled_threshold(r.metrics.get(THRESHOLD, np.nan) for r in results) if binary else 0.5
    datamodule.setup_all()  # every series is in exactly one fold's test set
    settings = evaluation_settings(datamodule.options, datamodule.split_series("all"), threshold, run.evaluation)
    loggers = [runs.parent_logger()] if runs is not None else []
    report = report_target(pooled, run.target, settings, loggers, title=f"Pooled test ({len(results)} folds)",
                           artifact=POOLED_ARTIFACT, figures=runs is not None)
    return report.metrics


def _fold_table(results: list[FoldResult]) -> pd.DataFrame:
    return pd.DataFrame([{"fold": r.fold.index, "split": r.fold.description, "run_id": r.run_id,
                          "reused": r.reused, **r.metrics} for r in results])


def _print_summary(result: CrossValidationResult) -> None:
    table = _fold_table(result.folds)
    names = [n for n in ("test/auroc", "test/auroc_stratified", "test/cpm", "test/average_precision", "test/auroc_macro",
                         "test/balanced_accuracy", "test/f1_macro", "test/qwk", "test/mae", "test/accuracy_within1",
                         "test/accuracy") if n in table]
    lines = []
    for _, row in table.iterrows():
        values = "  ".join(f"{name.removeprefix('test/')} {row[name]:.4f}" for name in names)
        lines.append(f"  fold {row['fold']}  {values}  {'(reused)' if row['reused'] else ''}".rstrip())
    for name in names:
        mean, std = result.metrics.get(f"cv_mean/{name}"), result.metrics.get(f"cv_std/{name}")
        pooled = with_interval(result.metrics, name)
        lines.append(f"  {name:<24} mean {mean:.4f} ± {std:.4f}" + (f"   pooled {pooled}" if pooled else ""))
    if result.parent_run_id:
        lines.append(f"  MLflow parent run id   {result.parent_run_id}")
    print_summary(f"Cross-validation: {len(result.folds)} folds", lines)
