"""``python -m lungexp.evaluate``: a checkpoint re-evaluated with the training test stage's report, in a new run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from lungexp.config.checkpoint_groups import checkpoint_evaluation, data_config
from lungexp.data.patches.extraction import PatchSpec
from lungexp.inference.checkpoint_evaluation import TRAINING_RUN_TAG, evaluate_checkpoint
from lungexp.metrics.stratified import Strata, stratified_auroc
from lungexp.training.checkpoint import ModelRecipe
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import printed, run_entry_point
from tests.helpers.config import PROJECT_ROOT, compose_config, mlflow_overrides


def evaluate(trained_run, mlflow_dir: Path, root: Path, *overrides: str):
    overrides = (f"ckpt_path={trained_run.best_checkpoint}", "device=cpu", *mlflow_overrides(mlflow_dir), *overrides)
    return evaluate_checkpoint(checkpoint_evaluation(compose_config(overrides, root, config_name="evaluate"), overrides))


def test_evaluate_reproduces_the_training_test_stage_in_a_new_tagged_run(trained_run, mlflow_dir: Path,
                                                                        tmp_path: Path) -> None:
    result = evaluate(trained_run, mlflow_dir, tmp_path)

    trained = {k: v for k, v in trained_run.metrics.items() if k.startswith("test/") and k != "test/loss"}
    assert {"test/auroc", "test/cpm", "test/threshold", "test/at_threshold/sensitivity"} <= trained.keys()
    assert result.metrics.keys() == trained.keys()
    for name, value in trained.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-6), name

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_dir}/mlflow.db")
    run = client.get_run(result.mlflow_run_id)
    assert result.mlflow_run_id != trained_run.mlflow_run_id
    assert run.info.status == "FINISHED" and run.info.run_name.split()[0] == "evaluate"  # + its overrides
    assert run.data.tags[TRAINING_RUN_TAG] == trained_run.mlflow_run_id
    training = client.get_run(trained_run.mlflow_run_id)
    assert run.info.experiment_id == training.info.experiment_id  # side by side with the training run
    assert run.data.metrics["test/cpm"] == pytest.approx(training.data.metrics["test/cpm"], abs=1e-6)
    assert run.data.params["split"] == "test" and run.data.tags["ckpt_path"] == trained_run.best_checkpoint  # a path: tag
    plots = {a.path for a in client.list_artifacts(result.mlflow_run_id)}  # figures live at the artifact root
    assert {"roc_curve.png", "froc.png", "reliability_diagram.png", "worst_errors.png", "gradcam.png"} <= plots
    assert "predictions/test_predictions.csv" in {a.path for a in client.list_artifacts(result.mlflow_run_id,
                                                                                          "predictions")}


@pytest.mark.slow
def test_evaluate_on_validation_and_on_all_samples(trained_run, mlflow_dir: Path, tmp_path: Path) -> None:
    val = evaluate(trained_run, mlflow_dir, tmp_path, "split=val")
    # The best checkpoint was chosen by val/auroc: evaluating it on val gives that best value back.
    assert val.metrics["val/auroc"] == pytest.approx(trained_run.optimized_metric, abs=1e-6)

    everything = evaluate(trained_run, mlflow_dir, tmp_path, "split=all",
                          "eval.strata={column: coordZ, edges: [-1000, -200]}")
    test_rows = set(trained_run.test_predictions["cache_row"])
    assert test_rows < set(everything.predictions["cache_row"])
    assert everything.predictions["seriesuid"].nunique() == 10  # every scan of the tiny dataset
    assert math.isfinite(everything.metrics["all/cpm"])
    # eval.strata given on the command line, on a checkpoint trained without: the split's metrics within strata
    data = everything.predictions
    codes = Strata("coordZ", (-1000.0, -200.0)).codes(data["coordZ"], "all")
    assert everything.metrics["all/auroc_stratified"] == pytest.approx(
        stratified_auroc(data["label"], data["probability"], codes), abs=1e-6)
    assert everything.metrics["all/coordZ_-200-inf/positives"] == data["label"][codes == 1].sum()


def test_unknown_split_is_refused_before_any_work(trained_run, mlflow_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split='tets'.*did you mean 'test'"):
        evaluate(trained_run, mlflow_dir, tmp_path, "split=tets")
    with pytest.raises(ConfigError, match=r"eval\.strata\.column='diameter': the labels CSV .*candidates_V2\.csv "
                                          r"\(data\.labels_csv\) has no column 'diameter'"):
        evaluate(trained_run, mlflow_dir, tmp_path, "eval.strata={column: diameter, edges: [0, 6]}")


RECIPE = ModelRecipe(
    task="candidates", net={"_target_": "lungexp.models.CNN3D"}, patch=PatchSpec(size=16), hu_window=(-1000.0, 400.0),
    normalize="unit",
    data={"root": "/old/luna16", "labels_csv": "${data.root}/candidates_V2.csv", "task": "candidates",
          "patch": {"size": 16}, "split": {"method": "subsets", "fold": 0}},
)


@pytest.fixture
def evaluate_cfg(tmp_path: Path):
    return lambda *overrides: compose_config(["ckpt_path=x.ckpt", *overrides], tmp_path, config_name="evaluate")


def test_data_overrides_apply_to_the_stored_data_config(evaluate_cfg) -> None:
    overrides = ["data.root=/new/luna16", "data.split.fold=3"]
    data = OmegaConf.create({"data": data_config(evaluate_cfg(*overrides), RECIPE, overrides)})
    assert data.data.labels_csv == "/new/luna16/candidates_V2.csv"  # follows the new root
    assert data.data.split == {"method": "subsets", "fold": 3}
    assert data.data.patch == {"size": 16, "size_mm": None, "spacing_mm": [1.0], "pad_hu": -1000}


def test_a_data_option_replaces_the_stored_data_but_not_the_preprocessing(evaluate_cfg) -> None:
    overrides = ["data=nifti", "data.root=/mine"]
    data = data_config(evaluate_cfg(*overrides), RECIPE, overrides)
    assert (data["root"], data["task"], data["labels_csv"]) == ("/mine", "points", "${data.root}/points.csv")
    assert data["patch"]["size"] == 16 and data["train_transform"] is None


def test_the_demo_data_is_generated_only_where_the_command_does_not_name_another_root(evaluate_cfg) -> None:
    generated = {"root": "${paths.data_dir}/synthetic_luna16"}  # the stored root is the demo's: its generator runs
    assert data_config(evaluate_cfg(), replace(RECIPE, data={**RECIPE.data, **generated}), [])["synthetic"]
    moved = ["data.root=/data/LUNA16"]  # the user's dataset: never generated into, manifest or not
    assert data_config(evaluate_cfg(*moved), RECIPE, moved)["synthetic"] is None
    asked = ["data.root=data/heldout", "data.synthetic.seed=1"]  # unless the command sets up the generator itself
    assert data_config(evaluate_cfg(*asked), RECIPE, asked)["synthetic"]["seed"] == 1


def test_overriding_the_preprocessing_of_a_checkpoint_is_refused(evaluate_cfg) -> None:
    overrides = ["data.patch.size=32"]
    with pytest.raises(ConfigError, match=r"data\.patch\.size: the checkpoint fixes the preprocessing"):
        data_config(evaluate_cfg(*overrides), RECIPE, overrides)


@pytest.mark.slow
def test_evaluate_command_prints_the_summary_and_one_line_errors(trained_run, mlflow_dir: Path,
                                                                 tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lungexp.evaluate", "device=cpu", *mlflow_overrides(mlflow_dir)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LUNGEXP_ROOT": str(tmp_path)}
    done = subprocess.run([*command, f"ckpt_path={trained_run.best_checkpoint}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"training MLflow run id   {trained_run.mlflow_run_id}" in done.stdout
    assert "test/cpm" in done.stdout and "MLflow run id" in done.stdout

    failed = subprocess.run([*command, f"ckpt_path={tmp_path / 'none.ckpt'}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"error: {tmp_path / 'none.ckpt'}: checkpoint not found; check ckpt_path"


def test_an_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    from lungexp.config.schema import check_top_level

    cfg = compose_config(["ckpt_path=x.ckpt", "+ckpt_paht=y.ckpt"], tmp_path, config_name="evaluate")
    with pytest.raises(ConfigError, match="unknown top-level key 'ckpt_paht' \\(did you mean 'ckpt_path'\\?\\)"):
        check_top_level(cfg, "evaluate")


@pytest.mark.slow
def test_evaluate_a_cv_by_its_run_id_only_on_unseen_data_as_its_fold_checkpoints(tiny_cv, mlflow_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """``evaluate cv_run=ID``: refused on the CV's own data (every sample trained some fold), allowed with
    ``split=all`` on patients set aside before it, where it scores as ``ckpt_path=[the fold checkpoints]``."""
    common = ["split=all", "device=cpu", *mlflow_overrides(mlflow_dir)]
    parent = tiny_cv.result.parent_run_id

    leak = run_entry_point("evaluate", [f"cv_run={parent}", *common], tmp_path)
    assert leak.returncode == 1
    assert leak.stderr.startswith("error: the ensemble's members were trained on different splits of data.root=")
    assert f"data.labels_csv={tiny_cv.labels_csv}" in leak.stderr and "would leak" in leak.stderr

    heldout = f"data.labels_csv={tiny_cv.heldout_csv}"
    by_run = run_entry_point("evaluate", [f"cv_run={parent}", heldout, *common], tmp_path)
    assert by_run.returncode == 0, by_run.stderr[-3000:]
    assert "Evaluation of an ensemble of 3 checkpoints" in by_run.stdout
    heldout_rows = len(pd.read_csv(tiny_cv.heldout_csv))  # all of them: the folds' training cap does not apply
    assert f"on split 'all': {heldout_rows} patches" in by_run.stdout and "from 2 series" in by_run.stdout
    assert f"training MLflow run id   {parent}" in by_run.stdout
    by_files = run_entry_point("evaluate", [f"ckpt_path=[{','.join(map(str, tiny_cv.checkpoints))}]", heldout, *common],
                               tmp_path)
    assert by_files.returncode == 0, by_files.stderr[-3000:]

    client = MlflowClient(tracking_uri=tiny_cv.tracking_uri)
    metrics = [client.get_run(printed(r"\n  MLflow run id\s+([0-9a-f]{32})", done.stdout)).data.metrics
               for done in (by_run, by_files)]
    assert {"all/auroc", "all/cpm", "all/threshold"} <= metrics[0].keys()
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-9)
