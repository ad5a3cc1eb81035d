"""Config -> datamodule, model, callbacks, loggers, Trainer -> fit -> test the best checkpoint."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import hydra
import pandas as pd
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero, rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.evaluation.console_summary import metric_lines, print_summary, whole_split_metrics
from lungexp.metrics.bootstrap import summary_names
from lungexp.tracking.artifacts import log_config, log_tags, mlflow_loggers
from lungexp.tracking.callback import MLflowTracking
from lungexp.tracking.logger import run_ends_when_done
from lungexp.tracking.logger_setup import instantiate_loggers
from lungexp.tracking.provenance import git_tags
from lungexp.tracking.runs import job_overrides, run_name
from lungexp.tracking.stale_runs import ENDED_BY_TAG
from lungexp.training.checkpoint import (
    DiskFullNamedCheckpointIO,
    ModelRecipe,
    SaveRecipe,
    best_checkpoint_callback,
    last_checkpoint_path,
)
from lungexp.training.devices import log_unsupported, supported_trainer
from lungexp.training.distributed import sweep_job_ranks
from lungexp.training.finetuning import BackboneFreeze
from lungexp.training.network_summary import NetworkSummary
from lungexp.training.resume import EpochSeed, Resume, data_locations, prepare_resume, run_config
from lungexp.training.run_options import RunOptions
from lungexp.training.test_stage import TestReport
from lungexp.utils.dictconfig import instantiate_dict, with_values
from lungexp.utils.errors import ConfigError, Terminated

log = logging.getLogger(__name__)
lightning_log = logging.getLogger(rank_zero.__name__)  # where Lightning logs its info lines, the tips among them
LIGHTNING_TIP = "💡 Tip:"
# Said by every Trainer for each limit_*_batches our trainer config sets to its default 1.0 (the "=1" line, one
# batch, is kept: it tells a count from a fraction).
ALL_BATCHES = re.compile(r"`Trainer\(\w+=1\.0\)` was configured so 100% of the batches")


@dataclass(frozen=True)
class RunResult:
    """What a run produced: the optimised metric, final metrics and where results are."""

    optimized_metric: float | None
    metrics: dict[str, float]
    best_checkpoint: str | None
    mlflow_run_id: str | None
    mlflow_tracking_uri: str | None
    test_predictions: pd.DataFrame | None = None  # one row per test patch with its probability


def build(run: RunOptions, resume: Resume | None = None) -> tuple[pl.LightningDataModule, pl.LightningModule,
                                                                    pl.Trainer]:
    """Seed everything, then make the datamodule from ``run.data`` and instantiate model, callbacks, loggers and
    Trainer from ``run.config``.

    ``resume``: continue its MLflow run (if it has one here) instead of starting a new one, with its checks.
    """
    cfg = run.config
    pl.seed_everything(cfg.seed, workers=True)
    # The config as composed, not as adapted to this machine's devices: what a resume compares.
    save_recipe = SaveRecipe(ModelRecipe.from_run(run), run_config(cfg), data_locations(run.data))
    log_unsupported(cfg.trainer)
    datamodule = NoduleDataModule.from_options(run.data, hydra.utils.instantiate(run.train_transform,
                                                                                 _convert_="partial"), run.target)
    # A partial, called with the typed options: Hydra would turn a dataclass argument into a config.
    make_model = hydra.utils.instantiate(cfg.model, _partial_=True, _convert_="partial")
    model: pl.LightningModule = make_model(evaluation=run.evaluation, target=run.target)
    callbacks = [*instantiate_dict(cfg.get("callbacks")), save_recipe, EpochSeed(cfg.seed), TestReport(datamodule),
                 *(resume.callbacks() if resume else [])]
    if cfg.model.finetune.freeze_backbone_epochs > 0:
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=cfg.model.finetune.freeze_backbone_epochs,
                                        train_bn=not cfg.model.finetune.freeze_bn))
    loggers = instantiate_loggers(cfg.get("logger"), {
        "run_name": run_name(cfg), "run_id": resume.run_id if resume else None,
        "tags": {**git_tags(), "task_name": cfg.task_name, "overrides": " ".join(job_overrides())}})
    if mlflow_loggers(loggers):
        callbacks.append(MLflowTracking(monitor=cfg.optimized_metric, checkpoint=best_checkpoint_callback(callbacks)))
    if cfg.trainer.get("enable_model_summary", True):  # ours instead of Lightning's (passed enable_model_summary=False)
        callbacks.append(NetworkSummary())
    # Built from a partial: Hydra would try to merge the loggers and callbacks into a config first.
    make_trainer = hydra.utils.instantiate(supported_trainer(cfg.trainer), _partial_=True, _convert_="partial")
    try:
        with lightning_noise_silenced():  # its litlogger tip comes with the Trainer
            trainer: pl.Trainer = make_trainer(callbacks=callbacks, logger=loggers, enable_model_summary=False,
                                               plugins=[DiskFullNamedCheckpointIO()])
    except (MisconfigurationException, ValueError, ModuleNotFoundError) as error:  # Lightning's own argument checks
        raise ConfigError(f"trainer: {error}") from error
    return datamodule, model, trainer


def train(run: RunOptions) -> RunResult:
    """Train and (unless ``test_after_fit`` is false) test, as the checked ``run`` says; with
    ``ckpt_path`` set, resume that checkpoint's run (see :mod:`lungexp.training.resume`)."""
    resume = prepare_resume(run)
    if resume is not None:
        run = replace(run, config=_checkpoint_next_to(run.config, resume.checkpoint))
        log.info("Resuming %s (MLflow run %s)", resume.checkpoint, resume.run_id or "new")
    cfg = run.config
    datamodule, model, trainer = build(run, resume)
    # sweep_job_ranks checks first that this job can start its ranks, before the MLflow run exists.
    with (stopped_by_sigterm(trainer) as fit, sweep_job_ranks(trainer), lightning_noise_silenced(),
          run_ends_when_done(trainer.loggers)):
        if resume is None or resume.run_id is None:  # a continued run keeps the params of its first start
            # trainer.loggers: fast_dev_run swaps loggers for a no-op one
            log_config(trainer.loggers, with_values(cfg, {"trainer": supported_trainer(cfg.trainer)}))
        if resume is not None:
            log_tags(trainer.loggers, {**resume.tags(), "resume.overrides": " ".join(job_overrides())})
        # weights_only: our checkpoints hold only tensors and plain containers.
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None, weights_only=True)
        fit.record(trainer)
        optimized = _optimized_metric(trainer, cfg.optimized_metric)
        metrics = _scalars(trainer)
        best = best_checkpoint_callback(trainer.checkpoint_callbacks)
        checkpoint = best.best_model_path if best else ""
        if cfg.test_after_fit:
            # verbose=False: no table of Lightning's own; the summary below gives each metric once, with its interval
            trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint or None, weights_only=True, verbose=False)
            metrics.update(_scalars(trainer))
    mlflow = next(iter(mlflow_loggers(trainer.loggers)), None)
    run_id = mlflow.run_id if mlflow else None
    result = RunResult(
        optimized_metric=optimized,
        metrics=metrics,
        best_checkpoint=checkpoint or None,
        mlflow_run_id=run_id,
        # The logger's MlflowClient; only rank 0 has an MLflow logger (see instantiate_loggers).
        mlflow_tracking_uri=mlflow.experiment.tracking_uri if mlflow is not None and run_id else None,
        test_predictions=_test_report(trainer).predictions if cfg.test_after_fit else None,
    )
    _print_summary(result, cfg.optimized_metric)
    return result


class _NoLightningNoise(logging.Filter):
    """Drops Lightning's advertisements (``💡 Tip: ... try installing [litlogger] ...``, and the same for
    litmodels) and its restating of the default ``limit_*_batches=1.0``, logged as info by every Trainer:
    Lightning has no switch for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(LIGHTNING_TIP) or ALL_BATCHES.match(message))


@contextmanager
def lightning_noise_silenced() -> Iterator[None]:
    """Inside: two warnings Lightning gives on every fit and test and its info noise, none of which says anything about
    this run. Scoped here, not process-wide, so a notebook or another library keeps its own warnings and logs."""
    noise = _NoLightningNoise()
    lightning_log.addFilter(noise)
    with warnings.catch_warnings():
        # pytorch_lightning 2.6 on torch 2.13: its own use of torch's pytree API.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
        # Given whenever a module overrides this hook and a datamodule is given, even one that does not
        # override it (NoduleDataModule does not): the module's hook is the one meant.
        warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule`")
        try:
            yield
        finally:
            lightning_log.removeFilter(noise)


@dataclass
class FitOutcome:
    """Filled in once ``fit`` has returned: the test that follows restores the callbacks' states from the best
    checkpoint, where the last checkpoint may not be recorded yet."""

    done: bool = False
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None

    def record(self, trainer: pl.Trainer) -> None:
        best = best_checkpoint_callback(trainer.checkpoint_callbacks)
        self.done, self.last_checkpoint = True, last_checkpoint_path(trainer)
        self.best_checkpoint = best.best_model_path if best else None


@contextmanager
def stopped_by_sigterm(trainer: pl.Trainer) -> Iterator[FitOutcome]:
    """End a run that SIGTERM stopped (a batch system pre-empting the job) as a failure, not a success.

    Lightning finishes the current batch and raises ``SIGTERMException``, a ``SystemExit`` with status 0,
    after marking the MLflow run FAILED; here the run is marked KILLED instead and :class:`Terminated`
    (exit status 143) says where it stopped and how to go on. The block records its fit in the yielded
    :class:`FitOutcome`, so a stop while testing names the right checkpoints.
    """
    fit = FitOutcome()
    try:
        yield fit
    except SIGTERMException:
        runs = mlflow_loggers(trainer.loggers)
        for logger in runs:
            logger.experiment.set_tag(logger.run_id, ENDED_BY_TAG, "SIGTERM; marked KILLED by the run itself")
            logger.experiment.set_terminated(logger.run_id, status="KILLED")
        if not fit.done:
            last = last_checkpoint_path(trainer)
            where = f"by SIGTERM in epoch {trainer.current_epoch + 1} (step {trainer.global_step})"
            then = (f"resume with the same command and ckpt_path={last} (or ckpt_path=last)" if last else
                    "no checkpoint was saved yet: run it again")
        else:
            last = fit.last_checkpoint
            where = f"by SIGTERM while testing, after {trainer.current_epoch} epoch(s) (step {trainer.global_step})"
            then = "its training is complete: " + (
                f"resume with the same command and ckpt_path={last} (or ckpt_path=last) to test it in its MLflow run"
                if last and runs else f"test it with `python -m lungexp.evaluate ckpt_path={fit.best_checkpoint}`")
        raise Terminated(where, then, last) from None


def _checkpoint_next_to(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """``cfg`` with every checkpoint callback pointed at ``checkpoint``'s folder: Lightning restores a
    callback's best-so-far only when its folder is unchanged."""
    return with_values(cfg, {f"callbacks.{name}.dirpath": str(checkpoint.parent)
                             for name, node in (cfg.get("callbacks") or {}).items()
                             if isinstance(node, DictConfig) and "dirpath" in node})


def _test_report(trainer: pl.Trainer) -> TestReport:
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector, undeclared
    return next(callback for callback in callbacks if isinstance(callback, TestReport))


def _scalars(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def _optimized_metric(trainer: pl.Trainer, name: str) -> float | None:
    """Best monitored value if a checkpoint callback tracked it, else the last logged value."""
    callback = best_checkpoint_callback(trainer.checkpoint_callbacks)
    if callback is not None and callback.monitor == name and callback.best_model_score is not None:
        return float(callback.best_model_score)
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


@rank_zero_only
def _print_summary(result: RunResult, optimized: str) -> None:
    """The run's console summary: each test metric once with its interval, the best value of ``optimized`` (the
    checkpoint's metric, e.g. val/auroc), where the checkpoint and the MLflow run are."""
    tested = {k: v for k, v in result.metrics.items() if k.startswith("test/")}
    width = max([22, *map(len, summary_names(whole_split_metrics(tested)))])
    lines = metric_lines(tested, width)
    if result.optimized_metric is not None:
        lines.append(f"  {f'best {optimized}':<{width}} {result.optimized_metric:.3f}")
    lines.append(f"  {'best checkpoint':<{width}} {result.best_checkpoint or '(none saved)'}")
    if result.mlflow_run_id:
        lines.append(f"  {'MLflow run id':<{width}} {result.mlflow_run_id}")
        lines.append(f"  {'MLflow tracking URI':<{width}} {result.mlflow_tracking_uri}")
        lines.append(f"  {'Open the MLflow UI:':<{width}} make mlflow-ui   (then http://127.0.0.1:5000)")
    print_summary("Results", lines)
