"""The HTML study report in a real browser: headless Chromium through Playwright, with the network blocked.

The sample report of tests/test_study_report.py is opened from a file URL; every request that is not the
file itself or a data: URL is aborted and counted, and so is every Content-Security-Policy violation the
browser reports (the report's CSP blocks external loads before they reach the network). The checks: nothing
was blocked, no script error, every <img> decoded (naturalWidth > 0), every in-page link resolves and
scrolls, numeric cells are right-aligned and rows striped, and a full-page screenshot is taken (copied to
$CONTRASTLENS_REPORT_SCREENSHOT when set). A second test proves the blocking detector itself: a report with
an external image is caught, with and without its CSP.

Needs the ``playwright`` Python package and a Chromium on PATH (``chromium``; Playwright's own browser
download is not used). Missing either: the tests are skipped with the reason, unless
CONTRASTLENS_REQUIRE_BROWSER=1, when they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from contrastlens.study.report import PNG_SIGNATURE, render_report, write_report
from tests.test_study_report import n_figures, sample_inputs


class Offline:
    """A page with every request outside ``allowed`` aborted; blocked requests, CSP violations and script
    errors recorded."""

    def __init__(self, browser, path: Path, width: int = 1280) -> None:
        self.url = path.resolve().as_uri()
        self.blocked: list[str] = []
        self.csp: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.page.route("**/*", self._route)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url, wait_until="load")

    def _route(self, route) -> None:
        url = route.request.url
        if url == self.url or url.startswith("data:"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def _console(self, msg) -> None:
        if "Content Security Policy" in msg.text or "Refused to load" in msg.text:
            self.csp.append(msg.text)

    def close(self) -> None:
        self.page.close()


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    s = sample_inputs()
    html = render_report(s["sections"], title=s["title"], provenance=s["provenance"], summary=s["summary"])
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(html, path)
    return path, s


def test_report_in_a_browser_offline(browser, sample_file, tmp_path):
    path, s = sample_file
    view = Offline(browser, path)
    page = view.page
    try:
        page.wait_for_load_state("networkidle")
        assert view.blocked == [], f"the report tried to load: {view.blocked}"
        assert view.csp == [], f"content-security-policy violations: {view.csp}"
        assert view.errors == []
        assert page.evaluate("document.scripts.length") == 0
        assert "<script>" in page.inner_text("h1")  # the title's markup shows as text

        imgs = page.evaluate("""Array.from(document.images).map(i => ({complete: i.complete, w: i.naturalWidth,
            h: i.naturalHeight, shown: i.getBoundingClientRect().width, attr: Number(i.getAttribute('width'))}))""")
        assert len(imgs) == n_figures(s["sections"]) == 4
        for img in imgs:
            assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0
            assert img["w"] == img["attr"]

        links = page.evaluate("""Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))""")
        assert links and all(h.startswith("#") for h in links)
        missing = page.evaluate("""hs => hs.filter(h => !document.getElementById(decodeURIComponent(h.slice(1))))""",
                                links)
        assert missing == []
        toc = page.evaluate("""Array.from(document.querySelectorAll('nav.toc a')).map(a => a.textContent)""")
        assert toc == [x.title for x in s["sections"]] + ["Run summary", "Provenance"]
        page.click("nav.toc a[href='#taxonomy']")
        page.wait_for_function("location.hash === '#taxonomy'")
        top = page.evaluate("document.getElementById('taxonomy').getBoundingClientRect().top")
        assert page.evaluate("window.scrollY") > 0 and -2 <= top <= 40

        style = page.evaluate("""(() => {
            const t = document.querySelector('#table-1 table');
            const rows = t.querySelectorAll('tbody tr');
            const cs = el => getComputedStyle(el);
            return {num: cs(rows[0].cells[1]).textAlign, text: cs(rows[0].cells[0]).textAlign,
                    odd: cs(rows[0].cells[0]).backgroundColor, even: cs(rows[1].cells[0]).backgroundColor,
                    maxw: cs(document.querySelector('main')).maxWidth,
                    width: document.querySelector('main').getBoundingClientRect().width};
        })()""")
        assert style["num"] == "right" and style["text"] in ("left", "start")
        assert style["odd"] != style["even"]  # zebra rows
        assert 900 <= style["width"] <= 1180  # a readable column at 1280 px

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        data = shot.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert int.from_bytes(data[20:24], "big") > 2000  # the whole page, not one screen
        target = os.environ.get("CONTRASTLENS_REPORT_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
    finally:
        view.close()


def test_narrow_window_keeps_wide_tables_inside(browser, sample_file):
    path, _ = sample_file
    view = Offline(browser, path, width=600)
    try:
        over = view.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert over <= 0  # wide tables scroll inside their box; the page itself does not scroll sideways
        assert view.page.evaluate("document.querySelector('#table-1 .scroll').scrollWidth > "
                                  "document.querySelector('#table-1 .scroll').clientWidth")
    finally:
        view.close()


def test_the_offline_check_catches_an_external_image(browser, tmp_path):
    html = render_report([], title="t", provenance={})
    evil = html.replace("<main>", '<main><img src="http://example.invalid/pixel.png">')
    # without the report's CSP the request reaches the network layer and is aborted there
    no_csp = tmp_path / "no_csp.html"
    no_csp.write_text(evil.replace('http-equiv="Content-Security-Policy"', 'name="no-csp"'), encoding="utf-8")
    view = Offline(browser, no_csp)
    try:
        view.page.wait_for_timeout(300)
        assert view.blocked == ["http://example.invalid/pixel.png"]
    finally:
        view.close()
    # with it, the browser refuses the load itself and says so
    with_csp = tmp_path / "with_csp.html"
    with_csp.write_text(evil, encoding="utf-8")
    view = Offline(browser, with_csp)
    try:
        view.page.wait_for_timeout(300)
        assert view.blocked == [] and len(view.csp) == 1 and "example.invalid" in view.csp[0]
    finally:
        view.close()
