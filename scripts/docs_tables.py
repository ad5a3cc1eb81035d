"""The tables of the documentation that are read off the code, so that they cannot drift from it.

Each table sits in a page of ``docs/`` between two markers, ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``, and is made here from its source of truth:

- ``data-options``: every ``data.*`` option, nested ones included, from
  :class:`lungexp.data.options.DataOptions` (type, default, line of doc) and the ``Args:`` of the spec classes
  of the nested options (``patch``, ``split``, ...), with the defaults ``conf/base_datamodule.yaml`` sets and
  the ``data=`` options that set each key;
- ``eval-options``: every ``eval.*`` option, from :class:`lungexp.evaluation.types.EvaluationOptions`;
- ``config-groups``: every config group of ``conf/`` and ``experiments/``, each option with the first sentence
  of its file's header comment;
- ``console-scripts``: the ``[project.scripts]`` of ``pyproject.toml``, each with its module's first line.

``python scripts/docs_tables.py`` rewrites the tables in place; ``--check`` only reports the stale ones (exit
status 1). ``tests/test_docs.py`` and the strict docs build (``make docs``, ``make lint``) fail on a stale table.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the checkout's lungexp, not an installed one
    sys.path.insert(0, str(ROOT))

from lungexp.data.options import REQUIRED, DataOptions  # noqa: E402
from lungexp.evaluation.types import EvaluationOptions, config_key  # noqa: E402
from lungexp.utils.dictconfig import dotted_leaves  # noqa: E402

DOCS = ROOT / "docs"
CONF = ROOT / "conf"
MARKER = re.compile(r"(<!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                    re.DOTALL)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell: reST literals as code, no raw HTML, no column breaks. A pipe in code
    is written as HTML code (``&#124;``): GitHub and Python-Markdown disagree about ``\\|`` inside backticks."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"``\1``", " ".join(text.split()))
    parts = text.replace("``", "`").split("`")
    for index, part in enumerate(parts):
        if index % 2 == 0:  # outside code: < and > would be HTML
            parts[index] = part.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        elif "|" in part:
            parts[index] = f"<code>{html.escape(part).replace('|', '&#124;')}</code>"
        else:
            parts[index] = f"`{part}`"
    return "".join(parts)


def _value(value: Any) -> str:
    """A default as the command line spells it."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(_value(item).strip("`") for item in value) + "]`"
    return f"`{value}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def docstring_args(cls: type) -> dict[str, str]:
    """The ``Args:`` section of ``cls``' docstring: ``{name: doc}``, an entry naming several (``a, b: ...``)
    giving each the same doc."""
    text = inspect.getdoc(cls) or ""
    section = re.search(r"^Args:\n((?:    .*\n?|\n)*)", text, re.MULTILINE)
    if section is None:
        return {}
    docs: dict[str, str] = {}
    for entry in re.split(r"\n(?=    \S)", section.group(1).rstrip()):
        names, _, doc = entry.strip().partition(":")
        for name in names.split(","):
            docs[name.strip()] = " ".join(doc.split())
    return docs


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}



def _set_by_data_options() -> dict[str, list[str]]:
    """``{dotted key: [data options whose file sets it]}``."""
    set_by: dict[str, list[str]] = {}
    for path in sorted((CONF / "data").glob("*.yaml")):
        for key, _ in dotted_leaves(_yaml(path)):
            set_by.setdefault(key, []).append(path.stem)
    return set_by


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def data_options() -> str:
    """Every ``data.*`` option: key, type, default, the ``data=`` options that set it, meaning."""
    base = dict(dotted_leaves(_yaml(CONF / "base_datamodule.yaml")))
    set_by = _set_by_data_options()
    defaults = DataOptions.config_defaults()
    rows = []

    def row(key: str, kind: str, default: Any, doc: str) -> None:
        shown = "required" if default is REQUIRED else _value(base.get(key, default))
        options = ", ".join(f"`{option}`" for option in set_by.get(key, []))
        rows.append([f"`{key}`", _cell(f"`{kind}`"), shown, options, _cell(doc)])

    for item in dataclasses.fields(DataOptions):
        default = defaults.get(item.name, REQUIRED)
        if isinstance(default, Mapping):  # a nested option: one row per key of its spec class
            spec = type(item.metadata["check"](item.name, dict(default)))
            docs = docstring_args(spec)
            for name, parameter in inspect.signature(spec.from_config).parameters.items():
                if name not in docs:
                    raise ValueError(f"{spec.__name__}'s docstring has no Args: entry for {name}")
                row(f"{item.name}.{name}", _annotation(parameter.annotation), parameter.default, docs[name])
        else:
            row(item.name, _annotation(item.type), default, item.metadata["doc"])
    return _table(["`data.` key", "type", "default", "set by `data=`", "meaning"], rows)


def eval_options() -> str:
    """Every ``eval.*`` option: key, type, default, meaning."""
    docs = docstring_args(EvaluationOptions)
    rows = [[f"`eval.{config_key(item.name)}`", _cell(f"`{_annotation(item.type)}`"), _value(item.default),
             _cell(docs[item.name])] for item in dataclasses.fields(EvaluationOptions)]
    return _table(["key", "type", "default", "meaning"], rows)


def header_sentence(path: Path) -> str:
    """The first sentence of the comment that opens ``path`` (Hydra's ``# @package`` line skipped)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("# ") or line.startswith("#   "):  # the comment ends, or a command example starts
            break
        lines.append(line[2:])
    text = " ".join(lines)
    if not text:
        raise ValueError(f"{path.relative_to(ROOT)} opens with no comment saying what it is")
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]  # not at "vs. malignant", "et al. 2017"
    return sentence.rstrip(":") + ("" if sentence.endswith(".") else ".")


def _group_defaults() -> dict[str, str]:
    """``{group: its default option}`` from ``conf/config.yaml``'s defaults list."""
    chosen: dict[str, str] = {}
    for entry in _yaml(CONF / "config.yaml")["defaults"]:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            chosen[group.removeprefix("optional ")] = option
    return chosen


def config_groups() -> str:
    """Every config group and its options, one row per option."""
    defaults = _group_defaults()
    folders = {folder.name: folder for folder in CONF.iterdir() if folder.is_dir()}
    folders["experiment"] = ROOT / "experiments"
    folders["data/label_rule"] = CONF / "data" / "label_rule"
    rows = []
    for group in [*(name for name in defaults if name in folders), *sorted(set(folders) - set(defaults))]:
        chosen = group if group in defaults else f"+{group}"  # a group outside the defaults list is added
        for path in sorted(folders[group].glob("*.yaml")):
            option = f"`{chosen}={path.stem}`" + (" (default)" if defaults.get(group) == path.stem else "")
            rows.append([f"`{group}`", option, _cell(header_sentence(path))])
    return _table(["group", "option", "what it is"], rows)


def _summary(module_name: str) -> str:
    """The first paragraph of a module's docstring, without the usage line it may end with."""
    doc = inspect.getdoc(importlib.import_module(module_name)) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return re.sub(r":?\s*``python -m .*$", "", first).rstrip(".:")


def console_scripts() -> str:
    """The console scripts of ``pyproject.toml``: name, module, what it does."""
    import tomllib  # Python >= 3.11: the docs build needs it, lungexp itself runs on 3.10

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    rows = []
    for name, target in scripts.items():
        module = target.split(":")[0]
        rows.append([f"`{name}`", f"`python -m {module}`", _cell(_summary(module))])
    return _table(["command", "the same as", "what it does"], rows)


TABLES: dict[str, Callable[[], str]] = {"data-options": data_options, "eval-options": eval_options,
                                         "config-groups": config_groups, "console-scripts": console_scripts}


def refreshed(text: str) -> str:
    """``text`` with every generated table made anew."""
    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown generated table {name!r}; known: {sorted(TABLES)}")
        return f"{match.group(1)}{TABLES[name]()}{match.group(4)}"
    return MARKER.sub(fill, text)


def stale_pages(docs: Path = DOCS) -> list[Path]:
    """The pages whose generated tables differ from what the code gives now."""
    return [page for page in sorted(docs.rglob("*.md")) if refreshed(text := page.read_text()) != text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables (exit status 1)")
    check = parser.parse_args().check
    stale = stale_pages()
    for page in stale:
        if check:
            print(f"stale generated table(s) in {page.relative_to(ROOT)}: run python scripts/docs_tables.py")
        else:
            page.write_text(refreshed(page.read_text()))
            print(f"rewrote {page.relative_to(ROOT)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
