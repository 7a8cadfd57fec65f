"""``attnlrp`` and ``cp-lrp``: the LRP rules (Gradient × Input with the modified gradient), with input,
per-layer and mid-block relevance and, with ``keep_states``, every hidden state and its modified gradient."""

from __future__ import annotations

from typing import Any

import torch

from contrastlens import nodes
from contrastlens.attribution.explain import _objective_graph
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method
from contrastlens.attribution.taps import StateRecorder
from contrastlens.errors import NumericalError


def lrp_pass(ctx: MethodContext, rule: str, *, hidden: bool = True, use_cache: bool = False
             ) -> tuple[MethodResult, Any]:
    """One explanation under ``rule``: (the result, the forward's KV cache with ``use_cache``, else None).
    ``hidden=False`` records no hidden-state relevance (input relevance only)."""
    lm = ctx.lm
    model, adapter = lm.model, lm.adapter
    n = ctx.n
    rec = StateRecorder(keep_states=ctx.keep_states) if hidden else None
    with torch.enable_grad(), _objective_graph(lm, ctx.prep, rule=rule, objective=ctx.objective,
                                               checkpointing=ctx.checkpointing, recorder=rec,
                                               params=ctx.objective_params, use_cache=use_cache) as fwd:
        (g_emb,) = torch.autograd.grad(fwd.score, fwd.emb)
    if not torch.isfinite(g_emb).all():
        raise NumericalError("the backward pass produced NaN/inf relevance; try float32 (--dtype float32)")
    input_rel = (fwd.emb.detach()[0].float() * g_emb[0].float()).sum(-1)
    res = MethodResult(input_rel, fwd.spec, fwd.u, fwd.const, float(fwd.score.detach()), fwd.logits)
    if rec is not None:
        L = adapter.num_layers(model)
        zeros = torch.zeros(n)
        res.layer_relevance = torch.stack([rec.relevance.get(nodes.EMB, zeros)]
                                          + [rec.relevance.get(nodes.post(i), zeros) for i in range(L)])
        res.mid_relevance = torch.stack([rec.relevance.get(nodes.mid(i), zeros) for i in range(L)])
        if ctx.keep_states:
            res.states = {k: rec.states[k] for k in nodes.layer_names(L, True) if k in rec.states}
    return res, fwd.cache


def lrp(ctx: MethodContext) -> MethodResult:
    """Relevance under the explanation's LRP rule (``ctx.rule``)."""
    assert ctx.rule is not None
    return lrp_pass(ctx, ctx.rule)[0]


register_method("attnlrp", rule="attnlrp", is_rule=True, hidden_relevance=True,
                description="AttnLRP: Gradient × Input with the AttnLRP-modified gradient (input and hidden "
                "relevance)")(lrp)
register_method("cp-lrp", rule="cp-lrp", is_rule=True, hidden_relevance=True,
                description="CP-LRP: no relevance through query, key and gate (input and hidden relevance)")(lrp)

__all__ = ["lrp", "lrp_pass"]
