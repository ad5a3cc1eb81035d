"""The MLflow UI in a real browser: an ``mlflow server`` on a free loopback port, and headless Chromium.

Chromium is the system one (Debian's ``chromium``; ``make browser`` installs it), driven by Playwright.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 180  # a cold `mlflow server` takes ~20 s on 2 busy cores


def missing_browser() -> str | None:
    """Why no browser test can run here (Playwright or the system Chromium missing, and how to get it), or None."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    if chromium() is None:
        return "no Chromium installed: `make browser` installs it (Debian/Ubuntu: apt-get install chromium)"
    return None


def chromium() -> str | None:
    """The system Chromium's path (None where there is none)."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def chromium_or_skip() -> str:
    """The system Chromium's path, or skip the test saying how to get what is missing."""
    import pytest  # here: scripts/docs_screenshot.py uses this module without the test tools

    if reason := missing_browser():
        pytest.skip(reason)
    return str(chromium())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A started ``mlflow server``; :meth:`wait_until_healthy` before using :attr:`address`."""

    def __init__(self, process: subprocess.Popen, address: str, log_file: Path) -> None:
        self.process, self.address, self.log_file = process, address, log_file

    def wait_until_healthy(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n{self._log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.address}/health", timeout=5) as reply:
                if reply.status == 200:
                    return self.address
            time.sleep(1)
        raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_file.read_text()[-3000:]


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, log_file: Path, options: Sequence[str] = (),
                  program: Sequence[str] = ()) -> Iterator[MlflowServer]:
    """``mlflow server`` (one worker, more ``options`` if given) on a free loopback port for the duration of
    the block; ``program``: a command that passes its options on to ``mlflow server`` (a start script)."""
    port = free_port()
    command = [*(program or [str(Path(sys.executable).with_name("mlflow")), "server"]),
               "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               *options]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log_file, "w") as log:
        # Its own process group: the server starts uvicorn and job-queue workers that must end with it.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_file.parent,
                                   start_new_session=True)
        try:
            yield MlflowServer(process, f"http://127.0.0.1:{port}", log_file)
        finally:
            _end_group(process)


def _end_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that ignore SIGTERM
    process.wait()


def mlflow_page(browser, timeout_ms: int, width: int = 1600):
    """A page of ``browser`` for the MLflow UI: a desktop window, ``timeout_ms`` for every wait and check (a cold
    server renders slowly on 2 busy cores), MLflow's assistant kept closed."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(timeout_ms)
    expect.set_options(timeout=timeout_ms)
    without_assistant(page)
    return page


def without_assistant(page) -> None:
    """Keep MLflow's assistant panel closed (it opens by itself on a first visit and covers the compare
    page's artifact list), as a user who closed it once."""
    page.add_init_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                         "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def choose_option(page, select, text: str) -> None:
    """Pick ``text`` in one of MLflow's searchable multi-selects (its list is virtual: type, then Enter)."""
    select.locator("xpath=ancestor::div[contains(@class, 'select-selector')]").click()
    page.keyboard.type(text)
    page.get_by_role("option", name=text, exact=True).wait_for(state="attached")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


# The compare page's metrics table is two synchronised virtual grids (names | one column per run) that
# render only the rows in view: scroll until the metric's row exists, then read the values beside it.
_METRIC_ROW = """name => {
    const [names, values] = document.querySelectorAll('.ReactVirtualized__Grid');
    const cell = [...names.querySelectorAll('a')].find(a => a.textContent.trim() === name);
    if (!cell) { values.scrollTop += 90; return null; }
    const top = cell.parentElement.style.top;
    return [...values.firstElementChild.children].filter(c => c.style.top === top).map(c => c.textContent.trim());
}"""


# How many distinct, loaded, visible artifact images the page shows.
SHOWN_IMAGES = ("new Set([...document.querySelectorAll(\"img[src^='blob:']\")]"
                ".filter(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null).map(i => i.src)).size")


def show_the_documented_comparison(page, runs: int) -> float:
    """docs/sweeps.md's clicks on the *Comparing N Runs* page, in the window a user has: ``best/val_auroc`` as the
    parallel-coordinates metric, only the params that differ, each run's ROC curve side by side; then the page made
    tall enough to show it all at once (for a screenshot). Returns the bottom of the curves (px)."""
    from playwright.sync_api import expect

    metrics_axis = page.get_by_role("combobox").nth(1)
    choose_option(page, metrics_axis, "best/val_auroc")
    page.get_by_text(f"Comparing {runs} Runs").click()  # closes the list, which can cover the chosen metrics
    page.locator("[class*='select-selection-item']", has_text="lr-AdamW/backbone").locator(
        "[class*='remove']").click()
    expect(metrics_axis).to_have_attribute("aria-description", "best/val_auroc")
    page.get_by_role("switch").first.click()  # Parameters: Show diff only
    # MLflow 3.17.2 gives the file list no width once three or more runs are compared (the previews take it all).
    page.get_by_text("roc_curve.png", exact=True).first.click()
    page.set_viewport_size({"width": page.viewport_size["width"], "height": 2600})
    page.get_by_text(f"Comparing {runs} Runs").evaluate("title => title.scrollIntoView()")  # the click scrolled
    page.wait_for_function(f"{SHOWN_IMAGES} >= {runs}")
    return max(box["y"] + box["height"] for image in page.locator("img[src^='blob:']").all()
               if (box := image.bounding_box()))


def compare_page_metric(page, name: str) -> list[str]:
    """The values of metric ``name`` as the compare page shows them, one per run, left to right."""
    return page.wait_for_function(_METRIC_ROW, arg=name, polling=500).json_value()
