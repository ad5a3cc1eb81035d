"""After a tiny training run: every plot and the predictions CSV are MLflow artifacts, the CSV reproduces every
logged test metric with scikit-learn / numpy (and the CPM with the FROC module, the stratified metrics of
``eval.strata`` with their definition), and the decision threshold comes from the best checkpoint's validation
predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk

from lungexp.metrics.luna16_froc import FP_RATES, compute_froc, rate_name
from lungexp.metrics.stratified import Strata, stratified_auroc
from lungexp.metrics.threshold import choose_threshold
from lungexp.training.module import VALIDATION_PREDICTIONS

from .test_metrics import numpy_ece

PLOTS = ("roc_curve", "precision_recall", "confusion_matrix", "confusion_matrix_at_threshold", "score_histogram",
         "reliability_diagram", "froc", "worst_errors", "gradcam", "auroc_by_stratum")
TOLERANCE = 1e-6
# A column of the labels CSV beyond LUNA16's, to stratify by: it must reach the logged predictions.
STRATA = Strata("size_mm", (0.0, 10.0, 20.0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, mlflow_dir: Path):
    from tests.helpers.config import train_tiny

    root = tmp_path_factory.mktemp("evaluation_run")
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv")
    size = np.random.default_rng(0).uniform(3, 30, len(candidates)).round(2)
    candidates.assign(size_mm=size).to_csv(root / "candidates_with_size.csv", index=False)
    return train_tiny(root, synthetic_root, mlflow_dir,
                      ["trainer.max_epochs=3", "eval.montage_k=2", "eval.gradcam.samples=2",
                       "eval.threshold=sensitivity@0.9", f"data.labels_csv={root}/candidates_with_size.csv",
                       "eval.strata={column: size_mm, edges: [0, 10, 20]}"])


@pytest.mark.slow
def test_every_plot_and_the_predictions_are_artifacts(tiny_run) -> None:
    result, client, _ = tiny_run
    pngs = [a for a in client.list_artifacts(result.mlflow_run_id) if a.path.endswith(".png")]  # at the root
    assert {a.path for a in pngs} == {f"{name}.png" for name in PLOTS}
    assert all(artifact.file_size > 10_000 for artifact in pngs)


@pytest.mark.slow
def test_predictions_csv_reproduces_every_logged_test_metric(tiny_run, synthetic_root: Path) -> None:
    result, client, predictions = tiny_run
    logged = client.get_run(result.mlflow_run_id).data.metrics
    labels, scores = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    threshold = logged["test/threshold"]
    expected = {"test/auroc": sk.roc_auc_score(labels, scores),
                "test/average_precision": sk.average_precision_score(labels, scores),
                "test/ece": numpy_ece(labels, scores)}
    for prefix, cut in (("test/", 0.5), ("test/at_threshold/", threshold)):
        predicted = scores > cut
        expected |= {f"{prefix}accuracy": sk.accuracy_score(labels, predicted),
                     f"{prefix}precision": sk.precision_score(labels, predicted, zero_division=0),
                     f"{prefix}sensitivity": sk.recall_score(labels, predicted),
                     f"{prefix}specificity": sk.recall_score(1 - labels, ~predicted),
                     f"{prefix}f1": sk.f1_score(labels, predicted, zero_division=0)}
    froc = compute_froc(predictions, pd.read_csv(synthetic_root / "annotations.csv"),
                        seriesuids=[p.stem for p in sorted((synthetic_root / "subset0").glob("*.mhd"))])
    expected |= froc.as_metrics("test/")
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=TOLERANCE), name
    assert froc.num_nodules > 0 and f"test/sens_at_{rate_name(FP_RATES[-1])}_fp" in logged


@pytest.mark.slow
def test_val_and_test_keep_every_candidate_despite_the_training_cap(tiny_run, synthetic_root: Path) -> None:
    _, _, predictions = tiny_run
    candidates = pd.read_csv(synthetic_root / "candidates_V2.csv", dtype={"seriesuid": str})
    test_series = {p.stem for p in (synthetic_root / "subset0").glob("*.mhd")}
    assert len(predictions) == candidates["seriesuid"].isin(test_series).sum()
    assert (predictions["label"] == 0).groupby(predictions["seriesuid"]).sum().max() > 2


@pytest.mark.slow
def test_threshold_comes_from_the_best_checkpoints_validation(tiny_run) -> None:
    result, client, _ = tiny_run
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    stored = {key: np.asarray(value) for key, value in checkpoint[VALIDATION_PREDICTIONS].items()}
    # these are the predictions the best checkpoint was selected on: their AUROC is its monitored score
    monitored = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
    assert sk.roc_auc_score(stored["label"], stored["probability"]) == pytest.approx(float(monitored), abs=1e-5)
    logged = client.get_run(result.mlflow_run_id).data.metrics["test/threshold"]
    assert logged == pytest.approx(choose_threshold(stored["label"], stored["probability"], "sensitivity@0.9"))
    assert np.mean(stored["probability"][stored["label"] == 1] > logged) >= 0.9


@pytest.mark.slow
def test_stratified_metrics_are_logged_and_reproduced_from_the_predictions_csv(tiny_run) -> None:
    """``eval.strata`` on a column of the labels CSV: it reaches the logged predictions, and the stratified AUROC
    (with its interval) and each stratum's counts and AUROC are those of the CSV; a stratum lacking a class logs
    no AUROC (and no NaN)."""
    result, client, predictions = tiny_run
    logged = client.get_run(result.mlflow_run_id).data.metrics
    labels, scores = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    codes = STRATA.codes(predictions["size_mm"], "the logged predictions")
    assert logged["test/auroc_stratified"] == pytest.approx(stratified_auroc(labels, scores, codes), abs=TOLERANCE)
    assert logged["test/auroc_stratified_ci_low"] <= logged["test/auroc_stratified"] <= logged[
        "test/auroc_stratified_ci_high"]
    assert result.metrics["test/auroc_stratified"] == pytest.approx(logged["test/auroc_stratified"])
    for code, name in enumerate(STRATA.names):
        inside = codes == code
        positives = int(labels[inside].sum())
        assert (logged[f"test/{name}/positives"], logged[f"test/{name}/negatives"]) == (positives, inside.sum() - positives)
        if 0 < positives < inside.sum():
            assert logged[f"test/{name}/auroc"] == pytest.approx(sk.roc_auc_score(labels[inside], scores[inside]),
                                                                 abs=TOLERANCE)
            assert f"test/{name}/auroc_ci_high" in logged and f"test/{name}/at_threshold/sensitivity" in logged
        else:
            assert f"test/{name}/auroc" not in logged
    assert not any(np.isnan(value) for name, value in logged.items() if name.startswith("test/size_mm_"))


@pytest.mark.slow
def test_compare_stratifies_by_the_runs_own_strata(tiny_run, tmp_path: Path, mlflow_dir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The run logs eval.strata as params; compare reads them back and compares within those strata."""
    from lungexp.compare import main

    result, client, predictions = tiny_run
    params = client.get_run(result.mlflow_run_id).data.params
    assert (params["eval.strata.column"], params["eval.strata.edges"]) == ("size_mm", "[0,10,20]")
    guesses = np.random.default_rng(0).uniform(size=len(predictions)).round(6)
    csv = tmp_path / "guesses.csv"
    predictions.assign(probability=guesses).to_csv(csv, index=False)
    argv = [result.mlflow_run_id, str(csv), "--tracking-uri", f"sqlite:///{mlflow_dir}/mlflow.db", "--bootstrap", "50",
            "--no-mlflow", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "compared within strata of size_mm [0, 10, 20]: the first run's eval.strata" in capsys.readouterr().out
    strata = pd.read_csv(tmp_path / "comparison_strata.csv")
    assert set(strata["stratum"]) <= {f"size_mm {bounds}" for bounds in STRATA.ranges} and len(strata)
    assert "auroc_stratified_ci_low" in pd.read_csv(tmp_path / "comparison_runs.csv")
    (tmp_path / "comparison_strata.csv").unlink()
    assert main([*argv, "--no-strata"]) == 0
    assert not (tmp_path / "comparison_strata.csv").exists()
    assert "auroc_stratified" not in pd.read_csv(tmp_path / "comparison_runs.csv")
