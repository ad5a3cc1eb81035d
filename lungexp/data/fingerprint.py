"""Keys for data derived from scans (patch caches, sampled candidates) that change when any input does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def content_key(settings: Mapping[str, Any], table: pd.DataFrame, scan_paths: Mapping[str, str | Path]) -> str:
    """16 hex digits of SHA-256 over ``settings`` (as JSON), the rows of ``table``, and each scan
    file's resolved path, size and modification time, so that a replaced or touched scan changes
    the key too. ``scan_paths`` maps seriesuid -> scan file."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).values.tobytes())
    for uid in sorted(scan_paths):
        path = Path(scan_paths[uid]).resolve()
        stat = path.stat()
        digest.update(f"{uid}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]

