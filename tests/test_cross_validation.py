"""``cv.folds=K``: K folds in one command, nested MLflow runs, pooled report, finished folds never retrained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from lungexp.config.check import check, cross_validation_options, data_options
from lungexp.metrics.stratified import Strata, stratified_auroc
from lungexp.training import cross_validation
from lungexp.training.cross_validation import FoldFailedError, cross_validate, plan_folds
from lungexp.utils.errors import ConfigError
from tests.helpers.config import (
    TINY_NETS,
    TINY_SYNTHETIC,
    compose_config,
    mlflow_overrides,
    tiny_data_overrides,
)


@pytest.fixture(scope="module")
def three_subsets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LUNA16-format dataset with 3 subsets of 3 scans: 3 folds, each fold's splits with both classes."""
    from lungexp.data.synthetic import generate_luna16_dataset

    root = tmp_path_factory.mktemp("three_subsets") / "luna16"
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_SYNTHETIC.items()}
    generate_luna16_dataset(root, **{**settings, "num_scans": 9, "num_subsets": 3})
    return root


def cv_config(root: Path, data: Path, *overrides: str):
    return compose_config([*TINY_NETS["cnn3d"], *tiny_data_overrides(data, data.parent / "cache"), *overrides], root)


def test_cv_options_are_checked_before_any_work(tmp_path: Path, three_subsets: Path) -> None:
    for folds in (1, "true", 2.5):
        with pytest.raises(ConfigError, match="cv.folds="):
            cross_validation_options(cv_config(tmp_path, three_subsets, f"cv.folds={folds}"))
    with pytest.raises(ConfigError, match="test_after_fit=true"):
        cross_validation_options(cv_config(tmp_path, three_subsets, "cv.folds=3", "test_after_fit=false"))
    # ckpt_path would resume one checkpoint in every fold: a CV continues its own folds instead
    with pytest.raises(ConfigError, match="ckpt_path=last with cv.folds: .* run the same command again without"):
        cross_validation_options(cv_config(tmp_path, three_subsets, "cv.folds=3", "ckpt_path=last"))


def test_a_wrong_number_of_subset_folds_fails_before_the_patch_cache_is_built(tmp_path: Path,
                                                                              three_subsets: Path) -> None:
    cache_dir = tmp_path / "fresh_cache"
    cfg = cv_config(tmp_path, three_subsets, "cv.folds=5", f"data.cache_dir={cache_dir}")
    with pytest.raises(ConfigError, match=r"scans are in 3 subset\(s\) \[0, 1, 2\]; set cv.folds=3"):
        cross_validate(check(cfg, "run"))
    assert not list(cache_dir.glob("**/*.npy")), "patches were extracted before the folds were checked"


def test_subset_folds_must_be_the_subsets_present(tmp_path: Path) -> None:
    samples = pd.DataFrame({"seriesuid": [f"s{i}" for i in range(10)], "subset": [i % 5 for i in range(10)],
                            "label": [1, 0] * 5})
    cfg = compose_config(["cv.folds=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"scans are in 5 subset\(s\) \[0, 1, 2, 3, 4\]; set cv.folds=5"):
        plan_folds(data_options(cfg).split, 3, samples)
    folds = plan_folds(data_options(cfg).split, 5, samples)
    assert [(f.split["fold"], f.split["val_fold"]) for f in folds] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]


@pytest.mark.slow
def test_three_fold_cv_nests_runs_pools_predictions_and_skips_finished_folds(
        tmp_path: Path, three_subsets: Path, mlflow_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ("cv.folds=3", "trainer.max_epochs=1", "callbacks.lr_monitor=null", "task_name=cv3",
                 "eval.strata={column: coordZ, edges: [-1000, -200]}", *mlflow_overrides(mlflow_dir))
    real_train, trained = cross_validation.train, []

    def train_failing_fold1(run):
        trained.append(run.data.split.fold)
        if run.data.split.fold == 1:
            raise ConfigError("a broken fold")
        return real_train(run)

    # 1st run: fold 1 fails -> the CV stops naming it, fold 0 stays finished.
    monkeypatch.setattr(cross_validation, "train", train_failing_fold1)
    with pytest.raises(FoldFailedError, match=r"fold 1 \(test subset1, validation subset2\) failed: a broken fold"):
        cross_validate(check(cv_config(tmp_path, three_subsets, *overrides), "run"))
    assert trained == [0, 1]

    # 2nd run, same command: fold 0 is not retrained.
    monkeypatch.setattr(cross_validation, "train", lambda run: trained.append(run.data.split.fold) or real_train(run))
    result = cross_validate(check(cv_config(tmp_path, three_subsets, *overrides), "run"))
    assert trained == [0, 1, 1, 2]
    assert [f.reused for f in result.folds] == [True, False, False]

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("lungexp").experiment_id
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("cv3 ") and parent.info.run_name.endswith(" cv")  # task_name + overrides
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.tags["lungexp.cv.fold"] for c in finished) == ["0", "1", "2"]
    assert [c.data.tags["lungexp.cv.fold"] for c in children if c.info.status == "FAILED"] == ["1"]

    # Mean and std of each test metric over the folds, checked against the fold runs themselves.
    aurocs = np.array([c.data.metrics["test/auroc"] for c in finished])
    assert parent.data.metrics["cv_mean/test/auroc"] == pytest.approx(aurocs.mean(), abs=1e-6)
    assert parent.data.metrics["cv_std/test/auroc"] == pytest.approx(aurocs.std(ddof=1), abs=1e-6)
    assert "cv_mean/test/cpm" in parent.data.metrics and "cv_std/test/sens_at_1_fp" in parent.data.metrics

    # The pooled predictions: every sample once, and the pooled AUROC recomputed with scikit-learn.
    pooled = pd.read_csv(client.download_artifacts(result.parent_run_id, cross_validation.POOLED_ARTIFACT,
                                                   str(tmp_path / "dl")))
    assert pooled["cache_row"].is_unique and sorted(pooled["fold"].unique()) == [0, 1, 2]
    assert pooled["seriesuid"].nunique() == 9
    assert parent.data.metrics["test/auroc"] == pytest.approx(roc_auc_score(pooled["label"], pooled["probability"]),
                                                              abs=1e-6)
    assert 0 <= parent.data.metrics["test/cpm"] <= 1
    # eval.strata: the pooled report stratifies the pooled table (fold 0's read back from its logged CSV)
    codes = Strata("coordZ", (-1000.0, -200.0)).codes(pooled["coordZ"], "pooled")
    assert parent.data.metrics["test/auroc_stratified"] == pytest.approx(
        stratified_auroc(pooled["label"], pooled["probability"], codes), abs=1e-6)
    assert parent.data.metrics["test/coordZ_-1000--200/positives"] == pooled["label"][codes == 0].sum()
    assert "cv_mean/test/auroc_stratified" in parent.data.metrics
    plots = {a.path for a in client.list_artifacts(result.parent_run_id)}  # figures live at the artifact root
    assert {"froc.png", "roc_curve.png", "precision_recall.png", "auroc_by_stratum.png"} <= plots
    folds_table = pd.read_csv(client.download_artifacts(result.parent_run_id, "cv/folds.csv", str(tmp_path / "dl")))
    assert list(folds_table["reused"]) == [True, False, False]

    # 3rd run: everything finished -> nothing retrained, no new runs, the same parent.
    started = {c.info.run_id: c.info.start_time for c in children}
    again = cross_validate(check(cv_config(tmp_path, three_subsets, *overrides), "run"))
    assert trained == [0, 1, 1, 2]
    assert again.parent_run_id == result.parent_run_id and all(f.reused for f in again.folds)
    rerun_children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert {c.info.run_id: c.info.start_time for c in rerun_children} == started
    assert again.metrics["test/cpm"] == pytest.approx(result.metrics["test/cpm"])


@pytest.mark.slow
def test_luna16_fpr_preset_runs_ten_fold_cv_on_generated_data(tmp_path: Path, three_subsets: Path) -> None:
    """The preset composes as published (10 folds of LUNA16 subsets, three nested fields of view) and runs,
    with 3 folds on 3 generated subsets, through fast_dev_run."""
    preset = compose_config(["experiment=luna16_fpr", "data.root=/data/LUNA16"], tmp_path)
    assert preset.cv.folds == 10 and preset.data.split.method == "subsets"
    assert list(preset.data.patch.spacing_mm) == [0.7, 1.05, 1.4] and preset.model.net.in_channels == 3
    assert preset.data.labels_csv == "/data/LUNA16/candidates_V2.csv"

    result = cross_validate(check(compose_config(
        ["experiment=luna16_fpr", f"data.root={three_subsets}", f"data.cache_dir={three_subsets.parent / 'cache'}",
         "cv.folds=3", "trainer=debug", "data.batch_size=8", "data.num_workers=0", "data.preprocess_workers=0"],
        tmp_path), "run"))
    assert [f.fold.description for f in result.folds] == [
        "test subset0, validation subset1", "test subset1, validation subset2", "test subset2, validation subset0"]
    assert result.parent_run_id is None  # fast_dev_run logs nothing
    assert {"test/cpm", "cv_mean/test/auroc", "cv_std/test/auroc"} <= result.metrics.keys()


def test_series_folds_when_the_data_has_no_subsets_to_follow(make_config) -> None:
    result = cross_validate(check(make_config("cv.folds=3", "data.split.method=series", "trainer=debug"), "run"))
    assert [f.fold.split["method"] for f in result.folds] == ["folds"] * 3
    tested = [set(f.predictions["seriesuid"]) for f in result.folds]  # fast_dev_run: one batch of each test fold
    assert all(tested) and not (tested[0] & tested[1] or tested[1] & tested[2] or tested[0] & tested[2])


def test_folds_share_one_cache_and_cap_training_negatives_as_a_single_run_does(tmp_path: Path,
                                                                              three_subsets: Path) -> None:
    """data.max_negatives_per_scan caps training only; on the CV's cache of every sample, in memory, the same way."""
    import hydra

    def datamodule(cache_dir: Path, cap: int | None = 2):
        cfg = cv_config(tmp_path, three_subsets, f"data.cache_dir={cache_dir}",
                        f"data.max_negatives_per_scan={cap or 'null'}")
        module = hydra.utils.instantiate(cfg.data, _convert_="partial")
        module.prepare_data()
        module.setup()
        return module

    alone = datamodule(tmp_path / "capped")
    full = datamodule(tmp_path / "shared", cap=None)  # what cross_validate builds first
    fold = datamodule(tmp_path / "shared")  # finds the full cache instead of building a capped one
    assert fold.cache.folder == full.cache.folder and len(fold.cache) > len(alone.cache)
    assert len(list((tmp_path / "shared").iterdir())) == 1
    for name in ("train", "val", "test"):
        rows = [m.cache.index.loc[m.datasets[name].rows].reset_index(drop=True) for m in (alone, fold)]
        pd.testing.assert_frame_equal(*rows)
    assert (alone.cache.index.groupby("seriesuid")["label"].apply(lambda x: (x == 0).sum()) <= 8).all()
    negatives = fold.cache.index.loc[fold.datasets["train"].rows].query("label == 0").groupby("seriesuid").size()
    assert negatives.max() <= 2


def test_a_fold_is_continued_only_when_its_run_ended_unfinished(mlflow_dir: Path, tmp_path: Path) -> None:
    """What a re-run continues: a KILLED or FAILED fold run, or a RUNNING one whose process is gone (SIGKILL, the
    OOM killer); never one that finished, nor one still running in a live process."""
    from lungexp.tracking.folds import FoldRuns
    from lungexp.tracking.stale_runs import PROCESS_START_TAG

    runs = FoldRuns(f"sqlite:///{mlflow_dir}/mlflow.db", "interrupted-folds", str(mlflow_dir / "artifacts"),
                    config_hash=tmp_path.name, run_name="interrupted")
    assert runs.interrupted_fold(0) is None  # never started
    live = runs.start_fold(0, tmp_path / "fold0")
    assert runs.interrupted_fold(0) is None  # this process runs it
    runs.client.set_tag(live, PROCESS_START_TAG, "a process started earlier under the same pid")  # its owner is gone
    stale = runs.interrupted_fold(0)
    assert stale is not None and (stale.run_id, stale.status, stale.output_dir) == (live, "RUNNING",
                                                                                  (tmp_path / "fold0").resolve())
    killed = runs.start_fold(1, tmp_path / "fold1")
    runs.client.set_terminated(killed, "KILLED")
    assert runs.interrupted_fold(1).run_id == killed
    runs.complete_fold(killed, 0.5)  # continued later, and finished
    assert runs.interrupted_fold(1) is None
