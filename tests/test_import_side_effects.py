"""Importing lungexp leaves the process as it was: the matplotlib backend and the warning filters."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.config import PROJECT_ROOT

# In a fresh interpreter: a notebook's backend chosen first, every module imported, and any
# filterwarnings/simplefilter/matplotlib.use called from a file under lungexp/ recorded.
PROBE = """
import importlib, pkgutil, sys, warnings
from pathlib import Path
import matplotlib
import lungexp

matplotlib.use("svg")
package = str(Path(lungexp.__file__).parent)
calls = []

def recording(function):
    def recorded(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(package):
            calls.append(f"{function.__name__} from {caller}")
        return function(*args, **kwargs)
    return recorded

warnings.filterwarnings = recording(warnings.filterwarnings)
warnings.simplefilter = recording(warnings.simplefilter)
matplotlib.use = recording(matplotlib.use)
for module in pkgutil.walk_packages(lungexp.__path__, "lungexp."):
    importlib.import_module(module.name)
print(matplotlib.get_backend(), calls)
"""


@pytest.mark.slow  # ~8 s of imports in a fresh interpreter: the whole package, for the full suite (CI)
def test_importing_every_module_changes_no_backend_and_no_warning_filter() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["svg", "[]"], proc.stdout


# Which of these modules a fresh interpreter has loaded after running the code.
LOADED = "import sys\n{code}\nprint(sorted({modules!r} & set(sys.modules)))"


def _loaded_after(code: str, modules: set[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", LOADED.format(code=code, modules=modules)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return eval(proc.stdout.strip().splitlines()[-1])


def test_the_library_loads_no_hydra() -> None:
    """Only the entry points register the config nodes (lungexp.config.store): a notebook importing models or the
    data options pays for no Hydra."""
    assert _loaded_after("import lungexp.models, lungexp.data.options", {"hydra", "omegaconf"}) == []


def test_checking_data_options_loads_no_torch() -> None:
    """``python -m lungexp.run`` checks data.* before the slow imports; declaring the options also loads none of
    the data layer's libraries."""
    code = ("import lungexp.data.options as o\ndeclared = sorted({'pandas', 'scipy', 'SimpleITK'} & set(sys.modules))\n"
            "assert declared == [], declared\n"
            "o.DataOptions(root='.', labels_csv='labels.csv', synthetic=None)")
    assert _loaded_after(code, {"torch", "pytorch_lightning"}) == []
