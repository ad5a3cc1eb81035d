"""Fold ensembles: several checkpoints averaged as one predictor, their CV records, and the leak ``evaluate`` refuses."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from lungexp.config.checkpoint_groups import data_location
from lungexp.evaluation.operating_point import OperatingPoint
from lungexp.inference.ensemble import Ensemble, check_unseen_data, checkpoint_paths
from lungexp.inference.model import Predictor
from lungexp.tracking.folds import FOLDS_PARAM, FoldRuns, fold_checkpoints
from lungexp.training.checkpoint import RECIPE_KEY
from lungexp.training.module import VALIDATION_PREDICTIONS
from lungexp.utils.errors import ConfigError


def hu_patches(predictor: Predictor, count: int = 6) -> np.ndarray:
    patch = predictor.recipe.patch
    generator = np.random.default_rng(0)
    return generator.uniform(-1000, 400, (count, patch.channels, patch.size, patch.size, patch.size)).astype(np.float32)


def with_recipe(source: str | Path, target: Path, **changes: object) -> Path:
    """A copy of a checkpoint whose recipe has ``changes`` (``patch``, ``data``: merged into the stored dicts)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        checkpoint[RECIPE_KEY][key] = {**checkpoint[RECIPE_KEY][key], **value}
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def member(trained_run) -> Predictor:
    return Predictor(trained_run.best_checkpoint, device="cpu")


def test_an_ensemble_of_one_checkpoint_is_that_checkpoint_exactly(member: Predictor) -> None:
    patches = hu_patches(member)
    alone = member.patch_probabilities(patches, batch_size=4)
    ensemble = Ensemble([member])
    np.testing.assert_array_equal(ensemble.patch_probabilities(patches, batch_size=4), alone)
    assert ensemble.decision_threshold("youden") == member.operating_point.threshold("youden")
    assert alone.std() > 0  # a real model, not a constant


def test_an_ensemble_of_two_copies_is_the_checkpoint(trained_run, member: Predictor, tmp_path: Path) -> None:
    copy = Predictor(shutil.copy(trained_run.best_checkpoint, tmp_path / "copy.ckpt"), device="cpu")
    patches = hu_patches(member)
    np.testing.assert_array_equal(Ensemble([member, copy]).patch_probabilities(patches),
                                  member.patch_probabilities(patches))


def test_an_ensemble_averages_the_members_probabilities(trained_run, member: Predictor, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = {key: value * 0.5 if value.is_floating_point() else value
                                for key, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "other.ckpt")
    other = Predictor(tmp_path / "other.ckpt", device="cpu")
    patches = hu_patches(member)
    first, second = member.patch_probabilities(patches), other.patch_probabilities(patches)
    assert np.abs(first - second).max() > 1e-3
    np.testing.assert_allclose(Ensemble([member, other]).patch_probabilities(patches), (first + second) / 2,
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_a_calibrated_ensemble_averages_each_members_own_calibrated_probabilities(
        trained_run, tmp_path: Path, method: str) -> None:
    """Members are calibrated apart: each by the calibrator fitted on its own validation predictions, then averaged
    (one calibrator of their pooled validation predictions would fit neither)."""
    checkpoint = torch.load(trained_run.best_checkpoint, map_location="cpu", weights_only=True)
    validation = checkpoint[VALIDATION_PREDICTIONS]
    validation["probability"] = validation["probability"] ** 4  # another member: far less confident of positives
    torch.save(checkpoint, tmp_path / "other.ckpt")
    members = [Predictor(path, device="cpu") for path in (trained_run.best_checkpoint, tmp_path / "other.ckpt")]
    patches = -1000 + np.linspace(0, 1, 12)[:, None, None, None, None] * (hu_patches(members[0], 12) + 1000)
    plain = [member.patch_probabilities(patches) for member in members]  # from air to tissue: a range of scores

    ensemble = Ensemble(members)
    ensemble.calibrate(method)
    own = [OperatingPoint.fit(member.validation_predictions, method) for member in members]
    expected = np.mean([point.apply(p.astype(np.float64)) for point, p in zip(own, plain, strict=True)], axis=0)
    np.testing.assert_allclose(ensemble.patch_probabilities(patches), expected, rtol=0, atol=1e-7)
    pooled_validation = pd.concat([member.validation_predictions for member in members], ignore_index=True)
    pooled = OperatingPoint.fit(pooled_validation, method).apply(np.mean(plain, axis=0, dtype=np.float64))
    assert np.abs(expected - pooled).max() > 1e-3  # not one calibrator of the pooled validation predictions
    assert ensemble.calibration == method and f"calibration={method}" in ensemble.description
    assert ensemble.decision_threshold("youden") == pytest.approx(
        np.mean([point.threshold("youden") for point in own]))


def test_members_with_different_patch_sizes_are_refused_naming_both(trained_run, member: Predictor,
                                                                    tmp_path: Path) -> None:
    bigger = Predictor(with_recipe(trained_run.best_checkpoint, tmp_path / "bigger.ckpt", patch={"size": 24}),
                       device="cpu")
    with pytest.raises(ConfigError, match=r"bigger\.ckpt cannot be ensembled: their preprocessing differs in "
                                          r"patch\.size \(patch\.size=16 vs 24\)") as error:
        Ensemble([member, bigger])
    assert str(member.path) in str(error.value)


def test_members_trained_for_another_target_are_refused_naming_both_and_the_setting(trained_run, member: Predictor,
                                                                                    tmp_path: Path) -> None:
    """Malignancy >= 3 and >= 4 are different positive classes: their mean is neither. A rule spelled otherwise
    but the same (``">= 4"``, ``">=4.0"``) is the same target."""
    def relabelled(name: str, **data: object) -> Predictor:
        return Predictor(with_recipe(trained_run.best_checkpoint, tmp_path / f"{name}.ckpt", data=data), device="cpu")

    three = relabelled("three", label_rule={"column": "malignancy", "positive": ">=3", "negative": "<=2"})
    four = relabelled("four", label_rule={"column": "malignancy", "positive": ">=4", "negative": "<=2"})
    with pytest.raises(ConfigError, match=r"three\.ckpt and .*four\.ckpt cannot be ensembled: their target differs in "
                                          r"data\.label_rule \(data\.label_rule=.*'>=3'.* vs .*'>=4'"):
        Ensemble([three, four])
    with pytest.raises(ConfigError, match=r"target differs in data\.label_rule \(data\.label_rule=None vs"):
        Ensemble([member, four])  # the CSV's own labels vs a rule
    spelled = relabelled("spelled", label_rule={"column": "malignancy", "positive": ">= 4.0", "negative": "<= 2"})
    assert len(Ensemble([four, spelled]).members) == 2
    other_task = Predictor(trained_run.best_checkpoint, device="cpu")
    other_task.recipe = replace(other_task.recipe, task="malignancy")
    with pytest.raises(ConfigError, match=r"target differs in data\.task \(data\.task=candidates vs malignancy\)"):
        Ensemble([member, other_task])


def test_a_fold_ensemble_is_refused_on_its_own_data_and_allowed_on_other_data(trained_run, member: Predictor,
                                                                              tmp_path: Path) -> None:
    split = member.recipe.data["split"]
    other_fold = Predictor(with_recipe(trained_run.best_checkpoint, tmp_path / "fold1.ckpt",
                                       data={"split": {**split, "seed": split.get("seed", 0) + 1}}), device="cpu")
    folds = Ensemble([member, other_fold])
    own = {key: member.recipe.data.get(key) for key in ("root", "labels_csv")}
    with pytest.raises(ConfigError, match="trained on different splits of data.root=.*would leak"):
        check_unseen_data(folds, own)
    check_unseen_data(folds, {**own, "root": str(tmp_path / "another_dataset")})  # data the folds never saw
    check_unseen_data(folds, {**own, "labels_csv": str(tmp_path / "heldout.csv")})  # patients set aside before
    check_unseen_data(Ensemble([member, member]), own)  # one split: its test split is unseen


def test_the_leak_is_found_through_the_interpolations_a_checkpoint_stores(trained_run, tmp_path: Path) -> None:
    """Checkpoints keep ``${paths.data_dir}/...`` unresolved (the demo's root): the check resolves them as the
    evaluating command does, so the CV's own dataset is recognised, and another root is not."""
    stored = {"root": "${paths.data_dir}/synthetic_luna16", "labels_csv": "${data.root}/candidates_V2.csv"}
    folds = Ensemble([Predictor(with_recipe(trained_run.best_checkpoint, tmp_path / f"fold{fold}.ckpt",
                                            data={**stored, "split": {"method": "subsets", "fold": fold}}),
                                device="cpu") for fold in (0, 1)])
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path / "data")}, "data": stored})
    with pytest.raises(ConfigError, match=f"data.root={tmp_path}/data/synthetic_luna16 .*would leak"):
        check_unseen_data(folds, data_location(cfg, cfg.data), lambda data: data_location(cfg, data))
    elsewhere = OmegaConf.merge(cfg, {"data": {"root": str(tmp_path / "heldout")}})
    check_unseen_data(folds, data_location(elsewhere, elsewhere.data), lambda data: data_location(elsewhere, data))


def test_a_cv_parent_records_its_fold_checkpoints_and_they_are_found_again(trained_run, mlflow_dir: Path,
                                                                           tmp_path: Path) -> None:
    uri = f"sqlite:///{mlflow_dir}/mlflow.db"
    runs = FoldRuns(uri, "ensemble-test", str(mlflow_dir / "artifacts"), config_hash="ensemble-test",
                    run_name="cv")
    written = []
    for fold in range(2):
        run_id = runs.start_fold(fold, tmp_path / f"fold{fold}")
        written.append(Path(shutil.copy(trained_run.best_checkpoint, tmp_path / f"fold{fold}.ckpt")))
        runs.record_checkpoint(fold, run_id, written[-1])
        runs.complete_fold(run_id, None)
    runs.finish()
    assert fold_checkpoints(uri, runs.parent_id, tmp_path / "downloads") == written
    written[1].unlink()  # moved away: its MLflow artifact is downloaded instead
    found = checkpoint_paths(None, runs.parent_id, uri, tmp_path / "downloads")
    assert found[0] == written[0] and found[1].is_relative_to(tmp_path / "downloads")
    assert found[1].read_bytes() == Path(trained_run.best_checkpoint).read_bytes()
    with pytest.raises(ConfigError, match="not the parent run of a cross-validation"):
        fold_checkpoints(uri, run_id, tmp_path)
    with pytest.raises(ConfigError, match="only one of them"):
        checkpoint_paths("a.ckpt", runs.parent_id, uri, tmp_path)


def test_a_cv_stopped_before_all_its_folds_finished_is_refused_naming_the_missing_folds(
        trained_run, mlflow_dir: Path, tmp_path: Path) -> None:
    """A CV killed after 2 of 3 folds is not the CV's model: ``cv_run=`` says which folds are missing and how to
    finish it, and gives the whole ensemble once they are there."""
    uri = f"sqlite:///{mlflow_dir}/mlflow.db"
    runs = FoldRuns(uri, "ensemble-test", str(mlflow_dir / "artifacts"), config_hash="stopped-cv", run_name="cv")
    runs.client.log_param(runs.parent_id, FOLDS_PARAM, 3)  # as the CV's logged config has it

    def record(fold: int) -> None:
        run_id = runs.start_fold(fold, tmp_path / f"fold{fold}")
        runs.record_checkpoint(fold, run_id, shutil.copy(trained_run.best_checkpoint, tmp_path / f"fold{fold}.ckpt"))
        runs.complete_fold(run_id, None)

    record(0)
    record(1)
    runs.kill()
    with pytest.raises(ConfigError, match=rf"cv_run={runs.parent_id}: the cross-validation is incomplete \(KILLED\): it "
                                          r"has the checkpoints of fold\(s\) 0, 1 of 3, not of fold\(s\) 2\. Finish it "
                                          r"by running the same `python -m lungexp.run \.\.\. cv\.folds=3` command again"):
        checkpoint_paths(None, runs.parent_id, uri, tmp_path / "downloads")
    record(2)
    runs.finish()
    assert len(checkpoint_paths(None, runs.parent_id, uri, tmp_path / "downloads")) == 3
