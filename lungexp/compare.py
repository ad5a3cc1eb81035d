"""Compare runs on the same test samples, with paired tests: which differences are more than noise.

``python -m lungexp.compare RUN_OR_CSV RUN_OR_CSV [...] [--baseline COLUMN] [--strata COLUMN:EDGES] [--intersect]
[--bootstrap N] [--out DIR] [--no-mlflow]``: MLflow run ids (training, ``evaluate`` or cross-validation parent runs)
or predictions CSV files, two or more (or one and ``--baseline``). Prints a table of the runs (best AUROC
first) and of every pair, writes ``comparison.csv``, ``comparison_runs.csv`` and ``forest_plot.png`` to
``--out`` (with strata also ``comparison_strata.csv``) and logs them as an MLflow run tagged with the compared run
ids. The tests are listed in :mod:`lungexp.metrics.comparison` (binary runs) and
:mod:`lungexp.metrics.class_comparison` (multiclass and ordinal runs: the kind is read from the predictions'
columns and the runs' logged ``target.*``; runs of other targets are refused; multitask runs are compared on their
primary head).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lungexp.tracking.credentials import check_no_password_in, check_uri_variables
from lungexp.utils.errors import ConfigError, check_int, report_user_errors
from lungexp.utils.tables import read_csv

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from lungexp.metrics.comparison import AlignedRuns, Comparison, ScoredRun
    from lungexp.metrics.luna16_froc import FrocReference
    from lungexp.metrics.run_targets import RunTarget
    from lungexp.metrics.stratified import Strata
    from lungexp.metrics.stratified_comparison import SampleStrata

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
COMPARED_RUNS_TAG = "lungexp.compare.run_ids"
INPUTS_TAG = "lungexp.compare.inputs"
CSV_THRESHOLD = 0.5  # a predictions CSV carries no validation threshold
LABEL_WIDTH = 40  # characters of a run's label in the printed tables, its run id included
STRATA_FORMAT = "COLUMN:EDGE,EDGE,... (e.g. diameter_mm:0,6,10,20 for [0,6) [6,10) [10,20) [20,inf))"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lungexp.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_CSV",
                        help="MLflow run ids (training, evaluate or CV parent runs) or predictions CSV files "
                             "(seriesuid,coordX,coordY,coordZ,label,probability; threshold 0.5; multiclass: "
                             "probability_<class> per class, ordinal: probability_ge2..probability_geK)")
    parser.add_argument("--baseline", metavar="COLUMN",
                        help="also compare a pseudo-run scoring each sample by this column of the labels CSV "
                             "(e.g. diameter_mm; larger = more positive; for an ordinal target a rating read as "
                             "its level 1..K)")
    parser.add_argument("--strata", metavar="COLUMN:EDGES",
                        help="also compare within strata of a numeric column of the samples, e.g. "
                             "diameter_mm:0,6,10,20 for [0,6) [6,10) [10,20) [20,inf): the stratified AUROC "
                             "(paired bootstrap) and DeLong's test per stratum (default: the first run's "
                             "eval.strata, if it had one)")
    parser.add_argument("--no-strata", action="store_true", help="do not compare within the first run's eval.strata")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="the labels CSV of --baseline, and of --strata when the predictions lack its column "
                             "(default: the first run's data.labels_csv)")
    parser.add_argument("--annotations", type=Path, metavar="CSV",
                        help="LUNA16 annotations.csv for the CPM (default: the first run's data.annotations_csv, "
                             "when its data.task is candidates)")
    parser.add_argument("--excluded", type=Path, metavar="CSV",
                        help="annotations_excluded.csv (default: the first run's data.excluded_csv)")
    parser.add_argument("--intersect", action="store_true",
                        help="compare on the samples all runs share (default: refuse runs tested on other samples)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="paired cluster-bootstrap resamplings (default: 1000; 0: DeLong and McNemar only)")
    parser.add_argument("--group-by", default="auto", metavar="COLUMN",
                        help="the resampled unit: auto (default: patient_id where the predictions have it, else "
                             "seriesuid), seriesuid or a patient column of the predictions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                               "sqlite:///<$LUNGEXP_ROOT or .>/mlflow.db as the runs use)")
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment of the comparison run (default: the first run's, else lungexp)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the CSVs and the plot (default: .)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the comparison as an MLflow run")
    args = parser.parse_args(argv)
    check_int("--bootstrap", args.bootstrap, minimum=0)
    check_uri_variables()  # the comparison run logs its tracking URI, and prints it
    check_no_password_in("--tracking-uri", args.tracking_uri or "")
    if len(args.inputs) + bool(args.baseline) < 2:
        raise ConfigError("give two or more runs, or one and --baseline COLUMN")
    if args.strata is not None and args.no_strata:
        raise ConfigError("give --strata COLUMN:EDGES or --no-strata, not both")
    args.strata = None if args.strata is None else parse_strata(args.strata)
    return args


def parse_strata(text: str) -> Strata:
    """``--strata COLUMN:EDGE,EDGE,...`` as strata; a malformed one is a :class:`ConfigError` showing the form."""
    from lungexp.metrics.stratified import Strata

    column, _, edges = text.rpartition(":")
    try:
        return Strata.checked(column, [float(edge) for edge in edges.split(",")], "--strata")
    except (ValueError, ConfigError):
        raise ConfigError(f"--strata {text}: give {STRATA_FORMAT}, with increasing finite edges") from None


def project_root() -> Path:
    """Where the runs' MLflow store lives by default (``paths.root_dir``)."""
    return Path(os.environ.get("LUNGEXP_ROOT") or os.getcwd()).resolve()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root()}/mlflow.db"


@report_user_errors  # bad input: one line, status 1; Ctrl-C: one line, status 130
def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


def run(args: argparse.Namespace) -> Comparison:
    # Imported here so that --help answers at once.
    from mlflow import MlflowClient

    from lungexp.metrics.comparison import align, compare, with_baseline
    from lungexp.metrics.luna16_froc import FrocReference
    from lungexp.visualize.plots import forest_figure

    # A store is opened (a SQLite one created) only for run ids or to log the comparison.
    needs_mlflow = not args.no_mlflow or any(not _is_csv(source) for source in args.inputs)
    client = MlflowClient(args.tracking_uri or default_tracking_uri()) if needs_mlflow else None
    runs = [_scored_input(client, source) for source in args.inputs]
    runs = run_labels(runs)
    # Only runs read from MLflow have a run id, and those need the client.
    first_run = next((client.get_run(r.run_id) for r in runs if r.run_id), None) if client is not None else None
    aligned = align(runs, intersect=args.intersect)
    binary = aligned.target.kind == "binary"
    _say_what_is_compared(aligned.target, args)
    strata = None if args.no_strata or not binary else args.strata or logged_strata(first_run)
    labels_csv, labels = None, None
    if args.baseline or (strata is not None and strata.column not in aligned.samples):
        labels_csv = args.labels or _setting_path(first_run, "data.labels_csv", "--labels")
        labels = read_csv(labels_csv, "labels CSV")
    sample_strata = None if strata is None else _sample_strata(aligned, strata, labels_csv, labels)
    if args.baseline:
        assert labels is not None  # read above for --baseline
        aligned = with_baseline(aligned, labels, args.baseline, str(labels_csv))
    froc = None
    annotations = args.annotations or _candidates_annotations(first_run)
    if annotations is not None and binary:
        logged_excluded = _run_setting(first_run, "data.excluded_csv") if first_run is not None else None
        excluded = args.excluded or logged_excluded
        froc = FrocReference.from_csv(annotations, excluded, sorted(aligned.samples["seriesuid"].unique()))
        froc = _with_nodules(froc, annotations, asked=args.annotations is not None)
    comparison = compare(aligned, bootstrap=args.bootstrap, seed=args.seed, group_by=args.group_by, froc=froc,
                         strata=sample_strata)

    print_comparison(comparison)
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {"comparison.csv": args.out / "comparison.csv", "comparison_runs.csv": args.out / "comparison_runs.csv",
               "forest_plot.png": args.out / "forest_plot.png"}
    comparison.pairs.to_csv(outputs["comparison.csv"], index=False)
    comparison.runs.to_csv(outputs["comparison_runs.csv"], index=False)
    if comparison.strata is not None:
        outputs["comparison_strata.csv"] = args.out / "comparison_strata.csv"
        comparison.strata.to_csv(outputs["comparison_strata.csv"], index=False)
    figure = forest_figure(forest_rows(comparison.pairs, comparison.metrics),
                           title=f"{len(aligned.runs)} runs on {comparison.num_samples} samples")
    figure.savefig(outputs["forest_plot.png"], dpi=120)
    print(f"wrote {', '.join(str(path) for path in outputs.values())}")
    if not args.no_mlflow:
        assert client is not None  # needs_mlflow
        run_id = log_comparison(client, args, runs, first_run, outputs)
        print(f"MLflow comparison run {run_id} in {client.tracking_uri}")
    return comparison


def _say_what_is_compared(target: RunTarget, args: argparse.Namespace) -> None:
    """A line for what is not binary: the target compared, a multitask run's primary head, what is left out."""
    if target.auxiliary:
        print(f"multitask runs (auxiliary heads {', '.join(target.auxiliary)}): compared on the primary head, "
              f"{target.describe()}")
    if target.kind == "binary":
        return
    if args.strata is not None:
        raise ConfigError(f"--strata compares the AUROC of binary runs; these predict {target.describe()}: "
                          "leave --strata out")
    print(f"{target.kind} runs, {target.describe()}: paired cluster bootstrap of each metric's difference and "
          "McNemar's test of accuracy (DeLong applies to a binary AUROC only; no strata or CPM)")


def logged_strata(first_run: Run | None) -> Strata | None:
    """The first run's ``eval.strata`` as it logged them (params ``eval.strata.column``, ``eval.strata.edges``);
    None for a CSV or a run without strata."""
    from lungexp.metrics.stratified import Strata

    column = _run_setting(first_run, "eval.strata.column") if first_run is not None else None
    edges = _run_setting(first_run, "eval.strata.edges") if first_run is not None else None
    if column is None or edges is None:
        return None
    strata = Strata.checked(column, json.loads(edges), "the first run's eval.strata")
    print(f"compared within {strata}: the first run's eval.strata (--no-strata leaves them out)")
    return strata


def _sample_strata(aligned: AlignedRuns, strata: Strata, labels_csv: Path | None, labels: pd.DataFrame | None
                   ) -> SampleStrata:
    from lungexp.metrics.comparison import sample_strata

    return sample_strata(aligned, strata, labels, str(labels_csv) if labels_csv is not None else None)


def _scored_input(client: MlflowClient | None, source: str) -> ScoredRun:
    from lungexp.metrics.comparison import ComparisonError, ScoredRun
    from lungexp.tracking.run_predictions import scored_run

    if _is_csv(source):
        path = Path(source)
        return ScoredRun(name=path.stem, predictions=read_csv(path, "predictions CSV"), threshold=CSV_THRESHOLD,
                         source=str(path))
    if RUN_ID.match(source):
        assert client is not None  # run() opens the store when an input is not a CSV
        return scored_run(client, source)
    raise ComparisonError(f"{source!r} is neither a predictions CSV file nor an MLflow run id (32 hex digits)")


def _is_csv(source: str) -> bool:
    return Path(source).suffix.lower() == ".csv" or Path(source).exists()


def run_labels(runs: list[ScoredRun]) -> list[ScoredRun]:
    """Runs named for the tables, the CSVs and the comparison's run name, short and apart. An MLflow run's name
    (its task name and overrides, up to 120 characters) loses the words after the first that every compared run's
    name has (``experiment=lidc_crops``, ``cv``); one still longer than :data:`LABEL_WIDTH` is cut with "…" and
    keeps its run id's first 8 digits, as does a name that is repeated. A CSV keeps its file's name."""
    from dataclasses import replace

    words = {run.run_id: run.name.split() for run in runs if run.run_id}
    shared = set.intersection(*(set(names[1:]) for names in words.values())) if len(words) > 1 else set()
    labels = []
    for run in runs:
        label = run.name
        if run.run_id:
            first, *rest = words[run.run_id]
            label = " ".join([first, *(word for word in rest if word not in shared)])
            if len(label) > LABEL_WIDTH:
                label = f"{label[:LABEL_WIDTH - 10]}… {run.run_id[:8]}"
        labels.append(label)
    repeated = {label for label in labels if labels.count(label) > 1}
    return [replace(run, name=f"{label} {run.run_id[:8]}" if label in repeated and run.run_id else label)
            for run, label in zip(runs, labels, strict=True)]


def _run_setting(run: Run, key: str) -> str | None:
    from lungexp.tracking.run_predictions import run_setting

    value = run_setting(run, key)
    return None if value in (None, "None", "") else value


def _setting_path(run: Run | None, key: str, option: str) -> Path:
    from lungexp.metrics.comparison import ComparisonError

    value = _run_setting(run, key) if run is not None else None
    if value is None:
        raise ComparisonError(f"no {key} logged with the compared runs; give {option} CSV")
    return Path(value)


def _candidates_annotations(run: Run | None) -> Path | None:
    """The first run's annotations CSV when it is a ``candidates`` run whose annotations file exists."""
    if run is None or _run_setting(run, "data.task") != "candidates":
        return None
    value = _run_setting(run, "data.annotations_csv")
    return Path(value) if value and Path(value).is_file() else None


def _with_nodules(froc: FrocReference, annotations: Path, asked: bool) -> FrocReference | None:
    """``froc`` if the compared series hold a nodule of it. Without one the CPM is undefined: an error for
    ``--annotations``, and no CPM (with a note) for the annotations of the first run."""
    from lungexp.metrics.luna16_froc import FrocInputError, check_nodules_in_scope

    assert froc.seriesuids is not None  # the compared samples' series
    try:
        check_nodules_in_scope(froc.annotations, froc.seriesuids, str(annotations), "the compared samples' series")
    except FrocInputError as problem:
        if asked:
            raise
        print(f"no CPM: {problem}")
        return None
    return froc


def forest_rows(pairs: pd.DataFrame, metrics: Sequence[str] = ()) -> dict[str, list[tuple[str, float, float, float]]]:
    """The forest plot's panels: ΔAUROC (DeLong) and each bootstrapped difference that was computed; for
    multiclass or ordinal runs, one panel per compared metric of ``metrics`` (all bootstrapped)."""
    panels = {"delta_auroc": "Δ AUROC (DeLong)", "delta_auroc_stratified": "Δ stratified AUROC (bootstrap)",
              "delta_average_precision": "Δ average precision (bootstrap)",
              "delta_cpm": "Δ CPM (bootstrap)", "delta_at_threshold/sensitivity": "Δ sensitivity at threshold",
              "delta_at_threshold/specificity": "Δ specificity at threshold"}
    if metrics:
        panels = {f"delta_{name}": f"Δ {name} (bootstrap)" for name in metrics}
    rows = {}
    for column, title in panels.items():
        if f"{column}_ci_low" in pairs:
            rows[title] = [(f"{a} − {b}", value, low, high) for a, b, value, low, high in zip(
                pairs["a"], pairs["b"], pairs[column], pairs[f"{column}_ci_low"], pairs[f"{column}_ci_high"],
                strict=True)]
    return rows


def print_comparison(comparison: Comparison) -> None:
    """The runs, best AUROC first, and every pair, with 95 % intervals."""
    import pandas as pd

    from lungexp.metrics.bootstrap import with_interval

    if comparison.metrics:
        print_class_comparison(comparison)
        return

    runs = pd.DataFrame({
        "run": comparison.runs["run"],
        "AUROC [DeLong]": [f"{r['auroc']:.3f} {with_interval(r, 'auroc_delong')}" for _, r in comparison.runs.iterrows()],
        **{title: [with_interval(r.dropna().to_dict(), name) for _, r in comparison.runs.iterrows()]
           for name, title in (("auroc_stratified", "AUROC strat."), ("average_precision", "AP"), ("cpm", "CPM"),
                               ("at_threshold/sensitivity", "sens@thr"),
                               ("at_threshold/specificity", "spec@thr")) if name in comparison.runs},
        "threshold": comparison.runs["threshold"].map(lambda value: f"{value:.3g}"),
    })
    holm = "delong_p_holm" in comparison.pairs
    pairs = pd.DataFrame({"pair": comparison.pairs["a"] + " − " + comparison.pairs["b"]})
    for column, title in (("delta_auroc", "ΔAUROC"), ("delta_auroc_stratified", "ΔAUROC strat."),
                          ("delta_average_precision", "ΔAP"), ("delta_cpm", "ΔCPM")):
        if column in comparison.pairs:
            pairs[title] = [with_interval(r.dropna().to_dict(), column) for _, r in comparison.pairs.iterrows()]
    pairs["p DeLong" + (" (Holm)" if holm else "")] = comparison.pairs["delong_p_holm" if holm else "delong_p"].map(
        _p_value)
    if "auroc_stratified_p" in comparison.pairs:
        pairs["p strat. (bootstrap" + (", Holm)" if holm else ")")] = comparison.pairs[
            "auroc_stratified_p_holm" if holm else "auroc_stratified_p"].map(_p_value)
    pairs["p McNemar" + (" (Holm)" if holm else "")] = comparison.pairs["mcnemar_p_holm" if holm else "mcnemar_p"].map(
        _p_value)
    print(f"\nComparison on {_samples_compared(comparison)}")
    print(runs.to_string(index=False))
    print(pairs.to_string(index=False))
    if comparison.strata is not None:
        print_strata(comparison)


def print_class_comparison(comparison: Comparison) -> None:
    """Multiclass or ordinal runs, best first by the first metric, and every pair's differences with their
    bootstrap p (Holm's across pairs for more than two runs) and McNemar's test of accuracy."""
    import pandas as pd

    from lungexp.metrics.bootstrap import with_interval

    holm = "mcnemar_p_holm" in comparison.pairs
    runs = pd.DataFrame({"run": comparison.runs["run"], **{
        name: [with_interval(row.dropna().to_dict(), name) for _, row in comparison.runs.iterrows()]
        for name in comparison.metrics}})
    pairs = pd.DataFrame({"pair": comparison.pairs["a"] + " − " + comparison.pairs["b"]})
    for name in comparison.metrics:
        pairs[f"Δ{name}"] = [with_interval(row.dropna().to_dict(), f"delta_{name}")
                             for _, row in comparison.pairs.iterrows()]
        p_column = f"{name}_p_holm" if holm else f"{name}_p"
        if p_column in comparison.pairs:
            pairs[f"p {name}"] = comparison.pairs[p_column].map(_p_value)
    pairs["p McNemar" + (" (Holm)" if holm else "")] = comparison.pairs["mcnemar_p_holm" if holm else "mcnemar_p"].map(
        _p_value)
    tests = " (p: paired bootstrap" + (", Holm across pairs)" if holm else ")")
    print(f"\nComparison of {comparison.target.describe()} on {_samples_compared(comparison)}")
    print(runs.to_string(index=False))
    print(f"Pairs{tests}")
    print(pairs.T.to_string(header=False))


def _samples_compared(comparison: Comparison) -> str:
    """``400 samples in 20 resampled clusters, 2 dropped from fold0``."""
    dropped = "".join(f", {count} dropped from {name}" for name, count in comparison.dropped.items())
    clusters = f" in {comparison.num_clusters} resampled clusters" if comparison.num_clusters else ""
    return f"{comparison.num_samples} samples{clusters}{dropped}"


def print_strata(comparison: Comparison) -> None:
    """Within each stratum holding both classes, every pair's AUROCs and DeLong's test; the strata left out."""
    import pandas as pd

    from lungexp.metrics.bootstrap import with_interval

    table = comparison.strata
    assert table is not None  # compared with strata
    holm = "delong_p_holm" in table
    if not table.empty:
        print("\nWithin each stratum (DeLong" + (", Holm across the pairs of a stratum)" if holm else ")"))
        print(pd.DataFrame({
            "stratum": table["stratum"], "pos/neg": table["positives"].astype(str) + "/" + table["negatives"].astype(str),
            "pair": table["a"] + " − " + table["b"], "AUROC a": table["auroc_a"].map("{:.3f}".format),
            "AUROC b": table["auroc_b"].map("{:.3f}".format),
            "ΔAUROC": [with_interval(row.to_dict(), "delta_auroc") for _, row in table.iterrows()],
            "p": table["delong_p_holm" if holm else "delong_p"].map(_p_value)}).to_string(index=False))
    for stratum in comparison.one_class_strata:
        print(f"stratum {stratum}: one class only, no AUROC to compare")


def _p_value(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def log_comparison(client: MlflowClient, args: argparse.Namespace, runs: list[ScoredRun], first_run: Run | None,
                   outputs: dict[str, Path]) -> str:
    """The comparison as an MLflow run: tagged with the compared run ids and inputs, the files as artifacts."""
    from lungexp.tracking.runs import create_run, ensure_experiment

    experiment = args.experiment
    if experiment is None and first_run is not None:
        experiment = client.get_experiment(first_run.info.experiment_id).name
    experiment_id = ensure_experiment(client, experiment or "lungexp", str(project_root() / "mlartifacts"))
    run_ids = [run.run_id for run in runs if run.run_id]
    tags = {COMPARED_RUNS_TAG: ",".join(run_ids), INPUTS_TAG: " ".join(args.inputs)}
    if args.baseline:
        tags["lungexp.compare.baseline"] = args.baseline
    name = "compare " + " vs ".join([run.name for run in runs] + ([f"baseline {args.baseline}"] if args.baseline else []))
    run_id = create_run(client, experiment_id, name[:250], tags=tags)
    for path in outputs.values():
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


if __name__ == "__main__":
    sys.exit(main())
