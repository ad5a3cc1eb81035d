"""The documentation site as a reader sees it: built strictly by MkDocs, opened in headless Chromium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.config import PROJECT_ROOT
from tests.helpers.mlflow_ui import chromium_or_skip

# The pages a reader opens first, each with a heading it must show.
PAGES = {"index.html": "lungexp", "data/index.html": "Every data option", "real_data/index.html": "Summary"}
NAV = ("Getting started", "Data", "Evaluation", "Results on real data", "Architecture", "API reference")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mkdocs build --strict`` of this checkout, as ``make docs`` runs it, into a temporary folder."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make docs installs it)")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (make docs installs it)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


@pytest.mark.browser
def test_the_site_opens_with_its_title_and_navigation(site: Path, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for path, heading in PAGES.items():
            page.goto((site / path).as_uri())
            assert "lungexp" in page.title()
            assert page.get_by_role("heading", name=heading).first.is_visible(), f"{path}: no heading {heading!r}"
            page.screenshot(path=shots / path.replace("/", "_").replace(".html", ".png"))
        page.goto((site / "index.html").as_uri())
        navigation = page.locator("nav.md-nav--primary").inner_text()
        assert all(entry in navigation for entry in NAV), navigation
        browser.close()
    print(f"\nscreenshots: {shots}")
