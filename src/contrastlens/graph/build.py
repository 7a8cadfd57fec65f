"""``attribution_graph``: explanation with states -> edges per transition -> pruning -> graph."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from contrastlens import nodes
from contrastlens.attribution.explain import check_model, explain
from contrastlens.attribution.explanation import Explanation
from contrastlens.attribution.spec import AttributionSpec, Explainable, check_compatible
from contrastlens.errors import InputError
from contrastlens.graph._model import PositionEmbeddings, block_view, free_memory_bytes
from contrastlens.graph.exact import ExactAttention, ExactNotApplicable
from contrastlens.graph.graph import AttributionGraph, Edges
from contrastlens.graph.prune import PruneSpec, StreamingCumMass, cum_mass_threshold
from contrastlens.graph.replay import replay_rows
from contrastlens.models.loaded import LoadedModel
from contrastlens.rules.context import active_rule, apply_rules, get_rule

METHODS = ("exact", "replay")
Progress = Callable[[str, int, int], None]


def parse_layers(layers: Sequence[str | int] | str | None, num_layers: int, mid: bool) -> list[str]:
    """Node layers in model order (see :func:`contrastlens.nodes.parse_layers`)."""
    return nodes.parse_layers(layers, num_layers, mid)


def _row_major(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    key = r.astype(np.int64) * (int(c.max(initial=0)) + 1) + c
    return np.argsort(key, kind="stable")


class _Sink:
    """Collects the kept edges of one transition from row blocks (threshold / no pruning: one pass)."""

    def __init__(self, tau: float | None) -> None:
        self.tau = tau
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, idx: torch.Tensor, c0: int, blk: torch.Tensor) -> None:
        a = blk.abs()
        keep = a > 0 if self.tau is None else (a >= self.tau) & (a > 0)
        r, c = torch.nonzero(keep, as_tuple=True)
        self.parts.append((idx[r].to(torch.int32).cpu(), (c + c0).to(torch.int32).cpu(), blk[r, c].float().cpu()))

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
        r, c, v = (torch.cat(x).numpy() for x in zip(*self.parts, strict=True))
        order = _row_major(r, c)
        return r[order], c[order], v[order]


def _exact_transition(ex: ExactAttention, r_src: torch.Tensor, spec: PruneSpec | None,
                      row_keep: torch.Tensor | None, g_tgt: torch.Tensor,
                      cache_bytes: int = 0) -> tuple[Edges, dict]:
    """The kept edges of one attention transition. Threshold / no pruning: one pass over the row blocks.
    Cum-mass: pass 1 (column sums, histogram, row maxima), then pass 2 over the candidate rows, taken from
    blocks kept from pass 1 while they fit in ``cache_bytes`` and recomputed otherwise."""
    n = ex.n
    dev = r_src.device
    rk = None if row_keep is None else row_keep.to(dev)
    # a target row with no gradient injects nothing: its diagonal is exactly 0 (not a rounding residue)
    active = (g_tgt.abs().amax(-1) > 0).float()
    idx = torch.arange(n, device=dev)
    cum = spec is not None and spec.mode == "cum_mass"
    sink = _Sink(spec.value if (spec is not None and not cum) else None)
    hist = StreamingCumMass(spec.value, device=dev) if cum else None
    cs = torch.zeros(n, dtype=torch.float64, device=dev)
    rowmax = torch.zeros(n, dtype=torch.float32, device=dev)
    cached: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    is_cached = torch.zeros(n, dtype=torch.bool, device=dev)
    used_bytes = 0
    passes = 1
    for ridx, c0, blk in ex.blocks():
        cs[c0 : c0 + blk.shape[1]] += blk.sum(0, dtype=torch.float64)
        if rk is not None:
            blk = blk * rk[ridx, None]
        if cum:
            a = blk.abs()
            hist.observe(a)
            rowmax[ridx] = a.amax(1)
            nb = blk.numel() * blk.element_size()
            if used_bytes + nb <= cache_bytes:
                cached.append((ridx, c0, blk))
                is_cached[ridx] = True
                used_bytes += nb
        else:
            sink.add(ridx, c0, blk)
    diag = (r_src.double() - cs).float() * active
    if rk is not None:
        diag = diag * rk
    info: dict = {}
    if cum:
        hist.observe(diag.abs())
        hist.end_pass1()
        passes = 2
        parts = []
        for ridx, c0, blk in cached:
            r, c = torch.nonzero(hist.candidates(blk.abs()), as_tuple=True)
            parts.append((ridx[r].int().cpu(), (c + c0).int().cpu(), blk[r, c].float().cpu()))
        cached.clear()
        # pass 2 recomputes only the rows not kept that hold a candidate (in the boundary bin or above)
        need = torch.nonzero(hist.candidates(rowmax) & ~is_cached).flatten()
        for k in range(0, need.numel(), ex.block_rows):
            idx = need[k : k + ex.block_rows]
            c0, blk = ex.rows(idx)
            if rk is not None:
                blk = blk * rk[idx, None]
            r, c = torch.nonzero(hist.candidates(blk.abs()), as_tuple=True)
            parts.append((idx[r].int().cpu(), (c + c0).int().cpu(), blk[r, c].float().cpu()))
        info["rows_recomputed"] = int(need.numel())
        info["cached_mib"] = used_bytes / 2**20
        d = torch.nonzero(hist.candidates(diag.abs()), as_tuple=True)[0]
        parts.append((d.int().cpu(), d.int().cpu(), diag[d].float().cpu()))
        r, c, v = (torch.cat(x).numpy() for x in zip(*parts, strict=True))
        tau = hist.threshold(np.abs(v))
        keep = np.abs(v) >= tau
        r, c, v = r[keep], c[keep], v[keep]
        order = _row_major(r, c)
        r, c, v = r[order], c[order], v[order]
        info.update(threshold=tau, total_mass=hist.total)
    else:
        a = diag.abs()
        keep = a > 0 if sink.tau is None else (a >= sink.tau) & (a > 0)
        d = idx[keep]
        sink.parts.append((d.int().cpu(), d.int().cpu(), diag[d].float().cpu()))
        r, c, v = sink.edges()
        if spec is not None:
            info.update(threshold=spec.value)
    info["passes"] = passes
    return Edges(r, c, v), info


def _keep_mask(absw: np.ndarray, spec: PruneSpec | None) -> tuple[np.ndarray, dict]:
    """Which |weights| survive the pruning spec (all non-zero ones without a spec), and its record."""
    info: dict = {}
    if spec is None:
        return absw > 0, info
    if spec.mode == "cum_mass":
        tau = cum_mass_threshold(absw, spec.value)
        info.update(threshold=tau, total_mass=float(absw.sum(dtype=np.float64)))
        return absw >= tau, info
    info.update(threshold=spec.value)
    return (absw >= spec.value) & (absw > 0), info


def _dense_edges(A: torch.Tensor, spec: PruneSpec | None) -> tuple[Edges, dict]:
    A = A.float().cpu().numpy()
    keep, info = _keep_mask(np.abs(A), spec)
    r, c = np.nonzero(keep)
    return Edges(r, c, A[r, c]), info


def attribution_graph(
    lm: LoadedModel,
    prompt: str | Sequence[int] | Explainable | None = None,
    target: int | str | None = None,
    contrast: int | str | None = None,
    *,
    method: str = "exact",
    mid: bool = True,
    layers: Sequence[str | int] | str | None = None,
    node_threshold: float = 0.0,
    prune: str | PruneSpec | dict | None = None,
    rule: str | None = None,
    objective: str | None = None,
    explanation: Explanation | None = None,
    batch_size: int | None = None,
    block_rows: int | None = None,
    cache_mib: float | None = None,
    progress: Progress | None = None,
    **explain_kwargs: Any,
) -> AttributionGraph:
    """Build the cross-layer attribution graph of one contrastive prediction.

    ``prompt`` is what :func:`~contrastlens.explain` takes (a string, token ids, or a ``FailureCase``);
    ``rule`` (default ``attnlrp``), ``objective`` (default ``logit_diff``) and ``explain_kwargs`` go to
    that explanation. Or pass ``explanation`` (from ``explain(..., keep_states=True)``) to reuse one: the
    graph then takes its :class:`AttributionSpec` (rule, objective, target, contrast) from it, a ``rule``
    or ``objective`` that disagrees is an error, and so is a model whose weight fingerprint differs from
    the explanation's.

    ``method="exact"`` (default) uses the closed form for adjacent transitions (``l-1 -> l.mid``,
    ``l.mid -> l``, ``l-1 -> l``) and replay for any other pair; ``method="replay"`` replays every
    transition (the reference). ``layers`` picks node layers (default: all, with ``l.mid`` nodes if
    ``mid``). ``node_threshold`` drops target rows j with |R_t[j]| <= threshold before computing edges (the
    paper uses 0.01). ``prune`` is ``"cum_mass:0.85"`` / ``"threshold:0.01"`` (per transition, applied
    while the edges are produced, so no dense matrix is kept). ``progress(stage, done, total)`` is called
    per transition and per replay chunk. ``cache_mib`` bounds the row blocks one cum-mass transition may
    keep between its two passes (default: 1/16 of the free memory, at most 1 GiB; 0 recomputes every
    candidate row).
    """
    if method not in METHODS:
        raise InputError(f"unknown graph method {method!r}; choose one of: {', '.join(METHODS)}")
    if not (math.isfinite(node_threshold) and node_threshold >= 0):
        raise InputError(f"node_threshold must be a finite number >= 0, got {node_threshold}")
    for name, v in (("batch_size", batch_size), ("block_rows", block_rows)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{name} must be a positive integer (or None: chosen from the free memory), got {v!r}")
    if cache_mib is not None and not (math.isfinite(cache_mib) and cache_mib >= 0):
        raise InputError(f"cache_mib must be a finite number >= 0, got {cache_mib}")
    spec = PruneSpec.parse(prune)
    t0 = time.perf_counter()
    if explanation is None:
        if prompt is None:
            raise InputError("give a prompt (or an explanation made with keep_states=True)")
        if isinstance(prompt, Explainable):
            explanation = explain(lm, prompt, rule=rule or "attnlrp", objective=objective or "logit_diff",
                                  keep_states=True, **explain_kwargs)
        else:
            explanation = explain(lm, prompt, target, contrast, rule=rule or "attnlrp",
                                  objective=objective or "logit_diff", keep_states=True, **explain_kwargs)
    else:
        extra = [k for k, v in (("prompt", prompt), ("target", target), ("contrast", contrast)) if v is not None]
        extra += sorted(explain_kwargs)
        if extra:
            raise InputError(f"{', '.join(e + '=' for e in extra)} cannot apply with explanation= "
                             "(the explanation fixes its inputs); pass one or the other")
        check_compatible(explanation.spec, rule=rule, objective=objective)
        check_model(lm, explanation.provenance, what="the explanation", on_mismatch="error")
    aspec: AttributionSpec = explanation.spec
    t_explain = time.perf_counter() - t0
    states = getattr(explanation, "states", None)
    if not states:
        raise InputError("the explanation has no states; make it with keep_states=True")
    model, adapter = lm.model, lm.adapter
    L = adapter.num_layers(model)
    names = parse_layers(layers, L, mid)
    n = int(states["emb"][0].shape[0])
    rel = {k: (h.float() * g.float()).sum(-1) for k, (h, g) in states.items()}

    rs = get_rule(aspec.rule)
    current = active_rule(model)
    if current is not None and current != rs.name:
        raise InputError(f"rules {current!r} are applied to the model, but the explanation was made with {rs.name!r}")
    edges: dict[tuple[str, str], Edges] = {}
    trans = list(zip(names[:-1], names[1:], strict=True))
    device = states["emb"][0].device
    timings = {}
    ctx = apply_rules(model, rs) if current is None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        pe = PositionEmbeddings(model, adapter, n, device=device, dtype=states["emb"][0].dtype)
        if cache_mib is None:
            cache_bytes = min(1 << 30, free_memory_bytes(device) // 16)
        else:
            cache_bytes = int(cache_mib * 2**20)
        for ti, (s, t) in enumerate(trans):
            ts = time.perf_counter()
            if progress is not None:
                progress(f"{s}->{t}", ti, len(trans))
            row_keep = None
            if node_threshold > 0:
                row_keep = (rel[t].abs() > node_threshold).float()
            kind, blk = nodes.transition_kind(s, t) if method == "exact" else ("replay", -1)
            used = kind
            e: Edges | None = None
            if kind == "mlp":
                r_s = rel[s].float()
                d = torch.arange(n, device=device)
                vals = r_s if row_keep is None else r_s * row_keep
                e, info = _dense_diag(d, vals, spec)
            elif kind in ("attn", "block"):
                try:
                    ex = ExactAttention(block_view(model, adapter, blk), states[s][0], states[nodes.mid(blk)][1],
                                        pe(blk), c_v=rs.v_scale, c_k=rs.k_scale, block_rows=block_rows)
                    e, info = _exact_transition(ex, rel[s], spec, row_keep, states[t][1], cache_bytes)
                    del ex
                except ExactNotApplicable:
                    used = "replay"
            if e is None:
                rows = list(range(n)) if row_keep is None else torch.nonzero(row_keep).flatten().tolist()

                def cb(done, total, _st=f"{s}->{t}"):
                    if progress is not None:
                        progress(f"{_st} replay", done, total)

                A = torch.zeros(n, n, dtype=torch.float32, device=device)
                if rows:
                    A[torch.tensor(rows, device=device)] = replay_rows(
                        model, adapter, s, t, states[s][0], states[t][1], rows, batch_size=batch_size, progress=cb)
                e, info = _dense_edges(A, spec)
                del A
                used = "replay"
            e.info.update(info, method=used, seconds=time.perf_counter() - ts)
            if spec is not None:
                e.info.update(mode=spec.mode, value=spec.value)
            edges[(s, t)] = e
            timings[f"{s}->{t}"] = e.info["seconds"]
    relevance = {k: rel[k].cpu().numpy() for k in names}
    mask: dict[str, np.ndarray] = {}  # empty: every node
    if node_threshold > 0:
        mask = {k: np.abs(relevance[k]) > node_threshold for k in names}
        mask[names[-1]][n - 1] = True
    meta = {
        "method": method, "n": n, "mid": mid,
        "node_threshold": node_threshold, "prune": None if spec is None else f"{spec.mode}:{spec.value}",
        "spec": aspec.to_dict(), "spec_hash": aspec.hash(),
        "provenance": explanation.provenance.to_dict() if explanation.provenance is not None else None,
        "source": lm.source, "seconds_explain": t_explain,
        "seconds_edges": time.perf_counter() - t0 - t_explain,
        "final_norm_bias_share": float(getattr(explanation, "final_norm_bias_share", 0.0) or 0.0),
    }
    tokens = list(getattr(explanation, "tokens", None) or [str(i) for i in range(n)])
    return AttributionGraph(names, tokens, relevance, edges, float(explanation.logit_diff), mask, meta)


def _dense_diag(d: torch.Tensor, vals: torch.Tensor, spec: PruneSpec | None) -> tuple[Edges, dict]:
    v = vals.float().cpu().numpy()
    r = d.int().cpu().numpy()
    keep, info = _keep_mask(np.abs(v), spec)
    return Edges(r[keep], r[keep], v[keep]), info

