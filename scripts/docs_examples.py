"""The console outputs of the documentation, produced by running the commands the pages show, so that a reader can
tell a broken install from an old example.

Each output sits in a page (``README.md``, ``docs/*.md``) between ``<!-- example: NAME -->`` and
``<!-- end example: NAME -->``: a line saying when, at which commit and how long it took, then a ``text`` block
of the commands (``$ ...``) and what each printed. :data:`EXAMPLES` holds every example: its commands as the
page shows them and which part of their output the page shows. They run in dependency order (the demo training
as ``make run`` runs it first, then what needs its checkpoint, its run id, the cross-validation, ...) in a fresh
workspace: a temporary folder laid out as a fresh clone (its own ``data/``, ``logs/`` and ``mlflow.db``; the
checkout's ``docs/examples`` and ``scripts``, and ``../shared`` where the checkout has it), never the user's
checkout state. What changes from run to run is written the same way every time (MLflow run ids as
``<run id>``, run folders' times as ``<time>``, the workspace as the relative paths the pages use, durations),
and log lines, warnings and progress bars are left out.

``python scripts/docs_examples.py`` runs every example and rewrites the pages (``--only NAME ...``: those and
what they need), and retakes the picture of the MLflow compare page from the sweep example's runs
(``scripts/docs_screenshot.py``; it needs Chromium, ``make browser``); ``--check`` runs them and fails (exit status 1) on any output that differs from its page,
naming the example with a diff; ``--quick`` runs them on tiny data (one epoch, a few small scans: what a test
can afford) and compares only the form of each output (numbers masked: the same lines, labels and metric
names). ``tests/test_docs_examples.py`` runs the ``--quick`` form and checks that no console output is pasted
by hand.

The full run takes about 25 minutes on 2 CPU cores (``make docs-examples``); it pins ``OMP_NUM_THREADS`` (the
printed metrics depend on the number of threads; with it pinned, two runs print the same) and
``PYTHONHASHSEED``.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# What the workspace takes from the checkout (read only), so that the commands find them where the pages say.
SHIPPED = ("docs/examples", "scripts")
SHARED = ROOT.parent / "shared"  # ../shared/data: the real scans some examples score
LIDC_SCAN = "../shared/data/lidc-idri/LIDC-IDRI-0003"
LUNA16 = "../shared/data/luna16"  # the published annotations.csv, annotations_excluded.csv and seriesuids.csv
# The printed metrics depend on the number of threads (the order of floating-point sums): the outputs are made
# with this many, whatever the machine has.
THREADS = 2
# Variables of the user's shell that would send the examples' outputs elsewhere, or turn messages into tracebacks.
UNSET = ("LUNGEXP_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LUNGEXP_DEBUG", "HYDRA_FULL_ERROR",
         "LUNGEXP_SWEEP_RUN_ID", "LUNGEXP_SWEEP_KEYS")

MARKER = re.compile(r"(?P<open><!-- example: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
                    r"(?P<close><!-- end example: (?P=name) -->)", re.DOTALL)
TEXT_BLOCK = re.compile(r"^```text\n(?P<text>.*?)^```\n", re.DOTALL | re.MULTILINE)
# A ```text block outside the examples that is no console output of the current code says why, on the line before.
EXEMPT = re.compile(r"<!-- not generated: .+ -->")

# --quick: appended to each command that starts a program (a later value wins, on Hydra's command line as in
# argparse): tiny generated data and one epoch, as the tests train. evaluate makes the demo data with its own
# command line's data.synthetic, as run does. The widths fit both networks of the sweep (cnn3d and resnet3d).
TINY_DATA = ["data.synthetic.num_scans=10", "data.synthetic.shape_zyx=[48,96,96]",
             "data.synthetic.nodules_per_scan=[3,4]", "data.synthetic.negatives_per_scan=8", "data.num_workers=0",
             "data.preprocess_workers=0"]
QUICK_OVERRIDES = {
    r"python -m lungexp\.run\b": [*TINY_DATA, "trainer.max_epochs=1", "model.net.widths=[4,8,8,8]",
                                  "data.patch.size=16", "data.batch_size=8", "eval.bootstrap=50", "eval.montage_k=0",
                                  "eval.gradcam.samples=0"],
    r"python -m lungexp\.evaluate\b": TINY_DATA,
    r"python scripts/generate_synthetic\.py\b": ["--num-scans", "4", "--shape", "48", "96", "96"],
}
QUICK_REPLACEMENTS = {r"--bootstrap \d+": "--bootstrap 50"}


# -- what the pages show of an output -------------------------------------------------------------------------

# Log records: Hydra's format (the project's and Lightning's loggers) and MLflow's own.
LOG_LINE = re.compile(r"^(\[\d{4}-\d\d-\d\d [\d:,]+\]\[[^]]+\]\[[A-Z]+\] - |\d{4}/\d\d/\d\d [\d:]+ [A-Z]+ \S+: )")
WARNING_LINE = re.compile(r"^\S+\.py:\d+: \w*Warning: ")  # then the source line, indented
# tqdm's bars; Lightning's rich bar as a pipe gets it, its metrics wrapped onto far-indented lines.
PROGRESS = re.compile(r"\r|\d+%\||━━.*(?:it/s|s/it)")
TABLE_CHARS = set("┏┃┡│└━┳╇┩┴─┬┼ ┓┗┛┐┘┌")  # Lightning's rich tables: the model summary, the test metrics
LIGHTNING_SUMMARY = re.compile(r"^(Trainable params|Non-trainable params|Total params|Total estimated model params"
                               r"|Modules in (train|eval) mode|Total FLOPs)\b")


def console_lines(output: str) -> list[str]:
    """``output`` as the pages show any output: without log records, warnings, progress bars, Lightning's tables
    and the config tree that ``lungexp.run`` prints first."""
    lines: list[str] = []
    continued_by = ""  # the indent of the lines that continue a left-out warning or progress bar
    in_tree = False
    for line in output.split("\n"):  # not splitlines: a "\r" belongs to a progress bar
        if line == "config" or (in_tree and line[:1] in ("│", "├", "└", " ")):
            in_tree = True  # the composed config, printed as a tree
            continue
        in_tree = False
        if continued_by and (line.startswith(continued_by) or not line.strip()):
            continue
        continued_by = ""
        if WARNING_LINE.match(line):
            continued_by = "  "
        elif PROGRESS.search(line):
            continued_by = " " * 20
            if lines and not lines[-1]:  # what its opening "\r" became where "\r" was read as a line break
                lines.pop()
        elif not (LOG_LINE.match(line) or LIGHTNING_SUMMARY.match(line) or (line.strip() and set(line) <= TABLE_CHARS)
                  or line.startswith(("┃", "│", "┏", "┡", "└"))):
            lines.append(line.rstrip())
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


Show = Callable[[list[str]], list[str]]


def everything(lines: list[str]) -> list[str]:
    return lines


def section(title: str, keep: Sequence[str] = ()) -> Show:
    """The console summary titled ``title`` (from ``lungexp.evaluation.console_summary``: between two rules);
    with ``keep``, only its lines that start with one of them (after the indent), ``  ...`` for each run of
    lines left out."""
    def show(lines: list[str]) -> list[str]:
        starts = [index for index, line in enumerate(lines) if line.startswith(title)]
        if not starts or starts[-1] == 0 or not lines[starts[-1] - 1].startswith("===="):
            raise ExampleError(f"no summary titled {title!r} in the output")
        start = starts[-1] - 1
        end = next((index for index in range(start + 1, len(lines)) if lines[index].startswith("====")), len(lines) - 1)
        summary = lines[start:end + 1]
        return abridged(summary, lambda line: not keep or line.startswith(("====", title))
                        or line.strip().startswith(tuple(keep)))
    return show


def starting_at(prefix: str) -> Show:
    """The lines from the first that starts with ``prefix`` on."""
    def show(lines: list[str]) -> list[str]:
        start = next((index for index, line in enumerate(lines) if line.startswith(prefix)), None)
        if start is None:
            raise ExampleError(f"no line starting with {prefix!r} in the output")
        return lines[start:]
    return show


def abridged(lines: list[str], kept: Callable[[str], bool]) -> list[str]:
    shown: list[str] = []
    for line in lines:
        if kept(line):
            shown.append(line)
        elif not shown or shown[-1] != "  ...":
            shown.append("  ...")
    return shown


# -- the examples -------------------------------------------------------------------------------------------


class ExampleError(Exception):
    """An example that cannot run or cannot be shown: its message names it."""


@dataclass(frozen=True)
class Capture:
    """A value an example's output prints that later examples use as a shell variable."""
    pattern: str  # its first group is the value
    meaning: str  # said on each page that uses the variable, e.g. "the `best checkpoint` that `make run` printed"


@dataclass(frozen=True)
class Step:
    command: str  # as the page shows it; run by bash in the workspace, with the captured variables set
    show: Show = everything


@dataclass(frozen=True)
class Example:
    name: str
    page: str  # relative to the checkout
    steps: tuple[Step, ...]
    captures: Mapping[str, Capture] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # examples whose files it reads (those whose variables it uses are found)
    needs: tuple[str, ...] = ()  # paths, relative to the workspace, that must exist (else it is skipped)
    note: str = ""  # said after the header, e.g. what was left out

    def variables(self) -> set[str]:
        return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", " ".join(step.command for step in self.steps)))


RESULTS = section("Results", keep=("test/accuracy", "test/at_threshold/sensitivity", "test/at_threshold/specificity",
                                   "test/auroc ", "test/auroc_delong", "test/average_precision", "test/cpm",
                                   "test/threshold", "best checkpoint", "MLflow", "Open the MLflow UI"))

EXAMPLES: tuple[Example, ...] = (
    Example("make-run", "README.md", (Step("python -m lungexp.run experiment=demo", RESULTS),),
            captures={"CKPT": Capture(r"best checkpoint\s+(\S+)", "the `best checkpoint` that `make run` printed"),
                      "RUN_ID": Capture(r"MLflow run id\s+([0-9a-f]{32})",
                                        "the `MLflow run id` that `make run` printed")},
            note="abridged to the summary"),
    Example("evaluate", "docs/inference.md", (Step("python -m lungexp.evaluate ckpt_path=$CKPT", section("Evaluation")),),
            note="log lines left out"),
    Example("froc", "docs/evaluation.md", (
        Step("MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow artifacts download --run-id $RUN_ID "
             "--artifact-path predictions/test_predictions.csv --dst-path ."),
        Step("python -c \"import pandas as pd; pd.read_csv('test_predictions.csv').seriesuid.drop_duplicates()"
             ".to_csv('test_series.txt', index=False, header=False)\""),
        Step("python -m lungexp.froc test_predictions.csv data/synthetic_luna16/annotations.csv "
             "--seriesuids test_series.txt --bootstrap 1000"))),
    Example("froc-luna16", "docs/evaluation.md", (
        Step(f"python -m lungexp.froc docs/examples/luna16_predictions.csv {LUNA16}/annotations.csv \\\n"
             f"    --excluded {LUNA16}/annotations_excluded.csv --seriesuids {LUNA16}/seriesuids.csv --out froc_luna16"),),
            needs=(LUNA16,)),
    Example("predict", "docs/inference.md", (
        Step(f"python -m lungexp.predict ckpt_path=$CKPT scans={LIDC_SCAN} \\\n"
             "    candidates=docs/examples/lidc0003_points.csv out=lidc0003_predictions.csv"),
        Step("cat lidc0003_predictions.csv")), needs=(LIDC_SCAN,)),
    Example("compare", "docs/comparing.md", (
        Step("python -m lungexp.run experiment=demo aug=none trainer.max_epochs=4",
             section("Results", keep=("test/auroc ", "MLflow run id"))),
        Step("python -m lungexp.compare $RUN_ID $NO_AUG_RUN_ID")),
            captures={"NO_AUG_RUN_ID": Capture(r"MLflow run id\s+([0-9a-f]{32})",
                                               "the `MLflow run id` that the 4-epoch run printed")}),
    Example("cv", "docs/cross-validation.md", (
        Step("python -m lungexp.run experiment=demo cv.folds=5", section("Cross-validation")),),
            captures={"CV_RUN_ID": Capture(r"MLflow parent run id\s+([0-9a-f]{32})",
                                           "the `MLflow parent run id` that the demo's cross-validation "
                                           "(`python -m lungexp.run experiment=demo cv.folds=5`) printed")},
            note="its summary"),
    Example("ensemble", "docs/cross-validation.md", (
        Step(f"python -m lungexp.predict cv_run=$CV_RUN_ID tta=flips scans={LIDC_SCAN} \\\n"
             "    candidates=docs/examples/lidc0003_points.csv out=lidc0003_ensemble.csv"),
        Step("cat lidc0003_ensemble.csv")), needs=(LIDC_SCAN,)),
    Example("calibration", "docs/cross-validation.md", (
        Step("python -m lungexp.evaluate ckpt_path=$CKPT eval.calibration=isotonic eval.bootstrap=0",
             section("Evaluation", keep=("test/brier", "test/ece"))),)),
    Example("detector", "docs/inference.md", (
        Step("python scripts/generate_synthetic.py data/synthetic_heldout --num-scans 20 --num-subsets 2 --seed 1"),
        Step("python scripts/simulate_detections.py data/synthetic_heldout --out detections.json"),
        Step("python -m lungexp.predict cv_run=$CV_RUN_ID tta=flips scans=data/synthetic_heldout \\\n"
             "    detections=detections.json fuse=product out=det_product.csv"),
        Step("head -3 det_product.csv"))),
    Example("detector-froc", "docs/inference.md", (
        Step("python -m lungexp.froc det_product.csv data/synthetic_heldout/annotations.csv --out froc "
             "--bootstrap 1000"),), after=("detector",)),
    Example("register", "docs/inference.md", (
        Step("python -m lungexp.register cv_run=$CV_RUN_ID name=demo-fpr tta=flips calibration=temperature"),)),
    Example("predict-by-name", "docs/inference.md", (
        Step(f"python -m lungexp.predict model_uri=models:/demo-fpr@champion scans={LIDC_SCAN} \\\n"
             "    candidates=docs/examples/lidc0003_points.csv out=lidc0003_by_name.csv"),
        Step("cat lidc0003_by_name.csv")), after=("register",), needs=(LIDC_SCAN,)),
    Example("sweep", "docs/sweeps.md", (
        Step("python -m lungexp.run -m experiment=demo model=cnn3d,resnet3d aug=none,light trainer.max_epochs=5",
             starting_at("Sweep results")),),
            note="its end"),
)
BY_NAME = {example.name: example for example in EXAMPLES}
CAPTURED = {variable for example in EXAMPLES for variable in example.captures}


def check_registry(examples: Sequence[Example] = EXAMPLES) -> None:
    """Every variable is captured by an earlier example, every ``after`` names an earlier one."""
    seen: set[str] = set()
    captured: set[str] = set()
    for example in examples:
        missing = example.variables() - captured - set(example.captures)
        unknown = set(example.after) - seen
        if missing or unknown:
            raise ExampleError(f"example {example.name} uses {sorted(missing | unknown)} before any example makes it")
        seen.add(example.name)
        captured |= set(example.captures)


def with_prerequisites(names: Iterable[str]) -> list[Example]:
    """The named examples and every example they need, in the registry's order."""
    capturer = {variable: example.name for example in EXAMPLES for variable in example.captures}
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in BY_NAME:
            raise ExampleError(f"no example named {name!r}; the examples: {', '.join(BY_NAME)}")
        if name not in wanted:
            wanted.add(name)
            example = BY_NAME[name]
            pending += [*example.after, *(capturer[variable] for variable in example.variables() if variable in capturer)]
    return [example for example in EXAMPLES if example.name in wanted]


# -- running them -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    text: str  # the commands and their shown output, as the page's text block holds it
    seconds: float
    skipped: str = ""  # why it did not run (a file it needs is absent)


def quick_command(command: str) -> str:
    """``command`` with the tiny-data overrides of :data:`QUICK_OVERRIDES` appended to its program's arguments."""
    for pattern, replacement in QUICK_REPLACEMENTS.items():
        command = re.sub(pattern, replacement, command)
    for program, overrides in QUICK_OVERRIDES.items():
        if re.search(program, command):
            command = f"{command} {' '.join(overrides)}"
    return command


def make_workspace(folder: Path) -> Path:
    """A fresh clone's layout in ``folder``: ``lungexp/`` (where the commands run) holding links to what the
    checkout ships, and ``shared`` beside it where the checkout has one."""
    project = folder / "lungexp"
    for relative in SHIPPED:
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).symlink_to(ROOT / relative)
    if SHARED.is_dir():
        (folder / "shared").symlink_to(SHARED)
    return project


def environment(quick: bool) -> dict[str, str]:
    """The user's environment, less what would send outputs elsewhere; ``python`` and ``mlflow`` are this
    interpreter's (as in the venv), running the checkout's code. The full run pins the threads and the hash seed."""
    env = {key: value for key, value in os.environ.items() if key not in UNSET and key not in CAPTURED}
    bin_dir = str(Path(sys.executable).parent)
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if not quick:
        env.update(OMP_NUM_THREADS=str(THREADS), PYTHONHASHSEED="0")
    return env


RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
RUN_TIME = re.compile(r"\b\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\b")
SECONDS = re.compile(r"\(\d+(?:\.\d+)? s\)")
COMPARE_LINK = re.compile(r"(compare-runs\?runs=)\S+?(&experiments=)")  # run ids, URL-encoded


def normalised(text: str, project: Path) -> str:
    """``text`` with what differs between two runs of the same commands written one way."""
    for folder, shown in ((project.parent / "shared", "../shared"), (project, ".")):
        for path in {str(folder), os.path.realpath(folder)}:
            text = text.replace(path + "/", "" if shown == "." else shown + "/").replace(path, shown)
    text = COMPARE_LINK.sub(r"\1<run ids>\2", text)
    text = RUN_ID.sub("<run id>", text)
    text = RUN_TIME.sub("<time>", text)
    return SECONDS.sub("(<seconds> s)", text)


# ``(module, arguments, environment, working folder) -> (exit status, stdout and stderr)``: runs
# ``python -m lungexp.<name> ...`` another way than a fresh interpreter (the tests fork it from a warm process).
ModuleRunner = Callable[[str, list[str], dict[str, str], Path], tuple[int, str]]
SHELL_SYNTAX = re.compile(r"[|&;<>()`*?\n]|^\w+=")  # beyond words and $VARIABLES: leave it to bash


def module_call(command: str, env: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` of a plain ``python -m lungexp.<name> ...`` command, variables filled in."""
    joined = command.replace("\\\n", " ")
    if SHELL_SYNTAX.search(joined):
        return None
    words = shlex.split(joined)
    if words[:2] != ["python", "-m"] or len(words) < 3 or not words[2].startswith("lungexp."):
        return None
    return words[2], [re.sub(r"\$\{?(\w+)\}?", lambda match: env[match[1]], word) for word in words[3:]]


def run_step(command: str, env: dict[str, str], project: Path, run_module: ModuleRunner | None) -> tuple[int, str]:
    call = module_call(command, env) if run_module is not None else None
    if call is not None and run_module is not None:
        return run_module(*call, env, project)
    done = subprocess.run(["bash", "-c", command], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    return done.returncode, done.stdout.decode("utf-8", errors="replace")  # "\r" kept: it marks progress bars


def run_examples(examples: Sequence[Example], quick: bool = False, folder: Path | None = None,
                 run_module: ModuleRunner | None = None, log: Callable[[str], None] = print,
                 finished: Callable[[str, Output, Path], None] | None = None) -> dict[str, Output]:
    """Run ``examples`` (with what they need before them) in a fresh workspace in ``folder`` (default: a temporary
    one, removed after; a kept one also holds each command's whole output in ``outputs/``), and return what each
    page block shows; ``finished`` is called with each as it is done, and the workspace's project folder."""
    check_registry()
    examples = with_prerequisites(example.name for example in examples)
    scratch = None if folder is not None else tempfile.mkdtemp(prefix="lungexp-examples-")
    try:
        project = make_workspace(Path(folder or scratch))
        raw = None if folder is None else Path(folder) / "outputs"
        if raw is not None:
            raw.mkdir()
        env = environment(quick)
        outputs: dict[str, Output] = {}
        for example in examples:
            absent = [path for path in example.needs if not (project / path).exists()]
            if absent:
                outputs[example.name] = Output("", 0.0, skipped=f"needs {', '.join(absent)}")
                log(f"{example.name}: skipped, needs {', '.join(absent)}")
                continue
            started = time.monotonic()
            shown: list[str] = []
            for number, step in enumerate(example.steps):
                command = quick_command(step.command) if quick else step.command
                log(f"{example.name}: $ {command}")
                status, output = run_step(command, env, project, run_module)
                if raw is not None:
                    (raw / f"{example.name}-{number}.txt").write_text(f"$ {command}\n{output}")
                if status != 0:
                    raise ExampleError(f"example {example.name}: `{command}` exited with status {status}:\n"
                                       f"{output[-4000:]}")
                for variable, capture in example.captures.items():
                    found = re.findall(capture.pattern, output)
                    if found and variable not in env:  # the first step that prints it
                        env[variable] = found[-1]
                try:
                    lines = step.show(console_lines(normalised(output, project)))
                except ExampleError as error:
                    raise ExampleError(f"example {example.name}, `{command}`: {error}:\n{output[-4000:]}") from None
                shown += ["$ " + step.command, *lines]
            missing = set(example.captures) - set(env)
            if missing:
                raise ExampleError(f"example {example.name} printed no {', '.join(sorted(missing))}")
            outputs[example.name] = Output("\n".join(shown) + "\n", time.monotonic() - started)
            log(f"{example.name}: {outputs[example.name].seconds:.0f} s")
            if finished is not None:
                finished(example.name, outputs[example.name], project)
        return outputs
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# -- the pages ----------------------------------------------------------------------------------------------


def page_blocks(pages: Sequence[Path] = PAGES) -> dict[str, tuple[Path, str]]:
    """``{example name: (its page, the text of its block)}`` for every example marker of ``pages``."""
    blocks: dict[str, tuple[Path, str]] = {}
    for page in pages:
        for match in MARKER.finditer(page.read_text()):
            name = match["name"]
            if name in blocks:
                raise ExampleError(f"example {name} is on {blocks[name][0].name} and again on {page.name}")
            block = TEXT_BLOCK.search(match["body"])
            blocks[name] = (page, block["text"] if block else "")
    return blocks


def unaccounted_text_blocks(pages: Sequence[Path] = PAGES) -> list[str]:
    """``page:line`` of every ``text`` block that is in no example and has no ``<!-- not generated: REASON -->``
    line before it: a console output pasted by hand."""
    found = []
    for page in pages:
        text = page.read_text()
        examples = [(match.start(), match.end()) for match in MARKER.finditer(text)]
        for block in TEXT_BLOCK.finditer(text):
            if any(start <= block.start() < end for start, end in examples):
                continue
            before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if not EXEMPT.fullmatch(before.strip()):
                found.append(f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}:"
                             f"{text.count(chr(10), 0, block.start()) + 1}")
    return found


NUMBER = re.compile(r"[<>≤≥]?[-+−]?(?:\d+(?:\.\d+)*|\.\d+)(?:e[-+]?\d+)?%?")  # a seriesuid too
# What a tiny run prints otherwise than the full one beyond its numbers: the run names (the quick overrides are
# in them), and which jobs of a sweep test significantly worse.
# "…": cut (at 120 characters, or compare's 40 followed by the run id's first 8 characters, as a repeated name)
RUN_NAME = re.compile(r"\bdemo(?: [\w.+~/]+=[^\s…]*)*(?: [^\s…]*…|…)?(?: [0-9a-f]{8}\b)?")
VERDICT = re.compile(r"\b(?:yes|no)\b")


def form(text: str) -> list[str]:
    """The lines of ``text`` with every number, run name and verdict masked and runs of spaces as one, in sorted
    order (a table sorted by a metric may come out in another order): what a tiny run and a full one share."""
    def masked(line: str) -> str:
        return " ".join(VERDICT.sub("*", NUMBER.sub("#", RUN_NAME.sub("<run name>", line))).split())
    return sorted(masked(line) for line in text.splitlines())


def differences(outputs: Mapping[str, Output], quick: bool = False, pages: Sequence[Path] = PAGES) -> list[str]:
    """One message per example whose output differs from its page's block (``quick``: in form), with a diff."""
    blocks = page_blocks(pages)
    messages = []
    for name, output in outputs.items():
        if output.skipped:
            continue
        if name not in blocks:
            messages.append(f"example {name} has no <!-- example: {name} --> block on {BY_NAME[name].page}")
            continue
        page, shown = blocks[name]
        expected, got = (form(shown), form(output.text)) if quick else (shown.splitlines(), output.text.splitlines())
        if expected != got:
            diff = "\n".join(difflib.unified_diff(expected, got, f"{page.name} (example {name})", "the code now",
                                                  lineterm=""))
            messages.append(f"example {name} on {page.name} differs from what the code prints"
                            f"{' (in form: numbers masked)' if quick else ''}:\n{diff}")
    return messages


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return " ".join([*([f"{minutes} min"] if minutes else []), *([f"{rest} s"] if rest or not minutes else [])])


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = git("status", "--porcelain", "--", "lungexp", "conf", "experiments", "scripts")
    return git("rev-parse", "--short", "HEAD") + (" with local changes" if changed else "")


def header(example: Example, output: Output, today: str, commit: str) -> str:
    """The line above an example's block: when, at which commit, how long, and what its variables are."""
    variables = [f"`${name}` is {capture.meaning}" for name, capture in _captures_of(example).items()]
    note = f"; {example.note}" if example.note else ""
    uses = f" ({'; '.join(variables)})" if variables else ""
    return (f"Printed on {today} by `scripts/docs_examples.py` (commit {commit}, `OMP_NUM_THREADS={THREADS}`, "
            f"{_duration(output.seconds)}{note}) in a fresh clone{uses}:\n")


def _captures_of(example: Example) -> dict[str, Capture]:
    captures = {variable: capture for other in EXAMPLES for variable, capture in other.captures.items()}
    return {variable: captures[variable] for variable in sorted(example.variables()) if variable in captures}


def rewritten(text: str, outputs: Mapping[str, Output], today: str, commit: str) -> str:
    """``text`` with the block of every example in ``outputs`` made anew."""
    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BY_NAME:
            raise ExampleError(f"unknown example {name!r}; known: {', '.join(BY_NAME)}")
        output = outputs.get(name)
        if output is None or output.skipped:
            return match.group(0)
        body = f"{header(BY_NAME[name], output, today, commit)}\n```text\n{output.text}```\n"
        return f"{match['open']}{body}{match['close']}"
    return MARKER.sub(fill, text)


# The example whose runs the compare page's picture shows (the table beside the picture on docs/sweeps.md).
PICTURED = "sweep"
NOT_REMADE = 3  # scripts/docs_screenshot.py's exit status where no browser is installed


def remake_picture(project: Path) -> None:
    """docs/mlflow_compare.png from the store of the :data:`PICTURED` example (``scripts/docs_screenshot.py``), so
    that the picture and the table beside it show the same runs; where no browser is installed, say so."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_screenshot.py"), str(project / "mlflow.db")],
                          capture_output=True, text=True)
    if done.returncode not in (0, NOT_REMADE):
        raise ExampleError(f"scripts/docs_screenshot.py exited with status {done.returncode}:\n{done.stderr[-4000:]}")
    print((done.stdout + done.stderr).strip(), flush=True)  # what it wrote, or why it could not


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the pages (exit status 1 on a difference)")
    parser.add_argument("--quick", action="store_true", help="tiny data; compare the outputs' form only")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BY_NAME),
                        help=f"these examples and what they need: {', '.join(BY_NAME)}")
    parser.add_argument("--workspace", type=Path, help="an empty folder to run in, kept after (default: a temporary one)")
    args = parser.parse_args(argv)
    try:
        blocks = page_blocks()
        for example in EXAMPLES:  # a missing marker is found before the long run
            if example.name not in blocks:
                raise ExampleError(f"{example.page} has no <!-- example: {example.name} --> marker")
        today, commit = datetime.date.today().isoformat(), _commit()

        def write(name: str, output: Output, project: Path) -> None:  # each as it is done: a failure later keeps it
            page = ROOT / BY_NAME[name].page
            page.write_text(rewritten(page.read_text(), {name: output}, today, commit))
            print(f"rewrote example {name} on {BY_NAME[name].page}", flush=True)
            if name == PICTURED:
                remake_picture(project)

        started = time.monotonic()
        outputs = run_examples([BY_NAME[name] for name in args.only] if args.only else EXAMPLES, quick=args.quick,
                               folder=args.workspace, log=lambda line: print(line, flush=True),
                               finished=None if args.check or args.quick else write)
        print(f"ran {len(outputs)} example(s) in {_duration(time.monotonic() - started)}")
        if args.check or args.quick:
            messages = differences(outputs, quick=args.quick)
            print("\n\n".join(messages) if messages else "every example output is what the pages show")
            return 1 if messages else 0
        return 0
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
