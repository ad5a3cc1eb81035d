"""What goes to MLflow: params vs tags, run names, the sweep results table (no training here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from lungexp.tracking.artifacts import figure_artifact_name
from lungexp.tracking.params import compact_transform, config_hash, group_choices, split_config
from lungexp.tracking.run_predictions import read_table_artifact
from lungexp.tracking.runs import (
    EXPERIMENT_KIND_TAG,
    MAX_NAME_LENGTH,
    MODEL_TRAINING_KIND,
    SWEEP_KEYS_ENV,
    SWEEP_RUN_ID_ENV,
    create_run,
    describe_overrides,
    ensure_experiment,
    run_name,
    short_value,
)
from lungexp.tracking.sweep_results import SHARED_VIEW_TAG, report_sweep


def test_each_setting_is_one_param_and_paths_are_tags(make_config) -> None:
    params, tags = split_config(make_config("aug=light"))
    assert params["aug.train"].startswith("RandomFlip(axes=[0,1,2],flip_probability=0.5) | RandomAffine(")
    assert not [k for k in params if k.startswith(("aug.train.", "data.train_transform", "paths.", "logger."))]
    assert "data.split.seed" not in params and "model.net.in_channels" not in params  # `${seed}`, `${data...}`
    assert params["seed"] == "42" and params["model.net.widths"] == "[4,8]" and params["data.num_workers"] == "0"
    assert not [v for v in params.values() if v.startswith("/") or "://" in v]
    assert {"data.root", "paths.output_dir", "task_name", "callbacks.model_checkpoint.dirpath"} <= set(tags)
    assert not any(k.startswith("_") or "._" in k and "_target_" not in k for k in params)


def test_config_hash_ignores_paths_and_follows_settings(make_config) -> None:
    first, second = (config_hash(split_config(make_config())[0]) for _ in range(2))  # two output folders
    assert first == second
    assert config_hash(split_config(make_config("model.optimizer.lr=0.01"))[0]) != first


def test_group_choices_are_params(make_config) -> None:
    make_config("aug=none", model="resnet3d")
    choices = group_choices()
    assert {"model": "resnet3d", "aug": "none", "data": "synthetic", "trainer": "default"}.items() <= choices.items()
    assert not [group for group in choices if group.startswith("hydra/") or group in ("logger", "paths")]


def test_compact_transform_reads_like_the_config() -> None:
    node = {"_target_": "torchio.Compose", "transforms": [
        {"_target_": "torchio.RandomFlip", "axes": [0, 1, 2]}, {"_target_": "torchio.RandomNoise", "std": 0.1}]}
    assert compact_transform(node) == "RandomFlip(axes=[0,1,2]) | RandomNoise(std=0.1)"


def test_run_name_says_what_the_job_changes(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWEEP_RUN_ID_ENV, raising=False)
    name = run_name(make_config("aug=none", model="resnet3d"))  # the tests' many overrides: a long name
    assert name.startswith("train model=resnet3d depth=10 widths=[4,8,8,8] ") and len(name) == MAX_NAME_LENGTH
    assert "root" not in name and "mlflow" not in name  # paths and data.root are left out
    monkeypatch.setenv(SWEEP_RUN_ID_ENV, "parent")
    monkeypatch.setenv(SWEEP_KEYS_ENV, "aug,model,model.optimizer.lr")
    assert run_name(make_config("aug=none", "model.optimizer.lr=0.00123456", model="resnet3d")) == \
        "train model=resnet3d aug=none lr=0.00123"


def test_override_descriptions() -> None:
    assert describe_overrides(["+model.loss.gamma=2", "data.root=/x", "model.net.widths=[8,16]"]) == \
        "gamma=2 widths=[8,16]"
    assert short_value("0.000123456789") == "0.000123" and short_value("3") == "3" and short_value("1e-05") == "1e-05"


def test_figures_go_to_the_artifact_root() -> None:
    assert figure_artifact_name("plots/roc_curve.png") == "roc_curve.png"
    assert figure_artifact_name("plots/test/froc.png") == "test_froc.png"
    assert figure_artifact_name("calibration.png") == "calibration.png"


def test_sweep_results_logs_table_best_child_and_view(mlflow_dir: Path, capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment_id = ensure_experiment(client, "sweep_results_test", str(mlflow_dir / "artifacts"))
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    parent = create_run(client, experiment_id, "train sweep aug=none,light")
    for aug, auroc in (("none", 0.61), ("light", 0.72)):
        child = create_run(client, experiment_id, f"train aug={aug}", parent_run_id=parent)
        client.log_param(child, "aug", aug)
        client.log_metric(child, "best/val_auroc", auroc)
        client.log_metric(child, "best/epoch", 3)
        client.set_terminated(child)

    table = report_sweep(client, experiment_id, parent, ["aug"], "val/auroc", "max", "sqlite:///x")

    assert list(table["aug"]) == ["light", "none"]  # best first
    run = client.get_run(parent)
    assert run.data.tags["best.run_name"] == "train aug=light" and run.data.metrics["best/val_auroc"] == 0.72
    assert {"sweep_results.csv", "sweep_results.png"} <= {a.path for a in client.list_artifacts(parent)}
    csv = pd.read_csv(client.download_artifacts(parent, "sweep_results.csv", str(mlflow_dir / "dl")))
    assert list(csv["run"]) == ["train aug=light", "train aug=none"]
    view = json.loads(client.get_experiment(experiment_id).tags[SHARED_VIEW_TAG + parent])
    assert view["selectedColumns"][0] == "params.`aug`" and parent in view["searchFilter"]
    out = capsys.readouterr().out
    assert "train aug=light" in out and "0.7200" in out and f"viewStateShareKey={parent}" in out


def test_a_table_artifact_is_read_back_as_logged_without_a_progress_bar(
        mlflow_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's table reads one CSV per job: MLflow's progress bar for each buried the results table."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("tables") or client.get_experiment(client.create_experiment(
        "tables", artifact_location=str(mlflow_dir / "artifacts" / "tables")))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    table = pd.DataFrame({"seriesuid": ["1.3.6.1.4.1.14519.5.2.1.6279.6001.10", "007"], "probability": [0.25, 0.5]})
    table.to_csv(tmp_path / "t.csv", index=False)
    client.log_artifact(run_id, str(tmp_path / "t.csv"), "predictions")
    capfd.readouterr()
    read = read_table_artifact(client, run_id, "predictions/t.csv")
    pd.testing.assert_frame_equal(read, table)  # series ids stay text: "007" and long UIDs unchanged
    assert "Downloading artifacts" not in capfd.readouterr().err
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # put back as it was
