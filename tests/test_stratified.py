"""Size-stratified evaluation (``eval.strata``): the stratified AUROC against pairs written out by hand, its
bootstrap, the strata and their refusals, each stratum's metrics in the report, the console summary, the check
before training and ``lungexp.compare --strata``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lungexp.compare import main
from lungexp.config.check import check
from lungexp.evaluation.console_summary import metric_lines
from lungexp.evaluation.split_metrics import evaluate_predictions, table_metric_set
from lungexp.evaluation.types import EvaluationOptions, EvaluationSettings
from lungexp.metrics.bootstrap import ClusterResampling, cluster_statistics, stratified_auroc_draws
from lungexp.metrics.stratified import Strata, StrataError, stratified_auroc, stratum_prefixes
from lungexp.metrics.stratified_comparison import bootstrap_p_value
from lungexp.utils.errors import ConfigError
from tests.test_compare import refused, write
from tests.test_statistics import positions

SIZES = Strata("diameter_mm", (0.0, 6.0, 10.0, 20.0))


def test_stratified_auroc_counts_only_the_pairs_within_a_stratum() -> None:
    """Stratum a: positives 0.9, 0.4 against negatives 0.5, 0.4 -> pairs (0.9>0.5) 1, (0.9>0.4) 1, (0.4<0.5) 0,
    (0.4=0.4) 1/2. Stratum b: positive 0.2 against negatives 0.1, 0.3 -> 1, 0. Stratum c holds positives only:
    no pair. (1 + 1 + 0 + 0.5 + 1 + 0) / (2*2 + 1*2) = 3.5 / 6. The cross-stratum pairs (0.9 > 0.1, ...) do not
    count: the plain AUROC, which counts them, differs."""
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.4, 0.5, 0.4, 0.2, 0.1, 0.3, 0.05, 0.6])
    strata = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c"])
    assert stratified_auroc(labels, scores, strata) == pytest.approx(3.5 / 6)
    assert roc_auc_score(labels, scores) != pytest.approx(3.5 / 6)


def test_one_stratum_is_the_plain_auroc_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.uniform(size=500) + 0.3 * labels, 1)  # many ties
    assert stratified_auroc(labels, scores, np.zeros(500)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_a_score_that_only_tells_the_strata_apart_is_at_chance_within_them() -> None:
    """Positives mostly in the large stratum: the stratum itself ranks them well overall (plain AUROC high) but
    within each stratum it ties every pair, so the stratified AUROC is exactly 0.5."""
    labels = np.array([0] * 90 + [1] * 10 + [0] * 10 + [1] * 90)
    size = np.array([4.0] * 100 + [15.0] * 100)
    assert roc_auc_score(labels, size) > 0.85
    assert stratified_auroc(labels, size, SIZES.codes(size, "sizes")) == 0.5


def test_no_pair_at_all_is_nan() -> None:
    assert math.isnan(stratified_auroc(np.array([1, 1, 0]), np.array([0.2, 0.3, 0.4]), np.array([0, 0, 1])))


def test_the_bootstrap_of_the_stratified_auroc_agrees_with_the_point_value() -> None:
    """The draw that takes every cluster once gives the point value; a draw of two clusters counts each pair of
    its clusters as often as both are drawn."""
    table = positions(400).assign(diameter_mm=np.random.default_rng(3).uniform(3, 30, 400))
    codes = SIZES.codes(table["diameter_mm"], "table")
    drawn = ClusterResampling.draw(table["seriesuid"], 3, seed=1)
    clusters = drawn.counts.shape[1]
    counts = np.vstack([np.ones(clusters), drawn.counts])
    resampling = ClusterResampling(drawn.cluster_of, counts)
    statistics = [cluster_statistics(table[codes == code], 0.5, resampling) for code in range(4)]
    draws = stratified_auroc_draws(statistics, counts)
    labels, scores = table["label"].to_numpy(), table["probability"].to_numpy()
    assert draws[0] == pytest.approx(stratified_auroc(labels, scores, codes))
    weights = counts[1][resampling.cluster_index(table["seriesuid"])].astype(int)
    repeated = np.repeat(np.arange(len(table)), weights)
    assert draws[1] == pytest.approx(stratified_auroc(labels[repeated], scores[repeated], codes[repeated]))


def test_strata_are_half_open_with_an_open_last_one_and_refuse_what_they_cannot_place() -> None:
    assert SIZES.names == ["diameter_mm_0-6", "diameter_mm_6-10", "diameter_mm_10-20", "diameter_mm_20-inf"]
    assert list(SIZES.codes(np.array([0, 5.99, 6, 9.5, 10, 20, 300]), "x")) == [0, 0, 1, 1, 2, 3, 3]
    assert Strata.checked("size (mm)", [2.5, 1e6], "eval.strata").names == ["size _mm__2.5-1000000",
                                                                           "size _mm__1000000-inf"]
    with pytest.raises(StrataError, match=r"labels\.csv: column 'diameter_mm' has no number in 2 row\(s\) "
                                          r"\(first: row 2; row 4\)"):
        SIZES.codes(pd.Series([3.0, np.nan, 4.0, "big"]), "labels.csv")
    with pytest.raises(StrataError, match=r"is below the first edge 0 in 1 row\(s\) \(first: row 3\).*lower the first"):
        SIZES.codes(np.array([3.0, 4.0, -1.0]), "labels.csv")


@pytest.mark.parametrize("strata, message", [
    ({"column": "diameter_mm", "edges": [6, 0]}, r"eval\.strata\.edges=\[6, 0\] must increase strictly"),
    ({"column": "diameter_mm", "edges": [0, 6, 6]}, r"eval\.strata\.edges=\[0, 6, 6\] must increase strictly"),
    ({"column": "diameter_mm", "edges": []}, r"eval\.strata\.edges=\[\] must be a list of one or more finite"),
    ({"column": "diameter_mm", "edges": ["small", 6]}, r"eval\.strata\.edges=\['small', 6\] must be a list"),
    ({"column": "diameter_mm", "edges": 6}, r"eval\.strata\.edges=6 must be a list"),
    ({"column": "diameter_mm", "edges": [0, float("nan")]}, r"eval\.strata\.edges=\[0, nan\] must be a list"),
    ({"column": "", "edges": [0]}, r"eval\.strata\.column='' must name a numeric column"),
    ({"column": "diameter_mm"}, r"eval\.strata=\['column'\] must be null or a mapping with exactly the keys"),
])
def test_malformed_strata_are_refused_naming_the_key(strata: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvaluationOptions.from_config({"strata": strata})


def test_strata_options_round_trip_through_the_checkpoints_eval_config() -> None:
    options = EvaluationOptions.from_config({"strata": {"column": "diameter_mm", "edges": [0, 6, 10, 20]}})
    assert options.strata == SIZES
    assert EvaluationOptions.from_config(options.to_config()) == options
    assert options.to_config()["strata"] == {"column": "diameter_mm", "edges": [0.0, 6.0, 10.0, 20.0]}


def sized_predictions(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Predictions whose labels follow size; the largest stratum holds positives only."""
    table = positions(n, seed)
    rng = np.random.default_rng(seed)
    size = np.where(table["label"] == 1, rng.uniform(5, 25, len(table)), rng.uniform(3, 19.9, len(table)))
    return table.assign(diameter_mm=size.round(2))


def test_the_report_judges_each_stratum_with_the_metric_set_and_skips_what_one_class_leaves_undefined(
        caplog: pytest.LogCaptureFixture) -> None:
    table = sized_predictions()
    settings = EvaluationSettings(threshold=0.4, bootstrap=200, strata=SIZES)
    with caplog.at_level(logging.INFO, logger="lungexp.evaluation.split_metrics"):
        report = evaluate_predictions(table, settings)
    metrics = report.metrics
    codes = SIZES.codes(table["diameter_mm"], "table")
    assert metrics["test/auroc_stratified"] == pytest.approx(
        stratified_auroc(table["label"], table["probability"], codes))
    assert metrics["test/auroc_stratified_ci_low"] <= metrics["test/auroc_stratified"] <= metrics[
        "test/auroc_stratified_ci_high"]
    middle = table[codes == 1]
    expected = table_metric_set(middle, 0.4, "test/diameter_mm_6-10/")
    assert metrics["test/diameter_mm_6-10/auroc"] == pytest.approx(roc_auc_score(middle["label"], middle["probability"]))
    for name, value in expected.items():
        if not name.endswith("/threshold"):
            assert metrics[name] == pytest.approx(value), name
    assert "test/diameter_mm_6-10/auroc_ci_low" in metrics and "test/diameter_mm_6-10/threshold" not in metrics
    assert metrics["test/diameter_mm_6-10/positives"] == middle["label"].sum()
    assert metrics["test/diameter_mm_6-10/negatives"] == (middle["label"] == 0).sum()
    # [20, inf) holds positives only: its metrics that need negatives are left out, said once, no NaN logged
    top = table[codes == 3]
    assert len(top) and top["label"].all()
    last = {name: value for name, value in metrics.items() if name.startswith("test/diameter_mm_20-inf/")}
    assert last["test/diameter_mm_20-inf/negatives"] == 0 and "test/diameter_mm_20-inf/sensitivity" in last
    assert not {"auroc", "auroc_ci_low", "average_precision", "specificity", "at_threshold/specificity",
                "at_threshold/specificity_ci_high"} & {name.removeprefix("test/diameter_mm_20-inf/") for name in last}
    assert not any(math.isnan(value) for value in last.values())
    said = [r.getMessage() for r in caplog.records if "20-inf" in r.getMessage()]
    assert said == [f"test/diameter_mm_20-inf: {len(top)} samples, no negatives: auroc, average_precision, "
                    "specificity not logged"]
    assert "plots/auroc_by_stratum.png" in report.figures
    assert stratum_prefixes(metrics) == [f"test/{name}/" for name in SIZES.names]


def test_strata_refuse_predictions_without_their_column_or_a_number_in_it() -> None:
    table = sized_predictions()
    with pytest.raises(StrataError, match=r"the predictions have no column 'diameter_mm'.*'probability'"):
        evaluate_predictions(table.drop(columns="diameter_mm"), EvaluationSettings(strata=SIZES), figures=False)
    uid = table["seriesuid"].iloc[7]
    with pytest.raises(StrataError, match=rf"test predictions: column 'diameter_mm' has no number in 1 row\(s\) "
                                          rf"\(first: series {uid} at \("):
        evaluate_predictions(table.assign(diameter_mm=table["diameter_mm"].where(table.index != 7)),
                             EvaluationSettings(strata=SIZES), figures=False)


def test_the_console_summary_shows_the_stratified_auroc_and_one_line_per_stratum() -> None:
    report = evaluate_predictions(sized_predictions(), EvaluationSettings(threshold=0.4, bootstrap=100, strata=SIZES),
                                  figures=False)
    metrics = report.metrics
    lines = metric_lines(metrics, 26)
    stratified = (f"  {'test/auroc_stratified':<26} {metrics['test/auroc_stratified']:.3f} "
                  f"[{metrics['test/auroc_stratified_ci_low']:.3f}, {metrics['test/auroc_stratified_ci_high']:.3f}]")
    assert stratified in lines
    assert not any("6-10/sensitivity" in line or "6-10/auroc_ci" in line for line in lines)
    per_stratum = [line for line in lines if "diameter_mm_" in line]
    assert [line.split()[0] for line in per_stratum] == [f"test/{name}" for name in SIZES.names]
    assert per_stratum[-1].endswith(f"- (one class)  ({int(metrics['test/diameter_mm_20-inf/positives'])}/0)")


def test_the_strata_column_is_checked_against_the_labels_csv_before_training(make_config, tmp_path: Path) -> None:
    """A run on the tiny dataset (task candidates: its labels CSV has no diameter) is refused in check(), naming
    the column, the file and its columns; a column that is there passes."""
    with pytest.raises(ConfigError, match=r"eval\.strata\.column='diameter_mm': the labels CSV .*candidates_V2\.csv "
                                          r"\(data\.labels_csv\) has no column 'diameter_mm'; its columns are "
                                          r"\['seriesuid', 'coordX', 'coordY', 'coordZ', 'class'\]"):
        check(make_config("eval.strata={column: diameter_mm, edges: [0, 6]}"), "run")
    run = check(make_config("eval.strata={column: coordZ, edges: [-1000, 0]}"), "run")
    assert run.evaluation.strata == Strata("coordZ", (-1000.0, 0.0))
    labels = pd.read_csv(run.data.labels_csv)
    low = labels.assign(coordZ=labels["coordZ"].where(labels.index != 3, -2000.0))
    low.to_csv(tmp_path / "low.csv", index=False)
    with pytest.raises(StrataError, match=r"low\.csv \(data\.labels_csv\): column 'coordZ' is below the first edge "
                                          r"-1000 in 1 row\(s\) \(first: line 5\)"):
        check(make_config("eval.strata={column: coordZ, edges: [-1000, 0]}", f"data.labels_csv={tmp_path}/low.csv"),
              "run")


def test_bootstrap_p_value_is_the_percentile_intervals_level() -> None:
    assert bootstrap_p_value(np.r_[np.full(975, 0.1), np.full(25, -0.1)]) == pytest.approx(0.05)
    assert bootstrap_p_value(np.full(100, 0.2)) == 0.0 and bootstrap_p_value(np.r_[0.1, -0.1]) == 1.0
    assert math.isnan(bootstrap_p_value(np.array([np.nan])))


def test_compare_within_strata_and_against_the_stratifier_itself(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """A model that only knows size against one that also ranks within the strata: the plain AUROCs are close,
    the stratified ones far apart, and the stratifier itself (--baseline) is at chance within its strata."""
    table = sized_predictions(800, seed=1)
    rng = np.random.default_rng(5)
    size_only = (table["diameter_mm"] / 30).round(6)
    within = ((table["diameter_mm"] / 30 + 0.15 * table["label"] + rng.normal(0, 0.02, len(table))).clip(0, 1)
              .round(6))
    sizer = write(table.assign(probability=size_only), tmp_path / "sizer.csv")
    knower = write(table.assign(probability=within), tmp_path / "knower.csv")
    labels = write(table.drop(columns=["probability", "label"]).iloc[::-1], tmp_path / "labels.csv")
    assert main([knower, sizer, "--strata", "diameter_mm:0,10,15", "--baseline", "diameter_mm", "--labels", labels,
                 "--bootstrap", "200", "--no-mlflow", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = pd.read_csv(tmp_path / "comparison_runs.csv").set_index("run")
    codes = Strata("diameter_mm", (0.0, 10.0, 15.0)).codes(table["diameter_mm"], "table")
    assert runs.loc["knower", "auroc_stratified"] == pytest.approx(stratified_auroc(table["label"], within, codes))
    assert runs.loc["knower", "auroc_stratified"] > 0.9 > runs.loc["sizer", "auroc_stratified"]
    assert runs.loc["baseline diameter_mm", "auroc_stratified"] == pytest.approx(
        runs.loc["sizer", "auroc_stratified"])  # the same ranking as sizer's
    pairs = pd.read_csv(tmp_path / "comparison.csv").set_index(["a", "b"])
    pair = pairs.loc[("knower", "sizer")]
    assert pair["delta_auroc_stratified_ci_low"] > 0 and pair["auroc_stratified_p"] < 0.05
    assert pair["delta_auroc_stratified"] > pair["delta_auroc"]
    assert "auroc_stratified_p_holm" in pairs  # three runs: Holm across the pairs
    by_stratum = pd.read_csv(tmp_path / "comparison_strata.csv")
    assert set(by_stratum["stratum"]) == {"diameter_mm 0-10", "diameter_mm 10-15", "diameter_mm 15-inf"}
    row = by_stratum.set_index(["stratum", "a", "b"]).loc[("diameter_mm 10-15", "knower", "sizer")]
    inside = codes == 1
    assert row["auroc_a"] == pytest.approx(roc_auc_score(table["label"][inside], within[inside]))
    assert row["positives"] == table["label"][inside].sum() and row["delong_p"] < 0.05
    assert "Within each stratum (DeLong, Holm across the pairs of a stratum)" in out and "AUROC strat." in out
    assert (tmp_path / "forest_plot.png").stat().st_size > 10_000


def test_compare_strata_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = sized_predictions()
    first = write(table, tmp_path / "first.csv")
    second = write(table.assign(probability=table["probability"][::-1].to_numpy()), tmp_path / "second.csv")
    args = [first, second, "--no-mlflow", "--bootstrap", "0", "--out", str(tmp_path)]
    assert "--strata diameter_mm:6,0: give COLUMN:EDGE,EDGE,..." in refused([*args, "--strata", "diameter_mm:6,0"],
                                                                             capsys)
    assert "--strata size: give COLUMN:EDGE" in refused([*args, "--strata", "size"], capsys)
    assert "give --strata COLUMN:EDGES or --no-strata, not both" in refused(
        [*args, "--strata", "diameter_mm:0,6", "--no-strata"], capsys)
    error = refused([*args, "--strata", "diameter_mm:5,10"], capsys)
    assert f"{first}" in error and "column 'diameter_mm' is below the first edge 5" in error
    error = refused([*args, "--strata", "texture:1,3", "--labels", first], capsys)
    assert f"--strata texture: {first} has no column 'texture'; its columns are" in error
