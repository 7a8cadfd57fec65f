"""``ixg``: plain Input × Gradient (no rules) of the objective S: relevance of position i = e_i · ∂S/∂e_i."""

from __future__ import annotations

import torch

from contrastlens.attribution.methods._common import Objective, embed, forward_hidden, pad_to, plain_model
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method


@register_method("ixg", description="Input × Gradient: embeddings times the plain gradient of S")
def input_x_gradient(ctx: MethodContext) -> MethodResult:
    lm, pos = ctx.lm, ctx.position
    with plain_model(lm, "ixg", checkpointing=ctx.checkpointing), torch.enable_grad():
        emb = embed(lm, ctx.ids[: pos + 1]).requires_grad_(True)  # causal: later tokens do not matter
        hidden, _ = forward_hidden(lm, emb)
        h = hidden[0, -1]
        obj = Objective.at(ctx, h)
        score = obj.score(h)
        (g,) = torch.autograd.grad(score, emb)
    rel = (emb.detach()[0].float() * g[0].float()).sum(-1)
    return MethodResult(pad_to(rel, ctx.n), obj.spec, obj.u, obj.const, float(score.detach()), obj.logits)


__all__ = ["input_x_gradient"]
