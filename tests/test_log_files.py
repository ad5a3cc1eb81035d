"""What the console shows once is kept in the run folder's log file too (Hydra's job logging writes it)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lungexp.evaluation.console_summary import print_summary


def test_a_summary_is_printed_once_and_kept_in_the_log_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    handler = logging.FileHandler(tmp_path / "run.log")
    logging.getLogger().addHandler(handler)
    try:
        print_summary("Results", ["  test/auroc   0.886", "  best checkpoint   epoch011.ckpt"])
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert capsys.readouterr().out.count("best checkpoint") == 1
    assert "Results\n  test/auroc   0.886\n  best checkpoint   epoch011.ckpt" in (tmp_path / "run.log").read_text()
