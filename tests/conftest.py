"""Shared fixtures: a tiny generated dataset, one MLflow store per session, real composed configs.

Helpers that are not fixtures live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from omegaconf import DictConfig

from tests.helpers.cli import entry_point_env
from tests.helpers.config import (
    PROJECT_ROOT,
    TINY_NETS,
    TINY_SYNTHETIC,
    compose_config,
    mlflow_overrides,
    tiny_data_overrides,
)
from tests.helpers.fork_server import ForkServer


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (``make test``), each of the N workers and the processes it starts use
    cores/N threads, so the workers share the cores instead of each oversubscribing all of them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated LUNA16-format dataset, made once per test session."""
    from lungexp.data.synthetic import generate_luna16_dataset

    root = tmp_path_factory.mktemp("synthetic") / "luna16"
    generate_luna16_dataset(root, **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_SYNTHETIC.items()})
    return root


@pytest.fixture(scope="session")
def nifti_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset as a user's own data: flat ``<uid>.nii.gz`` files and a ``points.csv``."""
    import pandas as pd
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("nifti")
    for mhd in synthetic_root.glob("subset*/*.mhd"):
        sitk.WriteImage(sitk.ReadImage(str(mhd)), str(root / f"{mhd.stem}.nii.gz"))
    points = pd.read_csv(synthetic_root / "candidates_V2.csv").rename(columns={"class": "label"})
    points.to_csv(root / "points.csv", index=False)
    return root


@pytest.fixture(scope="session")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the session: creating a SQLite store runs its migrations (~5 s)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def make_config(tmp_path: Path, synthetic_root: Path, mlflow_dir: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, model="cnn3d")``: a real composed config on the tiny dataset."""
    cache_dir = synthetic_root.parent / "cache"

    def make(*overrides: str, model: str = "cnn3d") -> DictConfig:
        return compose_config([f"model={model}", *TINY_NETS[model], *tiny_data_overrides(synthetic_root, cache_dir),
                               *mlflow_overrides(mlflow_dir), *overrides], tmp_path)

    return make


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, mlflow_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CNN trained for 2 epochs on the tiny dataset and tested, logged to the session's MLflow store;
    its checkpoints serve the evaluate and predict tests."""
    from lungexp.config.check import check
    from lungexp.training.pipeline import train

    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"],
                          *tiny_data_overrides(synthetic_root, synthetic_root.parent / "cache"),
                          *mlflow_overrides(mlflow_dir), "trainer.max_epochs=2", "callbacks.lr_monitor=null",
                          "task_name=trained_for_inference"], tmp_path_factory.mktemp("trained"))
    return train(check(cfg, "run"))


@pytest.fixture(scope="session")
def tiny_cv(synthetic_root: Path, mlflow_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 3-fold cross-validation (1 epoch a fold) logged to the session's MLflow store, with its fold checkpoints
    recorded on the parent run, on the tiny dataset less subset 4, held out for the fold ensemble's tests."""
    from tests.helpers.config import cross_validate_tiny

    return cross_validate_tiny(tmp_path_factory.mktemp("tiny_cv"), synthetic_root, mlflow_dir)


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """Entry points run as forked children of one warm process (``run_entry_point(..., fork_server=...)``), for
    the tests that check what a run prints and returns rather than the process itself; it imports in the
    background from here on."""
    folder = tmp_path_factory.mktemp("fork_server")
    server = ForkServer(folder / "socket", entry_point_env(folder), PROJECT_ROOT)
    yield server
    server.close()


@pytest.fixture
def restored_uris() -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs are put back after the test."""
    previous, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous_registry)
