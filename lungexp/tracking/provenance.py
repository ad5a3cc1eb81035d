"""Where a run came from: the code (git commit, dirty tree) and the data (patch-cache fingerprint, dataset)."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (uncommitted changes to tracked files) of the code that runs;
    empty when it does not run from a git checkout."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(changes)).lower()}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


DATA_FINGERPRINT_TAG = "data.fingerprint"


def data_fingerprint(datamodule: Any) -> str | None:
    """The datamodule's data fingerprint (for ours the patch-cache key), once it is set up."""
    return getattr(datamodule, "fingerprint", None)


def log_dataset(client: MlflowClient, run_id: str, datamodule: Any, context: str = "training") -> None:
    """The datamodule's sample table (patches and labels) as the run's MLflow dataset input (named after
    the data folder and task; its digest is MLflow's hash of the table), plus the patch-cache key as the
    ``data.fingerprint`` tag."""
    fingerprint = data_fingerprint(datamodule)
    samples = getattr(getattr(datamodule, "cache", None), "index", None)
    if fingerprint is None or samples is None:
        return
    client.set_tag(run_id, DATA_FINGERPRINT_TAG, fingerprint)
    options = datamodule.options
    with warnings.catch_warnings():  # MLflow's hints on integer columns and on two local-source classes
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(samples, source=str(Path(options.root).resolve()), targets="label",
                                          name=f"{Path(options.root).name} ({options.task})")
        entity = dataset._to_mlflow_entity()  # the public client API takes entities
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)])
