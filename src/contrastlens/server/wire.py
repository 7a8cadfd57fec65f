"""The explorer's wire formats (``docs/explorer-api.md``, wire version 1): the explanation JSON, the binary
graph format ``CLG1`` (encode and decode) and the result cache key.

**Cache key.** :func:`cache_key` is the sha256 (hex) of the canonical JSON (sorted keys, no whitespace) of
what determines a result: the job kind, the model's weight fingerprint (and the model id, which the result
names), the resolved attribution spec's :meth:`~contrastlens.attribution.spec.AttributionSpec.hash`, the
explained token ids and the kind's options (the segments of an explanation, the graph options of a graph,
the node or edge of a drill-down). Any change in one of them gives another key, so a cache hit can never
be a stale result.

**CLG1.** ``b"CLG1"``, a little-endian uint32 header length H, the header (UTF-8 JSON, padded with spaces to
a multiple of 8 bytes), then the arrays, each at its ``offset`` from the start of the array section
(byte 8 + H), each 8-byte aligned, little-endian. Arrays: ``rel:<layer>`` (float32 [n], node relevance)
and, per transition k, ``e<k>:rows`` / ``e<k>:cols`` (uint16 when n <= 65535, else int32: target
position j, source position i) and ``e<k>:vals`` (float32 A[j, i]), sorted by |w| descending. A
transition's ``total_mass`` is Σ|A| before any pruning (the cum-mass denominator), ``sent_mass`` Σ|w| of
what was sent. :func:`encode_graph` sends, per transition, the edges of the graph it is given (built with
``prune="cum_mass:<send_p>"``) sorted by |w|, cut to ``max_edges // len(transitions)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.attribution.explanation import Explanation
    from contrastlens.attribution.spec import AttributionSpec
    from contrastlens.graph.graph import AttributionGraph

WIRE_VERSION = 1
MAGIC = b"CLG1"
_ALIGN = 8
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "uint16": np.dtype("<u2"), "int32": np.dtype("<i4")}
NORMS = ("max_abs", "sum_abs", "abs_sum")


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays to Python, non-finite floats to None, tuples to lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return _finite(obj)
    return obj


# ------------------------------------------------------------------------------------------ cache key
def cache_key(kind: str, *, model: str, fingerprint: str, spec: AttributionSpec, ids: Sequence[int],
              options: Mapping[str, Any] | None = None) -> str:
    """The key a result is cached under (64 hex digits); see the module docstring."""
    doc = {"kind": kind, "model": model, "fingerprint": fingerprint, "spec": spec.hash(),
           "ids": [int(i) for i in ids], "options": jsonable(dict(options or {}))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------------- explanation JSON
def top_rows(top: Sequence[tuple[int, str, float]]) -> list[dict[str, Any]]:
    return [{"rank": r + 1, "id": int(i), "token": s, "logit": _finite(v)} for r, (i, s, v) in enumerate(top)]


def explanation_json(ex: Explanation, *, key: str, model: str) -> dict[str, Any]:
    """The explanation JSON of the wire contract. ``segment_sums`` are of the ``max_abs``-normalised input
    relevance (special tokens excluded), as :meth:`Explanation.segment_sums`; empty without segments."""
    from contrastlens.viz.normalize import normalize

    rel = np.asarray(ex.input_relevance, dtype=np.float32)
    special = [bool(s) for s in ex.special_mask]
    layer_rel = np.asarray(ex.layer_relevance, dtype=np.float64)
    return {
        "key": key,
        "model": model,
        "fingerprint": ex.provenance.model_fingerprint if ex.provenance is not None else None,
        "spec": ex.spec.to_dict(),
        "method": ex.method,
        "hidden_relevance": bool(ex.hidden_relevance),
        "n_tokens": ex.n_tokens,
        "ids": [int(i) for i in ex.input_ids],
        "tokens": list(ex.tokens),
        "special": special,
        "logit_diff": _finite(ex.logit_diff),
        "target": {"id": int(ex.target_id), "str": ex.target_str},
        "contrast": {"id": None if ex.contrast_id is None else int(ex.contrast_id), "str": ex.contrast_str},
        "top_logits": top_rows(ex.top_logits),
        "input_relevance": jsonable(rel),
        "norms": {m: jsonable(normalize(rel, special, m).astype(np.float32)) for m in NORMS},
        "segments": {k: [[int(a), int(b)] for a, b in v] for k, v in ex.segments.items()},
        "segment_sums": jsonable(ex.segment_sums("max_abs")) if ex.segments else {},
        "layer_sums": jsonable(layer_rel.sum(axis=1)),
        "seconds": _finite(ex.meta.get("seconds", 0.0)),
    }


# ------------------------------------------------------------------------------------------------ CLG1
@dataclass
class SentTransition:
    """The sent edges of one transition, sorted by |w| descending."""

    src: str
    tgt: str
    rows: np.ndarray  # target positions j
    cols: np.ndarray  # source positions i
    vals: np.ndarray  # A[j, i]
    total_mass: float
    sent_mass: float

    def __len__(self) -> int:
        return int(self.vals.size)


@dataclass
class DecodedGraph:
    """A decoded ``CLG1`` payload: the header and its arrays."""

    header: dict[str, Any]
    relevance: dict[str, np.ndarray]
    transitions: list[SentTransition] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(self.header["layers"])

    @property
    def n(self) -> int:
        return int(self.header["n"])

    @property
    def tokens(self) -> list[str]:
        return list(self.header["tokens"])

    @property
    def logit_diff(self) -> float:
        return float(self.header["logit_diff"])


def sort_by_weight(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges ordered by |w| descending (ties by target row, then source column: deterministic)."""
    order = np.lexsort((cols, rows, -np.abs(vals.astype(np.float64))))
    return rows[order], cols[order], vals[order]


def encode_graph(graph: AttributionGraph, *, key: str, model: str, special: Sequence[bool], send_p: float,
                 max_edges: int, node_threshold: float = 0.0, segments: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None) -> bytes:
    """The ``CLG1`` payload of a graph built with ``prune="cum_mass:<send_p>"``: per transition its edges
    sorted by |w| descending, at most ``max_edges // len(transitions)`` of them. ``extra``: more header
    fields (e.g. the target and contrast)."""
    n = graph.n
    idx = "uint16" if n <= 65535 else "int32"
    trans = graph.transitions
    cap = max(1, int(max_edges) // max(1, len(trans)))
    arrays: list[tuple[str, str, np.ndarray]] = []
    for layer in graph.layers:
        arrays.append((f"rel:{layer}", "float32", np.asarray(graph.relevance[layer], dtype=np.float32)))
    theader = []
    for k, (s, t) in enumerate(trans):
        e = graph.edges[(s, t)]
        rows, cols, vals = sort_by_weight(e.rows, e.cols, e.vals)
        rows, cols, vals = rows[:cap], cols[:cap], vals[:cap]
        total = e.info.get("total_mass")
        if total is None:  # an unpruned graph: everything is sent
            total = float(np.abs(e.vals.astype(np.float64)).sum())
        sent = float(np.abs(vals.astype(np.float64)).sum())
        names = (f"e{k}:rows", f"e{k}:cols", f"e{k}:vals")
        arrays += [(names[0], idx, rows), (names[1], idx, cols), (names[2], "float32", vals)]
        theader.append({"src": s, "tgt": t, "count": int(vals.size), "total_mass": float(total), "sent_mass": sent,
                        "rows": names[0], "cols": names[1], "vals": names[2]})
    table: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, dtype, arr in arrays:
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dtype]).tobytes()
        table[name] = {"dtype": dtype, "offset": offset, "length": int(arr.size)}
        pad = (-len(data)) % _ALIGN
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    meta = graph.meta
    header = {
        "wire_version": WIRE_VERSION, "key": key, "model": model, "n": n, "layers": list(graph.layers),
        "tokens": list(graph.tokens), "special": [bool(x) for x in special], "logit_diff": float(graph.logit_diff),
        "spec": meta.get("spec"), "provenance": meta.get("provenance"),
        "segments": {k: [[int(a), int(b)] for a, b in v] for k, v in (segments or {}).items()},
        "send": {"p": float(send_p), "max_edges": int(max_edges), "node_threshold": float(node_threshold)},
        **jsonable(dict(extra or {})),
        "arrays": table, "transitions": theader,
    }
    text = json.dumps(jsonable(header), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % _ALIGN)
    return MAGIC + struct.pack("<I", len(text)) + text + b"".join(chunks)


def decode_graph(payload: bytes | bytearray | memoryview) -> DecodedGraph:
    """Read a ``CLG1`` payload (arrays are copied out, little-endian); a malformed one is an InputError."""
    buf = memoryview(payload).cast("B")
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        raise InputError("not a CLG1 graph payload (bad magic)")
    (h,) = struct.unpack("<I", bytes(buf[4:8]))
    if 8 + h > len(buf):
        raise InputError("truncated CLG1 payload (header longer than the data)")
    try:
        header = json.loads(bytes(buf[8 : 8 + h]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"CLG1 header is not JSON: {e}") from None
    if header.get("wire_version") != WIRE_VERSION:
        raise InputError(f"CLG1 wire version {header.get('wire_version')!r} is not {WIRE_VERSION}")
    base = 8 + h
    out: dict[str, np.ndarray] = {}
    for name, a in header["arrays"].items():
        dt = _DTYPES.get(a["dtype"])
        if dt is None:
            raise InputError(f"CLG1 array {name} has an unknown dtype {a['dtype']!r}")
        start, length = base + int(a["offset"]), int(a["length"])
        end = start + length * dt.itemsize
        if int(a["offset"]) % _ALIGN or end > len(buf):
            raise InputError(f"CLG1 array {name} lies outside the payload or is not 8-byte aligned")
        out[name] = np.frombuffer(buf[start:end], dtype=dt).astype(dt.newbyteorder("="))
    rel = {layer: out[f"rel:{layer}"].astype(np.float32) for layer in header["layers"]}
    trans = [SentTransition(t["src"], t["tgt"], out[t["rows"]].astype(np.int64), out[t["cols"]].astype(np.int64),
                            out[t["vals"]].astype(np.float32), float(t["total_mass"]), float(t["sent_mass"]))
             for t in header["transitions"]]
    return DecodedGraph(header, rel, trans)


__all__ = ["MAGIC", "NORMS", "WIRE_VERSION", "DecodedGraph", "SentTransition", "cache_key", "decode_graph",
           "encode_graph", "explanation_json", "jsonable", "sort_by_weight", "top_rows"]
