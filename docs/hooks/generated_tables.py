"""MkDocs hook: the build fails while a table that ``scripts/docs_tables.py`` generates from the code is stale.

The tables are committed in the pages (so they read the same on GitHub, offline and on the site); this check
is what keeps them from drifting: ``make docs`` and ``make lint`` build strictly and stop here, naming the
pages and the command that rewrites them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from mkdocs.exceptions import PluginError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "docs_tables.py"


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_pre_build(config: Any, **kwargs: Any) -> None:
    tables = _tables()
    stale = tables.stale_pages(Path(config["docs_dir"]))
    if stale:
        names = ", ".join(str(page.relative_to(tables.ROOT)) for page in stale)
        raise PluginError(f"stale generated table(s) in {names}: run python scripts/docs_tables.py")
