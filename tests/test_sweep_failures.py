"""A failed job of a ``-m`` sweep ends only itself: the other jobs run, the failed job's MLflow run is FAILED
with its error, the sweep's parent run is closed FAILED and the sweep exits 1 -- for grid and Optuna sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.helpers.cli import run_entry_point
from tests.helpers.config import tiny_run_overrides

BAD_LR = "error: model.optimizer.lr=0 must be positive"
QUICK = ["trainer.max_epochs=1", "test_after_fit=false"]


def _sweep_runs(root: Path) -> tuple[Run, list[Run]]:
    """The sweep's parent run and its jobs' runs, from the MLflow store under ``root``."""
    client = MlflowClient(f"sqlite:///{root}/mlflow/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def _check_one_failed(root: Path, output: str, failed_lr: str, good_lr: str) -> None:
    parent, jobs = _sweep_runs(root)
    assert parent.info.status == "FAILED", output[-3000:]  # closed, not left RUNNING
    by_lr = {job.data.params.get("model.optimizer.lr"): job for job in jobs}
    assert set(by_lr) == {failed_lr, good_lr}, output[-3000:]
    failed, good = by_lr[failed_lr], by_lr[good_lr]
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith(BAD_LR.removeprefix("error: "))
    assert "lr=0" in failed.info.run_name
    assert good.info.status == "FINISHED" and "best/val_auroc" in good.data.metrics
    assert "1 of 2 jobs of the sweep failed" in output and "Sweep results: 2 runs" in output


@pytest.mark.slow
def test_a_failed_job_ends_only_itself(synthetic_root: Path, tmp_path: Path) -> None:
    """The bad job runs first; the good one still runs after it."""
    args = ["-m", "model.optimizer.lr=0,0.001", "task_name=failing", *QUICK,
            *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path / "mlflow")]
    proc = run_entry_point("run", args, tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "Error executing job with overrides" in proc.stderr and BAD_LR in proc.stderr
    _check_one_failed(tmp_path, output, "0", "0.001")


@pytest.mark.slow
def test_optuna_goes_on_after_a_failed_trial(synthetic_root: Path, tmp_path: Path) -> None:
    """The trial that fails is told to the study as FAILed and the search goes on; the sweep still exits 1."""
    # Searching only lr, over {0, 0.001}: with this seed the first trial draws the bad 0, the second 0.001.
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "seed=10", "model.optimizer.lr=0,0.001",
            "model.optimizer.weight_decay=0", "model.net.dropout=0", "task_name=search", *QUICK,
            *tiny_run_overrides(synthetic_root, synthetic_root.parent / "cache", tmp_path / "mlflow")]
    proc = run_entry_point("run", args, tmp_path, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "Failed experiment" in output and BAD_LR in output  # the plugin's FAIL, with the job's message
    _check_one_failed(tmp_path, output, "0", "0.001")
    (results,) = (tmp_path / "logs" / "search" / "multiruns").glob("*/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_params"]["model.optimizer.lr"] == 0.001
