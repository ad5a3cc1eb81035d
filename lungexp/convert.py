"""Convert DICOM CT series to LUNA16-style MetaImage: ``python -m lungexp.convert DICOM_DIR OUT_DIR``.

Every series under ``DICOM_DIR`` (searched recursively) becomes ``OUT_DIR/<SeriesInstanceUID>.mhd``
+ ``.raw`` (int16 HU), the layout the LUNA16 CSVs and :func:`lungexp.data.scans.scan_index.index_scans` expect, so
LIDC-IDRI downloads can be used with the LUNA16 annotations directly. All series are checked before
the first is written; each is then read and written in turn, to keep memory to one scan.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lungexp.data.scans import iter_dicom_series, write_mhd
from lungexp.utils.errors import LungexpError, report_user_errors


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lungexp.convert", description=__doc__.splitlines()[0])
    parser.add_argument("dicom_dir", type=Path, help="folder holding DICOM series (searched recursively)")
    parser.add_argument("out_dir", type=Path, help="where to write <SeriesInstanceUID>.mhd/.raw")
    parser.add_argument("--subset", type=int, metavar="K",
                        help="write into OUT_DIR/subsetK/ (a LUNA16-style cross-validation fold)")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; returns 0 (bad input or an unwritable OUT_DIR exits 1 with a one-line error)."""
    args = _parse_args(argv)
    out_dir = args.out_dir / f"subset{args.subset}" if args.subset is not None else args.out_dir
    count = 0
    for uid, scan in iter_dicom_series(args.dicom_dir):
        try:
            path = write_mhd(scan, out_dir / f"{uid}.mhd")
        except OSError as error:
            raise LungexpError(f"cannot write {out_dir / uid}.mhd ({error.strerror}); choose a writable "
                               "OUT_DIR") from None
        spacing = ", ".join(f"{value:.3f}" for value in scan.spacing)
        print(f"{uid}  shape (z, y, x) {scan.shape_zyx}  spacing (x, y, z) ({spacing}) mm  -> {path}")
        count += 1
    print(f"converted {count} series from {args.dicom_dir} into {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
