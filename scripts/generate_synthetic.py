"""Generate a synthetic chest-CT dataset in the LUNA16 layout (see ``lungexp.data.synthetic``).

Example::

    .venv/bin/python scripts/generate_synthetic.py data/synthetic_luna16 --num-scans 20 --seed 0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pandas as pd

from lungexp.data.synthetic import generate_luna16_dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset folder to create (or reuse if it holds the same dataset)")
    parser.add_argument("--num-scans", type=int, default=20)
    parser.add_argument("--num-subsets", type=int, default=5)
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(80, 160, 160),
        metavar=("Z", "Y", "X"),
        help="array shape of each scan",
    )
    parser.add_argument("--nodules-per-scan", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"))
    parser.add_argument("--negatives-per-scan", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at ROOT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    dataset = generate_luna16_dataset(
        args.root,
        num_scans=args.num_scans,
        num_subsets=args.num_subsets,
        shape_zyx=tuple(args.shape),
        nodules_per_scan=tuple(args.nodules_per_scan),
        negatives_per_scan=args.negatives_per_scan,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - started
    nodules = pd.read_csv(dataset.malignancy_csv)
    candidates = pd.read_csv(dataset.candidates_csv)
    print(f"dataset:    {dataset.root} ({elapsed:.1f} s)")
    print(f"scans:      {len(dataset.series_uids)}")
    print(
        f"nodules:    {len(nodules)} ({nodules['mal_bool'].mean():.0%} malignant), "
        f"diameter {nodules['diameter_mm'].min():.1f}-{nodules['diameter_mm'].max():.1f} mm"
    )
    print(
        f"candidates: {len(candidates)} ({int(candidates['class'].sum())} nodules, "
        f"{int((candidates['class'] == 0).sum())} negatives)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
