"""``python -m lungexp.compare``: runs from CSV files and MLflow, refusal of other test sets, --intersect,
--baseline, the comparison's MLflow run, and the sweep results table with intervals."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from mlflow import MlflowClient

from lungexp.compare import COMPARED_RUNS_TAG, LABEL_WIDTH, main, run_labels
from lungexp.metrics.comparison import ScoredRun
from lungexp.tracking.runs import create_run, ensure_experiment
from lungexp.tracking.sweep_results import report_sweep
from lungexp.training.pipeline import _print_summary
from lungexp.visualize.plots import forest_figure
from tests.test_statistics import positions


def predictions(strength: float, seed: int, n: int = 400) -> pd.DataFrame:
    table = positions(n).drop(columns="patch")
    noise = np.random.default_rng(seed).normal(size=len(table))
    return table.assign(probability=(1 / (1 + np.exp(-(table["label"] * strength + noise)))).round(6))


def write(table: pd.DataFrame, path: Path) -> str:
    table.to_csv(path, index=False)
    return str(path)


def logged_run(client: MlflowClient, experiment_id: str, name: str, table: pd.DataFrame, artifact: str,
               metrics: dict[str, float], folder: Path, parent: str | None = None) -> str:
    """A finished run holding ``table`` as the predictions artifact ``artifact`` (no training)."""
    run_id = create_run(client, experiment_id, name, parent_run_id=parent)
    local = folder / run_id / Path(artifact).name
    local.parent.mkdir(parents=True)
    table.to_csv(local, index=False)
    client.log_artifact(run_id, str(local), str(Path(artifact).parent))
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    return run_id


def test_compare_refuses_other_test_sets_naming_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write(predictions(2.0, 0), tmp_path / "fold0.csv")
    other = predictions(1.0, 1).drop(index=[0, 7])
    second = write(other, tmp_path / "fold1.csv")
    error = refused([first, second, "--no-mlflow", "--out", str(tmp_path)], capsys)
    assert "fold0 and fold1 were not tested on the same samples: 2 of fold0's 400 samples" in error
    assert "fold0 row 2 (the header is row 1)" in error and "--intersect" in error

    assert main([first, second, "--intersect", "--bootstrap", "100", "--no-mlflow", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Comparison on 398 samples in 20 resampled clusters, 2 dropped from fold0, 0 dropped from fold1" in out
    pairs = pd.read_csv(tmp_path / "comparison.csv")
    assert list(pairs[["a", "b"]].iloc[0]) == ["fold0", "fold1"] and pairs["delta_auroc"].iloc[0] > 0
    assert (tmp_path / "forest_plot.png").stat().st_size > 10_000


def test_baseline_scores_samples_by_a_labels_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = predictions(1.0, 0)
    run = write(table, tmp_path / "net.csv")
    diameter = np.where(table["label"] == 1, 8.0, 4.0) + np.random.default_rng(2).normal(0, 1, len(table))
    labels = write(table.drop(columns=["probability", "label"]).assign(diameter_mm=diameter).iloc[::-1],
                   tmp_path / "labels.csv")
    assert main([run, "--baseline", "diameter_mm", "--labels", labels, "--bootstrap", "100", "--no-mlflow",
                 "--out", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert runs["run"].iloc[0] == "baseline diameter_mm"  # the better ranking, so first
    assert runs["auroc"].iloc[0] == pytest.approx(placement_auroc(table["label"], diameter), abs=1e-6)
    assert "baseline diameter_mm − net" in capsys.readouterr().out
    assert "has no column 'malignancy'" in refused([run, "--baseline", "malignancy", "--labels", labels, "--no-mlflow"],
                                                   capsys)


def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one ``error:`` line of a compare that must exit 1, as the other tools do for bad input."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 1 and error.startswith("error: ") and "Traceback" not in error
    return error


@pytest.mark.parametrize("row, column, value, expected", [
    (2, "probability", np.nan, "probabilities in [0, 1], but 1 row(s) do not: row(s) 4 (nan)"),
    (2, "probability", 1.7, "probabilities in [0, 1], but 1 row(s) do not: row(s) 4 (1.7)"),
    (5, "label", "yes", "'label' must hold 0 or 1, but 1 row(s) do not: row(s) 7 (yes)"),
    (5, "coordX", "", "'coordX' must hold finite numbers, but 1 row(s) do not: row(s) 7 (nan)"),
])
def test_every_input_table_is_checked_naming_the_file_row_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture, row: int, column: str, value: object, expected: str) -> None:
    """A NaN probability moved sens@thr from 0.50 to 1.00 and left DeLong's p blank; 1.7 was accepted; a label
    that is not a number was an astype(int64) traceback."""
    good = write(predictions(2.0, 0), tmp_path / "good.csv")
    table = predictions(1.0, 1).astype({column: object})
    table.loc[row, column] = value
    bad = write(table, tmp_path / "bad.csv")
    error = refused([good, bad, "--no-mlflow", "--out", str(tmp_path)], capsys)
    assert error.startswith(f"error: {bad}: column '{column}' must hold ") and expected in error


def test_a_constant_score_is_refused_naming_the_run_or_the_baseline_column(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A constant --baseline column gave AUROC 0.5 [0.500, 0.500] as if it were a result."""
    table = predictions(1.0, 0)
    run, constant = write(table, tmp_path / "net.csv"), write(table.assign(probability=0.3), tmp_path / "flat.csv")
    assert "flat.csv scores all 400 compared samples alike (0.3)" in refused(
        [run, constant, "--no-mlflow", "--out", str(tmp_path)], capsys)
    labels = write(table.drop(columns=["probability", "label"]).assign(size=4.0), tmp_path / "labels.csv")
    assert f"--baseline size of {labels} scores all 400 compared samples alike" in refused(
        [run, "--baseline", "size", "--labels", labels, "--no-mlflow", "--out", str(tmp_path)], capsys)


def test_repeated_rows_count_once_and_a_point_scored_twice_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    table = predictions(1.0, 0)
    run, twice = write(table, tmp_path / "net.csv"), write(pd.concat([table, table]), tmp_path / "twice.csv")
    assert main([run, twice, "--bootstrap", "0", "--no-mlflow", "--out", str(tmp_path)]) == 0
    assert "Comparison on 400 samples" in capsys.readouterr().out
    assert f"{twice}: dropped 400 duplicate row(s)" in caplog.text
    rescored = write(pd.concat([table, table.iloc[[3]].assign(probability=0.99)]), tmp_path / "rescored.csv")
    assert "1 point(s) are given different label, probability: lines 5, 402" in refused(
        [run, rescored, "--no-mlflow", "--out", str(tmp_path)], capsys)


def placement_auroc(labels: pd.Series, scores: np.ndarray) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    return float(((positives[:, None] > negatives) + 0.5 * (positives[:, None] == negatives)).mean())


def test_compare_reads_mlflow_runs_and_logs_the_comparison(tmp_path: Path, mlflow_dir: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{mlflow_dir}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "compare_test", str(mlflow_dir / "artifacts"))
    training = logged_run(client, experiment_id, "train model=cnn3d", predictions(2.0, 0),
                          "predictions/test_predictions.csv", {"test/threshold": 0.3}, tmp_path)
    cv_parent = logged_run(client, experiment_id, "train cv", predictions(1.0, 1).assign(fold=0),
                           "predictions/pooled_test_predictions.csv", {"test/threshold": 0.6}, tmp_path)
    csv = write(predictions(0.5, 2), tmp_path / "other.csv")

    assert main([training, cv_parent, csv, "--tracking-uri", uri, "--bootstrap", "100",
                 "--out", str(tmp_path / "out")]) == 0
    runs = pd.read_csv(tmp_path / "out" / "comparison_runs.csv").set_index("run")
    assert runs.loc["train model=cnn3d", "threshold"] == 0.3 and runs.loc["train cv", "threshold"] == 0.6
    assert runs.loc["other", "threshold"] == 0.5
    pairs = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert len(pairs) == 3 and "delong_p_holm" in pairs and "mcnemar_p_holm" in pairs
    comparison = client.search_runs([experiment_id], "tags.`mlflow.runName` LIKE 'compare %'")[0]
    assert comparison.data.tags[COMPARED_RUNS_TAG] == f"{training},{cv_parent}"
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"comparison.csv", "comparison_runs.csv", "forest_plot.png"} <= artifacts
    assert comparison.info.run_id in capsys.readouterr().out


def test_sweep_table_shows_intervals_and_marks_jobs_not_worse_than_the_best(
        tmp_path: Path, mlflow_dir: Path, capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment_id = ensure_experiment(client, "sweep_interval_test", str(mlflow_dir / "artifacts"))
    parent = create_run(client, experiment_id, "train sweep model=a,b,c")
    for name, strength, auroc in (("a", 2.0, 0.8), ("b", 2.0, 0.79), ("c", 0.2, 0.6)):
        job = logged_run(client, experiment_id, f"train model={name}", predictions(strength, 0 if name != "c" else 3),
                         "predictions/test_predictions.csv",
                         {"best/val_auroc": auroc, "best/epoch": 1, "test/auroc": auroc - 0.05,
                          "test/auroc_ci_low": auroc - 0.1, "test/auroc_ci_high": auroc}, tmp_path, parent=parent)
        client.log_param(job, "model", name)

    table = report_sweep(client, experiment_id, parent, ["model"], "val/auroc", "max", "sqlite:///x")

    assert list(table["not_worse"]) == [True, True, False]  # b scores like a (the same predictions); c is worse
    out = capsys.readouterr().out
    assert "0.750 [0.700, 0.800]" in out and "0.550 [0.500, 0.600]" in out
    assert "test/auroc_ci_low" not in out  # folded into the test/auroc cell
    assert "0.750 [0.700, 0.800]" in client.get_run(parent).data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_a_trained_run_logs_intervals_and_compares_with_its_csv(trained_run, tmp_path: Path, mlflow_dir: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    metrics = trained_run.metrics
    for name in ("auroc", "average_precision", "ece", "at_threshold/sensitivity", "cpm"):
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] <= metrics[f"test/{name}_ci_high"], name
    assert "test/auroc_delong_ci_low" in metrics
    _print_summary(trained_run, "val/auroc")
    auroc = f"{metrics['test/auroc']:.3f} [{metrics['test/auroc_ci_low']:.3f}, {metrics['test/auroc_ci_high']:.3f}]"
    printed = capsys.readouterr().out
    assert auroc in printed  # the console summary shows each interval next to its metric
    assert re.search(rf"\n  best val/auroc +{trained_run.optimized_metric:.3f}\n", printed)  # the checkpoint's metric
    guesses = np.random.default_rng(0).uniform(size=len(trained_run.test_predictions)).round(6)
    csv = write(trained_run.test_predictions.assign(probability=guesses), tmp_path / "guesses.csv")
    assert main([trained_run.mlflow_run_id, csv, "--tracking-uri", f"sqlite:///{mlflow_dir}/mlflow.db",
                 "--bootstrap", "50", "--no-mlflow", "--out", str(tmp_path)]) == 0
    pairs = pd.read_csv(tmp_path / "comparison.csv")
    assert "delta_cpm" in pairs  # task candidates: the CPM is compared, from the run's annotations CSV


def test_long_run_names_are_shortened_to_what_tells_them_apart() -> None:
    """A run's name is its task name and overrides (up to 120 characters): in the tables it loses the words every
    compared run shares, and what is still too long is cut, keeping the run id."""
    widths = "model.net.widths=[32,64,128,256] " * 2
    names = {"a" * 32: "cv_resnet3d experiment=lidc_crops model=resnet3d depth=10 cv",
             "b" * 32: "cv_cnn3d experiment=lidc_crops cv",
             "c" * 32: f"cv_densenet3d experiment=lidc_crops model=densenet3d {widths}cv",
             "d" * 32: "cv_cnn3d experiment=lidc_crops cv"}
    runs = [ScoredRun(name, pd.DataFrame(), run_id=run_id) for run_id, name in names.items()]
    csv = ScoredRun("my_model_predictions_scored_by_someone_else_on_friday", pd.DataFrame(), source="x.csv")
    labels = [run.name for run in run_labels([*runs, csv])]
    assert labels[:2] == ["cv_resnet3d model=resnet3d depth=10", "cv_cnn3d bbbbbbbb"]
    assert labels[2] == "cv_densenet3d model=densenet3d… cccccccc" and len(labels[2]) == LABEL_WIDTH
    assert labels[3:] == ["cv_cnn3d dddddddd", csv.name]  # a repeated name gets its run id; a CSV keeps its name


def test_the_forest_plot_makes_room_for_long_run_names() -> None:
    long_name = "evaluate cv_run=154d404087f849fcb22ffa4ea6e5706c data.root=data/heldout eval.tta=flips eval.calibration=temperature"
    pairs = [(f"{long_name} − evaluate ckpt_path=logs/demo/runs/2026-12-02_06-52-40/fold0/epoch011.ckpt", 0.05, 0.01, 0.1),
             ("a − b", -0.02, -0.05, 0.01)]
    figure = forest_figure({"Δ AUROC (DeLong)": pairs, "Δ CPM (bootstrap)": pairs})
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays it out, as savefig does
    labels = [label.get_window_extent(renderer) for label in figure.axes[0].get_yticklabels()]
    assert min(box.x0 for box in labels) >= 0  # the longest name starts inside the figure, not cut off
    panel_inches = [ax.get_window_extent(renderer).width / figure.dpi for ax in figure.axes]
    assert min(panel_inches) > 2  # and the panels keep their width


@pytest.mark.parametrize("variable, argument", [(None, "HTTP://alice:s3cret@localhost:5000"),
                                                ("MLFLOW_TRACKING_URI", "sqlite:///x.db")])
def test_a_password_in_the_tracking_uri_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, variable: str | None,
        argument: str) -> None:
    if variable:
        monkeypatch.setenv(variable, "postgresql://alice:s3cret@db/mlflow")
    first = write(predictions(2.0, 0), tmp_path / "fold0.csv")
    error = refused([first, first, "--tracking-uri", argument, "--out", str(tmp_path / "out")], capsys)
    assert "holds a password" in error and (variable or "--tracking-uri") in error and "s3cret" not in error
    assert not (tmp_path / "out").exists()
