"""Real DDP: two CPU processes (gloo) from `python -m lungexp.run trainer=ddp`, in a subprocess.

Lightning's ddp launcher re-runs the command once per rank, so it cannot run inside pytest itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.helpers.config import FAST_OVERRIDES, PROJECT_ROOT, TINY_NETS


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_test(synthetic_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lungexp.run", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.sync_batchnorm=false",  # SyncBatchNorm needs CUDA
               "trainer.max_epochs=1", "task_name=ddp", f"data.root={synthetic_root}", "data.synthetic=null",
               f"data.cache_dir={synthetic_root.parent / 'cache'}", *FAST_OVERRIDES, *TINY_NETS["cnn3d"]]
    env = {**os.environ, "LUNGEXP_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "distributed_backend=gloo" in output
    assert "All distributed processes registered. Starting with 2 processes" in output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lungexp").experiment_id])
    assert len(runs) == 1, "only rank 0 may create an MLflow run"
    assert runs[0].info.status == "FINISHED"
    assert "test/auroc" in runs[0].data.metrics
    # the predictions table gathers both ranks' halves of the test split (subset0)
    predictions = pd.read_csv(client.download_artifacts(runs[0].info.run_id, "predictions/test_predictions.csv",
                                                        str(tmp_path / "downloaded")))
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv")
    test_series = {p.stem for p in (synthetic_root / "subset0").glob("*.mhd")}
    assert len(predictions) == candidates["seriesuid"].isin(test_series).sum()
    assert predictions["cache_row"].is_unique and set(predictions["seriesuid"]) == test_series
