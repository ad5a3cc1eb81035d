"""``python -m lungexp.compare`` on multiclass, ordinal and multitask predictions tables (CSV files): the kind read
from the columns, paired bootstrap differences and McNemar's test, runs of other targets refused in one line,
an ordinal --baseline scored as its level; the binary path is tests/test_compare.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from lungexp.compare import main
from lungexp.metrics.comparison import ScoredRun, align
from lungexp.metrics.ordinal import ordinal_metrics
from lungexp.metrics.run_targets import run_target
from lungexp.models.heads import cumulative_probabilities
from lungexp.tracking.runs import ensure_experiment
from tests.test_compare import logged_run, predictions, refused, write
from tests.test_statistics import positions

TEXTURE = ("ground_glass", "part_solid", "solid")


def samples(n: int = 400, classes: int = 3, seed: int = 0) -> pd.DataFrame:
    """``n`` samples in 20 series with class labels 0 … ``classes`` − 1."""
    table = positions(n).drop(columns=["patch", "label", "probability"])
    return table.assign(label=np.random.default_rng(seed).integers(0, classes, len(table)))


def multiclass_run(table: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """Softmax probabilities favouring the true class by ``strength``, as probability_<class> columns."""
    logits = np.random.default_rng(seed).normal(size=(len(table), 3)) + strength * np.eye(3)[table["label"]]
    probabilities = torch.softmax(torch.as_tensor(logits), dim=1).numpy().round(6)
    return table.assign(**{f"probability_{name}": probabilities[:, i] for i, name in enumerate(TEXTURE)},
                        prediction=probabilities.argmax(axis=1))


def ordinal_run(table: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    """CORN probabilities P(level >= k), k = 2 … 5, that follow the level by ``strength``."""
    noise = np.random.default_rng(seed).normal(size=(len(table), 4))
    cumulative = cumulative_probabilities(torch.as_tensor(
        strength * (table["label"].to_numpy()[:, None] - np.arange(4) - 0.5) + noise)).numpy().round(6)
    return table.assign(**{f"probability_ge{k}": cumulative[:, k - 2] for k in range(2, 6)},
                        prediction=(cumulative > 0.5).sum(axis=1))


def test_multiclass_runs_compare_by_paired_bootstrap_and_a_real_difference_is_significant(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = samples()
    good = write(multiclass_run(table, 3.0, 1), tmp_path / "good.csv")
    weak = write(multiclass_run(table, 0.3, 2).iloc[::-1], tmp_path / "weak.csv")  # rows in another order
    assert main([weak, good, "--bootstrap", "200", "--no-mlflow", "--out", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "multiclass runs, multiclass (ground_glass, part_solid, solid): paired cluster bootstrap" in out
    assert "Comparison of multiclass (ground_glass, part_solid, solid) on 400 samples in 20 resampled clusters" in out
    runs = pd.read_csv(tmp_path / "comparison_runs.csv")
    assert list(runs["run"]) == ["good", "weak"]  # best macro AUROC first
    for name in ("auroc_macro", "balanced_accuracy", "f1_macro", "accuracy"):
        assert (runs[f"{name}_ci_low"] <= runs[name]).all() and (runs[name] <= runs[f"{name}_ci_high"]).all()
    pair = pd.read_csv(tmp_path / "comparison.csv").iloc[0]
    assert (pair["a"], pair["b"]) == ("good", "weak")
    assert pair["delta_auroc_macro"] == pytest.approx(runs["auroc_macro"][0] - runs["auroc_macro"][1])
    assert pair["delta_auroc_macro_ci_low"] > 0 and pair["auroc_macro_p"] < 0.01
    assert pair["delta_balanced_accuracy_ci_low"] > 0 and pair["mcnemar_p"] < 0.001
    assert pair["mcnemar_a_only"] > pair["mcnemar_b_only"]
    assert (tmp_path / "forest_plot.png").stat().st_size > 10_000


def test_an_identical_pair_differs_by_zero_with_p_one(tmp_path: Path) -> None:
    run = ordinal_run(samples(classes=5), 1.5, 0)
    first, second = write(run, tmp_path / "first.csv"), write(run, tmp_path / "second.csv")
    third = write(ordinal_run(samples(classes=5), 0.2, 3), tmp_path / "third.csv")
    assert main([first, second, third, "--bootstrap", "100", "--no-mlflow", "--out", str(tmp_path)]) == 0
    pairs = pd.read_csv(tmp_path / "comparison.csv").set_index(["a", "b"])
    same = pairs.loc[("first", "second")]
    for name in ("qwk", "mae", "accuracy_within1", "accuracy", "auroc_ge2", "auroc_ge5"):
        assert same[f"delta_{name}"] == 0 and same[f"{name}_p"] == 1 and same[f"{name}_p_holm"] == 1
    assert same["mcnemar_p"] == 1 and same["delta_qwk_ci_low"] == same["delta_qwk_ci_high"] == 0
    assert pairs.loc[("first", "third"), "qwk_p_holm"] < 0.05  # three runs: Holm across the pairs


def test_ordinal_runs_report_kappa_error_and_every_cut(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = samples(classes=5)
    strong, weak = ordinal_run(table, 2.0, 0), ordinal_run(table, 0.3, 1)
    paths = [write(strong, tmp_path / "strong.csv"), write(weak, tmp_path / "weak.csv")]
    assert main([*paths, "--bootstrap", "100", "--no-mlflow", "--out", str(tmp_path)]) == 0

    runs = pd.read_csv(tmp_path / "comparison_runs.csv").set_index("run")
    cumulative = strong[[f"probability_ge{k}" for k in range(2, 6)]].to_numpy().copy()
    expected = ordinal_metrics(table["label"].to_numpy().copy(), cumulative)
    for name in ("qwk", "mae", "accuracy_within1", "auroc_ge2", "auroc_ge3", "auroc_ge4", "auroc_ge5"):
        assert runs.loc["strong", name] == pytest.approx(expected[name])
    pair = pd.read_csv(tmp_path / "comparison.csv").iloc[0]
    assert pair["delta_qwk"] > 0 and pair["delta_qwk_ci_low"] > 0 and pair["delta_mae_ci_high"] < 0
    out = capsys.readouterr().out
    assert "ordinal (1, 2, 3, 4, 5)" in out and "Δauroc_ge5" in out and "DeLong" in out


@pytest.mark.parametrize("second, expected", [
    ("ordinal", "texture and malignancy predict different targets (texture: multiclass (ground_glass, "
                "part_solid, solid); malignancy: ordinal (1, 2, 3, 4, 5)); compare runs trained on the same target"),
    ("binary", "texture and malignancy predict different targets (texture: multiclass (ground_glass, "
               "part_solid, solid); malignancy: binary (negative, positive))"),
    ("renamed", "malignancy: multiclass (ground_glass, part_solid, calcified)"),
])
def test_runs_of_other_targets_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       second: str, expected: str) -> None:
    table = samples()
    texture = write(multiclass_run(table, 1.0, 0), tmp_path / "texture.csv")
    other = {"ordinal": lambda: ordinal_run(samples(classes=5), 1.0, 0), "binary": lambda: predictions(1.0, 0),
             "renamed": lambda: multiclass_run(table, 1.0, 1).rename(columns={"probability_solid": "probability_calcified"})}
    malignancy = write(other[second](), tmp_path / "malignancy.csv")
    error = refused([texture, malignancy, "--no-mlflow", "--out", str(tmp_path)], capsys)
    assert expected in error and error.count("\n") == 1


def test_a_logged_target_names_its_column_and_must_match_the_columns() -> None:
    table = ordinal_run(samples(classes=5), 1.0, 0)
    logged = {"target.kind": "ordinal", "target.column": "malignancy", "target.rule": "rating"}
    assert run_target(table, "run a", logged).describe() == "ordinal 'malignancy' (1, 2, 3, 4, 5)"
    spiculation = ScoredRun("b", table, settings={**logged, "target.column": "spiculation"})
    with pytest.raises(ValueError, match="a and b predict different targets .*ordinal 'malignancy'.*'spiculation'"):
        align([ScoredRun("a", table, settings=logged), spiculation])
    with pytest.raises(ValueError, match="logged target.kind=multiclass, but its predictions hold an? ordinal"):
        run_target(table, "run a", {"target.kind": "multiclass"})


def test_a_calibrated_multiclass_table_has_its_classes_only() -> None:
    """eval.calibration=temperature keeps the network's own probabilities as probability_<class>_uncalibrated."""
    table = multiclass_run(samples(), 1.0, 0)
    raw = {f"probability_{name}_uncalibrated": table[f"probability_{name}"] for name in TEXTURE}
    assert run_target(table.assign(**raw), "run a").class_names == TEXTURE


def test_multitask_runs_compare_their_binary_primary_as_binary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = predictions(2.0, 0)
    auxiliary = multiclass_run(table.assign(label=np.random.default_rng(1).integers(-1, 3, len(table))), 1.0, 0)
    multitask = table.assign(texture_label=auxiliary["label"], texture_prediction=auxiliary["prediction"],
                             **{f"texture_probability_{name}": auxiliary[f"probability_{name}"] for name in TEXTURE})
    paths = [write(multitask, tmp_path / "multitask.csv"), write(predictions(1.0, 1), tmp_path / "single.csv")]
    assert main([*paths, "--bootstrap", "50", "--no-mlflow", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "multitask runs (auxiliary heads texture): compared on the primary head, binary (negative, positive)" in out
    assert "delong_p" in pd.read_csv(tmp_path / "comparison.csv")  # the binary comparison: DeLong and all


def test_an_ordinal_baseline_scores_a_rating_column_as_its_level(tmp_path: Path) -> None:
    table = samples(classes=5)
    run = write(ordinal_run(table, 0.5, 0), tmp_path / "net.csv")
    reader = table["label"] + 1 + np.random.default_rng(4).choice([-1, 0, 0, 0, 1], len(table))
    labels = write(table.drop(columns="label").assign(reader=reader.clip(1, 5)), tmp_path / "labels.csv")
    assert main([run, "--baseline", "reader", "--labels", labels, "--bootstrap", "50", "--no-mlflow",
                 "--out", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "comparison_runs.csv").set_index("run")
    within = np.mean(np.abs(reader.clip(1, 5) - 1 - table["label"]) <= 1)
    assert runs.loc["baseline reader", "accuracy_within1"] == pytest.approx(within)
    assert runs.loc["baseline reader", "mae"] == pytest.approx(np.mean(np.abs(reader.clip(1, 5) - 1 - table["label"])))


def test_a_multiclass_baseline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = samples()
    run = write(multiclass_run(table, 1.0, 0), tmp_path / "net.csv")
    labels = write(table.drop(columns="label").assign(texture=3), tmp_path / "labels.csv")
    error = refused([run, "--baseline", "texture", "--labels", labels, "--no-mlflow", "--out", str(tmp_path)], capsys)
    assert "--baseline texture: a multiclass target's classes (ground_glass, part_solid, solid) have no order" in error


def test_a_class_label_out_of_range_is_refused_naming_the_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = multiclass_run(samples(), 1.0, 0)
    good = write(table, tmp_path / "good.csv")
    bad = write(table.assign(label=table["label"].where(table.index != 4, 3)), tmp_path / "bad.csv")
    error = refused([good, bad, "--no-mlflow", "--out", str(tmp_path)], capsys)
    assert f"{bad}: column 'label' must hold class indices 0 … 2, but 1 row(s) do not: row(s) 6 (3)" in error


def test_an_mlflow_run_is_compared_by_the_target_it_logged(tmp_path: Path, mlflow_dir: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{mlflow_dir}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "compare_targets", str(mlflow_dir / "artifacts"))
    table = samples(classes=5)
    run_id = logged_run(client, experiment_id, "train target=ordinal", ordinal_run(table, 1.0, 0),
                        "predictions/test_predictions.csv", {}, tmp_path)
    for key, value in (("target.kind", "ordinal"), ("target.column", "spiculation"), ("target.rule", "rating")):
        client.log_param(run_id, key, value)
    csv = write(ordinal_run(table, 0.5, 1), tmp_path / "other.csv")
    assert main([run_id, csv, "--tracking-uri", uri, "--bootstrap", "20", "--no-mlflow", "--out", str(tmp_path)]) == 0
    assert "Comparison of ordinal 'spiculation' (1, 2, 3, 4, 5) on 400 samples" in capsys.readouterr().out
