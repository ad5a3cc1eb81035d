"""Set a fifth of the patients of a labels CSV aside as a held-out test CSV, the rest for cross-validation.

The split is lungexp's own (``assign_folds``: seeded, whole patients, stratified by whether a patient has a
positive), so no patient is on both sides:

    python scripts/holdout_split.py ../shared/data/lidc-crops/points.csv --out $RUNS/holdout
    # -> $RUNS/holdout/development.csv (4/5 of the patients) and heldout.csv (1/5)

Then cross-validate on ``data.labels_csv=$RUNS/holdout/development.csv`` and evaluate the fold models on
``data.labels_csv=$RUNS/holdout/heldout.csv split=all`` (docs/real_data.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lungexp.data.labels.splits import assign_folds
from lungexp.utils.atomic import atomic_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels_csv", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for development.csv and heldout.csv")
    parser.add_argument("--group-by", default="patient_id", help="the patient column (default patient_id)")
    parser.add_argument("--parts", type=int, default=5, help="1/parts of the patients is held out (default 5)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    samples = pd.read_csv(args.labels_csv)
    held_out = assign_folds(samples, args.parts, args.seed, args.group_by) == 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("development", samples[~held_out]), ("heldout", samples[held_out])):
        with atomic_file(args.out / f"{name}.csv") as temporary:
            part.to_csv(temporary, index=False)
        print(f"{name}.csv: {len(part)} rows, {part[args.group_by].nunique()} {args.group_by}s, "
              f"{int(part['label'].sum())} positive")


if __name__ == "__main__":
    main()
