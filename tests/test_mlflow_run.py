"""One training run as MLflow records it: name, params, best metric, provenance, dataset, model, system metrics."""

from __future__ import annotations

from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from lungexp.config.check import check
from lungexp.tracking.runs import fluent_api_on
from lungexp.training.pipeline import train


@pytest.mark.slow
def test_run_records_best_metric_provenance_dataset_and_loadable_model(make_config, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's module-level API would write a model to ./mlruns of the working folder
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Sampled often and logged at once: a 2-epoch tiny run can end within a second on a quiet machine.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    cfg = make_config("trainer.max_epochs=2", "logger.mlflow.log_model=true", "logger.mlflow.log_system_metrics=true",
                      "aug=none")
    result = train(check(cfg, "run"))

    client = MlflowClient(cfg.logger.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.run_name.startswith("train model=cnn3d widths=[4,8] ")
    assert run.data.params["model"] == "cnn3d" and run.data.params["aug"] == "none"
    assert run.data.metrics["best/val_auroc"] == pytest.approx(result.optimized_metric)
    history = client.get_metric_history(run.info.run_id, "val/auroc")
    assert max(m.value for m in history) == pytest.approx(result.optimized_metric)
    assert run.data.metrics["best/epoch"] in (0, 1)
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert len(tags["config.hash"]) == 12 and tags["lungexp.host"] and tags["lungexp.pid"]
    assert [m.key for m in client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")]

    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == f"{Path(cfg.data.root).name} (candidates)" and dataset_input.dataset.digest
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert (Path(cfg.data.cache_dir) / tags["data.fingerprint"] / "meta.json").is_file()  # the patch-cache key

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"roc_curve.png", "confusion_matrix.png", "config.yaml"} <= artifacts
    assert not (tmp_path / "mlruns").exists()  # the model is in the run's store, not in ./mlruns
    with fluent_api_on(client):
        model = mlflow.pytorch.load_model(tags["model.uri"])
    example = torch.rand(2, 1, 16, 16, 16)
    reference = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    with torch.no_grad():
        assert np.isfinite(model(example).numpy()).all()
