"""The console outputs on the pages are printed by ``scripts/docs_examples.py`` from the current code: none is
pasted by hand, and each has the form the code prints today (run on tiny data, numbers masked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.cli import load_script
from tests.helpers.config import PROJECT_ROOT
from tests.helpers.fork_server import ForkServer

EXAMPLES = load_script("docs_examples")


def test_every_console_output_on_the_pages_is_generated_or_says_why_not() -> None:
    assert EXAMPLES.unaccounted_text_blocks() == [], (
        "a ```text block outside <!-- example: NAME --> markers: add the commands to scripts/docs_examples.py, or "
        "say on the line before it why it is no output of the current code (<!-- not generated: ... -->)")


def test_a_pasted_output_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Run it:\n\n```bash\npython -m lungexp.froc a.csv b.csv\n```\n\n```text\nCPM: 0.7\n```\n")
    assert EXAMPLES.unaccounted_text_blocks([page]) == [f"{page}:7"]
    page.write_text("<!-- not generated: an input file -->\n```text\nseriesuid,coordX\n```\n"
                    "<!-- example: froc -->\n```text\nCPM: 0.7\n```\n<!-- end example: froc -->\n")
    assert EXAMPLES.unaccounted_text_blocks([page]) == []


def test_every_example_has_its_block_and_every_variable_a_maker() -> None:
    EXAMPLES.check_registry()
    blocks = EXAMPLES.page_blocks()
    assert set(blocks) == set(EXAMPLES.BY_NAME)
    for name, (page, text) in blocks.items():
        assert page.relative_to(PROJECT_ROOT).as_posix() == EXAMPLES.BY_NAME[name].page
        assert text.startswith("$ "), f"example {name} has not been generated: run python scripts/docs_examples.py"


def test_the_full_run_is_compared_exactly_and_the_quick_one_in_form() -> None:
    output = EXAMPLES.Output("$ python -m lungexp.froc x.csv\nCPM: 0.7761  95% CI [0.6970, 0.8551]\n", 1.0)
    blocks = EXAMPLES.page_blocks()
    page, shown = blocks["froc"]
    same_form = EXAMPLES.Output(EXAMPLES.NUMBER.sub("9", shown), 1.0)
    assert EXAMPLES.differences({"froc": same_form}, quick=True) == []
    assert EXAMPLES.differences({"froc": same_form}) != []
    assert "example froc on evaluation.md differs" in EXAMPLES.differences({"froc": output}, quick=True)[0]


def test_what_changes_between_runs_is_written_one_way_and_logs_are_left_out(tmp_path: Path) -> None:
    project = tmp_path / "lungexp"
    printed = (f"[2026-12-07 19:08:24,290][lightning_fabric.utilities.seed][INFO] - Seed set to 42\n"
               "\rScoring scans:   0%|          | 0/4\rScoring scans: 100%|##########| 4/4\n"
               "2026/12/07 19:08:26 INFO mlflow.store.db.utils: Creating initial MLflow database tables...\n"
               f"  best checkpoint   {project}/logs/demo/runs/2026-12-07_19-08-23/checkpoints/epoch011.ckpt\n"
               "  MLflow run id     40311da29d084ad38cc3aaa2a0b640cc\n"
               f"  tracking URI      sqlite:///{project}/mlflow.db\n"
               "dataset:    data/synthetic_heldout (12.5 s)\n")
    assert EXAMPLES.console_lines(EXAMPLES.normalised(printed, project)) == [
        "  best checkpoint   logs/demo/runs/<time>/checkpoints/epoch011.ckpt", "  MLflow run id     <run id>",
        "  tracking URI      sqlite:///mlflow.db", "dataset:    data/synthetic_heldout (<seconds> s)"]


@pytest.mark.slow
def test_the_examples_print_what_the_pages_show(tmp_path: Path, fork_server: ForkServer) -> None:
    """Every example on tiny data (``--quick``): the same lines, labels and metric names as its block. Then the
    same outputs against copies of the pages with a line gone from one block (the code prints a line the page
    lacks) and one added to another (the page shows a line the code does not print): each is found."""
    def run_module(module: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
        done = fork_server.run(module, args, env=env, cwd=cwd, timeout=300, stderr_to_stdout=True)
        return done.returncode, done.stdout

    outputs = EXAMPLES.run_examples(EXAMPLES.EXAMPLES, quick=True, folder=tmp_path / "workspace",
                                    run_module=run_module, log=lambda line: None)
    ran = [name for name, output in outputs.items() if not output.skipped]
    assert {"make-run", "evaluate", "froc", "compare", "cv", "register", "sweep"} <= set(ran)
    assert EXAMPLES.differences(outputs, quick=True) == []

    copies = tmp_path / "pages"
    pages = []
    for page in EXAMPLES.PAGES:
        copy = copies / page.relative_to(PROJECT_ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        pages.append(Path(shutil.copy(page, copy)))
    evaluation = copies / "docs" / "evaluation.md"
    froc_block = EXAMPLES.page_blocks(pages)["froc"][1]
    evaluation.write_text(evaluation.read_text().replace(froc_block, froc_block + "wrote froc_scores.csv\n"))
    inference = copies / "docs" / "inference.md"
    evaluate_block = EXAMPLES.page_blocks(pages)["evaluate"][1]
    shorter = "\n".join(line for line in evaluate_block.splitlines() if "test/ece " not in line) + "\n"
    inference.write_text(inference.read_text().replace(evaluate_block, shorter))
    found = EXAMPLES.differences(outputs, quick=True, pages=pages)
    assert [message.split(" on ")[0] for message in found] == ["example evaluate", "example froc"], found
    assert "+test/ece # [#, #]" in found[0] and "-wrote froc_scores.csv" in found[1]  # printed, not shown; the reverse
