"""The documentation cannot drift from the code: its generated tables are fresh, and the commands it shows
compose on the current configs."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers.cli import load_script
from tests.helpers.config import CONFIG_DIR, PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
# The Hydra entry points and the primary config each composes.
CONFIG_NAMES = {"run": "config", "preprocess": "config", "evaluate": "evaluate", "predict": "predict",
                "register": "register"}
COMMAND = re.compile(r"(?:^|\$ |\s)(?:\.venv/bin/)?python -m lungexp\.(?P<entry>[a-z]+)\b(?P<arguments>.*)")
PLACEHOLDERS = ("<", "…", "...", "$")  # a value the reader fills in, or a shell variable


DOCS_TABLES = load_script("docs_tables")


def test_the_generated_tables_are_what_the_code_gives() -> None:
    assert DOCS_TABLES.stale_pages() == [], "run python scripts/docs_tables.py"


def test_a_table_that_lags_behind_the_code_is_found(tmp_path: Path) -> None:
    page = tmp_path / "data.md"
    fresh = DOCS_TABLES.refreshed("<!-- generated: data-options -->\n<!-- end generated: data-options -->\n")
    assert "`patch.size`" in fresh and "`balance.sampler`" in fresh and "`split.seed`" in fresh
    page.write_text(fresh.replace("`patch.size`", "`patch.edge`"))
    assert DOCS_TABLES.stale_pages(tmp_path) == [page]
    page.write_text(fresh)
    assert DOCS_TABLES.stale_pages(tmp_path) == []


def test_every_data_option_is_in_the_table_with_its_doc() -> None:
    from lungexp.data.options import DataOptions

    table = DOCS_TABLES.data_options()
    for name in DataOptions.config_defaults().keys() - {"patch", "split", "balance", "negatives"}:
        assert f"| `{name}` |" in table
    assert "| `patch.size_mm` | <code>float &#124; None</code> | `null` |" in table
    assert "| `split.seed` | `int` | `${seed}` |" in table  # conf/base_datamodule.yaml's default


def test_every_config_option_file_says_what_it_is() -> None:
    table = DOCS_TABLES.config_groups()
    for path in [*(PROJECT_ROOT / "conf").glob("*/*.yaml"), *(PROJECT_ROOT / "experiments").glob("*.yaml")]:
        assert f"={path.stem}`" in table, path


def _shown_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, entry point, overrides)`` of every Hydra entry-point command in a code block of the pages."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"^```(?:bash|text)\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND.search(line)
                if match and match["entry"] in CONFIG_NAMES:
                    words = shlex.split(match["arguments"], comments=True)
                    commands.append((f"{page.name}: {line.strip()[:60]}", match["entry"], words))
    return commands


def _overrides(words: list[str]) -> list[str]:
    """The overrides a command line gives, filled-in values and options of the shell left out; a sweep's
    ``a,b`` as its first value."""
    overrides = []
    for word in words:
        if word.startswith(("-", "[")) or "=" not in word or any(mark in word for mark in PLACEHOLDERS):
            continue
        key, value = word.split("=", 1)
        if "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


SHOWN = _shown_commands()


def test_the_pages_show_commands_of_every_hydra_entry_point() -> None:
    assert {entry for _, entry, _ in SHOWN} == set(CONFIG_NAMES)


@pytest.mark.parametrize("entry", sorted(CONFIG_NAMES))
def test_the_commands_shown_compose_on_the_current_configs(entry: str, tmp_path: Path) -> None:
    """Every command of ``entry`` on the pages names config groups, options and keys that exist (a renamed option
    or key fails here, as on the command line)."""
    commands: dict[tuple[str, ...], str] = {}
    for where, shown_entry, words in SHOWN:
        if shown_entry == entry:
            commands.setdefault(tuple(_overrides(words)), where)
    root = [] if entry == "predict" else [f"paths.root_dir={tmp_path}"]  # predict's config has no paths group
    failed = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for overrides, where in commands.items():
            try:
                compose(CONFIG_NAMES[entry], overrides=[*root, *overrides], return_hydra_config=True)
            except Exception as error:  # each failing command is reported with its page
                failed.append(f"{where}: {type(error).__name__}: {error}")
    assert not failed, "\n".join(failed)


ARGPARSE_COMMAND = re.compile(r"python (?:-m lungexp\.(?P<entry>froc|compare|convert)|(?P<script>scripts/[a-z_]+\.py))\b"
                              r"(?P<arguments>.*)")


def _shown_options() -> dict[str, set[str]]:
    """``{program: the --options the pages show it with}`` for the argparse commands (``lungexp.froc``,
    ``compare``, ``convert``) and the scripts."""
    shown: dict[str, set[str]] = {}
    for page in PAGES:
        for block in re.findall(r"^```(?:bash|text)\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                match = ARGPARSE_COMMAND.search(line)
                if match:
                    program = match["entry"] or match["script"]
                    options = {word.split("=")[0] for word in shlex.split(match["arguments"], comments=True)
                               if word.startswith("--")}
                    shown.setdefault(program, set()).update(options)
    return shown


SHOWN_OPTIONS = _shown_options()


@pytest.mark.parametrize("program", sorted(SHOWN_OPTIONS))
def test_the_options_shown_for_a_command_are_in_its_help(program: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An entry point's ``--help`` lists every option the pages give it; a script (whose imports take seconds)
    declares each one in its source."""
    if program.startswith("scripts/"):
        declared = set(re.findall(r"""["'](--[a-z0-9-]+)["']""", (PROJECT_ROOT / program).read_text()))
    else:
        with pytest.raises(SystemExit) as exit_info:
            importlib.import_module(f"lungexp.{program}").main(["--help"])
        assert exit_info.value.code == 0
        declared = set(re.findall(r"--[a-z0-9-]+", capsys.readouterr().out))
    assert SHOWN_OPTIONS[program] - declared == set()
