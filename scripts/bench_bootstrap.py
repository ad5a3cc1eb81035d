"""Cost of the cluster bootstrap on a LUNA16-sized test fold, on one core.

The fold: the 89 scans of one tenth of ``bench_eval.luna16_sized`` (LUNA16's 888 scans and 1,186
nodules, 750,000 candidates), about 75,000 candidates; a candidate near a nodule is a positive. Measured:
``evaluate_predictions`` (figures off, with the FROC) at ``eval.bootstrap=N`` against the same call without
the bootstrap, and the draws of the patch metrics and of the CPM alone. The baseline is one draw done
the plain way (copy each drawn scan's rows, then compute the metrics and the FROC of the copy) times N.
Example:

    python scripts/bench_bootstrap.py --samples 1000 --repeats 3 --markdown
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"  # one core, before numpy loads its BLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_eval import LUNA16_NODULES, luna16_sized, median_seconds  # noqa: E402

from lungexp.evaluation.split_metrics import evaluate_predictions  # noqa: E402
from lungexp.evaluation.types import EvaluationSettings  # noqa: E402
from lungexp.metrics.bootstrap import cluster_resampling, resampled_metrics  # noqa: E402
from lungexp.metrics.classification import table_metrics  # noqa: E402
from lungexp.metrics.luna16_froc import FrocReference, compute_froc  # noqa: E402

FOLD_SCANS = 89
THRESHOLD = 0.5


def luna16_fold(seed: int = 0) -> tuple[pd.DataFrame, FrocReference]:
    """One tenth of the LUNA16-sized set: its first 89 scans, with labels (near a nodule = positive)."""
    predictions, annotations = luna16_sized(750_000, seed)
    predictions["label"] = (np.arange(len(predictions)) < 4 * LUNA16_NODULES).astype(np.int64)
    scans = sorted(predictions["seriesuid"].unique())[:FOLD_SCANS]
    fold = predictions[predictions["seriesuid"].isin(scans)].reset_index(drop=True)
    return fold, FrocReference(annotations[annotations["seriesuid"].isin(scans)].reset_index(drop=True),
                               seriesuids=scans)


def plain_draw(predictions: pd.DataFrame, froc: FrocReference, rng: np.random.Generator) -> None:
    """One draw without sufficient statistics: copy the drawn scans' rows and evaluate the copy."""
    scans = np.asarray(froc.seriesuids)
    drawn = rng.integers(len(scans), size=len(scans))
    parts, nodules = [], []
    for copy, k in enumerate(drawn):  # a scan drawn twice is two scans
        uid = f"{scans[k]}.{copy}"
        parts.append(predictions[predictions["seriesuid"] == scans[k]].assign(seriesuid=uid))
        nodules.append(froc.annotations[froc.annotations["seriesuid"] == scans[k]].assign(seriesuid=uid))
    copied = pd.concat(parts, ignore_index=True)
    table_metrics(copied["label"].to_numpy(), copied["probability"].to_numpy(), "", THRESHOLD)
    compute_froc(copied, pd.concat(nodules, ignore_index=True),
                 seriesuids=[f"{scans[k]}.{copy}" for copy, k in enumerate(drawn)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap draws (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many timings (default: 3)")
    parser.add_argument("--plain-draws", type=int, default=5, help="draws timed for the baseline (default: 5)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    predictions, froc = luna16_fold()
    print(f"Fold: {len(predictions):,} candidates ({int(predictions['label'].sum())} positive) in "
          f"{predictions['seriesuid'].nunique()} scans, {len(froc.annotations)} nodules; {args.samples} draws, one core")
    without = EvaluationSettings(threshold=THRESHOLD, froc=froc, detection=True, bootstrap=0)
    with_bootstrap = EvaluationSettings(threshold=THRESHOLD, froc=froc, detection=True, bootstrap=args.samples)
    point = median_seconds(lambda: evaluate_predictions(predictions, without, figures=False), args.repeats)
    full = median_seconds(lambda: evaluate_predictions(predictions, with_bootstrap, figures=False), args.repeats)
    resampling = cluster_resampling(predictions, args.samples, seriesuids=froc.seriesuids)
    patch = median_seconds(lambda: resampled_metrics(predictions, THRESHOLD, resampling), args.repeats)
    cpm = median_seconds(lambda: compute_froc(predictions, froc.annotations, seriesuids=froc.seriesuids,
                                              resampling=resampling), args.repeats)
    froc_alone = median_seconds(lambda: compute_froc(predictions, froc.annotations, seriesuids=froc.seriesuids),
                                args.repeats)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.plain_draws):
        plain_draw(predictions, froc, rng)
    plain = (time.perf_counter() - start) / args.plain_draws * args.samples

    bootstrap = full - point
    rows = [
        ("evaluate_predictions, no bootstrap", point),
        (f"evaluate_predictions, eval.bootstrap={args.samples}", full),
        (f"**the bootstrap ({args.samples} draws, every metric and the CPM)**", bootstrap),
        ("  of which: AUROC, AP, ECE, thresholded metrics (resampled_metrics)", patch),
        ("  of which: the CPM (compute_froc with the draws, minus without)", cpm - froc_alone),
        (f"baseline: plain draws (copy rows, evaluate), {args.plain_draws} timed, x {args.samples}", plain),
    ]
    if args.markdown:
        print("\n| measurement | seconds |\n|---|---|")
        print("\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in rows))
        print(f"| **ratio plain draws / the bootstrap** | **{plain / bootstrap:.0f}×** |")
    else:
        for name, seconds in rows:
            print(f"  {name:<75} {seconds:8.2f} s")
        print(f"  ratio plain / bootstrap: {plain / bootstrap:.0f}x")


if __name__ == "__main__":
    main()
