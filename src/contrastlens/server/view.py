"""The page's view of a sent graph (``CLG1``): pruning as the browser does it, and the exports.

:class:`GraphView` holds a decoded payload (:class:`~contrastlens.server.wire.DecodedGraph`); its
pruning is the contract's "Pruning in the page", as pure numpy functions, so that an export downloads
exactly what the page shows:

- **cum-mass p**, per transition: with the sent edges sorted by |w| descending and ``c_k`` the cumulative
  sums, keep the first ``k* + 1`` edges where ``k*`` is the first index with ``c_k >= p * total_mass``,
  plus every further edge tied with the last kept |w|; when no index reaches it (``p`` above
  ``sent_mass / total_mass``), keep every sent edge (the transition is "at the limit" of what was sent).
  For ``p <= send_p`` this is the edge set of ``attribution_graph(..., prune=f"cum_mass:{p}")``.
- **node threshold tau** in [0, 1]: a node is kept when ``|R| >= tau * max|R|`` of its layer, or when it is
  the final node (last layer, last position); an edge is kept when both of its ends are.
- **subgraph**: only the ancestors of the final node over the kept edges (and the edges among them).

Exports of a :class:`PrunedView`: our node-link JSON (:meth:`PrunedView.to_node_link`, the format of
:meth:`AttributionGraph.to_node_link <contrastlens.graph.graph.AttributionGraph.to_node_link>`),
Neuronpedia's ``graph-schema.json`` (:meth:`PrunedView.to_neuronpedia`) and two CSV tables.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from contrastlens import nodes as layer_names
from contrastlens.errors import InputError
from contrastlens.server.wire import DecodedGraph, SentTransition


def cum_mass_count(abs_sorted: np.ndarray, total_mass: float, p: float) -> tuple[int, bool]:
    """How many of the |w|-sorted (descending) sent edges cum-mass ``p`` keeps, and whether it is at the
    limit of what was sent (no prefix reaches ``p * total_mass``: all are kept)."""
    m = int(abs_sorted.size)
    if m == 0:
        return 0, False
    c = np.cumsum(abs_sorted.astype(np.float64))
    k = int(np.searchsorted(c, p * float(total_mass), side="left"))
    if k >= m:
        return m, True
    last = abs_sorted[k]
    ties = int(np.searchsorted(-abs_sorted[k + 1:], -last, side="right"))  # equal |w| right after k
    return k + 1 + ties, False


@dataclass
class PrunedView:
    """What the page shows at one setting: kept nodes per layer and kept edges per transition."""

    graph: DecodedGraph
    p: float | None
    tau: float
    subgraph: bool
    node_mask: dict[str, np.ndarray]
    edges: list[tuple[SentTransition, np.ndarray]]  # (transition, kept mask over its sent edges)
    at_limit: list[bool]

    @property
    def num_edges(self) -> int:
        return int(sum(int(m.sum()) for _, m in self.edges))

    def edge_set(self) -> dict[tuple[str, str], set[tuple[int, int]]]:
        """``{(src, tgt): {(j, i), ...}}`` of the kept edges (for comparisons)."""
        return {(t.src, t.tgt): set(zip(t.rows[m].tolist(), t.cols[m].tolist(), strict=True)) for t, m in self.edges}

    def to_graph(self) -> Any:
        """The view as an :class:`~contrastlens.graph.graph.AttributionGraph` (kept nodes and edges)."""
        from contrastlens.graph.graph import AttributionGraph, Edges

        g = self.graph
        edges = {}
        for t, m in self.edges:
            info = {"total_mass": t.total_mass, "sent_mass": t.sent_mass, "kept": int(m.sum()),
                    "sent": len(t)}
            edges[(t.src, t.tgt)] = Edges(t.rows[m], t.cols[m], t.vals[m], info)
        meta = {k: g.header.get(k) for k in ("key", "model", "spec", "provenance", "send", "segments")}
        meta["view"] = {"p": self.p, "tau": self.tau, "subgraph": self.subgraph}
        return AttributionGraph(g.layers, g.tokens, dict(g.relevance), edges, g.logit_diff,
                                {k: v.copy() for k, v in self.node_mask.items()}, meta)

    def to_node_link(self) -> dict[str, Any]:
        """Our node-link JSON (ids ``layer@pos``), as :meth:`AttributionGraph.to_node_link`."""
        return self.to_graph().to_node_link()

    # ---------------------------------------------------------------------------------- CSV
    def nodes_csv(self) -> str:
        """``id,layer,pos,token,relevance,special``: one row per kept node, in layer then position order."""
        g = self.graph
        special = g.header.get("special") or [False] * g.n
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "layer", "pos", "token", "relevance", "special"])
        for layer in g.layers:
            rel = g.relevance[layer]
            for i in np.flatnonzero(self.node_mask[layer]).tolist():
                w.writerow([f"{layer}@{i}", layer, i, g.tokens[i], _num(rel[i]), int(bool(special[i]))])
        return buf.getvalue()

    def edges_csv(self) -> str:
        """``source,target,src_layer,src_pos,tgt_layer,tgt_pos,weight``: the kept edges, per transition by
        |w| descending (``weight`` = A[j, i] for the edge (src, i) -> (tgt, j))."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source", "target", "src_layer", "src_pos", "tgt_layer", "tgt_pos", "weight"])
        for t, m in self.edges:
            for j, i, v in zip(t.rows[m].tolist(), t.cols[m].tolist(), t.vals[m].tolist(), strict=True):
                w.writerow([f"{t.src}@{i}", f"{t.tgt}@{j}", t.src, i, t.tgt, j, _num(v)])
        return buf.getvalue()

    # --------------------------------------------------------------------------- Neuronpedia
    def to_neuronpedia(self) -> dict[str, Any]:
        """Neuronpedia's attribution-graph JSON (``graph-schema.json``: ``metadata``, ``qParams``, ``nodes``,
        ``links``), so that small graphs open in its viewer and in circuit-tracer tools.

        Our node layers map onto its layers and features as follows (``ctx_idx`` is the token position):

        - ``emb`` -> layer ``"E"``, ``feature_type`` ``"embedding"``, ``node_id`` ``E_<token id>_<pos>``,
          feature = the position (as circuit-tracer writes embeddings);
        - ``l.mid`` (the residual stream after block l's attention) -> layer ``"l"``, feature 0,
          ``feature_type`` ``"residual after attention"``, ``node_id`` ``<l>_0_<pos>``;
        - ``l`` (the output of block l) -> layer ``"l"``, feature 1, ``feature_type`` ``"residual"``,
          ``node_id`` ``<l>_1_<pos>``;
        - one extra ``"logit"`` node at layer ``"L"`` (one past the last block), feature = the target id,
          ``is_target_logit`` true, ``token_prob`` = sigmoid(Δℓ) (the target's probability against the
          contrast alone), linked from the final node with its relevance (Δℓ up to the final-norm bias).

        ``activation`` is the node's relevance R; ``influence`` is, within its layer, the cumulative share of
        |R| of the nodes at least as relevant as it (circuit-tracer's convention: smaller is more important;
        ``metadata.node_threshold`` is 1.0 so that Neuronpedia keeps every exported node). ``clerp`` names
        the token and the layer. Links carry ``weight`` = A[j, i].
        """
        from contrastlens import __version__

        g = self.graph
        h = g.header
        n = g.n
        ids = h.get("ids") or list(range(n))
        target = h.get("target") or {}
        contrast = h.get("contrast") or {}
        num_blocks = 1 + max((layer_names.block_of(x) for x in g.layers), default=-1)
        out_nodes: list[dict[str, Any]] = []
        node_id: dict[tuple[str, int], str] = {}
        for layer in g.layers:
            rel = g.relevance[layer].astype(np.float64)
            keep = np.flatnonzero(self.node_mask[layer])
            influence = _cumulative_share(np.abs(rel), keep)
            for i in keep.tolist():
                nid, entry = _np_node(layer, i, n, ids, g.tokens)
                entry.update(influence=influence[i], activation=_num(rel[i]))
                node_id[(layer, i)] = nid
                out_nodes.append(entry)
        links = []
        for t, m in self.edges:
            for j, i, v in zip(t.rows[m].tolist(), t.cols[m].tolist(), t.vals[m].tolist(), strict=True):
                links.append({"source": node_id[(t.src, i)], "target": node_id[(t.tgt, j)], "weight": _num(v)})
        last = g.layers[-1]
        tid = int(target.get("id", -1)) if target.get("id") is not None else -1
        ld = g.logit_diff
        logit_id = f"{num_blocks}_{tid}_{n - 1}"
        out_nodes.append({
            "node_id": logit_id, "feature": tid, "layer": str(num_blocks), "ctx_idx": n - 1,
            "feature_type": "logit", "jsNodeId": f"L_{tid}-{n - 1}",
            "clerp": f"Output {target.get('str')!r} vs {contrast.get('str')!r} (Δℓ={ld:+.3f})",
            "influence": None, "activation": None, "is_target_logit": True,
            "token_prob": _num(1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, ld))))), "reverse_ctx_idx": 0,
        })
        if (last, n - 1) in node_id:
            links.append({"source": node_id[(last, n - 1)], "target": logit_id,
                          "weight": _num(g.relevance[last][n - 1])})
        key = str(h.get("key") or "graph")
        metadata = {
            "slug": f"contrastlens-{key[:12]}", "scan": str(h.get("model") or "model"),
            "prompt_tokens": list(g.tokens), "prompt": "".join(g.tokens), "schema_version": 1,
            "node_threshold": 1.0,
            "info": {"description": f"contrastive attribution graph of {target.get('str')!r} vs "
                                    f"{contrast.get('str')!r} (Δℓ = {ld:+.4f})",
                     "generator": {"name": "contrastlens", "version": __version__}},
            "generation_settings": {"spec": h.get("spec"), "send": h.get("send")},
            "pruning_settings": {"edge_threshold": self.p, "node_threshold": self.tau, "subgraph": self.subgraph},
        }
        qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
        return {"metadata": metadata, "qParams": qparams, "nodes": out_nodes, "links": links}


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _cumulative_share(absr: np.ndarray, keep: np.ndarray) -> dict[int, float | None]:
    total = float(absr[keep].sum()) if keep.size else 0.0
    if total <= 0:
        return {int(i): None for i in keep}
    order = keep[np.argsort(-absr[keep], kind="stable")]
    cs = np.cumsum(absr[order]) / total
    return {int(i): float(c) for i, c in zip(order, cs, strict=True)}


def _np_node(layer: str, i: int, n: int, ids: list[int], tokens: list[str]) -> tuple[str, dict[str, Any]]:
    common = {"ctx_idx": i, "is_target_logit": False, "token_prob": 0.0, "reverse_ctx_idx": n - 1 - i}
    if layer == layer_names.EMB:
        nid = f"E_{int(ids[i])}_{i}"
        return nid, {"node_id": nid, "feature": i, "layer": "E", "feature_type": "embedding",
                     "jsNodeId": f"E_{int(ids[i])}-{i}", "clerp": f"{tokens[i]!r} (embedding)", **common}
    blk = layer_names.block_of(layer)
    feat = 0 if layer_names.is_mid(layer) else 1
    kind = "residual after attention" if feat == 0 else "residual"
    where = f"after block {blk}'s attention" if feat == 0 else f"after block {blk}"
    nid = f"{blk}_{feat}_{i}"
    return nid, {"node_id": nid, "feature": feat, "layer": str(blk), "feature_type": kind,
                 "jsNodeId": f"{blk}_{feat}-{i}", "clerp": f"{tokens[i]!r} {where}", **common}


class GraphView:
    """The decoded graph a page holds, and its pruning (see the module docstring)."""

    def __init__(self, graph: DecodedGraph) -> None:
        self.graph = graph

    @classmethod
    def from_payload(cls, payload: bytes) -> GraphView:
        from contrastlens.server.wire import decode_graph

        return cls(decode_graph(payload))

    @property
    def final_node(self) -> tuple[str, int]:
        return self.graph.layers[-1], self.graph.n - 1

    def edge_masks(self, p: float | None) -> tuple[list[np.ndarray], list[bool]]:
        """Per transition, the sent edges cum-mass ``p`` keeps (all with ``p=None``), and which are at the
        limit of what was sent."""
        if p is not None and not (math.isfinite(p) and 0 < p <= 1):
            raise InputError(f"p must be in (0, 1], got {p}")
        masks, limits = [], []
        for t in self.graph.transitions:
            m = np.zeros(len(t), dtype=bool)
            if p is None:
                m[:] = True
                limits.append(False)
            else:
                k, limit = cum_mass_count(np.abs(t.vals), t.total_mass, p)
                m[:k] = True
                limits.append(limit)
            masks.append(m)
        return masks, limits

    def node_masks(self, tau: float) -> dict[str, np.ndarray]:
        """Per layer, the nodes with ``|R| >= tau * max|R|`` of the layer, and the final node."""
        if not (math.isfinite(tau) and 0 <= tau <= 1):
            raise InputError(f"tau must be in [0, 1], got {tau}")
        out = {}
        for layer, rel in self.graph.relevance.items():
            a = np.abs(rel.astype(np.float64))
            out[layer] = a >= tau * a.max(initial=0.0)
        last, pos = self.final_node
        out[last][pos] = True
        return out

    def view(self, p: float | None = None, tau: float = 0.0, subgraph: bool = False) -> PrunedView:
        """What the page shows at cum-mass ``p`` (None: every sent edge), node threshold ``tau`` and with or
        without the subgraph to the final node."""
        masks, limits = self.edge_masks(p)
        node = self.node_masks(tau)
        trans = self.graph.transitions
        for t, m in zip(trans, masks, strict=True):
            m &= node[t.src][t.cols] & node[t.tgt][t.rows]
        if subgraph:
            anc = {k: np.zeros(self.graph.n, dtype=bool) for k in self.graph.layers}
            last, pos = self.final_node
            anc[last][pos] = True
            for t, m in zip(reversed(trans), reversed(masks), strict=True):
                m &= anc[t.tgt][t.rows]
                anc[t.src][t.cols[m]] = True
            node = anc
        return PrunedView(self.graph, p, tau, subgraph, node, list(zip(trans, masks, strict=True)), limits)


__all__ = ["GraphView", "PrunedView", "cum_mass_count"]
