"""The attribution graph: node relevances per layer and sparse edges per transition.

Nodes are (layer, position) with layer in ``emb``, ``l.mid``, ``l`` (model order). For each consecutive
pair of layers (s, t) the edges are stored as COO (int32 target rows j, int32 source columns i, float32
weights A[j, i]); memory is proportional to the kept edges. Edge (s, i) -> (t, j) carries A[j, i], the
relevance reaching source state i when only target state j's relevance is injected.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrastlens.attribution.spec import AttributionSpec
from contrastlens.errors import InputError
from contrastlens.graph.prune import PruneSpec, prune_coo
from contrastlens.provenance import Provenance

FORMAT_VERSION = 1


@dataclass
class Edges:
    """COO edges of one transition: ``rows`` (target positions j), ``cols`` (source positions i)."""

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int32)
        self.cols = np.asarray(self.cols, dtype=np.int32)
        self.vals = np.asarray(self.vals, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.vals.size)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.cols.nbytes + self.vals.nbytes)

    def subset(self, keep: np.ndarray) -> Edges:
        return Edges(self.rows[keep], self.cols[keep], self.vals[keep], dict(self.info))


@dataclass
class AttributionGraph:
    """A cross-layer attribution graph of one contrastive prediction.

    ``layers``: ordered node-layer names. ``relevance[layer]``: node relevance R [n] (from the single
    explanation). ``edges[(src, tgt)]``: the kept edges of each consecutive pair. ``node_mask[layer]``:
    the nodes that belong to the graph (all by default; :meth:`subgraph_to` narrows it).
    """

    layers: list[str]
    tokens: list[str]
    relevance: dict[str, np.ndarray]
    edges: dict[tuple[str, str], Edges]
    logit_diff: float
    node_mask: dict[str, np.ndarray] = field(default_factory=dict)  # empty: every node
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.relevance = {k: np.asarray(v, dtype=np.float32) for k, v in self.relevance.items()}
        if not self.node_mask:
            self.node_mask = {k: np.ones(self.n, dtype=bool) for k in self.layers}

    # ------------------------------------------------------------------------------------ basics
    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def transitions(self) -> list[tuple[str, str]]:
        return list(zip(self.layers[:-1], self.layers[1:], strict=True))

    @property
    def spec(self) -> AttributionSpec | None:
        """The attribution spec of the explanation the graph was built from (None for graphs saved before
        specs were recorded)."""
        d = self.meta.get("spec")
        return AttributionSpec.from_dict(d) if d else None

    @property
    def provenance(self) -> Provenance | None:
        """Package versions, model source, revision and weight fingerprint of the graph's model."""
        return Provenance.from_dict(self.meta.get("provenance"))

    @property
    def final_node(self) -> tuple[str, int]:
        return (self.layers[-1], self.n - 1)

    def _edges(self, src: str, tgt: str) -> Edges:
        try:
            return self.edges[(src, tgt)]
        except KeyError:
            raise InputError(
                f"no transition {src!r} -> {tgt!r}; transitions: {[f'{s}->{t}' for s, t in self.transitions]}"
            ) from None

    def matrix(self, src: str, tgt: str) -> np.ndarray:
        """Dense [n, n] float32 matrix of one transition (rows j = target positions); for small n."""
        e = self._edges(src, tgt)
        A = np.zeros((self.n, self.n), dtype=np.float32)
        np.add.at(A, (e.rows, e.cols), e.vals)
        return A

    def num_edges(self) -> int:
        return sum(len(e) for e in self.edges.values())

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.edges.values()) + sum(v.nbytes for v in self.relevance.values())

    def nodes(self, layer: str) -> np.ndarray:
        """Positions of the layer's nodes that belong to the graph."""
        return np.flatnonzero(self.node_mask[layer])

    def summary(self) -> str:
        lines = [f"attribution graph: {self.n} tokens, {len(self.layers)} layers, {self.num_edges()} edges, "
                 f"logit diff {self.logit_diff:+.4f} ({self.meta.get('method', '?')})"]
        for (s, t), e in self.edges.items():
            extra = ""
            if "threshold" in e.info:
                extra = f", threshold {e.info['threshold']:.3g}"
            lines.append(f"  {s:>6} -> {t:<6} {len(e):8d} edges{extra}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- pruning
    def prune(self, mode: str = "cum_mass", *, p: float = 0.85, tau: float | None = None) -> AttributionGraph:
        """A new graph whose transitions are each pruned: ``mode="cum_mass"`` (keep the largest |A| holding
        a share ``p`` of the transition's |A| mass) or ``mode="threshold"`` (keep |A| >= ``tau``)."""
        spec = PruneSpec.make(mode, p if mode.replace("-", "_").startswith("cum") else tau)
        new = {}
        for key, e in self.edges.items():
            r, c, v, thr = prune_coo(e.rows, e.cols, e.vals, spec)
            info = dict(e.info, mode=spec.mode, value=spec.value, threshold=thr, kept=int(v.size),
                        before=len(e))
            new[key] = Edges(r, c, v, info)
        meta = dict(self.meta, prune=f"{spec.mode}:{spec.value}")
        return AttributionGraph(list(self.layers), list(self.tokens), dict(self.relevance), new, self.logit_diff,
                                {k: v.copy() for k, v in self.node_mask.items()}, meta)

    # ---------------------------------------------------------------------------------- subgraph
    def subgraph_to(self, node: tuple[str, int] | None = None) -> AttributionGraph:
        """The ancestors of ``node`` (default: the final prediction node, last layer and position) and the
        edges among them: every node with a directed path to ``node``."""
        layer, pos = node if node is not None else self.final_node
        if layer not in self.layers:
            raise InputError(f"unknown layer {layer!r}; layers: {self.layers}")
        pos = int(pos) % self.n
        li = self.layers.index(layer)
        mask = {k: np.zeros(self.n, dtype=bool) for k in self.layers}
        mask[layer][pos] = self.node_mask[layer][pos]
        new: dict[tuple[str, str], Edges] = {}
        for s, t in reversed(self.transitions[:li]):
            e = self.edges[(s, t)]
            keep = mask[t][e.rows] & self.node_mask[s][e.cols]
            sub = e.subset(keep)
            new[(s, t)] = sub
            mask[s][sub.cols] = True
        for s, t in self.transitions[li:]:
            new[(s, t)] = self.edges[(s, t)].subset(np.zeros(len(self.edges[(s, t)]), dtype=bool))
        new = {k: new[k] for k in self.transitions}
        meta = dict(self.meta, subgraph_to=[layer, pos])
        return AttributionGraph(list(self.layers), list(self.tokens), dict(self.relevance), new, self.logit_diff,
                                mask, meta)

    # ---------------------------------------------------------------------------------- exports
    def node_id(self, layer: str, pos: int) -> str:
        return f"{layer}@{pos}"

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` with nodes ``(layer, position)`` (attributes layer, pos, token, relevance)
        and edges ``(s, i) -> (t, j)`` with ``weight = A[j, i]``."""
        import networkx as nx

        G = nx.DiGraph(logit_diff=self.logit_diff, **{k: v for k, v in self.meta.items() if _scalar(v)})
        for layer in self.layers:
            rel = self.relevance[layer]
            for i in self.nodes(layer):
                G.add_node((layer, int(i)), layer=layer, pos=int(i), token=self.tokens[i], relevance=float(rel[i]))
        for (s, t), e in self.edges.items():
            G.add_edges_from(((s, int(i)), (t, int(j)), {"weight": float(w)})
                             for j, i, w in zip(e.rows, e.cols, e.vals, strict=True))
        return G

    def to_node_link(self) -> dict:
        """Node-link JSON data (``{"directed", "graph", "nodes", "links"}``), ids ``"layer@pos"``."""
        nodes = [
            {"id": self.node_id(layer, int(i)), "layer": layer, "pos": int(i), "token": self.tokens[i],
             "relevance": float(self.relevance[layer][i])}
            for layer in self.layers for i in self.nodes(layer)
        ]
        links = [
            {"source": self.node_id(s, int(i)), "target": self.node_id(t, int(j)), "weight": float(w)}
            for (s, t), e in self.edges.items() for j, i, w in zip(e.rows, e.cols, e.vals, strict=True)
        ]
        graph = {"layers": self.layers, "tokens": self.tokens, "logit_diff": self.logit_diff,
                 "transitions": [{"source": s, "target": t, **_jsonable(e.info)} for (s, t), e in self.edges.items()],
                 "meta": _jsonable(self.meta)}
        return {"directed": True, "multigraph": False, "graph": graph, "nodes": nodes, "links": links}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_node_link())
        if path is not None:
            Path(path).write_text(text)
        return text

    def save(self, path: str | Path) -> Path:
        """Save to one ``.npz`` file (arrays plus a JSON header); :meth:`load` reads it back."""
        path = Path(path)
        header = {"format": "contrastlens-graph", "version": FORMAT_VERSION, "layers": self.layers,
                  "tokens": self.tokens, "logit_diff": self.logit_diff, "meta": _jsonable(self.meta),
                  "transitions": [[s, t, _jsonable(e.info)] for (s, t), e in self.edges.items()]}
        arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        for k, layer in enumerate(self.layers):
            arrays[f"rel_{k}"] = self.relevance[layer]
            arrays[f"mask_{k}"] = self.node_mask[layer]
        for k, e in enumerate(self.edges.values()):
            arrays[f"rows_{k}"], arrays[f"cols_{k}"], arrays[f"vals_{k}"] = e.rows, e.cols, e.vals
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        try:
            z = np.load(Path(path), allow_pickle=False)
            header = json.loads(bytes(z["header"]).decode())
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise InputError(f"{path} is not a saved attribution graph ({e})") from None
        if header.get("format") != "contrastlens-graph":
            raise InputError(f"{path} is not a saved attribution graph")
        layers = header["layers"]
        rel = {layer: z[f"rel_{k}"] for k, layer in enumerate(layers)}
        mask = {layer: z[f"mask_{k}"].astype(bool) for k, layer in enumerate(layers)}
        edges = {(s, t): Edges(z[f"rows_{k}"], z[f"cols_{k}"], z[f"vals_{k}"], info)
                 for k, (s, t, info) in enumerate(header["transitions"])}
        return cls(layers, header["tokens"], rel, edges, float(header["logit_diff"]), mask, header["meta"])

    # -------------------------------------------------------------------------------- analyses
    def metrics(self) -> Any:
        """Per-layer graph metrics (a pandas DataFrame); see :mod:`contrastlens.graph.metrics`."""
        from contrastlens.graph.metrics import graph_metrics

        return graph_metrics(self)

    def trajectory(self, pos: int) -> Any:
        from contrastlens.graph.trajectories import token_trajectory

        return token_trajectory(self, pos)

    def to_html(self, path: str | Path | None = None, **kw: Any) -> str:
        from contrastlens.graph.html import graph_html

        html = graph_html(self, **kw)
        if path is not None:
            Path(path).write_text(html, encoding="utf-8")
        return html


def _scalar(v) -> bool:
    return isinstance(v, str | int | float | bool)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


__all__ = ["AttributionGraph", "Edges"]
