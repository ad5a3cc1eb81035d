"""A griffe extension for the API reference: the docstrings' Sphinx roles as links.

lungexp's docstrings cite each other the Sphinx way, ``:class:`~lungexp.data.options.DataOptions```,
``:func:`lungexp.config.check.check```; mkdocstrings reads them as Markdown, where the role would show as
text. Each role becomes an optional cross-reference of mkdocs-autorefs: a link where the target is in the
API reference, plain code where it is not (an external class, a private name), never a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")


def with_links(text: str, module: griffe.Module | None = None) -> str:
    """``text`` with every Sphinx role an optional autorefs cross-reference; a target that is not a full path
    (``DataOptions``, ``Class.method``) is looked up among ``module``'s members, as Sphinx does."""
    def link(match: re.Match[str]) -> str:
        target = match["target"].strip().lstrip(".")
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        if module is not None and target.split(".")[0] in module.members:
            target = f"{module.path}.{target}"
        return f'<autoref optional identifier="{target}"><code>{title}</code></autoref>'
    return ROLE.sub(link, text)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring once the package is loaded (so that names resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = with_links(obj.docstring.value, obj.module)
