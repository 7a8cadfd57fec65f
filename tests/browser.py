"""The headless Chromium the browser tests drive (Playwright's Python API with the Debian ``chromium``;
Playwright cannot download its own browsers here). Missing either: the tests are skipped with the reason,
unless CONTRASTLENS_REQUIRE_BROWSER=1, when they fail. Import the ``browser`` fixture into a test module."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE = os.environ.get("CONTRASTLENS_REQUIRE_BROWSER") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"CONTRASTLENS_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    unavailable("no Chromium on PATH (install the `chromium` package; Playwright cannot download browsers here)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed (pip install playwright)")
    exe = chromium()
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=args, headless=True)
        except Error as e:
            unavailable(f"Chromium at {exe} did not start under Playwright: {str(e).splitlines()[0]}")
        yield b
        b.close()
