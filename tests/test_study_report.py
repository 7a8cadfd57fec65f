"""The study report (study/report.py): self-contained HTML and Markdown, escaping, tables, provenance, and
the marker that lets ``write_report`` overwrite only its own previous report.

The sample (``sample_inputs``) is a realistic study: faithfulness, segments, prompt debugging, taxonomy and
cross-size sections with real DataFrames and small matplotlib figures (built without pyplot), a run summary
and a provenance record. tests/test_study_report_browser.py opens the same sample in a real browser.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contrastlens.errors import InputError
from contrastlens.study.base import Figure, Section, Table
from contrastlens.study.report import PNG_SIGNATURE, REPORT_MARKER, is_report, render_report, write_report

EVIL = '<script>alert("pwned")</script>'
RED = (0.85, 0.1, 0.1)
METHODS = ["attnlrp", "cp-lrp", "ixg", "ig", "occlusion", "lrp-occlusion", "random"]


# ------------------------------------------------------------------------------------------ the sample
def _figure(kind: str, seed: int = 0):
    from matplotlib.figure import Figure as MplFigure

    rng = np.random.default_rng(seed)
    fig = MplFigure(figsize=(6.4, 3.4))
    ax = fig.add_subplot()
    if kind == "curves":
        k = np.arange(0, 21)
        for m, c in zip(["attnlrp", "ixg", "random"], [RED, (0.1, 0.4, 0.8), (0.5, 0.5, 0.5)], strict=True):
            decay = {"attnlrp": 0.35, "ixg": 0.18, "random": 0.04}[m]
            ax.plot(k, 3.0 * np.exp(-decay * k) - 0.6, color=c, label=f"{m} MoRF")
            ax.plot(k, 3.0 - 0.02 * k * (1 + decay), color=c, ls="--", label=f"{m} LeRF")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("masked tokens k")
        ax.set_ylabel("Δℓ")
        ax.legend(fontsize=7, ncol=3)
    elif kind == "bars":
        ax.bar(METHODS, rng.uniform(1, 9, len(METHODS)), color=RED)
        ax.set_ylabel("mean tokens to flip")
        ax.tick_params(axis="x", labelrotation=30)
    elif kind == "scatter":
        x = rng.normal(2, 1, 30)
        y = x - rng.uniform(0, 3, 30)
        ax.scatter(x, y, color=RED, s=14)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="black", lw=0.8, label="y = x")
        ax.axhspan(lim[0], 0, color=(0.8, 0.95, 0.8), zorder=0, label="corrected (Δℓ < 0)")
        ax.set_xlabel("Δℓ, Qwen2.5-Coder-0.5B")
        ax.set_ylabel("Δℓ, Qwen2.5-Coder-1.5B")
        ax.legend(fontsize=8)
    else:
        segs = ["instruction", "query", "answer"]
        vals = rng.uniform(0, 1, (2, 3))
        bottom = np.zeros(2)
        for j, s in enumerate(segs):
            ax.barh(["SmolLM2-135M", "Qwen-0.5B"], vals[:, j], left=bottom, label=s,
                    color=[RED, (0.1, 0.4, 0.8), (0.9, 0.7, 0.1)][j])
            bottom += vals[:, j]
        ax.legend(fontsize=8)
        ax.set_xlabel("share of |relevance|")
    fig.tight_layout()
    return fig


def faithfulness_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for m in [*METHODS, "oracle"]:
        mean = {"attnlrp": 2.4, "oracle": 1.3, "random": 31.0}.get(m, rng.uniform(2, 9))
        rows.append({"method": m, "cases": 57, "tokens_to_flip_mean": mean, "ci_low": mean * 0.8,
                     "ci_high": mean * 1.25, "median": float(round(mean)), "flipped_within_2": rng.uniform(0, 1),
                     "flipped_within_5": rng.uniform(0, 1),
                     "area_between": math.nan if m == "oracle" else rng.uniform(0, 4),
                     "seconds_per_case": rng.uniform(0.1, 30)})
    return pd.DataFrame(rows)


def sample_inputs() -> dict:
    """sections, title, provenance and summary of a realistic study report."""
    faith = faithfulness_frame()
    seg = pd.DataFrame({"model": ["SmolLM2-135M"] * 3 + ["Qwen-0.5B"] * 3,
                        "segment": ["instruction", "query", "answer"] * 2,
                        "mean_share": [0.41, 0.37, 0.22, 0.35, 0.45, 0.20],
                        "cases": [57, 57, 57, 24, 24, 24]}).set_index(["model", "segment"])
    fixes = pd.DataFrame({"method": ["attnlrp", "attnlrp", "occlusion", "occlusion"], "k": [1, 5, 1, 5],
                          "failures": [57, 57, 57, 57], "fixed_share": [0.105, 0.281, 0.088, 0.246]})
    taxonomy = pd.DataFrame([[0.905, 0.06, 0.035], [0.80, 0.12, 0.08]], index=pd.Index(["IFEval", "MATH-500"],
                            name="benchmark"),
                            columns=pd.MultiIndex.from_tuples([("outcome", "M-IA"), ("outcome", "NC-IA+M-AG"),
                                                               ("outcome", "NC-IA+AG")]))
    cases = pd.DataFrame({"case": ["ifeval-0017", "ifeval-0042"], "prompt": [f"Write a poem {EVIL} in lowercase",
                                                                               "Answer | in *bold* and _italic_\nnext line"],
                          "delta_l": [2.25, 0.5]})
    edited = ('<div class="prompts"><p><b>ifeval-0017</b>, attnlrp, k = 2: Write a poem <del>'
              '&lt;script&gt;</del> in <mark>lowercase</mark> → <b>pass</b></p></div>')
    sections = [
        Section("Faithfulness: tokens to flip",
                "Each method orders the input positions by relevance toward the target; the top *k* are masked "
                "(zero embedding) until Δℓ < 0.\n\n# Criteria\n\n- **tokens to flip**: the smallest k with Δℓ_k < 0\n"
                "- censored at 64 tokens\n\nThe paper's *about 2 tokens* holds for AttnLRP on IFEval "
                "(mean 2.4, CI 1.9–3.0). See [captum](https://captum.ai/docs/) and <https://example.org/paper>.",
                tables=[Table("Tokens to flip per method, 57 clean cases (`SmolLM2-135M`).", faith, "{:.2f}")],
                figures=[Figure("MoRF (solid) and LeRF (dashed) curves of Δℓ.", _figure("curves")),
                         Figure("Mean tokens to flip per method.", _figure("bars", 2))]),
        Section("Segment breakdown", "Per-segment sums of max-abs-normalised input relevance, as in Fig. 5.",
                tables=[Table("Mean share of |relevance| per segment.", seg)],
                figures=[Figure("Share of relevance per segment and model.", _figure("segments", 3))]),
        Section("Prompt debugging", f"Masking the top-k tokens and regenerating. A case prompt: {EVIL}",
                tables=[Table("Share of failures turned into passes.", fixes, "{:.1%}"),
                        Table(f"Cases {EVIL}", cases)],
                html=edited),
        Section("Taxonomy", "Pre-labels; manual labels preferred.",
                tables=[Table("Outcome distribution per benchmark.", taxonomy, "{:.1%}")]),
        Section("Cross-size", "Δℓ of the base model against the larger one.",
                figures=[Figure("Δℓ, base against 1.5B, with y = x; below 0: corrected.", _figure("scatter", 4))]),
    ]
    provenance = {
        "study": "smollm2-faithfulness", "study_file": "studies/faithfulness.toml",
        "study_digest": "9f3a61c2d4e5b7a8",
        "packages": {"contrastlens": "0.1.0", "torch": "2.13.0", "transformers": "5.0.1", "pandas": "3.1.0"},
        "models": [{"name": "smollm2", "source": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main",
                    "fingerprint": "sha256:4be1c0ffee5eed1234"},
                   {"name": "qwen-0.5b", "source": "Qwen/Qwen2.5-Coder-0.5B-Instruct", "revision": None,
                    "fingerprint": "sha256:77aa0bad0dad5678"}],
        "specs": {"attnlrp": {"hash": "spec-1a2b3c4d", "rule": "attnlrp", "objective": "contrastive"},
                  "cp-lrp": {"hash": "spec-5e6f7a8b", "rule": "cp-lrp", "objective": "contrastive"}},
    }
    summary = {"done": 112, "reused": 40,
               "skipped": [("cross-size/smollm2/attnlrp/ifeval-0001", "the base model of the comparison"),
                           ("cross-size/smollm2/attnlrp/ifeval-0002", "the base model of the comparison"),
                           ("cross-size/qwen-0.5b/attnlrp/math-0003", "ids outside the model's vocabulary")],
               "failed": [{"unit": "faithfulness/qwen-0.5b/attnlrp/he-0009",
                           "error": f"ModelLoadError: cannot load {EVIL}\nTraceback line 2"}]}
    return {"sections": sections, "title": f"Study smollm2-faithfulness {EVIL}", "provenance": provenance,
            "summary": summary}


def n_figures(sections) -> int:
    return sum(len(s.figures) for s in sections)


@pytest.fixture(scope="module")
def sample():
    return sample_inputs()


@pytest.fixture(scope="module")
def reports(sample):
    return {fmt: render_report(sample["sections"], title=sample["title"], provenance=sample["provenance"],
                               summary=sample["summary"], fmt=fmt) for fmt in ("html", "md")}


# ------------------------------------------------------------------------------------------ html parsing
class _Collect(HTMLParser):
    """Tables (rows of (tag, class, text)), ids, in-page hrefs, img srcs, headings and script tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[tuple[str, str, str]]]] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.headings: list[tuple[str, str]] = []
        self.scripts = 0
        self._cell: list | None = None
        self._heading: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append({k: v or "" for k, v in a.items()})
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = [tag, a.get("class") or "", ""]
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = [tag, ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.headings.append((self._heading[0], self._heading[1].strip()))
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data
        if self._heading is not None:
            self._heading[1] += data


def parse(html: str) -> _Collect:
    c = _Collect()
    c.feed(html)
    return c


def table_with_header(c: _Collect, first: str) -> list[list[tuple[str, str, str]]]:
    for t in c.tables:
        if t and t[0] and t[0][0][2] == first:
            return t
    raise AssertionError(f"no table whose first header is {first!r}")


def md_table_after(md: str, label: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line starting with ``label``."""
    lines = md.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith(label))
    i = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("|"))
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", lines[i])[1:-1]])
        i += 1
    return rows


# ------------------------------------------------------------------------------------------ figures
DATA_PNG = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_every_figure_embedded_as_a_real_png(reports, sample, fmt):
    from matplotlib.image import imread

    blobs = DATA_PNG.findall(reports[fmt])
    assert len(blobs) == n_figures(sample["sections"]) == 4
    for b in blobs:
        data = base64.b64decode(b, validate=True)
        assert data.startswith(PNG_SIGNATURE)
        img = imread(io.BytesIO(data))
        h, w = img.shape[:2]
        assert 300 < w < 1200 and 150 < h < 800  # 6.4 x 3.4 in at dpi 110, tight bbox
        # the figure's content is there: every sample figure draws in RED
        rgb = img[..., :3]
        red = (np.abs(rgb[..., 0] - RED[0]) < 0.06) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)
        assert red.sum() > 50
    if fmt == "html":
        c = parse(reports["html"])
        assert len(c.imgs) == 4
        for img, b in zip(c.imgs, blobs, strict=True):  # width/height attributes are the PNG's own size
            data = base64.b64decode(b)
            assert (int(img["width"]), int(img["height"])) == (int.from_bytes(data[16:20], "big"),
                                                                int.from_bytes(data[20:24], "big"))
            assert img["alt"]


def test_png_bytes_are_accepted_and_non_png_refused(sample):
    png = io.BytesIO()
    _figure("bars").savefig(png, format="png")
    html = render_report([Section("s", figures=[Figure("given as bytes", png.getvalue())])], title="t",
                         provenance={})
    assert base64.b64decode(DATA_PNG.search(html).group(1)) == png.getvalue()
    with pytest.raises(InputError, match="not a PNG"):
        render_report([Section("s", figures=[Figure("jpeg?", b"\xff\xd8\xff")])], title="t", provenance={})
    with pytest.raises(InputError, match="neither a matplotlib figure"):
        render_report([Section("s", figures=[Figure("what", 42)])], title="t", provenance={})


def test_a_broken_figure_does_not_lose_the_report():
    class Broken:
        def savefig(self, *a, **k):
            raise RuntimeError("renderer exploded")

    for fmt in ("html", "md"):
        out = render_report([Section("s", figures=[Figure("bad one", Broken()), Figure("good", _figure("bars"))])],
                            title="t", provenance={}, fmt=fmt)
        assert "renderer exploded" in out and len(DATA_PNG.findall(out)) == 1
        assert "Figure 2." in out  # numbering continues


# ------------------------------------------------------------------------------------------ self-contained
EXTERNAL = [
    # an attribute (not e.g. data-blocked-src) whose value is a web address
    re.compile(r"""(?<![\w-])(?:src|href|srcset|poster|action|data)\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"@import", re.I),
    re.compile(r"""url\(\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"<link\b[^>]*rel\s*=\s*[\"']?stylesheet", re.I),
    re.compile(r"<script\b[^>]*(?<![\w-])src\s*=", re.I),
    re.compile(r"!\[[^\]]*\]\(\s*<?(?:https?:)?//", re.I),  # a Markdown image from the web
]


def external_refs(text: str) -> list[str]:
    return [m.group(0) for rx in EXTERNAL for m in rx.finditer(text)]


def test_the_detector_sees_external_references():
    assert external_refs('<img src="https://cdn.x/y.png">') and external_refs("<a href='//x.org'>")
    assert external_refs("@import url(a.css);") and external_refs("background:url( http://x/y)")
    assert external_refs('<link rel="stylesheet" href="s.css">') and external_refs("![a](https://x/y.png)")
    assert not external_refs('<img src="data:image/png;base64,AAAA"> see https://x.org in text')


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_no_external_references(reports, fmt):
    assert external_refs(reports[fmt]) == []


def test_external_references_in_text_and_html_are_neutralised(caplog):
    text = ("A [link](https://captum.ai/docs/), an <https://auto.example/x>, an image "
            "![logo](https://cdn.example/logo.png) and an [anchor](#provenance).")
    extra = ('<link rel="stylesheet" href="https://cdn.example/s.css"><img src="https://cdn.example/a.png">'
             "<img srcset='//cdn.example/b.png 2x'><style>@import url(https://fonts.example/f.css);"
             " p{background:url(http://cdn.example/bg.png)}</style><script src=https://cdn.example/x.js></script>"
             '<img src="data:image/png;base64,iVBORw0KGgo=">')
    sec = [Section("links", text, html=extra)]
    for fmt in ("html", "md"):
        with caplog.at_level("WARNING", logger="contrastlens.study.report"):
            out = render_report(sec, title="t", provenance={}, fmt=fmt)
        assert external_refs(out) == [], fmt
        assert "neutralised" in caplog.text
        # the addresses stay readable as plain text, the data: image is kept
        assert "https://captum.ai/docs/" in out and "https://cdn.example/logo.png" in out
        assert 'src="data:image/png;base64,iVBORw0KGgo="' in out
    html = render_report(sec, title="t", provenance={})
    assert '<a href="#provenance">anchor</a>' in html  # in-page links stay links
    assert "not embedded" in html and "data-blocked-src" in html
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html


def test_neutralising_touches_markup_only():
    prose = "<p>the prompt said &lt;img src=&quot;https://x.org/a.png&quot;&gt; then url(https://y.org) @import it</p>"
    extra = (prose + '<img src="figs/local.png" alt="relative"><a href="#figure-1">Figure 1</a>'
             "<span style=\"background:url('https://z.org/bg.png')\">s</span>")
    html = render_report([Section("s", html=extra)], title="t", provenance={})
    assert prose in html  # text, even text that looks like markup, is left alone
    assert 'data-blocked-src="blocked:figs/local.png"' in html  # a relative path is outside the file too
    assert '<a href="#figure-1">Figure 1</a>' in html
    assert "https://z.org" not in html and "background:none" in html


# ------------------------------------------------------------------------------------------ escaping
def test_user_text_is_escaped_in_html(reports):
    html = reports["html"]
    c = parse(html)
    assert c.scripts == 0 and "<script" not in html.lower()
    # the title, the section text, a caption, a table cell and a failure's error, each shown as text
    assert html.count("&lt;script&gt;") >= 5
    cases = table_with_header(c, "case")
    assert cases[1][1][2] == f"Write a poem {EVIL} in lowercase"
    assert ("h1", f"Study smollm2-faithfulness {EVIL}") in c.headings
    # the analysis' own html (already escaped by the analysis) is inserted as it is
    assert "<del>&lt;script&gt;</del> in <mark>lowercase</mark>" in html


def test_user_text_is_escaped_in_markdown(reports):
    md = reports["md"]
    assert "<script" not in md.lower()
    assert f"# Study smollm2-faithfulness {EVIL}".replace("<", "&lt;").replace(">", "&gt;") in md
    rows = md_table_after(md, "**Table 4.**")
    assert rows[2][1] == "Write a poem &lt;script&gt;alert(\"pwned\")&lt;/script&gt; in lowercase"
    # | is escaped, newlines become <br>, emphasis markers are literal
    assert rows[3][1] == r"Answer \| in \*bold\* and \_italic\_<br>next line"
    assert "A case prompt: &lt;script>" in md


# ------------------------------------------------------------------------------------------ tables
def test_html_table_values_use_the_float_format(reports, sample):
    c = parse(reports["html"])
    faith = faithfulness_frame()
    t = table_with_header(c, "method")
    assert [h[2] for h in t[0]] == list(faith.columns)
    numeric = [h[1] == "num" for h in t[0]]
    assert numeric == [False] + [True] * (len(faith.columns) - 1)
    for row, (_, rec) in zip(t[1:], faith.iterrows(), strict=True):
        expect = [rec["method"], str(rec["cases"])] + [
            "—" if math.isnan(v) else f"{v:.2f}" for v in rec.iloc[2:].astype(float)]
        assert [cell[2] for cell in row] == expect
        assert [cell[1] == "num" for cell in row] == numeric
    # a named MultiIndex becomes leading columns; the default float format is {:.3g}
    seg = table_with_header(c, "model")
    assert [h[2] for h in seg[0]] == ["model", "segment", "mean_share", "cases"]
    assert [cell[2] for cell in seg[1]] == ["SmolLM2-135M", "instruction", "0.41", "57"]
    # percent format, MultiIndex columns joined with " / "
    tax = table_with_header(c, "benchmark")
    assert [h[2] for h in tax[0]] == ["benchmark", "outcome / M-IA", "outcome / NC-IA+M-AG", "outcome / NC-IA+AG"]
    assert [cell[2] for cell in tax[1]] == ["IFEval", "90.5%", "6.0%", "3.5%"]


def test_markdown_tables(reports):
    md = reports["md"]
    faith = faithfulness_frame()
    rows = md_table_after(md, "**Table 1.**")
    assert rows[0] == [c.replace("_", "_") for c in faith.columns]
    assert rows[1] == [":---"] + ["---:"] * (len(faith.columns) - 1)
    assert rows[2][:3] == ["attnlrp", "57", f"{faith.tokens_to_flip_mean[0]:.2f}"]
    assert rows[-1][0] == "oracle" and rows[-1][faith.columns.get_loc("area_between")] == "—"
    tax = md_table_after(md, "**Table 5.**")
    assert tax[0] == ["benchmark", "outcome / M-IA", "outcome / NC-IA+M-AG", "outcome / NC-IA+AG"]
    assert tax[2] == ["IFEval", "90.5%", "6.0%", "3.5%"]


def test_long_tables_are_cut_with_a_note_and_float_formats():
    df = pd.DataFrame({"x": np.arange(50) / 7, "name": [f"n{i}" for i in range(50)]})
    for fmt in ("html", "md"):
        out = render_report([Section("s", tables=[Table("long", df, "%.1f")])], title="t", provenance={},
                            fmt=fmt, max_rows=10)
        assert "The first 10 of 50 rows are shown" in out
        assert "n9" in out and "n10" not in out and f"{9 / 7:.1f}" in out
    out = render_report([Section("s", tables=[Table("spec", df.head(2), ".4f")])], title="t", provenance={})
    assert ">0.1429<" in out
    with pytest.raises(InputError, match="'bad fmt'.*float_format"):
        render_report([Section("s", tables=[Table("bad fmt", df, "{:.2q}")])], title="t", provenance={})
    with pytest.raises(InputError, match="not a pandas DataFrame"):
        render_report([Section("s", tables=[Table("list", [[1, 2]])])], title="t", provenance={})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ structure
def test_html_structure_toc_and_headings(reports, sample):
    c = parse(reports["html"])
    ids = c.ids
    assert len(ids) == len(set(ids))
    inpage = [h[1:] for h in c.hrefs if h.startswith("#")]
    assert inpage and all(a in ids for a in inpage)
    assert all(h.startswith("#") for h in c.hrefs)  # no other links at all
    titles = [s.title for s in sample["sections"]] + ["Run summary", "Provenance"]
    h2 = [t for tag, t in c.headings if tag == "h2" and t != "Contents"]
    assert h2 == titles  # sections in order, summary, provenance last
    assert "faithfulness-tokens-to-flip" in ids and ids.index("run-summary") < ids.index("provenance")
    # a "# Criteria" heading in a section's text sits below the section's own h2
    assert ("h3", "Criteria") in c.headings
    assert all(f"table-{i}" in ids for i in range(1, 6)) and all(f"figure-{i}" in ids for i in range(1, 5))


def test_duplicate_titles_get_distinct_anchors():
    secs = [Section("Faithfulness"), Section("Faithfulness"), Section("Provenance")]
    html = render_report(secs, title="t", provenance={"a": 1})
    c = parse(html)
    assert {"faithfulness", "faithfulness-1", "provenance", "provenance-1"} <= set(c.ids)
    assert len(c.ids) == len(set(c.ids))
    md = render_report(secs, title="t", provenance={"a": 1}, fmt="md")
    assert "2. [Faithfulness](#faithfulness-1)" in md and "4. [Provenance](#provenance-1)" in md


def test_markdown_structure(reports, sample):
    md = reports["md"]
    assert md.startswith(REPORT_MARKER + "\n")
    heads = [ln[3:] for ln in md.split("\n") if ln.startswith("## ")]
    assert heads == ["Contents", *[s.title for s in sample["sections"]], "Run summary", "Provenance"]
    assert "1. [Faithfulness: tokens to flip](#faithfulness-tokens-to-flip)" in md
    assert "\n### Criteria\n" in md  # demoted
    assert "*Figure 1.* MoRF (solid) and LeRF (dashed) curves of Δℓ." in md
    assert "![Figure 1. MoRF (solid) and LeRF (dashed) curves of Δℓ.](data:image/png;base64," in md
    # links are kept in Markdown (they load nothing); the edited-prompts html is included
    assert "[captum](https://captum.ai/docs/)" in md and "<mark>lowercase</mark>" in md


def test_empty_sections_and_reports():
    html = render_report([], title="nothing yet", provenance=None)
    assert "No analysis has results yet." in html and "No provenance was recorded." in html
    out = render_report([Section("empty")], title="t", provenance={}, fmt="md")
    assert "*No results.*" in out


# ------------------------------------------------------------------------------------------ provenance, summary
@pytest.mark.parametrize("fmt", ["html", "md"])
def test_provenance_is_the_last_section_and_complete(reports, sample, fmt):
    out = reports[fmt]
    head = '<section id="provenance">' if fmt == "html" else "\n## Provenance\n"
    prov = out[out.index(head):]
    for needle in ["smollm2-faithfulness", "9f3a61c2d4e5b7a8", "2.13.0", "5.0.1", "sha256:4be1c0ffee5eed1234",
                   "sha256:77aa0bad0dad5678", "HuggingFaceTB/SmolLM2-135M-Instruct", "spec-1a2b3c4d", "spec-5e6f7a8b"]:
        assert needle in prov, needle
    assert "Tokens to flip per method" not in prov  # nothing of the sections after it
    if fmt == "html":
        c = parse(prov)
        models = table_with_header(c, "name")
        assert [x[2] for x in models[0]] == ["name", "source", "revision", "fingerprint"]
        assert [x[2] for x in models[2]] == ["qwen-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "—",
                                             "sha256:77aa0bad0dad5678"]
        specs = [t for t in c.tables if t[0][0][2] == "name"][1]
        assert [x[2] for x in specs[1]] == ["attnlrp", "spec-1a2b3c4d", "attnlrp", "contrastive"]
    else:
        rows = md_table_after(out, "### Packages")
        assert ["torch", "2.13.0"] in rows


def test_provenance_of_dataclasses_and_nested_values():
    import dataclasses

    @dataclasses.dataclass
    class Prov:
        study: str
        extra: dict

    html = render_report([], title="t", provenance=Prov("s1", {"deep": {"a": [1, {"b": 2}]}}))
    assert "s1" in html and ">deep<" in html and "[1, {&quot;b&quot;: 2}]" in html


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_run_summary(reports, fmt):
    out = reports[fmt]
    assert "112 done · 3 skipped · 1 failed" in out
    part = out[out.index("Run summary", out.index("Run summary") + 20):]
    if fmt == "html":
        c = parse(part)
        grouped = table_with_header(c, "reason")
        assert [x[2] for x in grouped[1]] == ["the base model of the comparison", "2",
                                              "cross-size/smollm2/attnlrp/ifeval-0001, "
                                              "cross-size/smollm2/attnlrp/ifeval-0002"]
        assert grouped[1][1][1] == "num"
        failed = table_with_header(c, "unit")
        assert failed[1][0][2] == "cross-size/smollm2/attnlrp/ifeval-0001"  # the full list of skipped
        assert "reused" in part and ">40<" in part
        assert f"ModelLoadError: cannot load {EVIL}\nTraceback line 2".replace("<", "&lt;").replace(
            ">", "&gt;").replace('"', "&quot;") in part
    else:
        rows = md_table_after(part, "### Skipped")
        assert rows[2][:2] == ["the base model of the comparison", "2"]
        assert rows[3][:2] == ["ids outside the model's vocabulary", "1"]
        assert ["reused", "40"] in md_table_after(part, "|")


def test_summary_shapes():
    import dataclasses

    from contrastlens.study.base import UnitKey

    key = UnitKey("faithfulness", "m", "c1", "attnlrp", "abc")

    @dataclasses.dataclass
    class RunSummary:
        done: list
        skipped: list
        failed: list

    html = render_report([], title="t", provenance={}, summary=RunSummary([key, key], [(key, "why not")], []))
    assert "2 done · 1 skipped · 0 failed" in html and "faithfulness/m/attnlrp/c1" in html and "why not" in html
    assert "Nothing was skipped" not in html
    html = render_report([], title="t", provenance={}, summary={"done": 3, "failed": {"u9": ValueError("bad id")}})
    assert "3 done · 0 skipped · 1 failed" in html and "ValueError: bad id" in html
    with pytest.raises(InputError, match="'done' is neither a count nor a list"):
        render_report([], title="t", provenance={}, summary={"done": "many"})
    html = render_report([], title="t", provenance={}, summary={"done": 3})
    assert "3 done · 0 skipped · 0 failed" in html and "Nothing was skipped and nothing failed." in html
    with pytest.raises(InputError, match="none of done/skipped/failed"):
        render_report([], title="t", provenance={}, summary=object())


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown report format 'pdf'"):
        render_report([], title="t", provenance={}, fmt="pdf")
    with pytest.raises(InputError, match="section 0 is a dict"):
        render_report([{"title": "x"}], title="t", provenance={})  # type: ignore[list-item]
    with pytest.raises(InputError, match="max_rows"):
        render_report([], title="t", provenance={}, max_rows=0)


# ------------------------------------------------------------------------------------------ marker, writing
def test_marker_at_the_top_of_both_formats(reports):
    assert reports["html"].startswith("<!doctype html>\n" + REPORT_MARKER + "\n")
    assert reports["md"].startswith(REPORT_MARKER + "\n")


def test_write_report_overwrites_only_its_own_reports(tmp_path, reports):
    out = tmp_path / "sub" / "report.html"
    assert write_report(reports["html"], out) == out  # creates the folder
    assert out.read_text(encoding="utf-8") == reports["html"] and is_report(out)
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    os.chmod(out, 0o640)
    write_report(reports["md"], out)  # its own previous report: replaced, permissions kept
    assert out.read_text(encoding="utf-8") == reports["md"] and oct(out.stat().st_mode & 0o777) == oct(0o640)

    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>my own notes; mentions contrastlens but no marker</html>")
    with pytest.raises(InputError, match="notes.html exists and is not a contrastlens study report"):
        write_report(reports["html"], foreign)
    assert foreign.read_text() == "<html>my own notes; mentions contrastlens but no marker</html>"
    late = tmp_path / "late.md"  # the marker far from the top does not count
    late.write_text("x" * 2000 + REPORT_MARKER)
    assert not is_report(late)
    with pytest.raises(InputError, match="not a contrastlens study report"):
        write_report(reports["md"], late)
    with pytest.raises(InputError, match="is a folder"):
        write_report(reports["html"], tmp_path)
    with pytest.raises(InputError, match="lacks REPORT_MARKER"):
        write_report("<html>no marker</html>", tmp_path / "new.html")
    assert not (tmp_path / "new.html").exists()
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_write_report_is_atomic(tmp_path, reports, monkeypatch):
    out = tmp_path / "report.html"
    write_report(reports["html"], out)
    before = out.read_bytes()

    def boom(src, dst):
        # the new text is complete in the temporary file when the rename would happen
        assert Path(src).read_text(encoding="utf-8") == reports["md"] and Path(src).parent == out.parent
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_report(reports["md"], out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_write_report_through_a_symlink(tmp_path, reports):
    real = tmp_path / "real.html"
    write_report(reports["html"], real)
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_report(reports["md"], link)
    assert link.is_symlink() and real.read_text(encoding="utf-8") == reports["md"]


def test_the_runners_summary():
    """The shape the study runner stores (``Summary.as_dict()``): lists of unit ids, skipped/failed as
    mappings, per-analysis counts and the inputs left out before there were units."""
    runner = pytest.importorskip("contrastlens.study.runner")
    s = runner.Summary(study="demo", out="/tmp/out", done=["faithfulness/m/attnlrp/c1"],
                       current=["faithfulness/m/attnlrp/c2", "segments/m/attnlrp/c2"],
                       skipped=[("cross-size/m/attnlrp/c1", "the base model of the comparison")],
                       failed=[("segments/m/attnlrp/c1", "InputError: no segment named 'query'")],
                       problems=[("cases/missing.jsonl", "no such file")], seconds=12.3456)
    for fmt in ("html", "md"):
        out = render_report([], title="t", provenance={}, summary=s.as_dict(), fmt=fmt)
        part = out[out.index("Run summary", out.index("Run summary") + 20):]
        assert "1 done · 1 skipped · 1 failed" in out
        assert "current" in part and "12.35" in part and "in-process" in part
        for needle in ["cases/missing.jsonl", "no such file", "the base model of the comparison",
                       "no segment named", "faithfulness", "Per analysis", "Problems"]:
            assert needle in part, (fmt, needle)
    c = parse(render_report([], title="t", provenance={}, summary=s.as_dict()))
    per = table_with_header(c, "")
    assert [x[2] for x in per[0]] == ["", "done", "current", "skipped", "failed", "pending"]
    assert [x[2] for x in per[1]] == ["faithfulness", "1", "1", "0", "0", "0"]
    assert render_report([], title="t", provenance={}, summary={}).count("Run summary") == 0


def test_provenance_lists():
    prov = {"rules": ["attnlrp", "cp-lrp"], "cases": [], "seed": 0}
    html = render_report([], title="t", provenance=prov)
    c = parse(html[html.index('<section id="provenance">'):])
    assert [[x[2] for x in r] for t in c.tables for r in t][:3] == [["seed", "0"], ["attnlrp"], ["cp-lrp"]]
    assert "(none)" in html
    md = render_report([], title="t", provenance=prov, fmt="md")
    assert "### Rules\n\n- attnlrp\n- cp-lrp\n" in md and "### Cases\n\n*(none)*" in md
