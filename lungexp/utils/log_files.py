"""Records for the log files alone: what the console already shows once (a printed summary, a user error on
stderr) kept in the run folder's log as well (Hydra's job logging: ``<entry>.log``)."""

from __future__ import annotations

import logging

log = logging.getLogger("lungexp")


def record_in_log_files(message: str, level: int = logging.INFO) -> None:
    """Write ``message`` to the file handlers of the root logger only (none outside a Hydra run: a no-op)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
