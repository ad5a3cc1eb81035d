"""Targets beyond one logit through the training loop (#28): each kind trains end to end on the demo data, logs its
metrics with 95 % intervals and the predictions table's columns; ``evaluate`` reproduces an ordinal checkpoint's
test metrics; a checkpoint of one target is refused with another; what only a binary primary head has is refused
before any data is read; ``optimized_metric`` follows the target, and a class missing from validation does not
leave the checkpoint monitor NaN."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from lungexp.config.check import check
from lungexp.data.labels.class_maps import MASKED
from lungexp.data.labels.targets import TargetOptions
from lungexp.training.checkpoint import RECIPE_KEY, check_target, read_checkpoint
from lungexp.training.resume import check_resumable
from lungexp.utils.errors import ConfigError
from tests.helpers.config import compose_config, mlflow_overrides, train_tiny

TOLERANCE = 1e-6
# Small enough to stay quick, large enough for an interval; the pictures on CT are of one logit (not made here).
TRAINING = ["data=synthetic_malignancy", "trainer.max_epochs=2", "eval.bootstrap=50", "callbacks.lr_monitor=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, mlflow_dir: Path):
    """One tiny training per target, made when a test first asks for it: ``trained(kind)`` -> (result, client,
    logged test predictions); ``trained.warnings[kind]``: what lungexp logged as a warning meanwhile."""
    runs: dict[str, tuple] = {}
    warned: dict[str, list[str]] = {}

    def train(kind: str) -> tuple:
        if kind not in runs:
            records: list[logging.LogRecord] = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = records.append  # type: ignore[method-assign]
            logging.getLogger("lungexp").addHandler(handler)
            try:
                runs[kind] = train_tiny(tmp_path_factory.mktemp(kind), synthetic_root, mlflow_dir,
                                        [*TRAINING, f"target={kind}"])
            finally:
                logging.getLogger("lungexp").removeHandler(handler)
            warned[kind] = [record.getMessage() for record in records]
        return runs[kind]

    train.warnings = warned  # type: ignore[attr-defined]
    return train


def _figures(client, run_id: str) -> set[str]:
    """The run's figures: at the artifact root (``plots/texture/roc_curves.png`` as ``texture_roc_curves.png``)."""
    return {item.path for item in client.list_artifacts(run_id) if item.path.endswith(".png")}


def _logged(trained, kind: str) -> tuple[dict[str, float], pd.DataFrame, object]:
    result, client, predictions = trained(kind)
    return client.get_run(result.mlflow_run_id).data.metrics, predictions, result


@pytest.mark.slow
def test_ordinal_logs_its_metrics_with_intervals_and_cumulative_columns(trained) -> None:
    logged, predictions, _ = _logged(trained, "ordinal")
    cumulative = [f"probability_ge{level}" for level in range(2, 6)]
    assert {"label", "prediction", *cumulative} <= set(predictions.columns) and "probability" not in predictions
    values = predictions[cumulative].to_numpy()
    assert np.all(np.diff(values, axis=1) <= TOLERANCE)  # P(level >= k) never grows with k
    assert (predictions["prediction"] == (values > 0.5).sum(axis=1)).all()
    labels, predicted = predictions["label"].to_numpy(), predictions["prediction"].to_numpy()
    assert logged["test/mae"] == pytest.approx(np.abs(labels - predicted).mean(), abs=TOLERANCE)
    assert logged["test/accuracy_within1"] == pytest.approx((np.abs(labels - predicted) <= 1).mean(), abs=TOLERANCE)
    for name in ("qwk", "mae", "accuracy_within1", "auroc_ge3"):
        assert {f"test/{name}_ci_low", f"test/{name}_ci_high"} <= set(logged)
        assert logged[f"test/{name}_ci_low"] <= logged[f"test/{name}_ci_high"]
    assert "test/auroc" not in logged and "val/qwk" in logged and "val/mae" in logged
    result, client, _ = trained("ordinal")  # the head's figures: levels' confusion, ROC at every cut
    assert {"confusion_matrix.png", "roc_curves.png"} <= _figures(client, result.mlflow_run_id)


@pytest.mark.slow
def test_multiclass_logs_macro_auroc_and_one_probability_per_class(trained) -> None:
    logged, predictions, _ = _logged(trained, "multiclass")
    columns = ["probability_ground_glass", "probability_part_solid", "probability_solid"]
    assert {"label", "prediction", *columns} <= set(predictions.columns)
    np.testing.assert_allclose(predictions[columns].sum(axis=1), 1.0, atol=1e-5)
    assert (predictions["prediction"] == predictions[columns].to_numpy().argmax(axis=1)).all()
    labels = predictions["label"].to_numpy()
    assert logged["test/balanced_accuracy"] == pytest.approx(
        sk.balanced_accuracy_score(labels, predictions["prediction"]), abs=1e-6)
    for name in ("auroc_weighted", "balanced_accuracy", "f1_macro", "ece", "sensitivity_solid", "specificity_solid"):
        assert f"test/{name}" in logged and f"test/{name}_ci_high" in logged
    assert "test/auroc_macro" in logged and "val/auroc_macro" in logged


@pytest.mark.slow
def test_a_class_missing_from_validation_leaves_the_monitor_a_number_and_says_so_once(trained) -> None:
    """The demo data's validation split has no part-solid nodule: val/auroc_macro averages the other two classes
    (NaN, Lightning's checkpoint would rank every epoch alike and keep the first), and the best checkpoint is the
    epoch of the best such value."""
    logged, _, result = _logged(trained, "multiclass")
    client = trained("multiclass")[1]
    per_class = [logged[f"val/auroc_{name}"] for name in ("ground_glass", "part_solid", "solid")]
    assert sum(np.isnan(per_class)) == 1  # the demo split lacks exactly one class
    assert logged["val/auroc_macro"] == pytest.approx(np.nanmean(per_class))
    history = [metric.value for metric in client.get_metric_history(result.mlflow_run_id, "val/auroc_macro")]
    assert len(history) == 2 and np.isfinite(history).all()
    assert logged["best/val_auroc_macro"] == pytest.approx(max(history), abs=1e-6)
    assert re.search(r"epoch00(\d)", Path(result.best_checkpoint).name).group(1) == str(int(np.argmax(history)))
    said = [message for message in trained.warnings["multiclass"] if "averages the classes" in message]
    assert said == ["val/auroc_macro averages the classes the validation split holds: it has no sample of part_solid, "
                    "whose one-vs-rest AUROC is undefined (NaN); a larger validation split would hold every class"]


@pytest.mark.slow
def test_multitask_keeps_the_binary_report_and_scores_each_head_on_its_labelled_rows(trained) -> None:
    logged, predictions, _ = _logged(trained, "lidc_attributes")
    assert {"probability", "texture_label", "texture_probability_solid", "texture_prediction",
            "spiculation_probability_ge5", "spiculation_prediction", "calcification_probability"} <= \
        set(predictions.columns)
    assert {"test/auroc", "test/auroc_ci_low", "test/threshold"} <= set(logged)  # the primary's, under today's names
    assert sk.roc_auc_score(predictions["label"], predictions["probability"]) == \
        pytest.approx(logged["test/auroc"], abs=TOLERANCE)
    for head, metric in (("texture", "f1_macro"), ("spiculation", "qwk"), ("calcification", "auroc")):
        assert {f"test/{head}/{metric}", f"test/{head}/{metric}_ci_low", f"test/{head}/samples"} <= set(logged)
        labelled = (predictions[f"{head}_label"] != MASKED).sum()
        assert logged[f"test/{head}/samples"] == labelled
        assert logged[f"test/{head}/masked"] == len(predictions) - labelled
    result, client, _ = trained("lidc_attributes")  # each multiclass or ordinal auxiliary head's figures
    assert {"texture_confusion_matrix.png", "texture_reliability_diagram.png", "spiculation_roc_curves.png",
            "roc_curve.png"} <= _figures(client, result.mlflow_run_id)  # and the binary primary's own


@pytest.mark.slow
def test_evaluate_reproduces_an_ordinal_checkpoints_test_metrics(trained, mlflow_dir: Path, tmp_path: Path) -> None:
    from lungexp.config.checkpoint_groups import checkpoint_evaluation
    from lungexp.inference.checkpoint_evaluation import evaluate_checkpoint

    logged, predictions, result = _logged(trained, "ordinal")
    overrides = [f"ckpt_path={result.best_checkpoint}", *mlflow_overrides(mlflow_dir)]
    evaluation = evaluate_checkpoint(checkpoint_evaluation(compose_config(overrides, tmp_path, config_name="evaluate"),
                                                           overrides))
    for name in ("test/qwk", "test/mae", "test/accuracy_within1", "test/auroc_ge4", "test/qwk_ci_high"):
        assert evaluation.metrics[name] == pytest.approx(logged[name], abs=1e-4, nan_ok=True)
    pd.testing.assert_series_equal(evaluation.predictions["prediction"], predictions["prediction"], check_dtype=False)


@pytest.mark.slow
def test_a_checkpoint_of_one_target_is_refused_with_another(trained, make_config) -> None:
    _, _, result = _logged(trained, "ordinal")
    state = read_checkpoint(Path(result.best_checkpoint))
    stored = state[RECIPE_KEY]["target"]
    assert TargetOptions.from_config(stored).kind == "ordinal"
    binary = check(make_config(f"ckpt_path={result.best_checkpoint}"), "run")
    with pytest.raises(ConfigError, match=r"trained for target=ordinal \(label: ordinal malignancy\), but this run "
                                          r"asks for target=binary \(label: binary label\)"):
        check_resumable(Path(result.best_checkpoint), state, binary)
    check_target(stored, TargetOptions.from_config(stored), "same")  # its own target is fine


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.pos_weight=2"], r"^model\.pos_weight=2 weighs a binary head's positives, but the primary head of "
                             r"target=ordinal is ordinal: set model\.pos_weight=null"),
    (["model.loss._target_=lungexp.training.losses.BinaryFocalLoss"],
     r"^model\.loss\._target_=lungexp\.training\.losses\.BinaryFocalLoss is a binary head's loss"),
    (["data.balance.sampler=balanced"], r"^data\.balance\.sampler=balanced draws a binary label's positives"),
    (["eval.threshold=sensitivity@0.9"], r"^eval\.threshold=sensitivity@0\.9 is a binary head's decision threshold"),
    (["eval.strata={column:diameter_mm,edges:[0,10]}"], r"^eval\.strata stratifies a binary head's AUROC"),
    (["optimized_metric=val/auroc"], r"^optimized_metric='?val/auroc'? .*val/qwk"),
])
def test_what_only_a_binary_primary_head_has_is_refused(make_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(make_config("data=synthetic_malignancy", "target=ordinal", *overrides), "run")


def test_the_froc_of_candidates_is_refused_for_a_multiclass_head(make_config, synthetic_root: Path,
                                                                 tmp_path: Path) -> None:
    labels = pd.read_csv(synthetic_root / "candidates_V2.csv").assign(texture=5)
    labels.to_csv(tmp_path / "rated.csv", index=False)
    with pytest.raises(ConfigError, match=r"^data\.task=candidates scores the LUNA16 FROC/CPM"):
        check(make_config(f"data.labels_csv={tmp_path}/rated.csv", "target=multiclass"), "run")


@pytest.mark.parametrize(("target", "metric", "outputs"), [
    ("binary", "val/auroc", 1), ("multiclass", "val/auroc_macro", 3), ("ordinal", "val/qwk", 4),
    ("lidc_attributes", "val/auroc", 1 + 3 + 4 + 1)])
def test_the_target_chooses_the_optimized_metric_and_the_outputs(make_config, target: str, metric: str,
                                                                 outputs: int) -> None:
    run = check(make_config("data=synthetic_malignancy", f"target={target}"), "run")
    assert run.config.optimized_metric == metric
    assert run.config.callbacks.model_checkpoint.monitor == metric
    assert run.config.model.net.num_classes == outputs
    assert run.data.balance.sampler == ("none" if target in ("multiclass", "ordinal") else "balanced")


@pytest.mark.slow
def test_a_cross_validation_pools_the_folds_of_an_ordinal_target(tmp_path: Path, synthetic_root: Path,
                                                                 mlflow_dir: Path) -> None:
    from mlflow import MlflowClient

    from lungexp.training.cross_validation import POOLED_ARTIFACT, cross_validate
    from tests.helpers.config import TINY_NETS, tiny_data_overrides

    cfg = compose_config(["model=cnn3d", *TINY_NETS["cnn3d"], *tiny_data_overrides(synthetic_root, synthetic_root.parent
                                                                                    / "cache"),
                          *mlflow_overrides(mlflow_dir), "data=synthetic_malignancy", "target=ordinal", "cv.folds=3",
                          "data.split.method=series", "trainer.max_epochs=1", "eval.bootstrap=20",
                          "callbacks.lr_monitor=null", "task_name=ordinal_cv"], tmp_path)
    result = cross_validate(check(cfg, "run"))
    assert {"test/qwk", "test/qwk_ci_low", "test/mae", "cv_mean/test/qwk", "cv_std/test/mae"} <= set(result.metrics)
    client = MlflowClient(tracking_uri=cfg.paths.mlflow_uri)
    pooled = pd.read_csv(client.download_artifacts(result.parent_run_id, POOLED_ARTIFACT, str(tmp_path)))
    assert len(pooled) == sum(len(fold.predictions) for fold in result.folds)  # every fold's test rows, once
    assert {"fold", "label", "prediction", "probability_ge5"} <= set(pooled.columns)
    labels, predicted = pooled["label"].to_numpy(), pooled["prediction"].to_numpy()
    assert result.metrics["test/mae"] == pytest.approx(np.abs(labels - predicted).mean(), abs=TOLERANCE)


@pytest.mark.slow
def test_predict_ensembles_and_tta_average_each_heads_probabilities(trained, synthetic_root: Path) -> None:
    from lungexp.inference.candidate_scoring import predict_candidates, read_candidates
    from lungexp.inference.ensemble import Ensemble
    from lungexp.inference.model import Predictor
    from lungexp.inference.registered import output_schema
    from lungexp.inference.scans import open_scans

    ordinal, multiclass = (Predictor(trained(kind)[0].best_checkpoint, device="cpu") for kind in ("ordinal", "multiclass"))
    scans = open_scans(synthetic_root)
    candidates = read_candidates(synthetic_root / "annotations_with_malignancy.csv", scans).head(6)
    cumulative = [f"probability_ge{level}" for level in range(2, 6)]
    plain = predict_candidates(Ensemble([ordinal]), scans, candidates)
    assert list(plain.columns) == ["seriesuid", "coordX", "coordY", "coordZ", *cumulative, "prediction"]
    assert (plain["prediction"] == (plain[cumulative].to_numpy() > 0.5).sum(axis=1)).all()
    mirrored = predict_candidates(Ensemble([ordinal], tta="flips"), scans, candidates)
    assert np.all(np.diff(mirrored[cumulative].to_numpy(), axis=1) <= TOLERANCE)  # the mean stays monotone
    assert not np.allclose(mirrored[cumulative], plain[cumulative])
    twice = predict_candidates(Ensemble([ordinal, ordinal]), scans, candidates)
    np.testing.assert_allclose(twice[cumulative], plain[cumulative], atol=1e-6)  # the mean of one model is itself
    with pytest.raises(ConfigError, match=r"their target differs in target \(target=ordinal .* vs multiclass"):
        Ensemble([ordinal, multiclass])
    with pytest.raises(ConfigError, match=r"was trained for target=multiclass .*: calibration=isotonic maps one "
                                          r"probability to another, a binary head's"):
        Ensemble([multiclass]).calibrate("isotonic")
    with pytest.raises(ConfigError, match=r"was trained for target=ordinal .*: calibration=temperature is not "
                                          r"offered for an ordinal head"):
        Ensemble([ordinal]).calibrate("temperature")
    schema = output_schema(multiclass.recipe).to_dict()[0]
    assert list(schema["tensor-spec"]["shape"]) == [-1, 3] and schema["name"].startswith("multiclass: probability_ground")
