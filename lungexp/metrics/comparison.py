"""Paired comparison of runs scored on the same test samples: which differences are more than noise.

For every pair of runs: the difference of AUROCs with DeLong's paired test; the differences of average
precision, CPM (with a FROC reference) and every thresholded metric by a paired cluster bootstrap (the
same resampled series for both runs, :mod:`lungexp.metrics.bootstrap`); McNemar's exact test of the
patches one run classifies correctly and the other does not, each at its own threshold; with more than
two runs, Holm's correction of the p-values across pairs. With strata of a column (``--strata``), the stratified
AUROC and its paired differences, and DeLong's test within each stratum (:mod:`lungexp.metrics.stratified_comparison`).

Runs are first aligned sample by sample on series and world position (rounded to 1e-4 mm, as the patch
cache does) with their labels checked equal: runs tested on other samples are refused, naming the first
rows that differ, unless ``intersect`` keeps the common ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from lungexp.data.labels.sample_table import POINT_DECIMALS, drop_duplicate_points
from lungexp.metrics.bootstrap import (
    CI_HIGH,
    CI_LOW,
    RESAMPLED,
    ClusterResampling,
    ClusterStatistics,
    cluster_resampling,
    percentile_interval,
)
from lungexp.metrics.classification import table_metrics
from lungexp.metrics.delong import delong, delong_test
from lungexp.metrics.luna16_froc import FrocReference, FrocResult, compute_froc, validated_table
from lungexp.metrics.run_targets import BINARY, RunTarget, class_labels, run_target, same_target
from lungexp.metrics.stratified import Strata, stratified_auroc
from lungexp.metrics.stratified_comparison import (
    SampleStrata,
    bootstrap_p_value,
    strata_pairs,
    stratified_draws,
)
from lungexp.metrics.threshold import YOUDEN, choose_threshold
from lungexp.utils.errors import LungexpError

KEY_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")
ALPHA = 0.05
# The paired-bootstrap differences, in the order of the table and the forest plot.
BOOTSTRAP_DIFFERENCES = ("average_precision", *(name for name in RESAMPLED if name.startswith("at_threshold/")))


class ComparisonError(LungexpError):
    """Runs that cannot be compared as given (other samples, other labels, too few runs)."""


@dataclass(frozen=True)
class ScoredRun:
    """One run's test predictions (``seriesuid, coordX, coordY, coordZ, label, probability``) and its
    decision threshold (chosen on its validation split); ``source`` says where the predictions were read
    (a CSV file) for messages, which otherwise name the run; ``settings``: the ``target.*`` params a run logged
    (:func:`~lungexp.metrics.run_targets.run_target`). A multiclass or ordinal run's table holds its head's
    probability columns instead of ``probability``."""

    name: str
    predictions: pd.DataFrame
    threshold: float = 0.5
    run_id: str | None = None
    source: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """How messages name the run's predictions: their file, else the run."""
        return self.source or self.name


def checked_predictions(predictions: pd.DataFrame, source: str, target: RunTarget = BINARY) -> pd.DataFrame:
    """``predictions`` with finite coordinates, labels of ``target`` (0/1, or class indices) and its probabilities
    in [0, 1] (as numbers), each point once: a bad value is a :class:`~lungexp.metrics.luna16_froc.FrocInputError`
    naming ``source``, the column and the rows; repeated rows are dropped with a warning, the same point with other
    labels or probabilities refused (:func:`~lungexp.data.labels.sample_table.drop_duplicate_points`). Other
    columns (a patient column) are kept."""
    columns = list(target.probability_columns)
    _require_columns(predictions, source, columns)
    binary = target.kind == "binary"
    checked = validated_table(predictions, [*KEY_COLUMNS, "label", *columns], source, probabilities=columns,
                              binary=["label"] if binary else [])
    if not binary:
        checked["label"] = class_labels(predictions, len(target.class_names), source)
    checked = predictions.assign(**{column: checked[column].to_numpy() for column in checked})
    return drop_duplicate_points(checked, source, values=["label", *columns])


def _require_columns(predictions: pd.DataFrame, name: str, scores: Sequence[str] = ()) -> None:
    needed = [*KEY_COLUMNS, "label", *scores]
    missing = [column for column in needed if column not in predictions]
    if missing:
        raise ComparisonError(f"{name}: the predictions lack column(s) {missing}; compare needs {needed}")


@dataclass(frozen=True)
class AlignedRuns:
    """Runs on the same samples in the same order: ``samples`` (key columns and ``label``) and one row of
    ``probabilities`` per run: ``(runs, samples)`` for a binary ``target``, ``(runs, samples, columns)`` with
    the head's probability columns for a multiclass or ordinal one."""

    runs: list[ScoredRun]
    samples: pd.DataFrame
    probabilities: np.ndarray  # (runs, samples) or (runs, samples, columns)
    dropped: dict[str, int] = field(default_factory=dict)  # by run name, with ``intersect``
    target: RunTarget = BINARY

    @property
    def labels(self) -> np.ndarray:
        return self.samples["label"].to_numpy().astype(np.int64)


def sample_keys(predictions: pd.DataFrame, name: str) -> pd.MultiIndex:
    """Series, world position rounded to 1e-4 mm and, for repeated points, the repeat number."""
    _require_columns(predictions, name)
    keys = pd.DataFrame({"seriesuid": predictions["seriesuid"].astype(str).to_numpy()})
    for column in KEY_COLUMNS[1:]:
        keys[column] = pd.to_numeric(predictions[column], errors="coerce").round(POINT_DECIMALS).to_numpy()
    keys["repeat"] = keys.groupby(list(KEY_COLUMNS)).cumcount().to_numpy()
    return pd.MultiIndex.from_frame(keys)


def align(runs: Sequence[ScoredRun], intersect: bool = False) -> AlignedRuns:
    """The runs on their common samples, in the first run's order; without ``intersect`` every run must have
    exactly the same samples with the same labels (:class:`ComparisonError` naming the first differing rows).
    All runs must predict the same target (:func:`~lungexp.metrics.run_targets.same_target`, from each run's
    columns and logged ``target.*``; a multitask run counts by its primary head), and each run's predictions are
    checked first (:func:`checked_predictions`)."""
    if not runs:
        raise ComparisonError("no runs to align")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        raise ComparisonError(f"two inputs have the same name {names}; give each run once")
    target = same_target([run_target(run.predictions, run.origin, run.settings) for run in runs],
                         names)
    columns = list(target.probability_columns)
    runs = [replace(run, predictions=checked_predictions(run.predictions, run.origin, target)) for run in runs]
    keys = [sample_keys(run.predictions, run.name) for run in runs]
    labels = [pd.Series(run.predictions["label"].to_numpy().astype(np.int64), index=key)
              for run, key in zip(runs, keys, strict=True)]
    common = keys[0]
    for key in keys[1:]:
        common = common[common.isin(key)]
    agree = np.ones(len(common), dtype=bool)
    for label in labels[1:]:
        agree &= label.loc[common].to_numpy() == labels[0].loc[common].to_numpy()
    if not intersect:
        for run, key, label in zip(runs[1:], keys[1:], labels[1:], strict=True):
            _check_same(runs[0], keys[0], labels[0], run, key, label)
    common = common[agree]
    if not len(common):
        raise ComparisonError(f"the runs {names} have no test sample in common (same series, position and label)")
    dropped = {run.name: int(len(key) - len(common)) for run, key in zip(runs, keys, strict=True)} if intersect else {}
    positions = [key.get_indexer(common) for key in keys]
    # The first run's sample columns (position, label, a group_by column, ...), not its scores.
    samples = runs[0].predictions.iloc[positions[0]].drop(columns=columns).reset_index(drop=True)
    samples["seriesuid"] = samples["seriesuid"].astype(str)
    samples["label"] = labels[0].loc[common].to_numpy()
    probabilities = np.stack([run.predictions[columns].to_numpy(np.float64)[where]
                              for run, where in zip(runs, positions, strict=True)])
    return AlignedRuns(list(runs), samples, probabilities[..., 0] if target.kind == "binary" else probabilities,
                       dropped, target)


def _check_same(first: ScoredRun, first_keys: pd.MultiIndex, first_labels: pd.Series, other: ScoredRun,
                other_keys: pd.MultiIndex, other_labels: pd.Series) -> None:
    problems = []
    for run, key, against, what in ((first, first_keys, other_keys, other), (other, other_keys, first_keys, first)):
        extra = np.flatnonzero(~key.isin(against))
        if len(extra):
            problems.append(f"{len(extra)} of {run.name}'s {len(key)} samples are not in {what.name}'s (first: "
                            f"{_describe_row(run, extra[0])})")
    shared = first_keys.isin(other_keys)
    differ = np.flatnonzero(shared)[first_labels[shared].to_numpy() != other_labels.loc[first_keys[shared]].to_numpy()]
    if len(differ):
        row = differ[0]
        other_row = other_keys.get_loc(first_keys[row])
        problems.append(f"{len(differ)} samples have other labels (first: {_describe_row(first, row)}: label "
                        f"{first_labels.iloc[row]}; {other.name} row {other_row + 2}: label {other_labels.iloc[other_row]})")
    if problems:
        raise ComparisonError(f"{first.name} and {other.name} were not tested on the same samples: "
                              + "; ".join(problems) + ". Were they tested on another fold, split or data? "
                              "--intersect compares them on the samples they share")


def _describe_row(run: ScoredRun, row: int) -> str:
    values = run.predictions.iloc[row]
    position = ", ".join(f"{float(values[c]):.2f}" for c in KEY_COLUMNS[1:])
    return f"{run.name} row {row + 2} (the header is row 1), series {values['seriesuid']} at ({position}) mm"


@dataclass(frozen=True)
class Comparison:
    """The per-run summary (best AUROC first) and one row per pair (``a`` the better of the two by AUROC); with
    strata, one row per stratum and pair (``strata``) and the strata left out for lacking a class."""

    runs: pd.DataFrame
    pairs: pd.DataFrame
    num_samples: int
    num_clusters: int
    dropped: dict[str, int]
    strata: pd.DataFrame | None = None
    one_class_strata: list[str] = field(default_factory=list)
    target: RunTarget = BINARY
    metrics: tuple[str, ...] = ()  # a multiclass or ordinal comparison's metrics, best-first by the first


def compare(aligned: AlignedRuns, bootstrap: int = 1000, seed: int = 0, group_by: str = "seriesuid",
            froc: FrocReference | None = None, strata: SampleStrata | None = None) -> Comparison:
    """Every pairwise test of the aligned runs (see the module docstring); ``strata``: the compared samples'
    strata (:func:`sample_strata`)."""
    if len(aligned.runs) < 2:
        raise ComparisonError(f"compare needs two or more runs (a --baseline counts), got {len(aligned.runs)}")
    if aligned.target.kind != "binary":
        if froc is not None or strata is not None:
            raise ComparisonError(f"the CPM and strata compare binary runs; these predict {aligned.target.describe()}")
        from lungexp.metrics.class_comparison import compare_classes  # it builds on this module

        return compare_classes(aligned, bootstrap, seed, group_by)
    labels = aligned.labels
    if labels.min() == labels.max():
        raise ComparisonError("the compared samples hold one class only: AUROC and its tests need both")
    for run, scores in zip(aligned.runs, aligned.probabilities, strict=True):
        if scores.min() == scores.max():
            raise ComparisonError(f"{run.origin} scores all {len(scores)} compared samples alike ({scores[0]:g}): "
                                  "its AUROC would be 0.5 with an interval of zero width, which says nothing; "
                                  "check that it is the right run, file or column")
    resampling = cluster_resampling(aligned.samples, bootstrap, seed, group_by,
                                    froc.seriesuids if froc is not None else None) if bootstrap > 0 else None
    frocs = [_froc(aligned, i, froc, resampling) for i in range(len(aligned.runs))]
    draws = [_draws(aligned, i, resampling) for i in range(len(aligned.runs))]
    points = [table_metrics(labels, aligned.probabilities[i], "", run.threshold) for i, run in enumerate(aligned.runs)]
    result = delong(labels, aligned.probabilities)
    order = np.argsort(-result.aurocs, kind="stable")
    runs = pd.DataFrame([_run_row(aligned.runs[i], result.aurocs[i], result.interval(i), points[i], draws[i], frocs[i])
                         for i in order])
    order_pairs = list(itertools.combinations(order, 2))
    pairs = pd.DataFrame([_pair_row(aligned, a, b, points, draws, frocs) for a, b in order_pairs])
    if len(aligned.runs) > 2:
        pairs["delong_p_holm"] = holm(pairs["delong_p"].to_numpy())
        pairs["mcnemar_p_holm"] = holm(pairs["mcnemar_p"].to_numpy())
    num_clusters = 0 if resampling is None else resampling.counts.shape[1]
    if strata is None:
        return Comparison(runs, pairs, len(labels), num_clusters, aligned.dropped)
    by_stratum, one_class = strata_pairs(labels, aligned.probabilities, [run.name for run in aligned.runs],
                                         order_pairs, strata)
    if len(aligned.runs) > 2 and not by_stratum.empty:
        by_stratum["delong_p_holm"] = by_stratum.groupby("stratum")["delong_p"].transform(lambda p: holm(p.to_numpy()))
    _add_stratified(aligned, runs, pairs, order, order_pairs, strata, resampling)
    return Comparison(runs, pairs, len(labels), num_clusters, aligned.dropped, by_stratum, one_class)


def _add_stratified(aligned: AlignedRuns, runs: pd.DataFrame, pairs: pd.DataFrame, order: np.ndarray,
                    order_pairs: list[tuple[int, int]], strata: SampleStrata,
                    resampling: ClusterResampling | None) -> None:
    """The stratified AUROC of each run (in ``order``, the rows of ``runs``) and its paired differences (the rows
    of ``pairs``), with the bootstrap's intervals and p where there is one (Holm's p too, for more than two runs)."""
    labels = aligned.labels
    points = [stratified_auroc(labels, scores, strata.codes) for scores in aligned.probabilities]
    runs["auroc_stratified"] = [points[i] for i in order]
    pairs["delta_auroc_stratified"] = [points[a] - points[b] for a, b in order_pairs]
    if resampling is None:
        return
    cluster = resampling.cluster_index(aligned.samples["seriesuid"])
    draws = [stratified_draws(labels, scores, strata, resampling, cluster) for scores in aligned.probabilities]
    runs[f"auroc_stratified{CI_LOW}"], runs[f"auroc_stratified{CI_HIGH}"] = zip(
        *(percentile_interval(draws[i]) for i in order), strict=True)
    differences = [draws[a] - draws[b] for a, b in order_pairs]
    pairs[f"delta_auroc_stratified{CI_LOW}"], pairs[f"delta_auroc_stratified{CI_HIGH}"] = zip(
        *map(percentile_interval, differences), strict=True)
    pairs["auroc_stratified_p"] = [bootstrap_p_value(difference) for difference in differences]
    if len(aligned.runs) > 2:
        pairs["auroc_stratified_p_holm"] = holm(pairs["auroc_stratified_p"].to_numpy())


def _draws(aligned: AlignedRuns, run: int, resampling: ClusterResampling | None) -> dict[str, np.ndarray]:
    if resampling is None:
        return {}
    statistics = ClusterStatistics(aligned.labels, aligned.probabilities[run],
                                   resampling.cluster_index(aligned.samples["seriesuid"]), aligned.runs[run].threshold,
                                   resampling.counts.shape[1])
    return statistics.metrics(resampling.counts)


def _froc(aligned: AlignedRuns, run: int, froc: FrocReference | None, resampling: ClusterResampling | None
          ) -> FrocResult | None:
    if froc is None:
        return None
    predictions = aligned.samples.assign(probability=aligned.probabilities[run])
    return compute_froc(predictions, froc.annotations, excluded=froc.excluded, seriesuids=froc.seriesuids,
                        resampling=resampling)


def _run_row(scored: ScoredRun, auroc: float, interval: tuple[float, float], point: dict[str, float],
             draws: dict[str, np.ndarray], froc: FrocResult | None) -> dict[str, object]:
    row: dict[str, object] = {"run": scored.name, "run_id": scored.run_id, "threshold": scored.threshold,
                              "auroc": auroc, f"auroc_delong{CI_LOW}": interval[0], f"auroc_delong{CI_HIGH}": interval[1]}
    for name in RESAMPLED:
        row[name] = point[name]
        if name in draws:
            row[f"{name}{CI_LOW}"], row[f"{name}{CI_HIGH}"] = percentile_interval(draws[name])
    if froc is not None:
        row["cpm"] = froc.cpm
        if froc.cpm_ci is not None:
            row[f"cpm{CI_LOW}"], row[f"cpm{CI_HIGH}"] = froc.cpm_ci
    return row


def _pair_row(aligned: AlignedRuns, a: int, b: int, points: list[dict[str, float]],
              draws: list[dict[str, np.ndarray]], frocs: list[FrocResult | None]) -> dict[str, object]:
    labels, probabilities = aligned.labels, aligned.probabilities
    run_a, run_b = aligned.runs[a], aligned.runs[b]
    test = delong_test(labels, probabilities[a], probabilities[b])
    row: dict[str, object] = {"a": run_a.name, "b": run_b.name, "delta_auroc": test.difference,
                              f"delta_auroc{CI_LOW}": test.ci[0], f"delta_auroc{CI_HIGH}": test.ci[1],
                              "delong_p": test.p_value}
    if draws[a]:
        for name in BOOTSTRAP_DIFFERENCES:
            row[f"delta_{name}"] = points[a][name] - points[b][name]
            row[f"delta_{name}{CI_LOW}"], row[f"delta_{name}{CI_HIGH}"] = percentile_interval(draws[a][name] - draws[b][name])
    froc_a, froc_b = frocs[a], frocs[b]
    if froc_a is not None and froc_b is not None:
        row["delta_cpm"] = froc_a.cpm - froc_b.cpm
        if froc_a.cpm_draws is not None:
            row[f"delta_cpm{CI_LOW}"], row[f"delta_cpm{CI_HIGH}"] = percentile_interval(froc_a.cpm_draws - froc_b.cpm_draws)
    correct_a = (probabilities[a] > run_a.threshold) == labels.astype(bool)
    correct_b = (probabilities[b] > run_b.threshold) == labels.astype(bool)
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    row.update({"mcnemar_a_only": only_a, "mcnemar_b_only": only_b, "mcnemar_p": mcnemar(only_a, only_b)})
    return row


def with_baseline(aligned: AlignedRuns, table: pd.DataFrame, column: str, source: str) -> AlignedRuns:
    """``aligned`` and a pseudo-run scoring each sample by ``column`` of ``table`` (e.g. ``diameter_mm`` of the
    labels CSV ``source``). Binary target: larger is more positive, scaled to [0, 1] (ranks, so AUROC and AP, are
    unchanged), with its threshold chosen on these samples by Youden's rule (optimistic: the baseline has no
    validation). Ordinal target: the column is a rating on the head's scale of levels 1 … K (e.g. another reader's,
    or the readers' mean): :func:`ordinal_baseline`. A multiclass target's classes have no order a column could
    score: refused."""
    option = f"--baseline {column}"
    if aligned.target.kind == "multiclass":
        raise ComparisonError(f"{option}: a multiclass target's classes ({', '.join(aligned.target.class_names)}) "
                              "have no order a column could score; --baseline takes binary and ordinal targets")
    scores = labels_column(aligned, table, column, source, option)
    missing = np.flatnonzero(~np.isfinite(scores))
    if len(missing):
        row = aligned.samples.iloc[missing[0]]
        raise ComparisonError(f"--baseline {column}: {len(missing)} of the {len(scores)} compared samples have no "
                              f"number in {source} (first: series {row['seriesuid']} at ({row['coordX']:.2f}, "
                              f"{row['coordY']:.2f}, {row['coordZ']:.2f}) mm)")
    if aligned.target.kind == "ordinal":
        cumulative = ordinal_baseline(scores, len(aligned.target.class_names))
        baseline = ScoredRun(f"baseline {column}", aligned.samples.assign(
            **dict(zip(aligned.target.probability_columns, cumulative.T, strict=True))),
            source=f"{option} of {source}")
        return replace(aligned, runs=[*aligned.runs, baseline],
                       probabilities=np.concatenate([aligned.probabilities, cumulative[None]]))
    span = scores.max() - scores.min()
    scaled = (scores - scores.min()) / span if span > 0 else np.full(len(scores), 0.5)
    threshold = choose_threshold(aligned.labels, scaled, YOUDEN)
    baseline = ScoredRun(f"baseline {column}", aligned.samples.assign(probability=scaled), threshold,
                         source=f"--baseline {column} of {source}")
    return AlignedRuns([*aligned.runs, baseline], aligned.samples, np.vstack([aligned.probabilities, scaled]),
                       aligned.dropped)


def ordinal_baseline(ratings: np.ndarray, levels: int) -> np.ndarray:
    """``(N, levels − 1)`` P(level >= k) for k = 2 … K of ratings read as levels: ``clip(rating − k + 1, 0, 1)``.
    A whole rating predicts itself with certainty; a mean rating (3.4) is certain of the levels below it and
    gives the next its fraction (P(level >= 4) = 0.4), so its predicted level (the median,
    :func:`~lungexp.models.heads.predicted_classes`) is the rating rounded and each cut's AUROC keeps its order."""
    cuts = np.arange(2, levels + 1)
    return np.clip(np.asarray(ratings, dtype=np.float64)[:, None] - cuts + 1, 0.0, 1.0)


def labels_column(aligned: AlignedRuns, table: pd.DataFrame, column: str, source: str, option: str) -> np.ndarray:
    """Each compared sample's number in ``column`` of ``table`` (a labels CSV, ``source``), matched on series and
    position; NaN where the table has no number for it. A table without the column is a :class:`ComparisonError`
    naming ``option``, ``source`` and its columns."""
    if column not in table:
        raise ComparisonError(f"{option}: {source} has no column '{column}'; its columns are "
                              f"{list(map(str, table.columns))}")
    keys = sample_keys(table.assign(label=0, probability=0.0), source).droplevel("repeat")
    values = pd.Series(pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64), index=keys)
    values = values[~values.index.duplicated()]
    wanted = sample_keys(aligned.samples.assign(probability=0.0), "the compared samples").droplevel("repeat")
    return values.reindex(wanted).to_numpy()


def sample_strata(aligned: AlignedRuns, strata: Strata, table: pd.DataFrame | None = None,
                  source: str | None = None) -> SampleStrata:
    """Each compared sample's stratum of ``strata.column``: as the first run's predictions carry it (a run's test
    predictions carry every column of its labels CSV), else from ``table`` (the labels CSV ``source``). A sample
    without a number, or below the first edge, is refused naming the first ones
    (:class:`~lungexp.metrics.stratified.StrataError`)."""
    if strata.column in aligned.samples:
        values, where = aligned.samples[strata.column].to_numpy(), f"{aligned.runs[0].origin} (the first run)"
    elif table is not None and source is not None:
        values, where = labels_column(aligned, table, strata.column, source, f"--strata {strata.column}"), source
    else:
        raise ComparisonError(f"--strata {strata.column}: the compared predictions have no column '{strata.column}' "
                              f"(their columns are {list(map(str, aligned.samples.columns))}); give --labels CSV "
                              "holding it")
    return SampleStrata(strata, strata.codes(values, where, lambda rows: [
        f"series {aligned.samples['seriesuid'].iloc[row]} at "
        f"({', '.join(f'{aligned.samples[c].iloc[row]:.2f}' for c in KEY_COLUMNS[1:])}) mm" for row in rows]))


def mcnemar(only_a: int, only_b: int) -> float:
    """McNemar's exact test: of the discordant samples, are those only ``a`` gets right a binomial(½) share?"""
    discordant = only_a + only_b
    return 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error across the given tests)."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values)
    adjusted = np.maximum.accumulate((len(p_values) - np.arange(len(p_values))) * p_values[order])
    result = np.empty_like(adjusted)
    result[order] = np.minimum(adjusted, 1.0)
    return result


def not_worse_than_best(aligned: AlignedRuns, best: int, alpha: float = ALPHA) -> np.ndarray:
    """Per run: whether its AUROC is not significantly below ``best``'s (DeLong's paired test, Holm across the
    runs compared with it); the best run itself is ``True``."""
    others = [i for i in range(len(aligned.runs)) if i != best]
    tests = [delong_test(aligned.labels, aligned.probabilities[best], aligned.probabilities[i]) for i in others]
    adjusted = holm(np.array([t.p_value for t in tests])) if tests else np.array([])
    verdict = np.ones(len(aligned.runs), dtype=bool)
    for i, test, p in zip(others, tests, adjusted, strict=True):
        verdict[i] = test.difference <= 0 or p >= alpha
    return verdict
