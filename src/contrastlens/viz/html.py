"""Self-contained HTML heatmap (no external assets)."""

from __future__ import annotations

import html as _html
from typing import TYPE_CHECKING

from contrastlens.viz.normalize import colour, normalize, visible

if TYPE_CHECKING:
    from contrastlens.attribution.explanation import Explanation

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
.cl-head{margin-bottom:.8em}.cl-head code{background:#f3f3f3;padding:0 .3em;border-radius:3px}
.cl-text{font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.cl-tok{border-radius:3px;padding:1px 0}.cl-special{color:#999;background:#eee}
.cl-target{outline:2px solid #444}.cl-legend span{display:inline-block;padding:0 .5em;margin-right:.3em}
table.cl-top{border-collapse:collapse;margin-top:1em;font-size:.9em}table.cl-top td,table.cl-top th{padding:2px 8px;border-bottom:1px solid #ddd}
"""


def _how(ex: Explanation) -> str:
    """``rule attnlrp`` for the LRP methods, ``method ig (baseline=zero, steps=32)`` for the others."""
    return f"rule {ex.rule}" if ex.spec.rule_based else f"method {ex.spec.method_label}"


def explanation_html(ex: Explanation, *, norm: str = "max_abs", full_page: bool = True) -> str:
    vals = normalize(ex.input_relevance, ex.special_mask, norm)
    spans = []
    for i, (tok, v, special) in enumerate(zip(ex.tokens, vals, ex.special_mask, strict=True)):
        title = f"#{i} id={ex.input_ids[i]} R={ex.input_relevance[i]:.4g} norm={v:.3f}"
        text = _html.escape(tok if tok.strip() or "\n" in tok else visible(tok))
        if special:
            spans.append(f'<span class="cl-tok cl-special" title="{title} (special)">{text}</span>')
            continue
        r, g, b, a = colour(v)
        cls = "cl-tok cl-target" if i == ex.position else "cl-tok"
        spans.append(f'<span class="{cls}" style="background:rgba({r},{g},{b},{a:.3f})" title="{title}">{text}</span>')
    contrast = "" if ex.contrast_str is None else f" vs contrast <code>{_html.escape(repr(ex.contrast_str))}</code> (id {ex.contrast_id})"
    rows = "".join(
        f"<tr><td>{i}</td><td><code>{_html.escape(repr(t))}</code></td><td>{r:+.4f}</td></tr>"
        for i, t, r in ex.top_tokens(5, 1) + ex.top_tokens(5, -1)
    )
    body = f"""<div class="cl-explanation">
<div class="cl-head"><b>{_html.escape(ex.objective_description)}</b>: target <code>{_html.escape(repr(ex.target_str))}</code>
(id {ex.target_id}){contrast} &mdash; <b>Δℓ = {ex.logit_diff:.4f}</b> &middot; model <code>{_html.escape(ex.source)}</code>
&middot; {_html.escape(_how(ex))} &middot; normalisation {norm}</div>
<div class="cl-legend"><span style="background:rgba(214,39,40,.6)">supports target</span><span style="background:rgba(31,119,180,.6)">supports contrast</span></div>
<div class="cl-text">{''.join(spans)}</div>
<table class="cl-top"><tr><th>pos</th><th>token</th><th>relevance</th></tr>{rows}</table>
</div>"""
    if not full_page:
        return f"<style>{_CSS}</style>{body}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>contrastlens explanation</title>
<style>{_CSS}</style></head><body>{body}</body></html>"""
