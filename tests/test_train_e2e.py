"""The default experiment, shrunk, end to end through `python -m lungexp.run`, and reproducibility.

Sweeps (`-m`) are tested in test_sweep_ui.py, resuming a killed run in test_resume.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.training.pipeline import train
from tests.helpers.config import FAST_OVERRIDES, PROJECT_ROOT, TINY_NETS, tiny_synthetic_overrides


@pytest.mark.slow
def test_demo_experiment_end_to_end(tmp_path: Path) -> None:
    """`python -m lungexp.run experiment=demo` generates data, trains, tests and logs one FINISHED MLflow run."""
    command = [sys.executable, "-m", "lungexp.run", "experiment=demo", "trainer.max_epochs=2",
               *tiny_synthetic_overrides(), *FAST_OVERRIDES, *TINY_NETS["cnn3d"]]
    env = {**os.environ, "LUNGEXP_ROOT": str(tmp_path)}
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "test/auroc" in proc.stdout
    assert "MLflow run id" in proc.stdout and "make mlflow-ui" in proc.stdout

    assert (tmp_path / "data" / "synthetic_luna16" / "candidates_V2.csv").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("lungexp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("demo max_epochs=2 ")  # the preset, then what the command changes
    for name in ("test/auroc", "test/accuracy", "test/sensitivity", "test/specificity", "test/f1", "val/auroc"):
        assert name in run.data.metrics, f"{name} missing from {sorted(run.data.metrics)}"
    assert 0.0 <= run.data.metrics["test/auroc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"roc_curve.png", "confusion_matrix.png"} <= artifacts  # at the root: the compare page shows them
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "predictions/test_predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    local = Path(client.download_artifacts(run.info.run_id, "roc_curve.png", str(tmp_path / "dl")))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = list((tmp_path / "logs" / "demo" / "runs").glob("*/checkpoints/*.ckpt"))
    assert checkpoints, "no checkpoint written"


@pytest.mark.slow
def test_same_seed_gives_identical_test_metrics(make_config) -> None:
    overrides = ("trainer.max_epochs=2", "trainer.deterministic=true", "~logger", "callbacks.lr_monitor=null")
    first = train(check(make_config(*overrides), "run"))
    second = train(check(make_config(*overrides), "run"))
    test_metrics = {k: v for k, v in first.metrics.items() if k.startswith("test/")}
    assert test_metrics
    assert test_metrics == {k: v for k, v in second.metrics.items() if k.startswith("test/")}
