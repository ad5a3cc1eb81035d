"""MLflow runs that say what they are: names, the enclosing sweep, bookkeeping tags, nested runs.

Building blocks for every entry point that creates runs (training, a sweep's parent, a
cross-validation parent and its folds):

- :func:`run_name` -- ``task_name`` plus what this job changes (``demo model=resnet3d aug=none``);
- :func:`sweep_parent_run_id` -- the run of the ``-m`` sweep this process is a job of, if any;
- :func:`create_run` -- a run (nested under ``parent_run_id`` if given) in an experiment that
  :func:`ensure_experiment` creates with the tag that opens MLflow's model-training view;
- every run it creates carries :func:`~lungexp.tracking.stale_runs.process_tags`, so a run whose
  process died is recognised (and marked KILLED) by the next run;
- :func:`retried_after_lost_race` -- a write that parallel jobs of one store may race to make (the same
  experiment, the same dataset), done again when another job made it first.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import mlflow
from hydra.core.hydra_config import HydraConfig
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig

from lungexp.tracking.server import check_server_access, is_tracking_server
from lungexp.tracking.stale_runs import process_tags

# Set by lungexp.tracking.sweep.MLflowSweepCallback for the jobs of a `-m` sweep.
SWEEP_RUN_ID_ENV = "LUNGEXP_SWEEP_RUN_ID"
SWEEP_KEYS_ENV = "LUNGEXP_SWEEP_KEYS"
# MLflow's own experiment tag: "custom_model_development" is its "Model training" kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# Overrides that locate or label a run rather than change it: never part of a run name.
NOT_IN_NAME = ("paths.", "logger.", "hydra.", "task_name", "experiment_name", "ckpt_path", "extend_finished",
               "data.root", "data.cache_dir", "hparams_search")
MAX_NAME_LENGTH = 120
RACE_ATTEMPTS = 3  # a lost race is over after one more attempt; a third covers a second parallel job
_FLOAT = re.compile(r"^-?\d+\.\d{4,}(e-?\d+)?$|^-?\d+(\.\d+)?e-?\d+$")

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def split_override(override: str) -> tuple[str, str]:
    """``+model.loss.gamma=2`` -> its key and ``"2"``; ``~logger`` -> ``("logger", "")``."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def short_value(value: str) -> str:
    """Long floats (as Optuna samples them) to 3 significant digits: ``0.0012345678`` -> ``0.00123``."""
    return f"{float(value):.3g}" if _FLOAT.match(value) else value


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last component where that is unambiguous (``model.optimizer.lr`` -> ``lr``)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: tail if last.count(tail) == 1 else key for key, tail in zip(keys, last, strict=True)}


def describe_overrides(overrides: Iterable[str], keys: Iterable[str] | None = None) -> str:
    """``model=resnet3d aug=none lr=0.00123``: the overrides (only ``keys`` if given) that change a run."""
    pairs = [split_override(o) for o in overrides]
    pairs = [(k, v) for k, v in pairs if not k.startswith(NOT_IN_NAME) and (keys is None or k in keys)]
    names = short_keys([k for k, _ in pairs])
    return " ".join(f"{names[k]}={short_value(v)}" for k, v in pairs)


def job_overrides() -> list[str]:
    """This job's command-line overrides (with sweep values expanded); empty outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(cfg: DictConfig) -> str:
    """``task_name`` plus what this job changes: the swept overrides in a sweep, else all overrides
    except those that only locate things (paths, data.root, ...)."""
    swept = os.environ.get(SWEEP_KEYS_ENV)
    keys = swept.split(",") if sweep_parent_run_id() and swept else None
    overrides = [o for o in job_overrides() if o != f"experiment={cfg.task_name}"]  # the preset names the run
    name = " ".join(part for part in (str(cfg.task_name), describe_overrides(overrides, keys)) if part)
    return name if len(name) <= MAX_NAME_LENGTH else name[: MAX_NAME_LENGTH - 1] + "…"


def sweep_parent_run_id() -> str | None:
    """The MLflow run of the ``-m`` sweep this process runs a job of (None outside sweeps)."""
    return os.environ.get(SWEEP_RUN_ID_ENV) or None


@contextmanager
def fluent_api_on(client: MlflowClient) -> Iterator[None]:
    """MLflow's module-level API (``mlflow.pytorch.log_model``, which takes a run id but no store) writes to
    ``client``'s store while inside: it writes to the process-wide URI, which in a run that only made its own
    client is ``./mlruns`` of the working folder, away from the run. The URI (and ``MLFLOW_TRACKING_URI``,
    which MLflow sets with it) is restored after."""
    variable = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None (typed otherwise) unsets it and the variable
        if variable is not None:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if needed, tagged to open in MLflow's model-training view.

    ``artifact_location`` applies to a store on this machine (SQLite); a tracking server keeps a new
    experiment's artifacts where it was told (its ``--artifacts-destination``), since a folder of this
    machine would hide a team's artifacts from everyone else. A server that does not let this user write
    there is one message (:func:`~lungexp.tracking.server.check_server_access`).
    """
    if is_tracking_server(client.tracking_uri):
        artifact_location = None
        check_server_access(client, name)  # a sweep's or cross-validation's parent run is created next
    return retried_after_lost_race(lambda: _experiment_id(client, name, artifact_location), f"experiment {name!r}")


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def retried_after_lost_race(write: Callable[[], Result], what: str) -> Result:
    """``write()``, done again when the tracking store refused it because a parallel process (another job of a
    sweep) had just written the same row: the next attempt finds that row and uses it.

    MLflow looks such a row up and inserts it if missing in one transaction; two jobs that look at once both
    insert, and the second fails on the store's unique constraint (``IntegrityError: UNIQUE constraint failed``,
    or ``RESOURCE_ALREADY_EXISTS`` for an experiment). ``what`` names the row in the log.
    """
    for _ in range(RACE_ATTEMPTS - 1):
        try:
            return write()
        except MlflowException as error:
            if not _lost_race(error):
                raise
            log.info("Another process stored %s at the same moment; using theirs", what)
    return write()


def _lost_race(error: MlflowException) -> bool:
    """Whether the store refused a row because the same one exists (a unique constraint: SQLite, PostgreSQL and
    MySQL name it so in SQLAlchemy's ``IntegrityError``, which a tracking server passes on as text)."""
    text = str(error).lower()
    return (error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS) or "integrityerror" in text
            or "unique constraint" in text)


def create_run(client: MlflowClient, experiment_id: str, name: str, *, parent_run_id: str | None = None,
               tags: Mapping[str, str] | None = None) -> str:
    """A new RUNNING run, nested under ``parent_run_id`` if given (MLflow's ``mlflow.parentRunId`` tag);
    returns its id, e.g. for ``MLFlowLogger(run_id=...)``."""
    all_tags = {**process_tags(), **(tags or {}), MLFLOW_RUN_NAME: name}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    return client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id
