"""``occlusion``: leave-one-out. R_i = S(x) − S(x with embedding i replaced by the baseline).

Batched forwards (``batch_size`` occluded copies each); only the explained position's hidden state is used
(S = h·u + const, never a logits tensor). Occluding position i changes nothing before i, so each batch runs
only the suffix from its first position, the prefix taken from the clean input's KV cache (models whose
cache cannot be cut, e.g. with sliding-window layers, recompute it). Positions after the explained one get 0.

Options: ``baseline`` (``zero``, ``mean``, ``pad``: see ``ig``); runtime: ``batch_size`` (16).
"""

from __future__ import annotations

import torch

from contrastlens.attribution.methods._common import (
    Objective,
    baseline_embedding,
    check_baseline,
    croppable,
    embed,
    forward_hidden,
    occluded_scores,
    pad_to,
    plain_model,
    plan_groups,
    positive_int,
)
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method


@register_method("occlusion", params={"baseline": "zero"}, runtime={"batch_size": 16}, backward=False,
                 description="leave-one-out occlusion of each input embedding (batched, prefix KV cache reused)")
def occlusion(ctx: MethodContext, *, baseline: str, batch_size: int) -> MethodResult:
    batch_size = positive_int("occlusion", "batch_size", batch_size)
    check_baseline("occlusion", baseline)
    lm, pos = ctx.lm, ctx.position
    length = pos + 1
    with plain_model(lm, "occlusion"), torch.no_grad():
        x = embed(lm, ctx.ids[:length])
        b = baseline_embedding(lm, x, baseline)
        hidden, cache = forward_hidden(lm, x, want_cache=True)
        obj = Objective.at(ctx, hidden[0, -1])
        s_x = float(obj.score(hidden[0, -1]))
        reuse = croppable(cache)
        groups = plan_groups(range(length), length, batch_size, prefix_reuse=reuse)
        scores, steps = occluded_scores(lm, x, b, groups, obj, cache)
    rel = torch.tensor([s_x - scores[i] for i in range(length)])
    meta = {"prefix_reuse": reuse, "token_steps": steps + length}
    return MethodResult(pad_to(rel, ctx.n), obj.spec, obj.u, obj.const, s_x, obj.logits, meta=meta)


__all__ = ["occlusion"]
