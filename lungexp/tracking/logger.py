"""The Lightning logger behind ``logger=mlflow``: Lightning's ``MLFlowLogger`` plus lungexp's run conventions."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pytorch_lightning.loggers import Logger, MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lungexp.tracking.runs import ensure_experiment, sweep_parent_run_id
from lungexp.tracking.stale_runs import process_tags

log = logging.getLogger(__name__)


class RunLogger(MLFlowLogger):
    """``MLFlowLogger`` whose runs open in MLflow's model-training view, nest under the enclosing sweep
    and can be continued after a crash.

    Args (besides ``MLFlowLogger``'s):
        log_model: ``True`` logs the best checkpoint as an MLflow model (``mlflow.pytorch``, loadable
            with ``mlflow.pytorch.load_model``) at the end of fit, see
            :class:`~lungexp.tracking.callback.MLflowTracking`. Lightning's upload of raw checkpoint
            files is not used.
        log_system_metrics: sample CPU, memory, disk, network (and GPU) as ``system/*`` metrics while
            the run is open (MLflow's system-metrics monitor; every 10 s, or
            ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``).
        parent_run_id: nest the new run under this run; default: the run of the ``-m`` sweep this job
            belongs to (:func:`~lungexp.tracking.runs.sweep_parent_run_id`).
        run_id: continue this existing run (a resume, or a run created beforehand such as a
            cross-validation fold): it is set (back) to RUNNING and tagged with this process, so
            :mod:`~lungexp.tracking.stale_runs` sees a live owner.
    """

    def __init__(self, *, log_model: bool = False, log_system_metrics: bool = False,
                 parent_run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(log_model=False, **kwargs)
        self.log_best_model = bool(log_model)
        self.log_system_metrics = log_system_metrics
        self._resumed = kwargs.get("run_id") is not None
        parent = parent_run_id or sweep_parent_run_id()
        if parent and not self._resumed:
            self.tags = {**(self.tags or {}), "mlflow.parentRunId": parent}
        self._system_metrics: Any = None
        self.held_open = False  # see run_ends_when_done

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        if not self._resumed:
            self._experiment_id = ensure_experiment(self._mlflow_client, self._experiment_name,
                                                    self._artifact_location)
        client = super().experiment
        if self._resumed:
            client.update_run(self._run_id, status="RUNNING")
            for key, value in process_tags().items():
                client.set_tag(self._run_id, key, value)
        if self.log_system_metrics:
            self._start_system_metrics()
        return client

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system_metrics = SystemMetricsMonitor(self._run_id, resume_logging=self._resumed,
                                                    tracking_uri=self._tracking_uri)
        self._system_metrics.start()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "success" and self.held_open:
            return  # the end of one stage of several (see run_ends_when_done)
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        super().finalize(status)


@contextmanager
def run_ends_when_done(loggers: Iterable[Logger]) -> Iterator[None]:
    """The MLflow runs of ``loggers`` end FINISHED when the block is done, not when a stage inside it ends.

    Lightning ends a logger's run after every ``fit`` and every ``test``, so a run tested after training was
    FINISHED before its test started, and a process killed while testing left it FINISHED without test metrics.
    Inside the block a stage that ends well leaves the run RUNNING (a killed process leaves it so, and the next
    run's stale-run sweep marks it KILLED); a failure ends it FAILED, as Lightning does, and so does an exception
    that leaves the block.
    """
    held = [logger for logger in loggers if isinstance(logger, RunLogger)]
    for logger in held:
        logger.held_open = True
    try:
        yield
    except BaseException:
        _end_runs(held, "failed")
        raise
    _end_runs(held, "success")


def _end_runs(loggers: list[RunLogger], status: str) -> None:
    for logger in loggers:
        logger.held_open = False
        logger.finalize(status)
