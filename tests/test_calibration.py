"""eval.calibration: temperature scaling and isotonic regression fitted on validation, stored in the
checkpoint, applied to the test stage, evaluate and predict, and reported before and after; for a multiclass
head, one temperature over its classes (isotonic refused), and none for an ordinal head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk

from lungexp.config.check import check
from lungexp.data.labels.class_maps import CLASS_MAPS
from lungexp.data.labels.targets import HeadSpec
from lungexp.data.names import POINT_COLUMNS
from lungexp.evaluation.head_report import uncalibrated_report
from lungexp.evaluation.operating_point import (
    UNCALIBRATED,
    OperatingPoint,
    pooled_threshold,
    uncalibrated_column,
)
from lungexp.evaluation.split_metrics import evaluate_predictions
from lungexp.evaluation.types import EvaluationSettings
from lungexp.inference.candidate_scoring import predict_candidates, read_candidates
from lungexp.inference.model import Predictor
from lungexp.inference.scans import open_scans
from lungexp.metrics.calibration import (
    CALIBRATIONS,
    MIN_PER_CLASS,
    IsotonicCalibration,
    TemperatureScaling,
    brier_score,
    calibrator_from_dict,
    check_calibration,
    fit_calibrator,
)
from lungexp.metrics.multiclass import top_label_ece
from lungexp.metrics.threshold import choose_threshold
from lungexp.training.module import CALIBRATION, VALIDATION_PREDICTIONS
from lungexp.utils.errors import ConfigError
from tests.helpers.cli import run_entry_point

from .test_metrics import numpy_ece

TRUE_TEMPERATURE = 2.5
TEXTURE = HeadSpec(kind="multiclass", column="texture", rule=CLASS_MAPS["texture3"])


def overconfident_sample(size: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), reported as sigmoid(z * T): over-confident by a temperature T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size)
    labels = (rng.random(size) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return 1 / (1 + np.exp(-z * TRUE_TEMPERATURE)), labels


def recovered_temperature(probabilities: np.ndarray, labels: np.ndarray) -> tuple[TemperatureScaling, np.ndarray]:
    """Temperature scaling fitted to the sample, checked to have found :data:`TRUE_TEMPERATURE`, and what it makes
    of the sample."""
    calibrator = fit_calibrator("temperature", probabilities, labels)
    assert isinstance(calibrator, TemperatureScaling)
    assert calibrator.temperature == pytest.approx(TRUE_TEMPERATURE, rel=0.05)
    return calibrator, calibrator(probabilities)


def test_temperature_scaling_recovers_the_temperature_keeps_auroc_and_lowers_ece() -> None:
    probabilities, labels = overconfident_sample()
    calibrator, calibrated = recovered_temperature(probabilities, labels)
    assert sk.roc_auc_score(labels, calibrated) == pytest.approx(sk.roc_auc_score(labels, probabilities), abs=1e-12)
    assert numpy_ece(labels, calibrated) < numpy_ece(labels, probabilities) / 3
    assert brier_score(labels, calibrated) < brier_score(labels, probabilities)


def overconfident_classes(size: int = 20_000, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Classes drawn from softmax(z), reported as softmax(z * T): over-confident by a temperature T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (size, classes))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (rng.random((size, 1)) > true.cumsum(axis=1)).sum(axis=1)
    reported = np.exp(z * TRUE_TEMPERATURE)
    return reported / reported.sum(axis=1, keepdims=True), labels


def mean_nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def test_a_multiclass_temperature_lowers_the_nll_and_keeps_every_prediction() -> None:
    probabilities, labels = overconfident_classes()
    calibrator, calibrated = recovered_temperature(probabilities, labels)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert mean_nll(calibrated, labels) < mean_nll(probabilities, labels) - 0.1
    assert np.array_equal(calibrated.argmax(axis=1), probabilities.argmax(axis=1))
    assert top_label_ece(calibrated, labels) < top_label_ece(probabilities, labels) / 3
    # two classes: the binary head's sigmoid(logit(p) / T), the same map
    p = overconfident_sample(size=50)[0]
    np.testing.assert_allclose(calibrator(np.c_[1 - p, p])[:, 1], calibrator(p), atol=1e-12)


def test_a_multiclass_temperature_needs_right_and_wrong_predictions() -> None:
    """All right, the least NLL is at the temperature's lower bound (every probability 0 or 1)."""
    probabilities, labels = overconfident_classes(size=40)
    with pytest.warns(UserWarning, match=r"calibration=temperature: the validation predictions hold 40 right and 0 "
                                         rf"wrong .* needs right and wrong ones, at least {MIN_PER_CLASS} of each"):
        assert fit_calibrator("temperature", probabilities, probabilities.argmax(axis=1), key="calibration") is None


@pytest.mark.parametrize(("method", "kind", "message"), [
    ("isotonic", "multiclass", r"^calibration=isotonic maps one probability to another, a binary head's; a "
                               r"multiclass head's class probabilities are calibrated by one temperature: use "
                               r"calibration=temperature \(or none\)$"),
    ("temperature", "ordinal", r"^calibration=temperature is not offered for an ordinal head: a temperature on "
                               r"CORN's K − 1 logits keeps P\(level >= k\) monotone but can move the median level"
                               r".*; use calibration=none$"),
    ("isotonic", "ordinal", r"^calibration=isotonic is not offered for an ordinal head"),
])
def test_what_a_heads_kind_does_not_have_is_refused(method: str, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_calibration(method, "calibration", kind)
    assert check_calibration("none", "calibration", kind) == "none"


def test_an_isotonic_fit_of_class_probabilities_is_refused() -> None:
    probabilities, labels = overconfident_classes(size=50)
    with pytest.raises(ConfigError, match="isotonic maps one probability to another"):
        fit_calibrator("isotonic", probabilities, labels)


@pytest.mark.parametrize(("overrides", "message"), [
    (["target=multiclass", "eval.calibration=isotonic"], r"^eval\.calibration=isotonic maps one probability"),
    (["target=ordinal", "eval.calibration=temperature"], r"^eval\.calibration=temperature is not offered for an "
                                                         r"ordinal head"),
    (["target=multitask", "target.primary={kind:ordinal,column:malignancy,rule:rating}",
      "+target.auxiliary.texture={kind:multiclass,rule:texture3}", "eval.calibration=temperature"],
     r"^eval\.calibration=temperature is not offered for an ordinal head"),
])
def test_a_calibration_the_primary_head_does_not_have_is_refused_before_any_data(
        make_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(make_config("data=synthetic_malignancy", *overrides), "run")
    run = check(make_config("data=synthetic_malignancy", "target=multiclass", "eval.calibration=temperature"), "run")
    assert run.evaluation.calibration == "temperature"


def test_the_operating_point_of_a_multiclass_primary_head_calibrates_its_columns_only() -> None:
    probabilities, labels = overconfident_classes(size=400)
    columns = list(TEXTURE.probability_columns)
    other = np.random.default_rng(3).random(len(labels))  # an auxiliary binary head's column, after the primary's
    validation = pd.DataFrame({"label": labels, **dict(zip(columns, probabilities.T, strict=True)),
                               "spiculated_probability": other})
    point = OperatingPoint.fit(validation, "temperature", head=TEXTURE)
    assert point.calibrator == fit_calibrator("temperature", probabilities, labels)
    assert isinstance(point.calibrator, TemperatureScaling)
    scores = np.c_[probabilities, other]  # the network's (N, columns), as predict and the registry give them
    applied = point.apply(scores)
    np.testing.assert_allclose(applied[:, :3], point.calibrator(probabilities))
    np.testing.assert_array_equal(applied[:, 3], other)

    calibrated = point.calibrate_table(validation)
    np.testing.assert_allclose(calibrated[columns], point.calibrator(probabilities), atol=1e-6)
    np.testing.assert_array_equal(calibrated[[uncalibrated_column(column) for column in columns]], probabilities)
    np.testing.assert_array_equal(calibrated["spiculated_probability"], other)
    metrics, figures = uncalibrated_report(calibrated, TEXTURE, "test/", "Test")
    assert metrics == {"test/ece_uncalibrated": pytest.approx(top_label_ece(probabilities, labels))}
    assert set(figures) == {"plots/reliability_diagram_uncalibrated.png"}
    assert uncalibrated_report(validation, TEXTURE, "test/", "Test") == ({}, {})  # uncalibrated: nothing
    state = point.calibration_state()
    assert OperatingPoint.restored(None, state, "x", head=TEXTURE).apply(scores) == pytest.approx(applied)
    binary = OperatingPoint(calibrator=TemperatureScaling(2.0))  # a binary primary head, then an auxiliary's columns
    np.testing.assert_allclose(binary.apply(scores)[:, 0], binary.calibrator(scores[:, 0]))
    np.testing.assert_array_equal(binary.apply(scores)[:, 1:], scores[:, 1:])


def test_isotonic_is_monotone_and_lowers_ece() -> None:
    probabilities, labels = overconfident_sample(seed=1)
    calibrator = fit_calibrator("isotonic", probabilities, labels)
    assert isinstance(calibrator, IsotonicCalibration)
    grid = np.linspace(0, 1, 2001)
    assert np.all(np.diff(calibrator(grid)) >= 0)
    assert len(calibrator.inputs) < len(np.unique(probabilities))  # pooled blocks, not one point per score
    held_out, held_out_labels = overconfident_sample(seed=2)  # judged on data it was not fitted on
    assert numpy_ece(held_out_labels, calibrator(held_out)) < numpy_ece(held_out_labels, held_out) / 3


def test_isotonic_pools_violators_by_hand() -> None:
    # fractions of positives per distinct score: 0, 1, 0, 1 -> the middle pair is pooled to 0.5
    calibrator = IsotonicCalibration.fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    assert calibrator(np.array([0.1, 0.2, 0.25, 0.3, 0.4, 0.9])) == pytest.approx([0, 0.5, 0.5, 0.5, 1, 1])


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_too_few_validation_predictions_leave_the_probabilities_uncalibrated(method: str) -> None:
    """Two samples would make isotonic a 0/1 step; four positives are still below the minimum of each class."""
    with pytest.warns(UserWarning, match=f"calibration={method}: .* 1 positive.* at least {MIN_PER_CLASS} of each"):
        assert fit_calibrator(method, np.array([0.3, 0.6]), np.array([0, 1]), key="calibration") is None
    probabilities, labels = overconfident_sample(size=200)
    labels[np.flatnonzero(labels)[MIN_PER_CLASS - 1:]] = 0
    with pytest.warns(UserWarning, match=f"{MIN_PER_CLASS - 1} positive"):
        assert fit_calibrator(method, probabilities, labels) is None
    probabilities, labels = overconfident_sample(size=200)
    probabilities[0] = np.nan  # a diverged network's validation output
    with pytest.warns(UserWarning, match="1 probabilities that are not finite"):
        assert fit_calibrator(method, probabilities, labels) is None


def test_few_predictions_or_separable_ones_fit_with_a_warning() -> None:
    probabilities, labels = overconfident_sample(size=300)
    with pytest.warns(UserWarning, match="isotonic on 300 validation predictions: isotonic regression overfits"):
        assert isinstance(fit_calibrator("isotonic", probabilities, labels), IsotonicCalibration)
    separable = np.r_[np.linspace(0.01, 0.4, 10), np.linspace(0.6, 0.99, 10)]
    with pytest.warns(UserWarning, match="temperature 0.01 is at the end of its range.* nearly all 0 or 1"):
        fit_calibrator("temperature", separable, np.r_[np.zeros(10), np.ones(10)])
    with pytest.warns(UserWarning, match="temperature 100 is at the end of its range.* no better than chance"):
        fit_calibrator("temperature", separable, np.r_[np.ones(10), np.zeros(10)])  # every one on the wrong side


@pytest.mark.parametrize("state, problem", [
    ({"method": "temperature", "temperature": float("nan")}, "temperature=nan must be a number > 0"),
    ({"method": "temperature", "temperature": -1.0}, "temperature=-1.0 must be a number > 0"),
    ({"method": "temperature", "temperature": 0.0}, "temperature=0.0 must be a number > 0"),
    ({"method": "temperature"}, "no 'temperature'"),
    ({"method": "isotonic", "inputs": [0.1, 0.9], "outputs": [0.2, 1.28]}, "outputs must be non-decreasing "
     "probabilities in [0, 1]; got [0.2, 1.28]"),
    ({"method": "isotonic", "inputs": [0.1, 0.9], "outputs": [0.8, 0.2]}, "outputs must be non-decreasing"),
    ({"method": "isotonic", "inputs": [float("nan"), 0.9], "outputs": [0.1, 0.2]}, "inputs must be increasing "
     "probabilities in [0, 1]; got [nan, 0.9]"),
    ({"method": "isotonic", "inputs": [0.9, 0.1], "outputs": [0.1, 0.2]}, "inputs must be increasing"),
    ({"method": "isotonic", "inputs": [0.1, 0.9], "outputs": [0.1]}, "got 2 input(s) and 1 output(s)"),
    ({"method": "isotonic", "inputs": [], "outputs": []}, "non-zero length"),
])
def test_a_damaged_stored_calibrator_is_refused_naming_where_it_was_stored(state: dict, problem: str) -> None:
    """A NaN temperature gave an empty probability column, -1 reversed the ranking, outputs above 1 gave 1.28."""
    with pytest.raises(ConfigError) as refused:
        calibrator_from_dict(state, source="best.ckpt (its stored calibration)")
    message = str(refused.value)
    assert message.startswith(f"best.ckpt (its stored calibration): the stored {state['method']} calibration "
                              "is damaged (") and problem in message and "calibration=none" in message


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_a_calibrator_round_trips_through_a_weights_only_file(method: str, tmp_path: Path) -> None:
    probabilities, labels = overconfident_sample(size=2000)
    calibrator = fit_calibrator(method, probabilities, labels)
    torch.save({CALIBRATION: calibrator.to_dict()}, tmp_path / "calibration.pt")
    loaded = calibrator_from_dict(torch.load(tmp_path / "calibration.pt", weights_only=True)[CALIBRATION])
    assert loaded == calibrator and loaded.method == method
    assert np.array_equal(loaded(probabilities), calibrator(probabilities))


def test_none_bad_methods_and_one_class() -> None:
    assert CALIBRATIONS == ("none", "temperature", "isotonic")
    assert fit_calibrator("none", np.array([0.2, 0.8]), np.array([0, 1])) is None
    with pytest.raises(ConfigError, match="eval.calibration='platt'"):
        fit_calibrator("platt", np.array([0.2, 0.8]), np.array([0, 1]))
    with pytest.warns(UserWarning, match="both classes"):
        assert fit_calibrator("temperature", np.array([0.2, 0.8]), np.array([1, 1])) is None
    with pytest.raises(ConfigError, match="names no method"):
        calibrator_from_dict({"method": "platt"})


def test_the_operating_point_chooses_the_threshold_on_the_calibrated_validation_predictions(
        caplog: pytest.LogCaptureFixture) -> None:
    probabilities, labels = overconfident_sample(size=400)
    validation = pd.DataFrame({"label": labels, "probability": probabilities.round(6)})
    point = OperatingPoint.fit(validation, "temperature")
    calibrator = fit_calibrator("temperature", validation["probability"].to_numpy(), labels)
    assert point.calibrator == calibrator
    calibrated = calibrator(validation["probability"].to_numpy()).round(6)
    assert point.threshold("youden") == choose_threshold(labels, calibrated, "youden")
    assert point.threshold(0.3) == 0.3
    np.testing.assert_array_equal(point.apply(probabilities), calibrator(probabilities))
    # a stored calibrator of the same method is taken as it is, not fitted again
    stored = {**point.calibration_state(), "temperature": 7.0}
    assert OperatingPoint.fit(validation, "temperature", stored=stored).calibrator == TemperatureScaling(7.0)
    with pytest.warns(UserWarning, match="isotonic regression overfits"):  # another method is fitted
        assert isinstance(OperatingPoint.fit(validation, "isotonic", stored=stored).calibrator, IsotonicCalibration)

    plain = OperatingPoint.fit(validation, "none")
    assert plain.calibrator is None and plain.calibration_state() is None and plain.apply(probabilities) is probabilities
    assert plain.threshold("youden") == choose_threshold(labels, validation["probability"], "youden")
    with pytest.raises(ConfigError, match="calibration='platt'"):  # the option that chose it
        OperatingPoint.fit(validation, "platt", key="calibration")
    assert OperatingPoint.fit(None, "isotonic", key="calibration").calibrator is None
    assert "calibration=isotonic needs validation predictions" in caplog.text


def test_models_judged_as_one_take_the_mean_of_their_thresholds() -> None:
    assert pooled_threshold([0.2, 0.4, float("nan")]) == pytest.approx(0.3)
    assert pooled_threshold([]) == pooled_threshold([float("nan")]) == 0.5


def test_report_of_a_calibrated_table_has_both_calibrations() -> None:
    probabilities, labels = overconfident_sample(size=400)
    table = pd.DataFrame({"label": labels, "probability": probabilities.round(6), "seriesuid": "a"})
    calibrated = OperatingPoint(calibrator=fit_calibrator("temperature", probabilities, labels)).calibrate_table(table)
    report = evaluate_predictions(calibrated, EvaluationSettings(threshold=0.5))
    metrics = report.metrics
    assert metrics["test/ece_uncalibrated"] == pytest.approx(numpy_ece(labels, table["probability"].to_numpy()))
    assert metrics["test/ece"] == pytest.approx(numpy_ece(labels, calibrated["probability"].to_numpy()), abs=1e-6)
    assert metrics["test/brier"] < metrics["test/brier_uncalibrated"]
    assert {"plots/reliability_diagram.png", "plots/reliability_diagram_uncalibrated.png"} <= set(report.figures)
    plain = evaluate_predictions(table, EvaluationSettings(threshold=0.5), figures=False).metrics
    assert "test/ece_uncalibrated" not in plain and plain["test/brier"] == metrics["test/brier_uncalibrated"]


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, mlflow_dir: Path):
    from tests.helpers.config import train_tiny

    return train_tiny(tmp_path_factory.mktemp("calibrated_run"), synthetic_root, mlflow_dir,
                      ["trainer.max_epochs=2", "eval.montage_k=0", "eval.gradcam.samples=0", "eval.bootstrap=0",
                       "eval.calibration=temperature", "eval.threshold=fp_per_scan@1"])


@pytest.mark.slow
def test_training_run_logs_calibration_before_and_after(calibrated_run) -> None:
    result, client, predictions = calibrated_run
    logged = client.get_run(result.mlflow_run_id).data.metrics
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    calibrator = calibrator_from_dict(checkpoint[CALIBRATION])
    validation = pd.DataFrame({key: np.asarray(value) for key, value in checkpoint[VALIDATION_PREDICTIONS].items()})
    assert calibrator == fit_calibrator("temperature", validation["probability"], validation["label"])

    labels, raw = predictions["label"].to_numpy(), predictions[UNCALIBRATED].to_numpy()
    assert predictions["probability"].to_numpy() == pytest.approx(calibrator(raw), abs=1e-6)
    assert logged["test/ece_uncalibrated"] == pytest.approx(numpy_ece(labels, raw), abs=1e-6)
    assert logged["test/ece"] == pytest.approx(numpy_ece(labels, predictions["probability"].to_numpy()), abs=1e-6)
    assert logged["test/brier_uncalibrated"] == pytest.approx(brier_score(labels, raw), abs=1e-6)
    assert logged["test/brier"] == pytest.approx(brier_score(labels, predictions["probability"]), abs=1e-6)
    pngs = {a.path for a in client.list_artifacts(result.mlflow_run_id) if a.path.endswith(".png")}
    assert {"reliability_diagram.png", "reliability_diagram_uncalibrated.png"} <= pngs

    # fp_per_scan@1 on the calibrated validation predictions of the best checkpoint, with their series
    assert validation["seriesuid"].nunique() > 1
    calibrated = calibrator(validation["probability"].to_numpy())
    threshold = choose_threshold(validation["label"], calibrated, "fp_per_scan@1", validation["seriesuid"].nunique())
    assert logged["test/threshold"] == pytest.approx(threshold, abs=1e-6)
    negatives = predictions["label"] == 0
    fp_per_scan = (predictions.loc[negatives, "probability"] > threshold).sum() / predictions["seriesuid"].nunique()
    assert logged["test/at_threshold/fp_per_scan"] == pytest.approx(fp_per_scan)


@pytest.mark.slow
def test_predictor_uses_the_stored_calibrator(calibrated_run) -> None:
    result, _, _ = calibrated_run
    stored = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)[CALIBRATION]
    temperature = Predictor(result.best_checkpoint, device="cpu", calibration="temperature").operating_point
    assert temperature.calibration_state() == stored
    assert Predictor(result.best_checkpoint, device="cpu").operating_point.calibrator is None
    isotonic = Predictor(result.best_checkpoint, device="cpu", calibration="isotonic").operating_point.calibrator
    assert isinstance(isotonic, IsotonicCalibration)
    plain = Predictor(result.best_checkpoint, device="cpu")
    shape = (4, plain.recipe.in_channels, *[plain.recipe.patch.size] * 3)
    patches = np.random.default_rng(0).normal(-500, 300, shape).astype(np.float32)
    scaled = Predictor(result.best_checkpoint, device="cpu", calibration="temperature")
    assert scaled.patch_probabilities(patches) == pytest.approx(
        scaled.operating_point.apply(plain.patch_probabilities(patches)), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_predict_command_applies_the_checkpoints_calibrator_to_its_plain_probabilities(
        calibrated_run, synthetic_root: Path, tmp_path: Path, method: str) -> None:
    """``lungexp.predict calibration=METHOD``: the stored temperature (trained with it), or isotonic regression
    fitted on the stored validation predictions, applied to what the checkpoint scores without calibration."""
    result, _, tested = calibrated_run
    candidates = tmp_path / "points.csv"
    tested[POINT_COLUMNS].to_csv(candidates, index=False)  # the test split: both classes, labels known
    out = tmp_path / "calibrated.csv"
    done = run_entry_point("predict", [f"ckpt_path={result.best_checkpoint}", f"scans={synthetic_root}",
                                       f"candidates={candidates}", f"out={out}", "device=cpu",
                                       f"calibration={method}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(calibration={method})" in done.stdout
    calibrated = pd.read_csv(out, dtype={"seriesuid": str})["probability"].to_numpy()

    source = open_scans(synthetic_root)
    plain = predict_candidates(Predictor(result.best_checkpoint, device="cpu"), source,
                               read_candidates(candidates, source))["probability"].to_numpy()
    np.testing.assert_allclose(plain, tested[UNCALIBRATED], atol=1e-6)  # the test stage's own raw scores
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    validation = {key: np.asarray(value) for key, value in checkpoint[VALIDATION_PREDICTIONS].items()}
    calibrator = (calibrator_from_dict(checkpoint[CALIBRATION]) if method == "temperature"
                  else fit_calibrator("isotonic", validation["probability"], validation["label"]))
    np.testing.assert_allclose(calibrated, calibrator(plain), atol=1e-6)
    assert np.abs(calibrated - plain).max() > 1e-3  # the calibration changed the scores

    labels = tested["label"].to_numpy()
    if method == "temperature":  # monotone: the ranking, hence the AUROC, is the plain scores'
        assert sk.roc_auc_score(labels, calibrated) == pytest.approx(sk.roc_auc_score(labels, plain), abs=1e-9)
    else:  # non-decreasing: ties may merge, never reorder
        assert np.all(np.diff(calibrated[np.argsort(plain, kind="stable")]) >= -1e-7)


@pytest.fixture(scope="module")
def calibrated_multiclass_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, mlflow_dir: Path):
    """``target=multiclass eval.calibration=temperature`` on the demo scans' candidates given a texture (nodules
    solid, the other candidates ground glass and part-solid by turns): ~20 validation samples, where the annotated
    nodules alone give 7, too few to fit a temperature."""
    from tests.helpers.config import train_tiny

    root = tmp_path_factory.mktemp("calibrated_multiclass")
    points = pd.read_csv(synthetic_root / "candidates_V2.csv").rename(columns={"class": "label"})
    points["texture"] = np.where(points["label"] == 1, 5, np.where(np.arange(len(points)) % 2, 1, 3))
    points.to_csv(root / "textured.csv", index=False)
    return train_tiny(root, synthetic_root, mlflow_dir,
                      ["data.task=points", f"data.labels_csv={root}/textured.csv", "target=multiclass",
                       "trainer.max_epochs=2", "eval.bootstrap=0", "eval.calibration=temperature",
                       "callbacks.lr_monitor=null"])


@pytest.mark.slow
def test_a_multiclass_run_is_tested_on_its_calibrated_probabilities(calibrated_multiclass_run) -> None:
    result, client, predictions = calibrated_multiclass_run
    logged = client.get_run(result.mlflow_run_id).data.metrics
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    validation = pd.DataFrame({key: np.asarray(value) for key, value in checkpoint[VALIDATION_PREDICTIONS].items()})
    columns = list(TEXTURE.probability_columns)
    calibrator = calibrator_from_dict(checkpoint[CALIBRATION])
    assert calibrator == fit_calibrator("temperature", validation[columns].to_numpy(), validation["label"].to_numpy())

    labels = predictions["label"].to_numpy()
    raw = predictions[[uncalibrated_column(column) for column in columns]].to_numpy()
    calibrated = predictions[columns].to_numpy()
    np.testing.assert_allclose(calibrated, calibrator(raw), atol=1e-6)
    assert np.array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))  # the predictions are the network's
    assert np.array_equal(predictions["prediction"], raw.argmax(axis=1))
    assert logged["test/balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, raw.argmax(axis=1)))
    assert logged["test/ece"] == pytest.approx(top_label_ece(calibrated, labels), abs=1e-6)
    assert logged["test/ece_uncalibrated"] == pytest.approx(top_label_ece(raw, labels), abs=1e-6)
    assert abs(logged["test/ece"] - logged["test/ece_uncalibrated"]) > 1e-4
    # Every metric is of the calibrated probabilities: a temperature keeps each sample's most probable class, not
    # the order of one class's probability across samples, so a one-vs-rest AUROC may move (a little).
    for index, name in enumerate(TEXTURE.class_names):
        assert logged[f"test/auroc_{name}"] == pytest.approx(sk.roc_auc_score(labels == index, calibrated[:, index]),
                                                             abs=1e-6)
    pngs = {a.path for a in client.list_artifacts(result.mlflow_run_id) if a.path.endswith(".png")}
    assert {"reliability_diagram.png", "reliability_diagram_uncalibrated.png"} <= pngs


@pytest.mark.slow
def test_evaluate_and_predict_apply_a_multiclass_checkpoints_temperature(
        calibrated_multiclass_run, synthetic_root: Path, mlflow_dir: Path, tmp_path: Path) -> None:
    from lungexp.config.checkpoint_groups import checkpoint_evaluation
    from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint
    from lungexp.inference.ensemble import Ensemble
    from tests.helpers.config import compose_config, mlflow_overrides

    result, client, tested = calibrated_multiclass_run
    logged = client.get_run(result.mlflow_run_id).data.metrics
    overrides = [f"ckpt_path={result.best_checkpoint}", *mlflow_overrides(mlflow_dir)]
    evaluation = evaluate_checkpoint(checkpoint_evaluation(compose_config(overrides, tmp_path, config_name="evaluate"),
                                                           overrides))  # with the checkpoint's eval.calibration
    for name in ("test/ece", "test/ece_uncalibrated", "test/auroc_macro", "test/balanced_accuracy"):
        assert evaluation.metrics[name] == pytest.approx(logged[name], abs=1e-5, nan_ok=True)

    columns = list(TEXTURE.probability_columns)
    ensemble = Ensemble([Predictor(result.best_checkpoint, device="cpu")])
    ensemble.calibrate("temperature")  # the stored temperature
    source = open_scans(synthetic_root)
    points = tested[POINT_COLUMNS].assign(seriesuid=tested["seriesuid"].astype(str))
    scored = predict_candidates(ensemble, source, points.reset_index(drop=True))
    np.testing.assert_allclose(scored[columns], tested[columns], atol=1e-5)
    assert np.array_equal(scored["prediction"], tested["prediction"])
