"""The Lightning logger behind ``logger=mlflow``: Lightning's ``MLFlowLogger`` plus lungexp's run conventions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from lungexp.tracking.runs import ensure_experiment, process_tags, sweep_parent_run_id

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
        run_id: continue this existing run (resume): it is set back to RUNNING and re-tagged with
            this process.
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

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._initialized:
            return self._mlflow_client
        if not self._resumed:
            self._experiment_id = ensure_experiment(self._mlflow_client, self._experiment_name,
                                                    self._artifact_location)
            self.tags = {**process_tags(), **(self.tags or {})}
        client = MLFlowLogger.experiment.fget(self)
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
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        super().finalize(status)

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri


def build_loggers(cfg: DictConfig, run_kwargs: Mapping[str, Any]) -> list[Logger]:
    """Instantiate every logger of ``cfg.logger``; MLflow loggers also get ``run_kwargs`` (run name,
    tags, run id) where their config leaves them unset."""
    loggers: list[Logger] = []
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        extra: dict[str, Any] = {}
        if issubclass(get_class(node._target_), MLFlowLogger):
            extra = {key: value for key, value in run_kwargs.items() if node.get(key) is None}
            if "tags" in run_kwargs:
                extra["tags"] = {**run_kwargs["tags"], **(node.get("tags") or {})}
        loggers.append(instantiate(node, **extra, _convert_="partial"))
    return loggers
