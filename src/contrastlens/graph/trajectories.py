"""Token trajectories: one token's relevance across layers and what it passes to the final position.

For token position p and each node layer s (with next layer t): ``relevance`` R_s[p], ``increment``
R_s[p] - R_prev[p], ``to_final`` = A^{s->t}[n-1, p] (the edge from (s, p) into the final position of t:
how much of the final position's relevance at t comes from p at s) and ``to_final_share`` (that over
R_t[n-1]). The last layer has no outgoing transition (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.graph.graph import AttributionGraph


def _entry(edges, j: int, i: int) -> float:
    hit = (edges.rows == j) & (edges.cols == i)
    return float(edges.vals[hit].sum()) if hit.any() else 0.0


def token_trajectory(graph: AttributionGraph, pos: int) -> Any:
    """A DataFrame with one row per node layer for token ``pos`` (negative counts from the end)."""
    import pandas as pd

    n = graph.n
    p = int(pos) % n
    rows = []
    prev = np.nan
    for k, layer in enumerate(graph.layers):
        r = float(graph.relevance[layer][p])
        row = {"layer": layer, "pos": p, "token": graph.tokens[p], "relevance": r,
               "increment": r - prev if k else np.nan}
        if k + 1 < len(graph.layers):
            t = graph.layers[k + 1]
            w = _entry(graph.edges[(layer, t)], n - 1, p)
            fin = float(graph.relevance[t][n - 1])
            row.update(to_final=w, to_final_share=w / fin if fin else np.nan)
        else:
            row.update(to_final=np.nan, to_final_share=np.nan)
        rows.append(row)
        prev = r
    return pd.DataFrame(rows)


def trajectories(graph: AttributionGraph, positions: Sequence[int] | None = None, top: int = 5) -> Any:
    """Trajectories of several tokens (default: the ``top`` tokens by |R| at the embeddings, plus the last
    position), stacked in one long DataFrame."""
    import pandas as pd

    if positions is None:
        r = np.abs(graph.relevance[graph.layers[0]])
        positions = sorted(set(np.argsort(-r)[:top].tolist()) | {graph.n - 1})
    return pd.concat([token_trajectory(graph, p) for p in positions], ignore_index=True)


def plot_trajectories(graph: AttributionGraph, positions: Sequence[int] | None = None, top: int = 5,
                      path: str | Path | None = None, ax: Any = None) -> Any:
    """Relevance across layers (left) and the per-layer contribution to the final position (right)."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = trajectories(graph, positions, top)
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    else:
        fig = ax[0].figure
    x = np.arange(len(graph.layers))
    for p, d in df.groupby("pos"):
        label = f"{p}: {graph.tokens[p]!r}"
        ax[0].plot(x, d["relevance"].to_numpy(), marker="o", ms=3, label=label)
        ax[1].plot(x[:-1], d["to_final"].to_numpy()[:-1], marker="o", ms=3, label=label)
    for a, title in zip(ax, ("node relevance R", "edge into the final position"), strict=True):
        a.set_xticks(x if a is ax[0] else x[:-1])
        a.set_xticklabels(graph.layers if a is ax[0] else graph.layers[:-1], rotation=90, fontsize=7)
        a.axhline(0, color="grey", lw=0.5)
        a.set_title(title)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
