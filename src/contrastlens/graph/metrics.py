"""Graph metrics per layer (works with ``l.mid`` nodes), as a pandas DataFrame.

For each node layer (its nodes: the positions in the graph's node mask) the columns are:

- ``nodes``, ``node_sparsity`` (1 - nodes / n), ``edges_in`` / ``edges_out`` (edges of the transition
  into / out of the layer), ``fan_in`` / ``fan_out`` (those divided by ``nodes``), ``edge_density``
  (edges_in / the n(n+1)/2 causal pairs) and ``sparsity`` (1 - edge_density);
- ``mean_abs_R``, ``gini_R`` (Gini of node |R|), ``mean_abs_w_in``, ``gini_w_in`` (Gini of incoming |w|);
- ``verticality``: share of incoming |w| from the same position (residual vs mixing);
- ``hubs_in`` / ``hubs_out``: nodes whose in / out degree exceeds mean + std over the layer's nodes;
- ``centre_of_mass`` (sum pos |R| / sum |R|) and ``centre_of_mass_rel`` (divided by n - 1);
- ``mean_lookback`` (mean j - i over incoming edges) and ``local_ratio`` (share of incoming edges with
  i = j);
- ``top90_nodes``: the smallest number of nodes holding 90% of the layer's |R|, ``top90_frac`` that
  count over ``nodes``.

Gini: G = sum_k (2k - m - 1) x_(k) / (m sum x) over the m values sorted ascending (absolute values);
0 for an empty or all-zero set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.graph.graph import AttributionGraph


def gini(x: Any) -> float:
    x = np.sort(np.abs(np.asarray(x, dtype=np.float64).ravel()))
    m = x.size
    s = x.sum()
    if m == 0 or s <= 0:
        return 0.0
    k = np.arange(1, m + 1)
    return float(((2 * k - m - 1) * x).sum() / (m * s))


def top_mass_count(x: Any, fraction: float = 0.9) -> int:
    """The smallest number of values (by |x|, largest first) holding ``fraction`` of sum |x|."""
    a = np.sort(np.abs(np.asarray(x, dtype=np.float64).ravel()))[::-1]
    if a.size == 0 or a.sum() <= 0:
        return 0
    cs = np.cumsum(a)
    return int(np.searchsorted(cs, fraction * cs[-1] * (1 - 1e-12), side="left")) + 1


def core_nodes(graph: AttributionGraph, layer: str, fraction: float = 0.9) -> list[int]:
    """The positions of the smallest node set of ``layer`` holding ``fraction`` of its |R| (largest first)."""
    nodes = graph.nodes(layer)
    r = np.abs(graph.relevance[layer][nodes].astype(np.float64))
    k = top_mass_count(r, fraction)
    return nodes[np.argsort(-r, kind="stable")[:k]].tolist()


def hub_nodes(graph: AttributionGraph, layer: str, direction: str = "in") -> list[int]:
    """Positions of the layer's nodes whose in- (or out-) degree exceeds mean + std."""
    li = graph.layers.index(layer)
    if direction == "in":
        if li == 0:
            return []
        idx = graph.edges[(graph.layers[li - 1], layer)].rows
    else:
        if li + 1 == len(graph.layers):
            return []
        idx = graph.edges[(layer, graph.layers[li + 1])].cols
    nodes = graph.nodes(layer)
    deg = np.bincount(idx, minlength=graph.n)[nodes].astype(np.float64)
    if deg.size == 0:
        return []
    return nodes[deg > deg.mean() + deg.std()].tolist()


def _hubs(deg: np.ndarray) -> int:
    if deg.size == 0:
        return 0
    return int((deg > deg.mean() + deg.std()).sum())


def layer_metrics(graph: AttributionGraph, layer: str) -> dict:
    n = graph.n
    li = graph.layers.index(layer)
    nodes = graph.nodes(layer)
    R = graph.relevance[layer][nodes].astype(np.float64)
    absR = np.abs(R)
    e_in = graph.edges[(graph.layers[li - 1], layer)] if li > 0 else None
    e_out = graph.edges[(layer, graph.layers[li + 1])] if li + 1 < len(graph.layers) else None
    m = len(nodes)
    row: dict = {"layer": layer, "nodes": m, "node_sparsity": 1 - m / n if n else np.nan}
    row["edges_in"] = len(e_in) if e_in is not None else 0
    row["edges_out"] = len(e_out) if e_out is not None else 0
    row["fan_in"] = row["edges_in"] / m if m else np.nan
    row["fan_out"] = row["edges_out"] / m if m else np.nan
    pairs = n * (n + 1) / 2
    row["edge_density"] = row["edges_in"] / pairs if e_in is not None else np.nan
    row["sparsity"] = 1 - row["edge_density"] if e_in is not None else np.nan
    row["mean_abs_R"] = float(absR.mean()) if m else np.nan
    row["gini_R"] = gini(absR)
    if e_in is not None and len(e_in):
        w = np.abs(e_in.vals.astype(np.float64))
        same = e_in.rows == e_in.cols
        row["mean_abs_w_in"] = float(w.mean())
        row["gini_w_in"] = gini(w)
        row["verticality"] = float(w[same].sum() / w.sum()) if w.sum() > 0 else np.nan
        look = (e_in.rows - e_in.cols).astype(np.float64)
        row["mean_lookback"] = float(look.mean())
        row["local_ratio"] = float(same.mean())
    else:
        for k in ("mean_abs_w_in", "gini_w_in", "verticality", "mean_lookback", "local_ratio"):
            row[k] = np.nan
    mask = graph.node_mask[layer]
    deg_in = np.bincount(e_in.rows, minlength=n)[mask] if e_in is not None else np.zeros(m)
    deg_out = np.bincount(e_out.cols, minlength=n)[mask] if e_out is not None else np.zeros(m)
    row["hubs_in"] = _hubs(deg_in) if e_in is not None else 0
    row["hubs_out"] = _hubs(deg_out) if e_out is not None else 0
    tot = absR.sum()
    row["centre_of_mass"] = float((nodes * absR).sum() / tot) if tot > 0 else np.nan
    row["centre_of_mass_rel"] = row["centre_of_mass"] / (n - 1) if n > 1 and tot > 0 else np.nan
    row["top90_nodes"] = top_mass_count(absR, 0.9)
    row["top90_frac"] = row["top90_nodes"] / m if m else np.nan
    return row


def graph_metrics(graph: AttributionGraph) -> Any:
    """One row per node layer (index: the layer name), columns as in the module docstring."""
    import pandas as pd

    df = pd.DataFrame([layer_metrics(graph, layer) for layer in graph.layers])
    return df.set_index("layer")
