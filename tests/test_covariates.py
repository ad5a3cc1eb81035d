"""Covariates as model inputs (``model.covariates``): late fusion with every network of the zoo, standardised by
the training split and frozen in the checkpoint, the readers' ratings refused, and the checkpoint carried through
evaluate, predict, ensembles with TTA and the registry.

Most tests share one tiny run whose labels depend on a covariate alone (``signal``), not on the image."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import DictConfig

from lungexp.config.check import check
from lungexp.config.checkpoint_groups import checkpoint_evaluation
from lungexp.data.labels.annotations import AnnotationError
from lungexp.data.labels.covariates import covariate_values
from lungexp.data.loading.datamodule import NoduleDataModule
from lungexp.data.loading.memory_cache import DeviceBatches
from lungexp.data.names import COORD_COLUMNS, COVARIATES_KEY, IMAGE_KEY
from lungexp.data.patches.normalization import HUWindow
from lungexp.evaluation.types import EvaluationOptions
from lungexp.inference.candidate_scoring import predict_candidates, read_candidates
from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint
from lungexp.inference.ensemble import Ensemble
from lungexp.inference.model import Predictor
from lungexp.inference.registered import load_registered, register_model
from lungexp.inference.scans import open_scans
from lungexp.models import CNN3D
from lungexp.models.fusion import CovariateFusion, image_network
from lungexp.models.pretrained import load_pretrained
from lungexp.models.tta import FLIPS
from lungexp.training.checkpoint import RECIPE_KEY
from lungexp.training.finetuning import HEAD_GROUP, parameter_groups
from lungexp.training.module import RATING_COVARIATES_TAG
from lungexp.training.pipeline import train
from lungexp.utils.errors import ArgumentError, ConfigError
from lungexp.visualize.gradcam import gradcam_heatmaps
from tests.helpers.cli import run_entry_point
from tests.helpers.config import (
    IMAGE_MODELS,
    TINY_NETS,
    compose_config,
    mlflow_overrides,
    tiny_data_overrides,
)
from tests.helpers.fork_server import ForkServer

SIGNAL = "signal"  # a covariate that decides the label, whatever the image


@pytest.fixture(scope="module")
def signal_csv(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's candidates, labelled by a random ``signal`` column (mean 5, sd 2): 1 above 5."""
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    candidates[SIGNAL] = np.random.default_rng(0).normal(5.0, 2.0, len(candidates))
    candidates["class"] = (candidates[SIGNAL] > 5.0).astype(int)
    path = tmp_path_factory.mktemp("signal") / "signal.csv"
    candidates.to_csv(path, index=False)
    return path


def covariate_config(root: Path, synthetic_root: Path, mlflow_dir: Path, labels_csv: Path, *overrides: str,
                     model: str = "cnn3d") -> DictConfig:
    return compose_config([f"model={model}", *TINY_NETS[model],
                           *tiny_data_overrides(synthetic_root, synthetic_root.parent / "cache"),
                           *mlflow_overrides(mlflow_dir), f"data.labels_csv={labels_csv}",
                           f"model.covariates=[{SIGNAL}]", "callbacks.lr_monitor=null", *overrides], root)


@pytest.fixture(scope="module")
def covariate_run(signal_csv: Path, synthetic_root: Path, mlflow_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CNN with the covariate ``signal``, 3 epochs (its labels depend on ``signal`` alone), tested."""
    cfg = covariate_config(tmp_path_factory.mktemp("covariate_run"), synthetic_root, mlflow_dir, signal_csv,
                           "trainer.max_epochs=3", "model.optimizer.lr=0.05", "eval.bootstrap=0", "eval.montage_k=0",
                           "eval.gradcam.samples=2", "task_name=covariates")
    run = check(cfg, "run")
    return train(run), run


@pytest.fixture(scope="module")
def predictor(covariate_run) -> Predictor:
    return Predictor(covariate_run[0].best_checkpoint, device="cpu")


def training_covariates(run) -> np.ndarray:
    """The training split's ``signal``, as the datamodule of the run serves it."""
    datamodule = NoduleDataModule.from_options(run.data)
    datamodule.setup("fit")
    return datamodule.train_covariates


def hu_patches(count: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1000, 400, (count, 1, size, size, size)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_every_network_of_the_zoo_fuses_covariates_and_keeps_its_contract(model: str, tmp_path: Path) -> None:
    cfg = compose_config([f"model={model}", *TINY_NETS[model], "model.covariates=[diameter_mm,age]"], tmp_path)
    module = hydra.utils.instantiate(cfg.model, _partial_=True, _convert_="partial")(evaluation=EvaluationOptions())
    net = module.net
    assert isinstance(net, CovariateFusion) and net.num_covariates == 2
    images, covariates = torch.randn(3, 1, 16, 16, 16), torch.tensor([[5.0, 60.0], [20.0, 70.0], [8.0, 50.0]])
    module.eval()
    logits = module(images, covariates)
    assert logits.shape == (3,)
    assert not torch.allclose(module(images, covariates * 2), logits)  # the covariates count
    # Fine-tuning finds the new linear layer as the head, the image network as the backbone.
    head = next(group for group in parameter_groups(net, 1e-3, 10.0) if group["name"] == HEAD_GROUP)
    assert {id(p) for p in head["params"]} == {id(p) for p in net.head.parameters()}
    assert net.head.in_features == net.image(images).shape[1] + 2  # the pooled image features and the covariates
    # Grad-CAM explains the image network with the covariates at their training mean.
    maps = gradcam_heatmaps(image_network(net), images[:1])
    assert maps.shape == (1, 16, 16, 16)


@pytest.mark.slow
def test_pretrained_weights_load_into_the_image_network_and_a_covariate_checkpoint_serves_as_pretrained(
        covariate_run, tmp_path: Path) -> None:
    plain = CNN3D(widths=(4, 8))
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], f"model.covariates=[{SIGNAL}]",
                          f"model.pretrained.path={tmp_path / 'plain.pth'}"], tmp_path)
    module = hydra.utils.instantiate(cfg.model, _partial_=True, _convert_="partial")(evaluation=EvaluationOptions())
    loaded = module.net.image.state_dict()
    for key, value in plain.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    # The image network of a model trained with covariates is pretrained weights for any model of that network.
    report = load_pretrained(CNN3D(widths=(4, 8)), covariate_run[0].best_checkpoint)
    assert report.format == "lightning" and report.loaded > 0


def test_device_batches_carry_the_covariates_of_their_rows() -> None:
    patches = torch.zeros(4, 1, 2, 2, 2, dtype=torch.int16)
    covariates = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    batches = DeviceBatches(patches, np.zeros(4, np.float32), np.arange(4), HUWindow(-1000, 400), covariates)
    batch = batches([2, 0])
    assert batch[COVARIATES_KEY].tolist() == [[3.0], [1.0]] and batch[IMAGE_KEY].shape == (2, 1, 2, 2, 2)


# ------------------------------------------------------------------------------------------------
# Config and input checks


def test_readers_ratings_are_refused_in_one_line_unless_allowed(make_config) -> None:
    with pytest.raises(ArgumentError) as refused:
        check(make_config("model.covariates=[diameter_mm,malignancy]"), "run")
    message = str(refused.value)
    assert "\n" not in message
    assert "malignancy is a reader's rating (malignancy is the label itself)" in message
    assert "model.allow_rating_covariates=true" in message
    with pytest.raises(ConfigError, match=r"data.covariates=\['x'\] but model.covariates=\['diameter_mm'\]"):
        check(make_config("model.covariates=[diameter_mm]", "data.covariates=[x]"), "run")


def test_a_rating_allowed_as_covariate_is_warned_about_and_tagged(signal_csv: Path, synthetic_root: Path,
                                                                  mlflow_dir: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    table = pd.read_csv(signal_csv, dtype={"seriesuid": str})
    table.assign(spiculation=np.arange(len(table)) % 5 + 1).to_csv(tmp_path / "rated.csv", index=False)
    cfg = covariate_config(tmp_path, synthetic_root, mlflow_dir, tmp_path / "rated.csv",
                           f"model.covariates=[{SIGNAL},spiculation]", "model.allow_rating_covariates=true",
                           "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                           "test_after_fit=false")
    with caplog.at_level(logging.WARNING, logger="lungexp"):
        run = check(cfg, "run")
    assert "using the readers' rating(s) spiculation as input" in caplog.text
    result = train(run)
    logged = MlflowClient(tracking_uri=cfg.paths.mlflow_uri).get_run(result.mlflow_run_id).data
    assert logged.tags[RATING_COVARIATES_TAG] == "spiculation"
    assert logged.params["model.allow_rating_covariates"] == "true"
    assert float(logged.params["covariates.spiculation.mean"]) > 1  # and its training statistics


def test_covariate_values_name_the_column_the_file_and_the_first_rows() -> None:
    table = pd.DataFrame({"diameter_mm": [4.0, "big", None, 7.0, np.inf]})
    with pytest.raises(AnnotationError) as missing:
        covariate_values(table, ["diameter"], "labels.csv")
    assert "labels.csv: no column 'diameter'" in str(missing.value) and "did you mean 'diameter_mm'" in str(missing.value)
    with pytest.raises(AnnotationError) as bad:
        covariate_values(table, ["diameter_mm"], "labels.csv")
    assert ("labels.csv: covariate column 'diameter_mm' (model.covariates) must hold a finite number in every row, "
            "but 3 row(s) do not: row 3 ('big'), row 4 (empty), row 6 (inf)") in str(bad.value)
    assert covariate_values(table.iloc[[0, 3]], ["diameter_mm"], "labels.csv").tolist() == [[4.0], [7.0]]


# ------------------------------------------------------------------------------------------------
# Training, and the frozen standardisation


@pytest.mark.slow
def test_a_label_that_depends_on_a_covariate_alone_is_learned(covariate_run, predictor: Predictor) -> None:
    result, run = covariate_run
    assert result.metrics["test/auroc"] >= 0.9  # the image says nothing about these labels
    tested = result.test_predictions
    patches = hu_patches(len(tested))
    covariates = tested[[SIGNAL]].to_numpy()
    with_own = predictor.patch_probabilities(patches, covariates=covariates)
    with_reversed = predictor.patch_probabilities(patches, covariates=covariates[::-1].copy())
    assert np.abs(with_own - with_reversed).max() > 0.1  # the covariates change the predictions


@pytest.mark.slow
def test_standardisation_comes_from_the_training_split_and_stays_frozen(covariate_run, predictor: Predictor) -> None:
    result, run = covariate_run
    train_values = training_covariates(run)[:, 0].astype(np.float64)
    scaler = predictor.net.scaler
    assert scaler.mean.item() == pytest.approx(train_values.mean(), abs=1e-4)
    assert scaler.std.item() == pytest.approx(train_values.std(), abs=1e-4)
    logged = MlflowClient(tracking_uri=run.config.paths.mlflow_uri).get_run(result.mlflow_run_id).data.params
    assert float(logged[f"covariates.{SIGNAL}.mean"]) == pytest.approx(train_values.mean(), abs=1e-4)
    assert float(logged[f"covariates.{SIGNAL}.std"]) == pytest.approx(train_values.std(), abs=1e-4)
    # Other data with other statistics is standardised with the training ones: an affine change of the covariate
    # changes the probabilities, as the frozen formula says.
    patches = hu_patches(6)
    values = np.linspace(0.0, 12.0, 6).reshape(-1, 1)
    shifted = predictor.patch_probabilities(patches, covariates=values * 3 + 7)
    assert np.abs(shifted - predictor.patch_probabilities(patches, covariates=values)).max() > 0.01
    net = predictor.net
    with torch.no_grad():
        images = torch.stack([predictor.recipe.window(patch) for patch in patches])
        standardised = (torch.tensor(values * 3 + 7, dtype=torch.float32) - train_values.mean()) / train_values.std()
        expected = torch.sigmoid(net.head(torch.cat([net.image(images), standardised], dim=1))).squeeze(-1)
    np.testing.assert_allclose(shifted, expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_evaluate_on_data_with_other_statistics_uses_the_frozen_training_ones(
        covariate_run, signal_csv: Path, synthetic_root: Path, mlflow_dir: Path, tmp_path: Path) -> None:
    result, run = covariate_run
    table = pd.read_csv(signal_csv, dtype={"seriesuid": str})
    table.assign(**{SIGNAL: table[SIGNAL] * 3 + 7}).to_csv(tmp_path / "shifted.csv", index=False)

    def evaluate(labels_csv: Path, *overrides: str):
        arguments = (f"ckpt_path={result.best_checkpoint}", "device=cpu", "split=all", *mlflow_overrides(mlflow_dir),
                     f"data.labels_csv={labels_csv}", "eval.gradcam.samples=0", *overrides)
        cfg = compose_config(arguments, tmp_path, config_name="evaluate")
        return evaluate_checkpoint(checkpoint_evaluation(cfg, arguments))

    original, shifted = evaluate(signal_csv), evaluate(tmp_path / "shifted.csv")
    # Re-standardised on the evaluated data, an affine change of the covariate would change nothing.
    assert np.abs(original.predictions["probability"] - shifted.predictions["probability"]).max() > 0.01
    # data=OPTION takes another data config, but never other covariates than the checkpoint's.
    other_option = evaluate(signal_csv, "data=synthetic", f"data.root={synthetic_root}", "data.synthetic=null",
                            f"data.cache_dir={synthetic_root.parent / 'cache'}")
    assert other_option.predictions["probability"].tolist() == original.predictions["probability"].tolist()


# ------------------------------------------------------------------------------------------------
# Everywhere a checkpoint goes


@pytest.mark.slow
def test_predict_scores_candidates_with_their_covariate_columns_as_the_test_stage(covariate_run, predictor: Predictor,
                                                                                  synthetic_root: Path,
                                                                                  tmp_path: Path) -> None:
    result, _ = covariate_run
    assert torch.load(result.best_checkpoint, weights_only=True)[RECIPE_KEY]["covariates"] == [SIGNAL]
    tested = result.test_predictions
    candidates = tmp_path / "candidates.csv"
    tested[["seriesuid", *COORD_COLUMNS, SIGNAL]].to_csv(candidates, index=False)
    scans = open_scans(synthetic_root)
    table = predict_candidates(predictor, scans, read_candidates(candidates, scans), source=candidates)
    np.testing.assert_allclose(table["probability"], tested["probability"], atol=1e-6)


@pytest.mark.slow
def test_predict_refuses_candidates_without_their_covariates_in_one_line(covariate_run, synthetic_root: Path,
                                                                         tmp_path: Path,
                                                                         fork_server: ForkServer) -> None:
    tested = covariate_run[0].test_predictions
    tested[["seriesuid", *COORD_COLUMNS]].to_csv(tmp_path / "no_signal.csv", index=False)
    tested.assign(**{SIGNAL: tested[SIGNAL].where(tested.index != 2)})[["seriesuid", *COORD_COLUMNS, SIGNAL]].to_csv(
        tmp_path / "empty_signal.csv", index=False)
    for csv, expected in (("no_signal.csv", "no column 'signal'"),
                          ("empty_signal.csv", "covariate column 'signal' (model.covariates) must hold a finite "
                                               "number in every row, but 1 row(s) do not: row 4 (empty)")):
        done = run_entry_point("predict", [f"ckpt_path={covariate_run[0].best_checkpoint}", f"scans={synthetic_root}",
                                           f"candidates={tmp_path / csv}", f"out={tmp_path / 'out.csv'}", "device=cpu"],
                               tmp_path, fork_server=fork_server)
        assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        assert done.stderr.startswith(f"error: {tmp_path / csv}: ") and expected in done.stderr, done.stderr
        assert len([line for line in done.stderr.splitlines() if line.startswith("error: ")]) == 1
        assert not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_ensembles_mirror_the_image_never_the_covariates_and_refuse_other_covariates(
        covariate_run, predictor: Predictor, tmp_path: Path) -> None:
    patches, covariates = hu_patches(3), np.array([[2.0], [5.0], [9.0]])
    flipped = Ensemble([predictor], tta="flips").patch_probabilities(patches, covariates=covariates)
    images = torch.stack([predictor.recipe.window(patch) for patch in patches])
    views = [predictor.batch_probabilities(torch.flip(images, dims) if dims else images,
                                           torch.tensor(covariates, dtype=torch.float32)) for dims in FLIPS]
    np.testing.assert_allclose(flipped, torch.stack(views).mean(dim=0).numpy(), atol=1e-6)

    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(covariate_run[0].best_checkpoint, weights_only=True)
    checkpoint[RECIPE_KEY]["covariates"] = ["diameter_mm"]
    torch.save(checkpoint, other)
    with pytest.raises(ConfigError) as refused:
        Ensemble([predictor, Predictor(other, device="cpu")])
    message = str(refused.value)
    assert str(predictor.path) in message and str(other) in message
    assert "model.covariates=['signal'] vs ['diameter_mm']" in message




@pytest.mark.slow
def test_the_registered_model_names_its_covariates_as_inputs(covariate_run, predictor: Predictor, mlflow_dir: Path,
                                                             tmp_path: Path, restored_uris: None) -> None:
    store = f"sqlite:///{mlflow_dir}/mlflow.db"
    register_model([covariate_run[0].best_checkpoint], "with-covariates", tracking_uri=store,
                   artifact_location=str(mlflow_dir / "artifacts"))
    loaded = mlflow.pyfunc.load_model("models:/with-covariates@champion", model_config={"device": "cpu"})
    assert loaded.metadata.get_input_schema().input_names() == ["image", SIGNAL]
    patches, covariates = hu_patches(4), np.array([1.0, 4.0, 6.0, 11.0])
    probabilities = loaded.predict({"image": patches, SIGNAL: covariates})
    np.testing.assert_array_equal(probabilities, predictor.patch_probabilities(patches, covariates=covariates[:, None]))
    ensemble = load_registered("models:/with-covariates@champion", store, device="cpu")
    assert ensemble.recipe.covariates == (SIGNAL,)


# ------------------------------------------------------------------------------------------------
# Where a covariate model starts


def test_a_covariate_model_starts_as_the_logistic_regression_on_its_covariates(tmp_path: Path) -> None:
    """``model.covariate_start=fitted`` (the default): when a fit starts, the head is scikit-learn's logistic
    regression on the standardised training covariates and the image features weigh 0, so the model's first
    predictions are the tabular baseline's whatever the image; ``random`` keeps the head's own init."""
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    covariates = np.column_stack([rng.normal(8, 3, 200), rng.normal(60, 10, 200)]).astype(np.float32)
    labels = (covariates[:, 0] + rng.normal(0, 2, 200) > 8).astype(np.float32)
    stub = SimpleNamespace(train_covariates=covariates, train_labels=labels, train_class_counts=(100, 100))
    modules = {}
    for start in ("fitted", "random"):
        cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], "model.covariates=[diameter_mm,age]",
                              f"model.covariate_start={start}"], tmp_path)
        module = hydra.utils.instantiate(cfg.model, _partial_=True, _convert_="partial")(evaluation=EvaluationOptions())
        module._trainer = SimpleNamespace(datamodule=stub)
        module.setup("fit")
        module.eval()
        modules[start] = module
    standardised = (covariates - covariates.mean(axis=0)) / covariates.std(axis=0)
    reference = LogisticRegression(C=1.0).fit(standardised, labels)
    images = torch.randn(5, 1, 16, 16, 16)
    with torch.no_grad():
        fitted = torch.sigmoid(modules["fitted"](images, torch.as_tensor(covariates[:5]))).numpy()
        also_fitted = torch.sigmoid(modules["fitted"](images * 3, torch.as_tensor(covariates[:5]))).numpy()
        random_start = torch.sigmoid(modules["random"](images, torch.as_tensor(covariates[:5]))).numpy()
    np.testing.assert_allclose(fitted, reference.predict_proba(standardised[:5])[:, 1], atol=1e-4)
    np.testing.assert_allclose(also_fitted, fitted, atol=1e-6)  # the image weighs nothing yet
    assert np.abs(random_start - fitted).max() > 1e-3
    with pytest.raises(ArgumentError, match="covariate_start='best' must be one of fitted, random"):
        cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], "model.covariates=[diameter_mm]",
                              "model.covariate_start=best"], tmp_path)
        hydra.utils.instantiate(cfg.model, _partial_=True, _convert_="partial")(evaluation=EvaluationOptions())
