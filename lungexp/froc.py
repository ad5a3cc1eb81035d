"""LUNA16 FROC/CPM of a predictions CSV, like LUNA16's own evaluation script.

``python -m lungexp.froc PREDICTIONS_CSV ANNOTATIONS_CSV [--excluded EXCLUDED_CSV] [--seriesuids FILE]
[--out DIR] [--bootstrap N] [--score-columns A,B,...]`` prints the candidate counts as LUNA16's script prints
them, the CPM and the sensitivity at 1/8 ... 8 false positives per scan, and writes ``froc.png`` and
``froc.csv`` (the curve) to ``--out``. With several score columns (by default those of ``predict
detections=``: detector alone, classifier alone, fusion) it also prints their CPMs side by side and writes
``froc_scores.csv`` (:mod:`lungexp.metrics.froc_scores`). The annotation files are read as for training (:mod:`lungexp.data.labels.annotations`); the rules are
listed in :mod:`lungexp.metrics.luna16_froc`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lungexp.utils.errors import check_int, report_user_errors
from lungexp.utils.tables import CsvFileError, read_csv


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lungexp.froc", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="CSV with seriesuid,coordX,coordY,coordZ,probability")
    parser.add_argument("annotations", type=Path, help="LUNA16 annotations.csv (seriesuid,coordX,coordY,coordZ,"
                                                       "diameter_mm)")
    parser.add_argument("--excluded", type=Path, help="annotations_excluded.csv: hits on these are ignored")
    parser.add_argument("--seriesuids", type=Path,
                        help="the scans evaluated, one seriesuid per line (default: those in PREDICTIONS_CSV)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for froc.png and froc.csv (default: .)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="N resamplings of the scans for 95%% intervals (e.g. 1000; default: none)")
    parser.add_argument("--score-columns", type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
                        metavar="A,B,...", help="score columns compared side by side, each as the probability "
                        "(default: detector_score,classifier_probability,probability when all are present)")
    args = parser.parse_args(argv)
    check_int("--bootstrap", args.bootstrap, minimum=0)
    return args


def read_seriesuids(path: Path) -> list[str]:
    """One seriesuid per line (LUNA16's ``seriesuids.csv``); a ``seriesuid`` header, extra columns and
    blank lines are skipped."""
    if not path.is_file():
        raise CsvFileError(f"{path}: seriesuids file not found; check the path")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise CsvFileError(f"{path}: not a text file of seriesuids") from None
    uids = [line.split(",")[0].strip() for line in lines]
    uids = [uid for uid in uids if uid and uid != "seriesuid"]
    if not uids:
        raise CsvFileError(f"{path}: no seriesuids in the file; write one per line")
    return uids


def on_listed_scans(predictions: pd.DataFrame, seriesuids: list[str], source: Path) -> pd.DataFrame:
    """The predictions of the listed scans; how many others are left out is printed, not silently dropped."""
    listed = predictions["seriesuid"].isin(seriesuids)
    if not listed.all():
        print(f"left out {int((~listed).sum())} prediction(s) of {predictions.loc[~listed, 'seriesuid'].nunique()} "
              f"series not in {source}")
    return predictions[listed].reset_index(drop=True)


@report_user_errors  # bad input: one line, status 1; Ctrl-C: one line, status 130
def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


def run(args: argparse.Namespace) -> None:
    # Imported here so that --help answers at once.
    from lungexp.data.labels.annotations import read_annotations, read_excluded_annotations
    from lungexp.data.labels.sample_table import drop_duplicate_points
    from lungexp.metrics.froc_scores import default_score_columns
    from lungexp.metrics.luna16_froc import (
        FP_RATES,
        PREDICTION_COLUMNS,
        check_nodules_in_scope,
        compute_froc,
        rate_name,
        validated_table,
    )
    from lungexp.visualize.plots import froc_figure

    table = read_csv(args.predictions, "predictions CSV")
    score_columns = args.score_columns or default_score_columns(list(table.columns))
    predictions = drop_duplicate_points(
        validated_table(table, list(dict.fromkeys([*PREDICTION_COLUMNS, *score_columns])), str(args.predictions)),
        args.predictions, values=score_columns)
    annotations = read_annotations(args.annotations)
    excluded = read_excluded_annotations(args.excluded) if args.excluded is not None else None
    seriesuids = None
    if args.seriesuids is not None:
        seriesuids = read_seriesuids(args.seriesuids)
        predictions = on_listed_scans(predictions, seriesuids, args.seriesuids)
    scans, scans_source = ((seriesuids, f"listed in {args.seriesuids}") if seriesuids is not None
                           else (list(predictions["seriesuid"].unique()), f"those of {args.predictions}"))
    check_nodules_in_scope(annotations, scans, str(args.annotations), scans_source)
    result = compute_froc(predictions, annotations, excluded=excluded, seriesuids=seriesuids,
                          bootstrap=args.bootstrap)

    print(f"{result.num_scans} scans, {result.num_nodules} nodules ({result.num_found} hit by a candidate), "
          f"{result.num_candidates} candidates: {result.num_false_positives} false positives, "
          f"{result.num_ignored} on excluded findings (ignored)")
    print("Candidate detection results:")  # LUNA16's script prints the same lines, to compare side by side
    for label, count in result.script_counts().items():
        print(f"    {label}: {count}")
    for rate in FP_RATES:
        interval = result.sensitivity_ci[rate] if result.sensitivity_ci else None
        shown = f"  [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        print(f"  sensitivity at {rate_name(rate):>5} FP/scan: {result.sensitivities[rate]:.4f}{shown}")
    shown = f"  95% CI [{result.cpm_ci[0]:.4f}, {result.cpm_ci[1]:.4f}]" if result.cpm_ci else ""
    print(f"CPM: {result.cpm:.4f}{shown}")

    args.out.mkdir(parents=True, exist_ok=True)
    result.curve.to_csv(args.out / "froc.csv", index=False)
    figure = froc_figure(result)
    figure.savefig(args.out / "froc.png", dpi=120)
    print(f"wrote {args.out / 'froc.png'} and {args.out / 'froc.csv'}")
    if score_columns != ["probability"]:
        compare_scores(predictions, score_columns, annotations, excluded, seriesuids, args)


def compare_scores(predictions: pd.DataFrame, score_columns: list[str], annotations: pd.DataFrame,
                   excluded: pd.DataFrame | None, seriesuids: list[str] | None, args: argparse.Namespace) -> None:
    """Print the CPM of each score column side by side and write them to ``froc_scores.csv``."""
    from lungexp.metrics.froc_scores import format_score_table, froc_by_score, score_table

    results = froc_by_score(predictions, score_columns, annotations, excluded=excluded, seriesuids=seriesuids,
                            bootstrap=args.bootstrap)
    print(f"CPM and sensitivity at 1/8 ... 8 FP/scan by score column (same candidates"
          f"{', same bootstrap draws' if args.bootstrap else ''}):")
    print(format_score_table(results))
    score_table(results).to_csv(args.out / "froc_scores.csv", index=False)
    print(f"wrote {args.out / 'froc_scores.csv'}")


if __name__ == "__main__":
    sys.exit(main())
