"""Write a simulated detector's boxes on a generated dataset as MONAI's detection JSON (see
``lungexp.data.synthetic.simulated_detector``), to try ``lungexp.predict detections=...`` without a detector.

Example::

    .venv/bin/python scripts/simulate_detections.py data/synthetic_luna16 --subset 0 --out result_fold0.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lungexp.data.synthetic.simulated_detector import simulate_detections, write_monai_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a dataset made by the generator (annotations.csv, candidates_V2.csv)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--subset", type=int, default=None, help="only the scans of subsetK (default: all scans)")
    parser.add_argument("--false-marks-per-scan", type=int, default=None,
                        help="false marks per scan (default: every negative candidate that keeps 10 mm clearance)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seriesuids = None
    if args.subset is not None:
        folder = args.root / f"subset{args.subset}"
        seriesuids = sorted(path.stem for path in folder.glob("*.mhd"))
        if not seriesuids:
            raise SystemExit(f"error: {folder} holds no .mhd scans; pick a subset the dataset has")
    detections = simulate_detections(args.root, seriesuids, args.false_marks_per_scan, args.seed)
    write_monai_json(detections.boxes, args.out)
    print(f"wrote {len(detections.boxes)} box(es) on {detections.boxes['seriesuid'].nunique()} scan(s) to {args.out} "
          f"({len(detections.expected)} after merging duplicates)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
