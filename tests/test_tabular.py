"""The tabular baseline (``model=tabular``): scikit-learn's logistic regression on the standardised covariates,
fitted as a run of the pipeline without any image or patch cache, and carried through evaluate, predict (no scans),
the registry and ``lungexp.compare``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lungexp.compare import parse_args
from lungexp.compare import run as compare_runs
from lungexp.config.check import check
from lungexp.config.checkpoint_groups import checkpoint_evaluation
from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.data.names import COORD_COLUMNS
from lungexp.inference.candidate_scoring import predict_candidates, read_candidates
from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.registered import register_model
from lungexp.models import TabularNet
from lungexp.training.pipeline import train
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import run_entry_point
from tests.helpers.config import compose_config, mlflow_overrides, tiny_data_overrides
from tests.helpers.fork_server import ForkServer

COVARIATES = ["signal", "other"]


@pytest.fixture(scope="module")
def noisy_csv(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's candidates labelled by ``signal`` plus noise (not separable: the penalty counts), with an
    ``other`` covariate of no information."""
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    rng = np.random.default_rng(3)
    candidates["signal"] = rng.normal(12.0, 4.0, len(candidates))
    candidates["other"] = rng.normal(-3.0, 0.5, len(candidates))
    candidates["class"] = (candidates["signal"] + rng.normal(0.0, 4.0, len(candidates)) > 12.0).astype(int)
    path = tmp_path_factory.mktemp("tabular") / "noisy.csv"
    candidates.to_csv(path, index=False)
    return path


def tabular_config(root: Path, synthetic_root: Path, mlflow_dir: Path, labels_csv: Path, *overrides: str):
    """``model=tabular`` on the tiny dataset, with a cache folder of its own (which must stay empty)."""
    return compose_config(["model=tabular", *tiny_data_overrides(synthetic_root, root / "cache"),
                           *mlflow_overrides(mlflow_dir), f"data.labels_csv={labels_csv}",
                           f"model.covariates=[{','.join(COVARIATES)}]", "callbacks.lr_monitor=null",
                           "trainer.max_epochs=2", "eval.bootstrap=50", *overrides], root)


@pytest.fixture(scope="module")
def tabular_run(noisy_csv: Path, synthetic_root: Path, mlflow_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tabular_run")
    run = check(tabular_config(root, synthetic_root, mlflow_dir, noisy_csv, "task_name=tabular"), "run")
    return train(run), run, root


def split_table(run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The covariates and labels of a split, as the run's datamodule serves them."""
    datamodule = NoduleDataModule.from_options(run.data)
    datamodule.setup("fit")
    dataset = datamodule.datasets[split]
    return dataset.covariates.astype(np.float64), dataset.labels


def test_the_tabular_model_is_scikit_learns_logistic_regression(tabular_run) -> None:
    result, run, _ = tabular_run
    features, labels = split_table(run, "train")
    scaler = StandardScaler().fit(features)
    reference = LogisticRegression(tol=1e-8, max_iter=10_000).fit(scaler.transform(features), labels)  # L2, C=1, lbfgs

    predictor = Predictor(result.best_checkpoint, device="cpu")
    net = predictor.net
    assert isinstance(net, TabularNet)
    np.testing.assert_allclose(net.scaler.mean.numpy(), scaler.mean_, atol=1e-4)
    np.testing.assert_allclose(net.scaler.std.numpy(), scaler.scale_, atol=1e-4)
    linear = net.head[-1]
    np.testing.assert_allclose(linear.weight.detach().numpy()[0], reference.coef_[0], atol=1e-3)
    np.testing.assert_allclose(linear.bias.detach().numpy(), reference.intercept_, atol=1e-3)
    test_features, _ = split_table(run, "test")
    np.testing.assert_allclose(predictor.patch_probabilities(None, covariates=test_features),
                               reference.predict_proba(scaler.transform(test_features))[:, 1], atol=1e-4)


def test_the_tabular_model_runs_end_to_end_without_a_patch_cache(tabular_run, noisy_csv: Path, mlflow_dir: Path,
                                                                 tmp_path: Path) -> None:
    result, run, root = tabular_run
    assert not (root / "cache").exists() or not any((root / "cache").iterdir())  # no patch was ever extracted
    for name in ("test/auroc", "test/auroc_ci_low", "test/auroc_ci_high", "test/threshold"):
        assert name in result.metrics, name
    logged = MlflowClient(tracking_uri=run.config.paths.mlflow_uri).get_run(result.mlflow_run_id).data
    assert logged.params["data.images"] == "false" and "covariates.signal.mean" in logged.params
    artifacts = {artifact.path for artifact in MlflowClient(tracking_uri=run.config.paths.mlflow_uri).list_artifacts(
        result.mlflow_run_id)}
    assert "roc_curve.png" in artifacts and "gradcam.png" not in artifacts and "worst_errors.png" not in artifacts

    arguments = (f"ckpt_path={result.best_checkpoint}", "device=cpu", *mlflow_overrides(mlflow_dir))
    evaluated = evaluate_checkpoint(checkpoint_evaluation(compose_config(arguments, tmp_path, config_name="evaluate"),
                                                          arguments))
    assert evaluated.metrics["test/auroc"] == pytest.approx(result.metrics["test/auroc"], abs=1e-6)

    tested = result.test_predictions
    candidates = tmp_path / "candidates.csv"
    tested[["seriesuid", *COORD_COLUMNS, *COVARIATES]].to_csv(candidates, index=False)
    predictor = Predictor(result.best_checkpoint, device="cpu")
    table = predict_candidates(predictor, None, read_candidates(candidates, None), source=candidates)  # no scans
    np.testing.assert_allclose(table["probability"], tested["probability"], atol=1e-6)
    with pytest.raises(ConfigError, match="tta=flips mirrors the image, and .* reads none"):
        Ensemble([predictor], tta="flips")
    assert not (root / "cache").exists() or not any((root / "cache").iterdir())


def test_image_options_that_would_mislead_are_refused_for_the_tabular_model(noisy_csv: Path, synthetic_root: Path,
                                                                             mlflow_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.tta=flips mirrors the image, and model=tabular reads none"):
        check(tabular_config(tmp_path, synthetic_root, mlflow_dir, noisy_csv, "eval.tta=flips"), "run")
    with pytest.raises(ConfigError, match="data.images=True but model.images=False"):
        check(tabular_config(tmp_path, synthetic_root, mlflow_dir, noisy_csv, "data.images=true"), "run")




def test_the_registered_tabular_model_takes_its_covariate_columns(tabular_run, mlflow_dir: Path,
                                                                  restored_uris: None) -> None:
    result = tabular_run[0]
    store = f"sqlite:///{mlflow_dir}/mlflow.db"
    register_model([result.best_checkpoint], "tabular-baseline", tracking_uri=store,
                   artifact_location=str(mlflow_dir / "artifacts"))
    loaded = mlflow.pyfunc.load_model("models:/tabular-baseline@champion", model_config={"device": "cpu"})
    assert loaded.metadata.get_input_schema().input_names() == COVARIATES
    tested = result.test_predictions
    np.testing.assert_allclose(loaded.predict(tested[COVARIATES]), tested["probability"], atol=1e-6)


def test_predict_and_compare_take_the_tabular_run(tabular_run, tmp_path: Path, fork_server: ForkServer) -> None:
    result, run, _ = tabular_run
    tested = result.test_predictions
    candidates = tmp_path / "candidates.csv"
    tested[["seriesuid", *COORD_COLUMNS, *COVARIATES]].to_csv(candidates, index=False)
    done = run_entry_point("predict", [f"ckpt_path={result.best_checkpoint}", f"candidates={candidates}",
                                       f"out={tmp_path / 'scores.csv'}", "device=cpu"], tmp_path,
                           fork_server=fork_server)  # no scans=: none is read
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(pd.read_csv(tmp_path / "scores.csv")["probability"], tested["probability"], atol=1e-6)

    comparison = compare_runs(parse_args([result.mlflow_run_id, "--baseline", "signal", "--bootstrap", "0",
                                          "--no-mlflow", "--out", str(tmp_path / "compared"),
                                          "--tracking-uri", run.config.paths.mlflow_uri]))
    assert len(comparison.runs) == 2 and (tmp_path / "compared" / "comparison.csv").is_file()


def test_the_mlp_option_fits_too(noisy_csv: Path, synthetic_root: Path, mlflow_dir: Path, tmp_path: Path) -> None:
    run = check(tabular_config(tmp_path, synthetic_root, mlflow_dir, noisy_csv, "model.net.hidden=[8]",
                               "test_after_fit=false", "~logger"), "run")
    result = train(run)
    checkpoint = torch.load(result.best_checkpoint, weights_only=True)
    assert checkpoint["state_dict"]["net.head.0.weight"].shape == (8, 2)
    assert result.metrics["val/auroc"] > 0.5
