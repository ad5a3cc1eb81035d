"""MkDocs hook: the build fails on a console output pasted into a page by hand.

Every ``text`` block of the pages is an output that ``scripts/docs_examples.py`` prints from the current code
(between ``<!-- example: NAME -->`` markers), or says on the line before it why it is not
(``<!-- not generated: REASON -->``). Whether the printed outputs are still what the code prints takes running
them: ``tests/test_docs_examples.py`` and ``scripts/docs_examples.py --check``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "docs_examples.py"


def on_pre_build(config: Any, **kwargs: Any) -> None:
    spec = importlib.util.spec_from_file_location("docs_examples", SCRIPT)
    assert spec is not None and spec.loader is not None
    examples = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = examples  # its dataclasses look their module up there
    spec.loader.exec_module(examples)
    pasted = examples.unaccounted_text_blocks()
    if pasted:
        raise PluginError(f"console output(s) outside <!-- example: NAME --> markers at {', '.join(pasted)}: add "
                          "them to scripts/docs_examples.py, or say why not (<!-- not generated: REASON -->)")
