r"""The study report: one self-contained file (HTML or Markdown) from the sections of the analyses.

:func:`render_report` turns a list of :class:`~contrastlens.study.base.Section` (title, Markdown text,
tables, figures, extra HTML), the run summary and the study's provenance into one text;
:func:`write_report` writes it atomically, and only over a file that is a previous report.

Layout (both formats): the title and a one-line count of the run (done, skipped, failed), a table of
contents, one part per section in the given order, then **Run summary** (when ``summary`` is given) and
**Provenance** last. Tables and figures are numbered through the report (``Table 3.``, ``Figure 2.``; the
HTML has anchors ``#table-3`` and ``#figure-2``).

What is text and what is markup:

- section **titles** and table **cells** are plain text: escaped, never interpreted;
- section **text** and **captions** are Markdown (CommonMark with GitHub tables and strikethrough) with raw
  HTML turned off, so a ``<script>`` in a case's text shows as text. Headings in a section's text are
  demoted below the section's own (``#`` becomes a level-3 heading);
- a section's ``html`` is inserted as it is (the analysis escapes its own user text), except that any
  reference to an external resource in it is neutralised (see below).

Self-contained. Every figure is rendered to PNG (``dpi`` 110, ``bbox_inches="tight"``, white background)
and embedded as a base64 ``data:image/png`` URI; a figure may also be given as PNG bytes. CSS is inline;
there are no scripts, fonts, or links to anything outside the file. Markdown links to anything but an
in-page anchor (``#...``) are shown as their text followed by the address in plain text; Markdown images
are kept only as ``data:`` URIs, others are replaced by a note. In a section's ``html`` (markup only, not
its text): an attribute ``src``/``href``/``srcset``/``poster``/``action``/``formaction``/``data``/
``xlink:href``/``background``/``ping`` whose value is not a ``data:`` URI or an ``#anchor`` becomes
``data-blocked-ATTR="blocked:VALUE"`` (so nothing is fetched, not even a relative path), ``<link>``,
``<meta>`` and ``<base>`` tags are removed, and in ``<style>`` blocks and ``style`` attributes ``@import``
and ``url(…)`` other than ``data:`` are removed; a warning is logged when anything changed. The HTML also carries a
Content-Security-Policy (``default-src 'none'``, images only from ``data:``) so a browser loads nothing from
outside even if something slipped through.

Tables. A DataFrame whose index is not the default ``0..n-1`` range gets its index as leading columns
(``reset_index``); MultiIndex columns are flattened by joining their levels with `` / ``. Floats are
formatted with the table's ``float_format`` (a ``"{:.3g}"``-style template, a ``"%.3f"`` printf format, a
bare format spec like ``".3f"``, or a callable); NaN/None show as ``—``. A column is numeric when every
value in it is a number (not a bool); numeric columns are right-aligned (HTML: class ``num``; Markdown:
``---:``). At most ``max_rows`` rows are shown, with a note giving the total (the full table is in the
results store).

Provenance (any mapping, dataclass or object with ``to_dict``; suggested keys ``study``, ``packages``,
``models``, ``specs``): top-level scalar entries form a first key/value table; each other entry becomes a
sub-heading with a table: a mapping of scalars becomes a two-column key/value table, a mapping of mappings
a table with one row per key (first column ``name``), a list of mappings a table of their union of keys, a
list of scalars a list, a DataFrame itself; anything deeper is shown as compact JSON.

Run summary (a mapping such as the runner's ``Summary.as_dict()``, a dataclass or an object with
attributes; ``None`` or an empty mapping: no summary part): ``done``, ``skipped`` and ``failed`` are each a
count or a list of units (a ``counts`` mapping supplies the ones not given). A unit in a list is a string,
an object with ``.id`` (e.g. a ``UnitKey``), a ``(unit, reason)`` pair or a mapping with
``unit``/``id``/``key``/``what`` and ``reason``/``error``/``message`` (an exception shows as ``Type:
message``). Skipped units are grouped by reason (count and the first units, then all of them folded away);
failed units are listed one per row with their error. Every other entry: a scalar is shown beside the
counts (``False`` flags are left out), a list of plain values as its length, a list of mappings or pairs
(``problems``) and a mapping of mappings (``per_analysis``) as a table.

Markdown format (``fmt="md"``): the same content as one Markdown file; figures as
``![caption](data:image/png;base64,…)``, tables as GitHub tables (``|`` and newlines in cells escaped,
``<``/``>``/``&`` as entities), the table of contents as links to GitHub-style heading anchors. In section
text, ``<`` that could open an HTML tag is written ``&lt;`` outside code spans, fenced code blocks and
indented lines; external images are replaced by a note (links are kept: they load nothing). A section's
``html`` is included as a raw HTML block (Markdown viewers show what they support of it).

Both formats start with :data:`REPORT_MARKER` (HTML: on the line after the doctype; Markdown: the first
line, an invisible HTML comment), which :func:`write_report` and :func:`is_report` look for in the first
:data:`MARKER_WINDOW` characters.
"""

from __future__ import annotations

import base64
import dataclasses
import html as _html
import io
import json
import logging
import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastlens.errors import InputError
from contrastlens.study.base import Figure, Section, Table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

#: Embedded at the top of every report; a file without it is never overwritten by :func:`write_report`.
REPORT_MARKER = "<!-- contrastlens:study-report -->"
#: :func:`is_report` looks for the marker in this many leading characters.
MARKER_WINDOW = 512
FORMATS = ("html", "md")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_PROVENANCE_TITLE = "Provenance"
_SUMMARY_TITLE = "Run summary"
_MAX_LISTED = 500       # units listed per group in the run summary
_MAX_ERROR_CHARS = 2000  # characters of one failure's error text
_UNITS_PER_REASON = 3   # example units shown per skip reason
_SHORT = 32             # a text column whose values are at most this long is not wrapped in HTML
_WIDE = 9               # a table with more columns is set smaller and tighter in HTML


# ------------------------------------------------------------------------------------------ public API
def render_report(sections: Iterable[Section], *, title: str, provenance: Any, summary: Any = None,
                  fmt: str = "html", max_rows: int = 1000, dpi: int = 110) -> str:
    """The report of ``sections`` as one self-contained HTML (``fmt="html"``) or Markdown (``"md"``) text.

    ``provenance``: the study's provenance (package versions, models with fingerprints, spec hashes; see
    the module docstring for the accepted shapes); ``summary``: the run summary or ``None``. ``max_rows``:
    rows shown per table; ``dpi``: resolution of the figures.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown report format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if max_rows < 1:
        raise InputError(f"max_rows must be at least 1, got {max_rows}")
    secs = list(sections)
    for i, s in enumerate(secs):
        if not isinstance(s, Section):
            raise InputError(f"report section {i} is a {type(s).__name__}, not a contrastlens Section")
    doc = _Doc(secs, title=str(title), provenance=_plain(provenance), summary=_summary(summary),
               max_rows=max_rows, dpi=dpi)
    return doc.html() if fmt == "html" else doc.markdown()


def is_report(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file whose first :data:`MARKER_WINDOW` characters hold :data:`REPORT_MARKER`."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(MARKER_WINDOW * 4)
    except OSError:
        return False
    return REPORT_MARKER in head.decode("utf-8", errors="ignore")[:MARKER_WINDOW]


def write_report(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (a rendered report) to ``path`` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``. Refuses (``InputError``) to overwrite an existing file that
    is not a previous report (no :data:`REPORT_MARKER`), to write over a folder, and to write a text that
    does not carry the marker (a later run could not overwrite it). A symbolic link is written through.
    Returns the path written."""
    if REPORT_MARKER not in text[:MARKER_WINDOW]:
        raise InputError("the text to write is not a contrastlens study report (it lacks REPORT_MARKER at its top)")
    p = Path(path)
    if p.is_symlink():
        p = p.resolve()
    if p.is_dir():
        raise InputError(f"{p} is a folder; give the report a file name (e.g. {p / 'report.html'})")
    if p.exists() and not is_report(p):
        raise InputError(f"{p} exists and is not a contrastlens study report; refusing to overwrite it "
                         "(move it away or choose another output file)")
    p.parent.mkdir(parents=True, exist_ok=True)
    mode = (p.stat().st_mode & 0o777) if p.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
    return p


# ------------------------------------------------------------------------------------------ plain data
def _plain(obj: Any) -> Any:
    """Dataclasses and objects with ``to_dict`` become dicts (recursively through mappings and lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif not isinstance(obj, Mapping) and callable(getattr(obj, "to_dict", None)) and not _is_frame(obj):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _is_frame(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bytes | numbers.Number | bool)


def _scalar_text(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return str(v)


def _json(v: Any) -> str:
    try:
        return json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(v)


# ------------------------------------------------------------------------------------------ run summary
@dataclasses.dataclass
class _Summary:
    counts: list[tuple[str, str]]              # (label, value) in display order: done, skipped, failed, others
    skipped: list[tuple[str, str]]             # (unit, reason)
    failed: list[tuple[str, str]]              # (unit, error)
    line: str                                  # "12 done · 3 skipped · 1 failed"
    tables: list[tuple[str, Any]] = dataclasses.field(default_factory=list)  # (heading, DataFrame)


_MAIN = ("done", "skipped", "failed")


def _unit_item(item: Any, reason_keys: Sequence[str]) -> tuple[str, str]:
    """(unit, reason) of one listed unit: a string, an object with ``.id``, a pair or a mapping."""
    if isinstance(item, str):
        return item, ""
    if isinstance(item, Mapping):
        unit = next((item[k] for k in ("unit", "id", "key", "name", "what") if k in item), "")
        why = next((item[k] for k in reason_keys if k in item), "")
        return _unit_name(unit), _reason(why)
    if isinstance(item, tuple | list) and len(item) == 2:
        return _unit_name(item[0]), _reason(item[1])
    return _unit_name(item), ""


def _reason(why: Any) -> str:
    if isinstance(why, BaseException):
        return f"{type(why).__name__}: {why}"
    return "" if why is None or why == "" else _scalar_text(why)


def _unit_name(unit: Any) -> str:
    uid = getattr(unit, "id", None)
    if isinstance(uid, str):
        return uid
    return _scalar_text(unit)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _summary(summary: Any) -> _Summary | None:
    """The run summary in display form; ``None`` (and an empty mapping) mean there is none."""
    import pandas as pd

    if summary is None or (isinstance(summary, Mapping) and not summary):
        return None
    raw = summary
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        raw = {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)}
    elif not isinstance(raw, Mapping):
        raw = {k: getattr(raw, k) for k in _MAIN if hasattr(raw, k)}
        if not raw:
            raise InputError(f"run summary of type {type(summary).__name__} has none of done/skipped/failed")
    given_counts = raw.get("counts") if isinstance(raw.get("counts"), Mapping) else {}
    counts: list[tuple[str, str]] = []
    lists: dict[str, list[tuple[str, str]]] = {"skipped": [], "failed": []}
    line = []
    for key in _MAIN:
        v = raw.get(key, given_counts.get(key, 0))
        if isinstance(v, Mapping):
            v = list(v.items())
        if isinstance(v, list | tuple | set | frozenset):
            items = list(v)
            n = len(items)
            if key in lists:
                lists[key] = [_unit_item(it, ("reason", "why") if key == "skipped" else ("error", "message", "reason"))
                              for it in items]
        else:
            try:
                n = int(v or 0)
            except (TypeError, ValueError):
                raise InputError(f"run summary: {key!r} is neither a count nor a list of units ({v!r})") from None
        counts.append((key, str(n)))
        line.append(f"{n} {key}")
    tables: list[tuple[str, Any]] = []
    for key, v in raw.items():
        if key in _MAIN:
            continue
        if key == "counts" and isinstance(v, Mapping):  # only the counts not given as lists elsewhere
            counts += [(_label(k), _scalar_text(c)) for k, c in v.items() if k not in _MAIN and k not in raw
                       and _is_scalar(c)]
            continue
        if v is False:  # a flag that is not set (e.g. interrupted) says nothing
            continue
        if _is_scalar(v):
            counts.append((_label(key), _fmt_number(v, "{:.4g}") if isinstance(v, float) else _scalar_text(v)))
        elif isinstance(v, list | tuple | set | frozenset):
            items = list(v)
            if items and all(isinstance(x, Mapping) for x in items):
                tables.append((_label(key), pd.DataFrame([{k: _scalar_text(x) if _is_scalar(x) else _json(x)
                                                          for k, x in it.items()} for it in items]).astype(object)))
            elif items and all(isinstance(x, tuple | list) and len(x) == 2 for x in items):
                tables.append((_label(key), pd.DataFrame([(_unit_name(a), _reason(b)) for a, b in items],
                                                         columns=["what", "reason"])))
            else:
                counts.append((_label(key), str(len(items))))
        elif isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()):
            rows = [{"": k, **{ik: (iv if _is_scalar(iv) else _json(iv)) for ik, iv in x.items()}} for k, x in v.items()]
            tables.append((_label(key), pd.DataFrame(rows)))
        elif isinstance(v, Mapping):
            counts += [(f"{_label(key)} {_label(str(k))}", _scalar_text(x)) for k, x in v.items() if _is_scalar(x)]
    return _Summary(counts, lists["skipped"], lists["failed"], " · ".join(line), tables)


def _skip_groups(skipped: list[tuple[str, str]]) -> list[tuple[str, int, str]]:
    """(reason, count, first units) per distinct reason, most frequent first (ties: first seen)."""
    groups: dict[str, list[str]] = {}
    for unit, reason in skipped:
        groups.setdefault(reason or "(no reason given)", []).append(unit)
    out = []
    for reason, units in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(units[:_UNITS_PER_REASON]) + (f", … (+{len(units) - _UNITS_PER_REASON})"
                                                         if len(units) > _UNITS_PER_REASON else "")
        out.append((reason, len(units), shown))
    return out


# ------------------------------------------------------------------------------------------ tables
def _fmt_number(v: Any, fmt: str | Callable[[Any], str]) -> str:
    if callable(fmt):
        return str(fmt(v))
    if "{" in fmt:
        return fmt.format(v)
    if "%" in fmt:
        return fmt % v
    return format(v, fmt)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _is_missing(v: Any) -> bool:
    """None, NaN, NaT and pandas' NA."""
    if v is None:
        return True
    if isinstance(v, numbers.Number) and not isinstance(v, numbers.Integral):
        try:
            return math.isnan(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    import pandas as pd

    return v is pd.NA or v is pd.NaT


@dataclasses.dataclass
class _Grid:
    """A table reduced to strings: header, the rows shown, which columns are numeric, the total row count."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    total: int
    short: list[bool] | None = None  # columns whose shown values are all short (the HTML does not wrap them)


def _grid(frame: pd.DataFrame, float_format: str | Callable[[Any], str], max_rows: int, caption: str) -> _Grid:
    """The strings of ``frame`` (index as leading columns unless it is the default range; MultiIndex
    columns joined with `` / ``), floats formatted with ``float_format``, at most ``max_rows`` rows."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"table {caption!r}: frame is a {type(frame).__name__}, not a pandas DataFrame")
    try:
        _fmt_number(1.5, float_format)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise InputError(f"table {caption!r}: float_format {float_format!r} does not format a float ({e})") from None
    idx = frame.index
    default_index = (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1
                     and idx.name is None)
    columns: list[tuple[str, list[Any]]] = []
    if not default_index:
        for level in range(idx.nlevels):
            name = idx.names[level]
            columns.append(("" if name is None else str(name), idx.get_level_values(level).tolist()))
    for j, col in enumerate(frame.columns):
        head = " / ".join(str(x) for x in col if str(x) != "") if isinstance(col, tuple) else str(col)
        columns.append((head, frame.iloc[:, j].tolist()))
    numeric = []
    for _, values in columns:
        present = [v for v in values if not _is_missing(v)]
        numeric.append(bool(present) and all(_is_number(v) for v in present))
    total = len(frame)
    rows = []
    for i in range(min(total, max_rows)):
        row = []
        for _, values in columns:
            v = values[i]
            if _is_missing(v):
                row.append("—")
            elif _is_number(v) and not isinstance(v, numbers.Integral):
                row.append(_fmt_number(v, float_format))
            else:
                row.append(str(v))
        rows.append(row)
    short = [all(len(r[j]) <= _SHORT for r in rows) for j in range(len(columns))]
    return _Grid([h for h, _ in columns], rows, numeric, total, short)


# ------------------------------------------------------------------------------------------ figures
def _png(fig: Figure, dpi: int) -> bytes:
    obj = fig.figure
    if isinstance(obj, bytes | bytearray):
        data = bytes(obj)
        if not data.startswith(PNG_SIGNATURE):
            raise InputError(f"figure {fig.caption!r}: bytes that are not a PNG image")
        return data
    if not callable(getattr(obj, "savefig", None)):
        raise InputError(f"figure {fig.caption!r}: {type(obj).__name__} is neither a matplotlib figure nor PNG bytes")
    buf = io.BytesIO()
    obj.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ------------------------------------------------------------------------------------------ anchors
def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    s = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return s.replace(" ", "-") or "section"


class _Anchors:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        base = _slug(text)
        n = self.seen.get(base, 0)
        self.seen[base] = n + 1
        return base if n == 0 else f"{base}-{n}"


# ------------------------------------------------------------------------------------------ markdown -> html
_SAFE_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.I)


def _markdown_it() -> Any:
    from markdown_it import MarkdownIt
    from markdown_it.renderer import RendererHTML

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: dict[str, Any]) -> str:
        tok = tokens[idx]
        href = str(tok.attrGet("href") or "")
        stack = env.setdefault("links", [])
        if href.startswith("#"):
            stack.append(None)
            return self.renderToken(tokens, idx, options, env)
        stack.append("" if tok.markup == "autolink" else href)
        return '<span class="ext">'

    def link_close(self: Any, tokens: Any, idx: int, options: Any, env: dict[str, Any]) -> str:
        href = env.setdefault("links", [None]).pop()
        if href is None:
            return self.renderToken(tokens, idx, options, env)
        return "</span>" + (f' <span class="url">({_html.escape(href)})</span>' if href else "")

    def image(self: Any, tokens: Any, idx: int, options: Any, env: dict[str, Any]) -> str:
        tok = tokens[idx]
        src = str(tok.attrGet("src") or "")
        if _SAFE_IMAGE.match(src):
            return RendererHTML.image(self, tokens, idx, options, env)
        alt = self.renderInlineAsText(tok.children or [], options, env)
        return (f'<span class="missing">[image “{_html.escape(alt)}” not embedded: '
                f"{_html.escape(src)}]</span>")

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("link_close", link_close)
    md.add_render_rule("image", image)
    return md


def _breakable(text: str) -> str:
    """Escaped ``text`` with a line-break opportunity after each ``_``, ``/`` and ``.`` (long column names)."""
    return re.sub(r"([_/.])", r"\1<wbr>", _html.escape(text))


def _md_block(md: Any, text: str, demote: int = 2) -> str:
    tokens = md.parse(text)
    for t in tokens:
        if t.type in ("heading_open", "heading_close"):
            t.tag = f"h{min(6, int(t.tag[1]) + demote)}"
    return md.renderer.render(tokens, md.options, {})


def _md_inline(md: Any, text: str) -> str:
    return md.renderInline(text)


# ------------------------------------------------------------------------------------------ extra html
_TAG = re.compile(r"<[A-Za-z][^>]*>")
_URL_ATTR = re.compile(
    r"""(?P<pre>[\s"'/])(?P<attr>src|href|srcset|poster|action|formaction|data|xlink:href|background|ping)"""
    r"""(?P<eq>\s*=\s*)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\s"'=<>`]+))""", re.I)
_STYLE_ATTR = re.compile(r"""(?P<pre>[\s"'/]style\s*=\s*)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)')""", re.I)
_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style\s*>)", re.I | re.S)
_DROP_TAG = re.compile(r"<(?:link|meta|base)\b", re.I)
_IMPORT = re.compile(r"@import\b[^;]*;?", re.I)
_CSS_URL = re.compile(r"""url\(\s*(?!["']?\s*(?:data:|#))[^)]*\)""", re.I)


def _inert(value: str) -> bool:
    """A reference that loads nothing from outside the file: ``data:``, an in-page anchor, or empty."""
    v = value.strip().lower()
    return not v or v.startswith(("data:", "#"))


def _css(css: str) -> str:
    return _CSS_URL.sub("none", _IMPORT.sub("/* an import was removed: reports are self-contained */", css))


def _neutralise(html: str, where: str) -> str:
    """``html`` with every reference to a resource outside the file made inert (see the module docstring).
    Only markup is touched: attributes inside tags, ``<style>`` blocks and ``style`` attributes, not text."""
    def attr(m: re.Match[str]) -> str:
        value = next(v for v in (m["dq"], m["sq"], m["uq"]) if v is not None)
        if _inert(value):
            return m.group(0)
        q = "'" if m["sq"] is not None else '"'
        return f"{m['pre']}data-blocked-{m['attr'].replace(':', '-')}{m['eq']}{q}blocked:{value}{q}"

    def style(m: re.Match[str]) -> str:
        q = "'" if m["sq"] is not None else '"'
        return f"{m['pre']}{q}{_css(m['sq'] if m['sq'] is not None else m['dq'])}{q}"

    def tag(m: re.Match[str]) -> str:
        if _DROP_TAG.match(m.group(0)):
            return "<!-- a link/meta/base tag was removed: reports are self-contained -->"
        return _STYLE_ATTR.sub(style, _URL_ATTR.sub(attr, m.group(0)))

    out = _STYLE_BLOCK.sub(lambda m: m[1] + _css(m[2]) + m[3], html)
    out = _TAG.sub(tag, out)
    if out != html:
        log.warning("report section %r: its HTML referred to resources outside the file; they were neutralised",
                    where)
    return out


# ------------------------------------------------------------------------------------------ markdown output
def _md_cell(text: str) -> str:
    s = _html.escape(text, quote=False)
    s = re.sub(r"([\\`*\[\]|])", r"\\\1", s)
    s = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", s)
    return s.replace("\r\n", "\n").replace("\n", "<br>")


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")
# "<" that could open an HTML tag, but not an autolink like <https://example.org> (it loads nothing)
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])(?![A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*>)")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1", re.S)
_EXT_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?((?:https?:|//)[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def _md_text(text: str, demote: int = 2) -> str:
    """Section text for the Markdown report: headings demoted, possible HTML tags and external images made
    inert outside code."""
    out = []
    fence: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _FENCE.match(line)
        if fence is not None:
            out.append(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip()[len(m.group(1)):].strip():
                fence = None
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        if line.startswith(("    ", "\t")):
            out.append(line)
            continue
        h = _ATX.match(line)
        if h:
            line = h.group(1) + "#" * min(6, len(h.group(2)) + demote) + line[h.end():]
        pieces, last = [], 0
        for cm in _CODE_SPAN.finditer(line):
            pieces.append(_md_plain(line[last:cm.start()]))
            pieces.append(cm.group(0))
            last = cm.end()
        pieces.append(_md_plain(line[last:]))
        out.append("".join(pieces))
    return "\n".join(out)


def _md_plain(s: str) -> str:
    s = _EXT_IMAGE.sub(lambda m: f"[image “{m[1]}” not embedded: {m[2]}]", s)
    return _TAG_START.sub("&lt;", s)


def _md_heading_text(text: str) -> str:
    """A title on one Markdown heading line: plain text, HTML and Markdown punctuation escaped."""
    return _md_cell(" ".join(text.split()))


def _md_table(grid: _Grid) -> str:
    if not grid.header:
        return "*(no columns)*"
    lines = ["| " + " | ".join(_md_cell(h) or " " for h in grid.header) + " |",
             "|" + "|".join("---:" if num else ":---" for num in grid.numeric) + "|"]
    for row in grid.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the document
_CSS = """
:root{color-scheme:light;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--zebra:#f6f8fa;
--accent:#0969da;--head:#eef2f6;--warn:#9a6700;--bad:#cf222e}
*{box-sizing:border-box}
html{scroll-padding-top:1rem}
body{margin:0;background:#fff;color:var(--fg);font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding-left:1.5rem;padding-right:1.5rem}
header.top{border-bottom:1px solid var(--line);background:var(--soft);padding-top:1.4rem;padding-bottom:1rem}
header.top h1{margin:0;font-size:1.75rem;line-height:1.25;overflow-wrap:anywhere}
header.top p{margin:.35rem 0 0;color:var(--muted)}
.layout{padding-bottom:3rem}
nav.toc{margin:1.2rem 0 0;padding:.8rem 1.1rem;border:1px solid var(--line);border-radius:8px;background:#fff}
nav.toc h2{font-size:.8rem;letter-spacing:.06em;text-transform:uppercase;color:var(--muted);margin:0 0 .4rem;border:0;padding:0}
nav.toc ol{margin:0;padding-left:1.4rem;columns:2 18rem;column-gap:2rem}
nav.toc li{margin:.12rem 0;break-inside:avoid}
nav.toc li small{color:var(--muted)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
main section{margin-top:2.2rem}
h2{font-size:1.4rem;margin:0 0 .8rem;padding-bottom:.3rem;border-bottom:1px solid var(--line)}
h3{font-size:1.12rem;margin:1.4rem 0 .5rem}h4,h5,h6{font-size:1rem;margin:1.2rem 0 .4rem}
.md{max-width:52rem}
.md p,.md ul,.md ol{margin:.5rem 0}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.88em}
code{background:var(--soft);border:1px solid #e6eaef;border-radius:4px;padding:0 .25em}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.7rem .9rem;overflow:auto}
pre code{border:0;padding:0;background:none}
blockquote{margin:.6rem 0;padding:.1rem 1rem;border-left:4px solid var(--line);color:var(--muted)}
.md table{border-collapse:collapse;margin:.6rem 0}.md th,.md td{border:1px solid var(--line);padding:.25rem .6rem}
.ext{text-decoration:underline dotted}.url{color:var(--muted);font-size:.85em;overflow-wrap:anywhere}
.missing{color:var(--warn)}
figure{margin:1.4rem 0}
figure.tbl figcaption,figure.fig figcaption{color:var(--fg);font-size:.93rem;margin:.35rem 0}
figcaption b{font-weight:600}
.scroll{overflow:auto;max-height:42rem;width:fit-content;max-width:100%;border:1px solid var(--line);
border-radius:6px}
table.data{border-collapse:separate;border-spacing:0;font-size:.88rem;min-width:40%}
table.data th{position:sticky;top:0;background:var(--head);text-align:left;font-weight:600;
padding:.4rem .7rem;border-bottom:1px solid var(--line);vertical-align:bottom;min-width:3.5rem}
table.data td{padding:.3rem .7rem;border-bottom:1px solid #eaeef2;vertical-align:top;
max-width:38rem;overflow-wrap:break-word}
table.data tbody tr:nth-child(even) td{background:var(--zebra)}
table.data tbody tr:last-child td{border-bottom:0}
table.data tbody tr:hover td{background:#eaf2fc}
table.data .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.data.wide{font-size:.8rem}table.data.wide th,table.data.wide td{padding:.3rem .45rem}
table.data th.num{text-align:right}table.data td.nw{white-space:nowrap}
table.kv td:first-child{font-weight:600;white-space:nowrap}
table.mono td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.84rem}
td.err{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem;color:var(--bad)}
.note{color:var(--muted);font-size:.85rem;margin:.3rem 0}
figure.fig img{display:block;max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
.extra{margin:1rem 0}
.counts{display:flex;flex-wrap:wrap;gap:.6rem;margin:.6rem 0}
.counts span{border:1px solid var(--line);border-radius:999px;padding:.1rem .7rem;background:#fff;font-size:.9rem}
.counts .bad{border-color:#f5c2c7;color:var(--bad)}.counts .warn{border-color:#eed888;color:var(--warn)}
.counts .more{color:var(--muted)}
details{margin:.6rem 0}summary{cursor:pointer;color:var(--accent)}
footer{padding-top:1rem;padding-bottom:2rem;color:var(--muted);font-size:.85rem}
footer p{border-top:1px solid var(--line);padding-top:1rem;margin:0}
@media print{nav.toc{display:none}.scroll{max-height:none;overflow:visible}figure{break-inside:avoid}}
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "font-src data:; base-uri 'none'; form-action 'none'")


class _Doc:
    def __init__(self, sections: list[Section], *, title: str, provenance: Any, summary: _Summary | None,
                 max_rows: int, dpi: int) -> None:
        self.sections = sections
        self.title = title
        self.provenance = provenance
        self.summary = summary
        self.max_rows = max_rows
        self.dpi = dpi
        anchors = _Anchors()
        anchors("contents")
        self.ids = [anchors(s.title) for s in sections]
        self.summary_id = anchors(_SUMMARY_TITLE) if summary is not None else None
        self.provenance_id = anchors(_PROVENANCE_TITLE)
        self.n_table = 0
        self.n_figure = 0

    # ---------------------------------------------------------------- shared pieces
    def _version(self) -> str:
        try:
            from contrastlens import __version__
            return str(__version__)
        except ImportError:  # pragma: no cover
            return "?"

    def _provenance_parts(self) -> list[tuple[str | None, str, Any]]:
        """(heading or None, kind, payload); kind: 'kv' [(k, v)], 'frame' DataFrame, 'list' [str], 'json' str,
        'text' str."""
        import pandas as pd

        prov = self.provenance
        if prov is None:
            return [(None, "text", "No provenance was recorded.")]
        if _is_frame(prov):
            return [(None, "frame", prov)]
        if not isinstance(prov, Mapping):
            return [(None, "json", _json(prov))]
        parts: list[tuple[str | None, str, Any]] = []
        top = [(k, _scalar_text(v)) for k, v in prov.items() if _is_scalar(v)]
        if top:
            parts.append((None, "kv", top))
        for k, v in prov.items():
            if _is_scalar(v):
                continue
            head = k[:1].upper() + k[1:]
            if _is_frame(v):
                parts.append((head, "frame", v))
            elif isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()):
                parts.append((head, "kv", [(kk, _scalar_text(x)) for kk, x in v.items()]))
            elif isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values()):
                rows = [{"name": kk, **{ik: (iv if _is_scalar(iv) else _json(iv)) for ik, iv in x.items()}}
                        for kk, x in v.items()]
                parts.append((head, "frame", pd.DataFrame(rows).astype(object)))
            elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
                rows = [{ik: (iv if _is_scalar(iv) else _json(iv)) for ik, iv in x.items()} for x in v]
                parts.append((head, "frame", pd.DataFrame(rows).astype(object)))
            elif isinstance(v, list) and all(_is_scalar(x) for x in v):
                parts.append((head, "list", [_scalar_text(x) for x in v]))
            else:
                parts.append((head, "json", _json(v)))
        return parts

    # ---------------------------------------------------------------- html
    def html(self) -> str:
        md = _markdown_it()
        esc = _html.escape
        body = []
        for s, sid in zip(self.sections, self.ids, strict=True):
            body.append(self._html_section(md, s, sid))
        if self.summary is not None:
            body.append(self._html_summary())
        body.append(self._html_provenance())
        toc = []
        for s, sid in zip(self.sections, self.ids, strict=True):
            bits = []
            if s.tables:
                bits.append(f"{len(s.tables)} table{'s' if len(s.tables) > 1 else ''}")
            if s.figures:
                bits.append(f"{len(s.figures)} figure{'s' if len(s.figures) > 1 else ''}")
            extra = f" <small>· {', '.join(bits)}</small>" if bits else ""
            toc.append(f'<li><a href="#{sid}">{esc(s.title)}</a>{extra}</li>')
        if self.summary_id:
            toc.append(f'<li><a href="#{self.summary_id}">{_SUMMARY_TITLE}</a></li>')
        toc.append(f'<li><a href="#{self.provenance_id}">{_PROVENANCE_TITLE}</a></li>')
        sub = [f"{len(self.sections)} section{'s' if len(self.sections) != 1 else ''}",
               f"{self.n_table} table{'s' if self.n_table != 1 else ''}",
               f"{self.n_figure} figure{'s' if self.n_figure != 1 else ''}"]
        if self.summary is not None:
            sub.insert(0, f'run: <a href="#{self.summary_id}">{esc(self.summary.line)}</a>')
        empty = "" if self.sections else '<p class="note">No analysis has results yet.</p>'
        return f"""<!doctype html>
{REPORT_MARKER}
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="contrastlens {esc(self._version())} study report">
<title>{esc(self.title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header class="top"><div class="wrap"><h1>{esc(self.title)}</h1><p>{" · ".join(sub)}</p></div></header>
<div class="layout wrap">
<nav class="toc" id="contents" aria-label="Contents"><h2>Contents</h2><ol>
{chr(10).join(toc)}
</ol></nav>
<main>
{empty}{chr(10).join(body)}
</main>
</div>
<footer class="wrap"><p>Generated by contrastlens {esc(self._version())}. This file is self-contained: figures
are embedded, nothing is loaded from the network.</p></footer>
</body>
</html>
"""

    def _html_table(self, caption_html: str, grid: _Grid, *, classes: str = "", numbered: bool = True,
                    show_header: bool = True) -> str:
        esc = _html.escape
        anchor = ""
        label = ""
        if numbered:
            self.n_table += 1
            anchor = f' id="table-{self.n_table}"'
            label = f"<b>Table {self.n_table}.</b> "
        head = "".join(f'<th scope="col"{" class=num" if num else ""}>{_breakable(h)}</th>'
                       for h, num in zip(grid.header, grid.numeric, strict=True))
        thead = f"<thead><tr>{head}</tr></thead>" if show_header else ""
        short = grid.short or [False] * len(grid.header)
        tds = ['<td class="num">' if num else '<td class="nw">' if sh else "<td>"
               for num, sh in zip(grid.numeric, short, strict=True)]
        rows = ["<tr>" + "".join(f"{td}{esc(c)}</td>" for c, td in zip(row, tds, strict=True)) + "</tr>"
                for row in grid.rows]
        note = ""
        if grid.total > len(grid.rows):
            note = (f'<p class="note">The first {len(grid.rows)} of {grid.total} rows are shown; the full table '
                    "is in the study's results.</p>")
        if grid.total == 0:
            note = '<p class="note">No rows.</p>'
        cap = f"<figcaption>{label}{caption_html}</figcaption>" if (label or caption_html) else ""
        cls = f"data {classes}{' wide' if len(grid.header) > _WIDE else ''}".strip()
        return (f'<figure class="tbl"{anchor}>{cap}<div class="scroll"><table class="{cls}">{thead}'
                f"<tbody>{''.join(rows)}</tbody></table></div>{note}</figure>")

    def _html_section(self, md: Any, s: Section, sid: str) -> str:
        parts = [f'<section id="{sid}"><h2>{_html.escape(s.title)}</h2>']
        if s.text.strip():
            parts.append(f'<div class="md">{_md_block(md, s.text)}</div>')
        for t in s.tables:
            if not isinstance(t, Table):
                raise InputError(f"section {s.title!r}: a table entry is a {type(t).__name__}, not a Table")
            grid = _grid(t.frame, t.float_format, self.max_rows, t.caption)
            parts.append(self._html_table(_md_inline(md, t.caption), grid))
        for f in s.figures:
            if not isinstance(f, Figure):
                raise InputError(f"section {s.title!r}: a figure entry is a {type(f).__name__}, not a Figure")
            self.n_figure += 1
            cap = _md_inline(md, f.caption)
            try:
                data = _png(f, self.dpi)
            except InputError:
                raise
            except Exception as e:  # a broken figure must not lose the whole report
                log.warning("report figure %r of section %r could not be rendered: %s", f.caption, s.title, e)
                parts.append(f'<figure class="fig" id="figure-{self.n_figure}"><p class="missing">This figure '
                             f"could not be rendered: {_html.escape(f'{type(e).__name__}: {e}')}</p><figcaption>"
                             f"<b>Figure {self.n_figure}.</b> {cap}</figcaption></figure>")
                continue
            w, h = _png_size(data)
            alt = _html.escape(" ".join(f.caption.split()), quote=True)
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(f'<figure class="fig" id="figure-{self.n_figure}"><img alt="{alt}" width="{w}" height="{h}" '
                         f'src="data:image/png;base64,{b64}"><figcaption><b>Figure {self.n_figure}.</b> {cap}'
                         "</figcaption></figure>")
        if s.html.strip():
            parts.append(f'<div class="extra">{_neutralise(s.html, s.title)}</div>')
        if not (s.text.strip() or s.tables or s.figures or s.html.strip()):
            parts.append('<p class="note">No results.</p>')
        parts.append("</section>")
        return "\n".join(parts)

    def _html_summary(self) -> str:
        import pandas as pd

        assert self.summary is not None
        esc = _html.escape
        sm = self.summary
        chips = []
        for k, v in sm.counts[:3]:
            cls = ' class="bad"' if k == "failed" and v != "0" else ' class="warn"' if k == "skipped" and v != "0" else ""
            chips.append(f"<span{cls}><b>{esc(v)}</b> {esc(k)}</span>")
        for k, v in sm.counts[3:]:
            cls = "warn" if v == "True" else "more"
            chips.append(f'<span class="{cls}">{esc(k)}: <b>{esc(v)}</b></span>')
        parts = [f'<section id="{self.summary_id}"><h2>{_SUMMARY_TITLE}</h2><div class="counts">{"".join(chips)}</div>']
        for heading, frame in sm.tables:
            parts.append(f"<h3>{esc(heading[:1].upper() + heading[1:])}</h3>"
                         + self._html_table("", _grid(frame, "{:.4g}", _MAX_LISTED, heading), numbered=False))
        if sm.skipped:
            groups = _skip_groups(sm.skipped)
            grid = _grid(pd.DataFrame(groups, columns=["reason", "units", "first units"]), "{}", 1000, "skipped")
            parts.append("<h3>Skipped</h3>" + self._html_table("Units skipped, by reason.", grid, numbered=False))
            listed = sm.skipped[:_MAX_LISTED]
            grid = _grid(pd.DataFrame(listed, columns=["unit", "reason"]), "{}", _MAX_LISTED, "skipped units")
            grid.total = len(sm.skipped)
            parts.append(f"<details><summary>All {len(sm.skipped)} skipped units</summary>"
                         f"{self._html_table('', grid, classes='mono', numbered=False)}</details>")
        if sm.failed:
            rows = []
            for unit, err in sm.failed[:_MAX_LISTED]:
                err = err if len(err) <= _MAX_ERROR_CHARS else err[:_MAX_ERROR_CHARS] + " …"
                rows.append(f'<tr><td class="mono">{esc(unit)}</td><td class="err">{esc(err) or "—"}</td></tr>')
            more = (f'<p class="note">The first {_MAX_LISTED} of {len(sm.failed)} failed units are shown.</p>'
                    if len(sm.failed) > _MAX_LISTED else "")
            parts.append(f'<h3>Failed</h3><figure class="tbl"><div class="scroll"><table class="data"><thead><tr>'
                         f'<th scope="col">unit</th><th scope="col">error</th></tr></thead><tbody>{"".join(rows)}'
                         f"</tbody></table></div>{more}</figure>")
        if not (sm.skipped or sm.failed):
            parts.append('<p class="note">Nothing was skipped and nothing failed.</p>')
        parts.append("</section>")
        return "\n".join(parts)

    def _html_provenance(self) -> str:
        import pandas as pd

        parts = [f'<section id="{self.provenance_id}"><h2>{_PROVENANCE_TITLE}</h2>'
                 '<p class="note">What produced these results, as the study recorded it: the study file, the '
                 "package versions, the models with their fingerprints and the attribution settings.</p>"]
        for head, kind, payload in self._provenance_parts():
            if head:
                parts.append(f"<h3>{_html.escape(head)}</h3>")
            if kind == "kv":
                grid = _grid(pd.DataFrame(payload, columns=["key", "value"]).astype(object), "{}", 10_000, "provenance")
                grid.numeric = [False, False]
                parts.append(self._html_table("", grid, classes="kv mono", numbered=False, show_header=False))
            elif kind == "frame":
                grid = _grid(payload, "{:.6g}", 10_000, "provenance")
                parts.append(self._html_table("", grid, classes="mono", numbered=False))
            elif kind == "list":
                grid = _grid(pd.DataFrame({"": payload}).astype(object), "{}", 10_000, "provenance")
                parts.append(self._html_table("", grid, classes="mono", numbered=False, show_header=False)
                             if payload else '<p class="note">(none)</p>')
            elif kind == "json":
                parts.append(f"<pre><code>{_html.escape(payload)}</code></pre>")
            else:
                parts.append(f'<p class="note">{_html.escape(payload)}</p>')
        parts.append("</section>")
        return "\n".join(parts)

    # ---------------------------------------------------------------- markdown
    def markdown(self) -> str:
        import pandas as pd

        out = [REPORT_MARKER, "", f"# {_md_heading_text(self.title)}", ""]
        sub = []
        if self.summary is not None:
            sub.append(f"Run: [{self.summary.line}](#{self.summary_id})")
        n_tables = sum(len(s.tables) for s in self.sections)
        n_figures = sum(len(s.figures) for s in self.sections)
        sub.append(f"{len(self.sections)} section{'s' if len(self.sections) != 1 else ''} · {n_tables} "
                   f"table{'s' if n_tables != 1 else ''} · {n_figures} figure{'s' if n_figures != 1 else ''}")
        out += [" · ".join(sub), "", "## Contents", ""]
        entries = [(s.title, sid) for s, sid in zip(self.sections, self.ids, strict=True)]
        if self.summary_id:
            entries.append((_SUMMARY_TITLE, self.summary_id))
        entries.append((_PROVENANCE_TITLE, self.provenance_id))
        out += [f"{i}. [{_md_cell(t)}](#{a})" for i, (t, a) in enumerate(entries, 1)]
        out.append("")
        if not self.sections:
            out += ["*No analysis has results yet.*", ""]
        for s in self.sections:
            out += [f"## {_md_heading_text(s.title)}", ""]
            if s.text.strip():
                out += [_md_text(s.text.strip()), ""]
            for t in s.tables:
                if not isinstance(t, Table):
                    raise InputError(f"section {s.title!r}: a table entry is a {type(t).__name__}, not a Table")
                self.n_table += 1
                grid = _grid(t.frame, t.float_format, self.max_rows, t.caption)
                out += [f"**Table {self.n_table}.** {_md_text(' '.join(t.caption.split()), 0)}", "",
                        _md_table(grid) if grid.total else "*(no rows)*", ""]
                if grid.total > len(grid.rows):
                    out += [f"*The first {len(grid.rows)} of {grid.total} rows are shown; the full table is in the "
                            "study's results.*", ""]
            for f in s.figures:
                if not isinstance(f, Figure):
                    raise InputError(f"section {s.title!r}: a figure entry is a {type(f).__name__}, not a Figure")
                self.n_figure += 1
                cap = _md_text(" ".join(f.caption.split()), 0)
                try:
                    data = _png(f, self.dpi)
                except InputError:
                    raise
                except Exception as e:
                    log.warning("report figure %r of section %r could not be rendered: %s", f.caption, s.title, e)
                    out += [f"*This figure could not be rendered: {_md_cell(f'{type(e).__name__}: {e}')}*", "",
                            f"*Figure {self.n_figure}.* {cap}", ""]
                    continue
                alt = re.sub(r"([\[\]\\])", r"\\\1", " ".join(f.caption.split()))
                b64 = base64.b64encode(data).decode("ascii")
                out += [f"![Figure {self.n_figure}. {alt}](data:image/png;base64,{b64})", "",
                        f"*Figure {self.n_figure}.* {cap}", ""]
            if s.html.strip():
                out += [_neutralise(s.html.strip(), s.title), ""]
            if not (s.text.strip() or s.tables or s.figures or s.html.strip()):
                out += ["*No results.*", ""]
        if self.summary is not None:
            sm = self.summary
            out += [f"## {_SUMMARY_TITLE}", ""]
            counts = [(k, int(v) if v.isdigit() else v) for k, v in sm.counts]
            out += [_md_table(_grid(pd.DataFrame(counts, columns=["", "units"]).astype(object), "{}", 1000,
                                    "summary")), ""]
            for heading, frame in sm.tables:
                out += [f"### {_md_heading_text(heading[:1].upper() + heading[1:])}", "",
                        _md_table(_grid(frame, "{:.4g}", _MAX_LISTED, heading)), ""]
            if sm.skipped:
                groups = _skip_groups(sm.skipped)
                out += ["### Skipped", "",
                        _md_table(_grid(pd.DataFrame(groups, columns=["reason", "units", "first units"]), "{}", 1000,
                                        "skipped")), ""]
            if sm.failed:
                rows = [(u, e if len(e) <= _MAX_ERROR_CHARS else e[:_MAX_ERROR_CHARS] + " …")
                        for u, e in sm.failed[:_MAX_LISTED]]
                out += ["### Failed", "", _md_table(_grid(pd.DataFrame(rows, columns=["unit", "error"]), "{}",
                                                          _MAX_LISTED, "failed")), ""]
                if len(sm.failed) > _MAX_LISTED:
                    out += [f"*The first {_MAX_LISTED} of {len(sm.failed)} failed units are shown.*", ""]
            if not (sm.skipped or sm.failed):
                out += ["Nothing was skipped and nothing failed.", ""]
        out += [f"## {_PROVENANCE_TITLE}", ""]
        for head, kind, payload in self._provenance_parts():
            if head:
                out += [f"### {_md_heading_text(head)}", ""]
            if kind == "kv":
                grid = _grid(pd.DataFrame(payload, columns=["key", "value"]).astype(object), "{}", 10_000, "provenance")
                out += [_md_table(grid), ""]
            elif kind == "frame":
                out += [_md_table(_grid(payload, "{:.6g}", 10_000, "provenance")), ""]
            elif kind == "list":
                out += [*(f"- {_md_cell(x)}" for x in payload), ""] if payload else ["*(none)*", ""]
            elif kind == "json":
                fence = "````" if "```" in payload else "```"
                out += [f"{fence}json", payload, fence, ""]
            else:
                out += [f"*{_md_cell(payload)}*", ""]
        out += ["---", "", f"*Generated by contrastlens {self._version()}; figures are embedded, nothing is loaded "
                "from the network.*", ""]
        return "\n".join(out)


__all__ = ["FORMATS", "MARKER_WINDOW", "PNG_SIGNATURE", "REPORT_MARKER", "is_report", "render_report", "write_report"]
