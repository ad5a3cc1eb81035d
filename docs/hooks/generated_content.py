"""MkDocs hook: the build fails while a page holds what the code no longer gives.

- A table that ``scripts/docs_tables.py`` generates from the code is stale. The tables are committed in the pages
  (so they read the same on GitHub, offline and on the site); ``make docs`` and ``make lint`` build strictly and
  stop here, naming the pages and the command that rewrites them.
- A console output was pasted by hand. Every ``text`` block of the pages is an output that
  ``scripts/docs_examples.py`` prints from the current code (between ``<!-- example: NAME -->`` markers), or says
  on the line before it why it is not (``<!-- not generated: REASON -->``). Whether the printed outputs are still
  what the code prints takes running them: ``tests/test_docs_examples.py`` and ``scripts/docs_examples.py --check``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mkdocs.exceptions import PluginError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def on_pre_build(config: Any, **kwargs: Any) -> None:
    tables = _script("docs_tables")
    stale = tables.stale_pages(Path(config["docs_dir"]))
    if stale:
        names = ", ".join(str(page.relative_to(tables.ROOT)) for page in stale)
        raise PluginError(f"stale generated table(s) in {names}: run python scripts/docs_tables.py")
    pasted = _script("docs_examples").unaccounted_text_blocks()
    if pasted:
        raise PluginError(f"console output(s) outside <!-- example: NAME --> markers at {', '.join(pasted)}: add "
                          "them to scripts/docs_examples.py, or say why not (<!-- not generated: REASON -->)")
