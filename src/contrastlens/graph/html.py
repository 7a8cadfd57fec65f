"""A static, self-contained layered view of an attribution graph (one HTML file with an inline SVG).

Rows are node layers (embeddings at the bottom, the final layer at the top), columns are token
positions. A node is a circle whose area follows |R| (red: supports the target, blue: the contrast);
an edge is a line whose opacity and width follow |w| (red positive, blue negative). Only the strongest
``max_edges`` edges are drawn. No scripts, no external resources.
"""

from __future__ import annotations

import html as _html

import numpy as np

from contrastlens.graph.graph import AttributionGraph


def _colour(v: float) -> str:
    return "#c0392b" if v >= 0 else "#2e6fba"


def graph_html(graph: AttributionGraph, *, max_edges: int = 4000, title: str | None = None, only_active: bool = True) -> str:
    n, layers = graph.n, graph.layers
    # columns: positions that have a node with an edge (or all, for small graphs)
    used = np.zeros(n, dtype=bool)
    for e in graph.edges.values():
        used[e.rows] = True
        used[e.cols] = True
    used[n - 1] = True
    cols = np.flatnonzero(used) if (only_active and used.sum() < n) else np.arange(n)
    col_of = {int(p): k for k, p in enumerate(cols)}
    dx, dy, left, top = 26, 46, 90, 30
    width = left + dx * len(cols) + 40
    height = top + dy * (len(layers) - 1) + 110

    def xy(layer: str, pos: int) -> tuple[float, float]:
        return left + dx * col_of[pos], top + dy * (len(layers) - 1 - layers.index(layer))

    keys = list(graph.edges)
    if keys and graph.num_edges():
        vals = np.concatenate([graph.edges[k].vals for k in keys])
        rows = np.concatenate([graph.edges[k].rows for k in keys])
        colz = np.concatenate([graph.edges[k].cols for k in keys])
        tid = np.concatenate([np.full(len(graph.edges[k]), x) for x, k in enumerate(keys)])
        order = np.argsort(-np.abs(vals), kind="stable")[:max_edges]
        allw = [(abs(float(vals[x])), keys[tid[x]][0], keys[tid[x]][1], int(colz[x]), int(rows[x]), float(vals[x]))
                for x in order]
    else:
        allw = []
    allw = [x for x in allw if x[3] in col_of and x[4] in col_of]
    wmax = allw[0][0] if allw else 1.0
    rmax = max((float(np.abs(graph.relevance[k][graph.node_mask[k]]).max(initial=0)) for k in layers), default=1.0) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">']
    for a, s, t, i, j, w in reversed(allw):
        x1, y1 = xy(s, i)
        x2, y2 = xy(t, j)
        op = 0.15 + 0.85 * a / wmax
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{_colour(w)}" '
                   f'stroke-opacity="{op:.3f}" stroke-width="{0.5 + 2.5 * a / wmax:.2f}"><title>{s}@{i} → {t}@{j}: '
                   f'{w:+.4g}</title></line>')
    for layer in layers:
        y = xy(layer, int(cols[0]))[1]
        out.append(f'<text x="{left - 12}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_html.escape(layer)}</text>')
        rel = graph.relevance[layer]
        for p in cols:
            if not graph.node_mask[layer][p]:
                continue
            x, y = xy(layer, int(p))
            r = 1.5 + 8.0 * np.sqrt(abs(float(rel[p])) / rmax)
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.2f}" fill="{_colour(float(rel[p]))}" '
                       f'fill-opacity="0.85"><title>{_html.escape(layer)}@{p} {_html.escape(repr(graph.tokens[p]))}: '
                       f'R = {float(rel[p]):+.4g}</title></circle>')
    ybase = top + dy * (len(layers) - 1) + 16
    for p in cols:
        x = left + dx * col_of[int(p)]
        tok = _html.escape(graph.tokens[p].replace("\n", "⏎")[:14])
        out.append(f'<text x="{x:.1f}" y="{ybase}" font-size="10" transform="rotate(60 {x:.1f} {ybase})">{tok}</text>')
    out.append("</svg>")
    meta = graph.meta
    head = title or f"Attribution graph ({meta.get('method', '')}, {meta.get('prune') or 'unpruned'})"
    info = (f"{n} tokens, {len(layers)} layers, {graph.num_edges()} edges ({len(allw)} drawn), "
            f"logit difference {graph.logit_diff:+.4f}")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + _html.escape(head) + "</title>"
        "<style>body{font-family:sans-serif;margin:16px} .info{color:#555;font-size:13px}</style></head><body>"
        f"<h3>{_html.escape(head)}</h3><p class=\"info\">{_html.escape(info)}. Red supports the target, blue the "
        "contrast; hover a node or an edge for its value.</p>" + "\n".join(out) + "</body></html>\n"
    )
