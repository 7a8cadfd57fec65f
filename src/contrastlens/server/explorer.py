"""The explorer's operations: what the endpoints run on the model workers.

:class:`Explorer` owns the :class:`~contrastlens.server.jobs.JobQueue` and turns validated requests (plain
dicts) into work on the models:

- **inputs**: a typed prompt (with or without the chat template), verbatim ids, or a case under ``--cases``
  (its ids before the failure token, its target, contrast and segments), plus ``append`` ids; an input
  over ``max_prompt_tokens`` is 413;
- **quick calls**, run on the model's worker before queued jobs and awaited by the endpoint: tokenising
  (alone or in the context of an input), the top next-token logits, a greedy continuation;
- **jobs**: an explain or graph request is first *prepared* on its worker (target and contrast resolved, the
  defaults from the top logits: target the top-1 token or the case's, contrast the best other one or the
  case's; the spec the computation will have; the result key of
  :func:`~contrastlens.server.wire.cache_key`), so that a bad request is a 4xx of the POST itself and a
  cached key is answered at once; then the job runs ``explain`` (the explanation JSON) or ``explain(...,
  keep_states=True)`` and ``attribution_graph(..., prune="cum_mass:<send_p>")`` (a ``CLG1`` payload). A
  drill-down (``/api/neurons``) recomputes its graph's explanation with states unless it is the one kept
  (at most one explanation with states is kept, and only under 1 GiB).

A computed spec that differs from the prepared one (whose hash is in the key) is an internal error, never
a result under a wrong key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from contrastlens.server.jobs import Job, JobContext, JobQueue
from contrastlens.server.resources import ApiError


@dataclass
class Inputs:
    """A resolved input: the explained ids, the case's target and contrast (None for a typed prompt), its
    segments (token ranges) and whether the ids came from a case."""

    ids: list[int]
    target: int | None = None
    contrast: int | None = None
    segments: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    case: bool = False


@dataclass
class Prepared:
    """A job resolved on its worker: the model, the explained ids, target and contrast, the spec the
    computation will have, the kind's options and the result key."""

    kind: str
    model: str
    ids: list[int]
    target: int
    contrast: int
    method: str
    spec: Any
    fingerprint: str
    segments: dict[str, list[tuple[int, int]]]
    options: dict[str, Any]
    key: str


class Explorer:
    """The explorer's operations over a :class:`JobQueue`: quick calls (tokenise, logits, continue) and
    jobs (explain, graph, neurons). Requests are plain dicts that the app's request models validated."""

    def __init__(self, settings: Any, models: Any, cases: Any) -> None:
        self.settings, self.models, self.cases = settings, models, cases
        self.queue = JobQueue(self._load, devices=tuple(settings.devices), cache_entries=settings.cache_entries,
                              max_jobs=settings.max_jobs, loaded_models=settings.loaded_models, stamp=models.stamp)
        self._states: tuple[str, Any] | None = None  # (graph key, explanation with states): at most one
        self._states_lock = threading.Lock()

    def _load(self, model_id: str, device: str) -> Any:
        from contrastlens.models.loading import load_model

        source = self.models.resolve(model_id)
        return load_model(source, dtype=self.settings.dtype, device=None if device == "cpu" else device)

    def close(self) -> None:
        self.queue.close()

    # -------------------------------------------------------------------------------------- inputs
    def inputs(self, lm: Any, inp: dict[str, Any]) -> Inputs:
        """The ids (and a case's target, contrast and segments) of an input; 413 over ``max_prompt_tokens``."""
        from contrastlens.attribution.explain import prepare_inputs
        from contrastlens.cases.compat import check_ids_map

        if inp.get("case") is not None:
            ref = inp["case"]
            case = self.cases.case(ref["file"], ref["id"])
            # the case's ids must mean the same under this model's tokenizer (a compared model, a checkpoint)
            check_ids_map(lm, case)
            got = case.attribution_inputs(lm)
            res = Inputs(list(got.ids), got.target_id, got.contrast_id, dict(got.segments), case=True)
        elif inp.get("ids") is not None:
            res = Inputs(list(inp["ids"]))
        else:
            text = str(inp.get("prompt") or "")
            self._check_text(text)
            res = Inputs(prepare_inputs(lm, text, chat=bool(inp.get("chat"))).ids)
        append = list(inp.get("append") or [])
        if append:
            res.ids = res.ids + append
            res.target = res.contrast = None  # the case's failure position is no longer the explained one
        self._check_length(len(res.ids))
        lm.check_prompt(res.ids)
        return res

    def _check_text(self, text: Any) -> None:
        if isinstance(text, str) and len(text) > 16 * self.settings.max_prompt_tokens:
            raise ApiError(413, "too_large", f"the prompt has {len(text)} characters; the server takes at most "
                           f"{self.settings.max_prompt_tokens} tokens")

    def _check_length(self, n: int) -> None:
        if n > self.settings.max_prompt_tokens:
            raise ApiError(413, "too_large", f"the input has {n} tokens, more than this server's limit of "
                           f"{self.settings.max_prompt_tokens} (max_prompt_tokens); shorten it")

    @staticmethod
    def token(lm: Any, choice: dict[str, Any] | None, context: list[int], what: str) -> int | None:
        if choice is None:
            return None
        if choice.get("id") is not None:
            return int(lm.token_id(int(choice["id"]), context, what=what))
        return int(lm.token_id(str(choice["text"]), context, what=what))

    # --------------------------------------------------------------------------------- quick calls
    def tokenize(self, lm: Any, req: dict[str, Any]) -> dict[str, Any]:
        text = req["text"]
        self._check_text(text)
        tok = lm.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if req.get("input") is not None:
            context = self.inputs(lm, req["input"]).ids
            prefix = tok.decode(context)
            base = list(tok(prefix, add_special_tokens=False)["input_ids"])
            both = list(tok(prefix + text, add_special_tokens=False)["input_ids"])
            if both[: len(base)] == base:
                ids = both[len(base):]
        self._check_length(len(ids))
        return {"ids": ids, "pieces": lm.decode_tokens(ids), "single": len(ids) == 1}

    def logits(self, lm: Any, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        from contrastlens.attribution.logits import position_logits

        ids = self.inputs(lm, req["input"]).ids
        logits = position_logits(lm, ids)
        top = torch.topk(logits, min(int(req["k"]), logits.numel()))
        tok = lm.tokenizer
        rows = [{"rank": r + 1, "id": int(i), "token": tok.decode([int(i)]), "logit": float(v)}
                for r, (v, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True))]
        return {"n_tokens": len(ids), "tokens": lm.decode_tokens(ids), "ids": ids, "top": rows}

    def continue_(self, lm: Any, req: dict[str, Any]) -> dict[str, Any]:
        from contrastlens.collect.generate import generate_greedy

        ids = self.inputs(lm, req["input"]).ids
        n_new = int(req["max_new_tokens"])
        self._check_length(len(ids) + n_new)
        comp = generate_greedy(lm, [ids], max_new_tokens=n_new, batch_size=1)[0]
        return {"ids": list(comp.ids), "text": lm.tokenizer.decode(list(comp.ids)),
                "tokens": lm.decode_tokens(list(comp.ids)), "stopped": bool(comp.stopped)}

    # ----------------------------------------------------------------------------------- preparing
    def prepare(self, lm: Any, kind: str, req: dict[str, Any]) -> Prepared:
        """Resolve an explain or graph request on its worker: ids, target, contrast (the defaults need the
        top logits), the spec the computation will have and the result key."""
        from contrastlens import nodes
        from contrastlens.attribution.methods import resolve_method
        from contrastlens.attribution.spec import AttributionSpec
        from contrastlens.errors import InputError
        from contrastlens.objectives.registry import objective_params
        from contrastlens.server.wire import cache_key

        meth, rule = resolve_method(req.get("method") or "attnlrp", None)
        options, _runtime = meth.resolve_params(None)
        if kind == "graph" and not (meth.hidden_relevance and rule is not None and meth.name == rule):
            raise InputError(f"a graph needs hidden-state relevance, which method {meth.name} does not give; use "
                             "method attnlrp or cp-lrp")
        inp = self.inputs(lm, req["input"])
        ids = inp.ids
        target = self.token(lm, req.get("target"), ids, "target")
        contrast = self.token(lm, req.get("contrast"), ids, "contrast")
        if target is None and inp.target != contrast:
            target = inp.target  # the case's, unless the request's contrast took it
        if contrast is None and inp.contrast != target:
            contrast = inp.contrast
        if target is None or contrast is None:
            target, contrast = self._defaults(lm, ids, target, contrast)
        if target == contrast:
            raise InputError(f"target and contrast are the same token (id {target}); choose a different contrast")
        params = objective_params("logit_diff", {"k": None, "rank": None})
        spec = AttributionSpec(target_id=target, contrast_id=contrast, position=len(ids) - 1, objective="logit_diff",
                               objective_params=tuple(params.items()), rule=rule, dtype=lm.dtype_name,
                               attn_implementation=lm.attn_implementation, method=meth.name,
                               method_params=tuple(options.items()))
        opts: dict[str, Any] = {"segments": {k: [list(s) for s in v] for k, v in inp.segments.items()}}
        if kind == "graph":
            given = req.get("send_p")
            send_p = float(given if given is not None else self.settings.send_p)
            if not 0 < send_p <= 1:
                raise InputError(f"send_p must be in (0, 1], got {send_p}")
            max_edges = min(int(req.get("max_edges") or self.settings.max_edges), self.settings.max_edges)
            mid = bool(req.get("mid", True))
            opts.update(mid=mid, layers=nodes.parse_layers(req.get("layers"), lm.num_layers, mid),
                        node_threshold=float(req.get("node_threshold") or 0.0), send_p=send_p, max_edges=max_edges)
        fp = lm.fingerprint
        key = cache_key(kind, model=req["model"], fingerprint=fp, spec=spec, ids=ids, options=opts)
        return Prepared(kind, req["model"], ids, target, contrast, meth.name, spec, fp, inp.segments, opts, key)

    @staticmethod
    def _defaults(lm: Any, ids: list[int], target: int | None, contrast: int | None) -> tuple[int, int]:
        """Target: the top-1 next token; contrast: the best token other than the target."""
        from contrastlens.attribution.logits import position_logits

        logits = position_logits(lm, ids)
        order = logits.argsort(descending=True)[:3].tolist()
        if target is None:
            target = int(order[0]) if order[0] != contrast else int(order[1])
        if contrast is None:
            contrast = next(int(i) for i in order if i != target)
        return target, contrast

    # ---------------------------------------------------------------------------------------- jobs
    async def submit(self, kind: str, req: dict[str, Any]) -> Job:
        """Prepare an explain or graph request on its worker and submit its job (bad input: a 4xx here). When
        the worker is busy with another job, the request does not wait for it: the job is queued at once and
        prepared when it starts (bad input then fails the job with the same error object)."""
        self.models.resolve(req["model"])  # an unknown or forbidden model id is refused at once
        compute = self._explain if kind == "explain" else self._graph
        if self.queue.busy(req["model"]):
            box: dict[str, Prepared] = {}

            def prepare(lm: Any) -> tuple[str, dict[str, Any]]:
                box["p"] = self.prepare(lm, kind, req)
                return box["p"].key, {"prepared": box["p"]}

            return self.queue.submit_deferred(kind, req["model"], prepare,
                                              lambda lm, ctx: compute(lm, box["p"], ctx))
        p = await self.queue.run(req["model"], lambda lm: self.prepare(lm, kind, req))
        return self.queue.submit(kind, p.model, p.key, lambda lm, ctx: compute(lm, p, ctx), meta={"prepared": p})

    def _explain(self, lm: Any, p: Prepared, ctx: JobContext) -> dict[str, Any]:
        from contrastlens.attribution.explain import explain
        from contrastlens.server.wire import explanation_json

        ctx.progress("explain", 0, 1)
        ex = explain(lm, p.ids, p.target, p.contrast, method=p.method)
        self._check_spec(ex, p)
        ex.segments = {k: list(v) for k, v in p.segments.items()}
        return explanation_json(ex, key=p.key, model=p.model)

    def _graph(self, lm: Any, p: Prepared, ctx: JobContext) -> bytes:
        from contrastlens.attribution.explain import explain
        from contrastlens.graph import build
        from contrastlens.server.wire import encode_graph

        o = p.options
        ctx.progress("explain", 0, 1)
        ex = explain(lm, p.ids, p.target, p.contrast, method=p.method, keep_states=True)
        self._check_spec(ex, p)
        ctx.check()
        g = build.attribution_graph(lm, explanation=ex, mid=o["mid"], layers=o["layers"],
                                    node_threshold=o["node_threshold"], prune=f"cum_mass:{o['send_p']}",
                                    progress=ctx.progress)
        ctx.progress("encode", 0, 1)
        payload = encode_graph(g, key=p.key, model=p.model, special=ex.special_mask, send_p=o["send_p"],
                               max_edges=o["max_edges"], node_threshold=o["node_threshold"], segments=p.segments,
                               extra={"ids": p.ids, "target": {"id": p.target, "str": ex.target_str},
                                      "contrast": {"id": p.contrast, "str": ex.contrast_str}})
        self._keep_states(p.key, ex)
        return payload

    @staticmethod
    def _check_spec(ex: Any, p: Prepared) -> None:
        if ex.spec != p.spec:  # the key was computed from p.spec: a difference would be a stale-cache bug
            raise RuntimeError(f"the computed spec {ex.spec} differs from the prepared {p.spec}")

    _STATES_BYTES = 1 << 30  # keep the drill-down's states only below this size

    def _keep_states(self, key: str, ex: Any) -> None:
        size = sum(h.numel() * h.element_size() + g.numel() * g.element_size() for h, g in (ex.states or {}).values())
        with self._states_lock:
            self._states = (key, ex) if size <= self._STATES_BYTES else None

    def _states_for(self, lm: Any, p: Prepared, ctx: JobContext) -> Any:
        from contrastlens.attribution.explain import explain

        with self._states_lock:
            hit = self._states
        if hit is not None and hit[0] == p.key:
            return hit[1]
        ctx.progress("explain (states)", 0, 1)
        ex = explain(lm, p.ids, p.target, p.contrast, method=p.method, keep_states=True)
        self._check_spec(ex, p)
        self._keep_states(p.key, ex)
        return ex

    async def neurons(self, req: dict[str, Any]) -> Job:
        """The neuron drill-down of a node or an edge of a done graph job."""
        from contrastlens.server.wire import cache_key

        graph_job = self.queue.get(req["graph"])
        if graph_job.kind != "graph":
            raise ApiError(400, "bad_request", f"job {graph_job.id} is a {graph_job.kind} job, not a graph job")
        if graph_job.status != "done":
            raise ApiError(409, "not_done", f"graph job {graph_job.id} is {graph_job.status}, not done")
        g: Prepared = graph_job.meta["prepared"]
        what = _drill_down(req, g)
        key = cache_key("neurons", model=g.model, fingerprint=g.fingerprint, spec=g.spec, ids=g.ids,
                        options={"graph": g.key, **what})
        return self.queue.submit("neurons", g.model, key, lambda lm, ctx: self._neurons(lm, g, what, ctx),
                                 meta={"graph": graph_job.id})

    def _neurons(self, lm: Any, g: Prepared, what: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        from contrastlens import nodes
        from contrastlens.graph import neurons
        from contrastlens.server.wire import jsonable

        ex = self._states_for(lm, g, ctx)
        ctx.progress("drill-down", 0, 1)
        k, top = what["kind"], what["top_k"]
        if k == "dimensions":
            df = neurons.state_dimensions(ex, what["layer"], what["pos"], top)
        elif k == "mlp_neurons" and "layer" in what:
            df = neurons.mlp_neurons(lm, ex, nodes.block_of(what["layer"]), what["pos"], top)
        elif k == "mlp_neurons":
            e = what["edge"]
            df = neurons.mlp_neurons(lm, ex, nodes.block_of(e["tgt"]), e["j"], top)
        else:
            e = what["edge"]
            df = neurons.edge_dimensions(lm, ex, e["src"], e["tgt"], e["j"], e["i"], top)
        return {"kind": k, "total": float(df.attrs.get("total", 0.0)), "size": int(df.attrs.get("size", 0)),
                "rows": jsonable(df.to_dict("records"))}


def _drill_down(req: dict[str, Any], g: Prepared) -> dict[str, Any]:
    """Check a drill-down request against its graph: the node's layer and position, or the edge's
    transition and positions; which table (``kind``) it asks for."""
    from contrastlens import nodes
    from contrastlens.errors import InputError

    layers = list(g.options["layers"])
    n = len(g.ids)
    top_k = int(req["top_k"])

    def pos(v: int, what: str) -> int:
        if not -n <= v < n:
            raise InputError(f"{what} {v} is outside the {n} positions of the graph")
        return v % n

    if req.get("edge") is not None:
        e = req["edge"]
        src, tgt = _layer_name(e["src"]), _layer_name(e["tgt"])
        if (src, tgt) not in set(zip(layers[:-1], layers[1:], strict=True)):
            raise InputError(f"no transition {src!r} -> {tgt!r} in the graph (its layers: {', '.join(layers)})")
        kind = req.get("kind") or "edge_dimensions"
        if kind == "mlp_neurons" and nodes.transition_kind(src, tgt)[0] != "mlp":
            raise InputError("mlp_neurons of an edge needs an l.mid -> l transition")
        if kind not in ("edge_dimensions", "mlp_neurons"):
            raise InputError(f"an edge drill-down is edge_dimensions or mlp_neurons, not {kind!r}")
        edge = {"src": src, "tgt": tgt, "j": pos(int(e["j"]), "edge j"), "i": pos(int(e["i"]), "edge i")}
        return {"kind": kind, "edge": edge, "top_k": top_k}
    if req.get("layer") is None or req.get("pos") is None:
        raise InputError("give a node (layer and pos) or an edge (src, tgt, j, i)")
    layer = _layer_name(req["layer"])
    if layer not in layers:
        raise InputError(f"the graph has no layer {req['layer']!r} (its layers: {', '.join(layers)})")
    kind = req.get("kind") or "dimensions"
    if kind == "mlp_neurons" and not nodes.is_post(layer):
        raise InputError("mlp_neurons of a node needs a block output layer (l, not emb or l.mid)")
    if kind not in ("dimensions", "mlp_neurons"):
        raise InputError(f"a node drill-down is dimensions or mlp_neurons, not {kind!r}")
    return {"kind": kind, "layer": layer, "pos": pos(int(req["pos"]), "pos"), "top_k": top_k}


def _layer_name(s: Any) -> str:
    """A node layer name: ``emb``, ``3``, ``3.mid`` (also ``l3``, ``l3.mid``)."""
    from contrastlens import nodes

    s = str(s).strip()
    if s[:1] == "l" and s[1:2].isdigit():
        s = s[1:]
    return nodes.canonical(s)


__all__ = ["Explorer", "Inputs", "Prepared"]
