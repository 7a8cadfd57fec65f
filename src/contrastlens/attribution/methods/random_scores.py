"""``random``: seeded standard-normal scores, a baseline for faithfulness metrics (an attribution that knows
nothing). Positions after the explained one get 0. Option: ``seed`` (0)."""

from __future__ import annotations

import numbers

import torch

from contrastlens.attribution.methods._common import Objective, embed, forward_hidden, pad_to, plain_model
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method
from contrastlens.errors import InputError


@register_method("random", params={"seed": 0}, backward=False,
                 description="seeded random scores (a faithfulness baseline)")
def random_scores(ctx: MethodContext, *, seed: int) -> MethodResult:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"method random: seed must be an integer, got {seed!r}")
    lm, pos = ctx.lm, ctx.position
    with plain_model(lm, "random"), torch.no_grad():
        hidden, _ = forward_hidden(lm, embed(lm, ctx.ids[: pos + 1]))
        obj = Objective.at(ctx, hidden[0, -1])
        s_x = float(obj.score(hidden[0, -1]))
    rel = torch.randn(pos + 1, generator=torch.Generator().manual_seed(int(seed)))
    return MethodResult(pad_to(rel, ctx.n), obj.spec, obj.u, obj.const, s_x, obj.logits)


__all__ = ["random_scores"]
