"""``ig``: Integrated Gradients on the input embeddings.

R_i = (x_i − b_i) · ∫₀¹ ∂S/∂e_i (b + α(x − b)) dα, the integral by ``steps``-point Gauss–Legendre
quadrature, the interpolation points batched (``batch_size`` per forward). Completeness:
Σ_i R_i = S(x) − S(b) up to the quadrature error, which shrinks with ``steps``; the explanation records
``meta["baseline_score"]`` (S(b)) and ``meta["completeness_error"]`` (Σ R − (S(x) − S(b))).

Options: ``steps`` (32), ``baseline`` (``zero``: all-zero embeddings; ``mean``: the mean embedding over the
vocabulary; ``pad``: the pad token's embedding, at every position); runtime: ``batch_size`` (8).
"""

from __future__ import annotations

import numpy as np
import torch

from contrastlens.attribution.methods._common import (
    Objective,
    baseline_embedding,
    check_baseline,
    embed,
    forward_hidden,
    pad_to,
    plain_model,
    positive_int,
)
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method


@register_method("ig", params={"steps": 32, "baseline": "zero"}, runtime={"batch_size": 8},
                 description="Integrated Gradients on the input embeddings (Gauss–Legendre, batched)")
def integrated_gradients(ctx: MethodContext, *, steps: int, baseline: str, batch_size: int) -> MethodResult:
    steps = positive_int("ig", "steps", steps)
    batch_size = positive_int("ig", "batch_size", batch_size)
    check_baseline("ig", baseline)
    lm, pos = ctx.lm, ctx.position
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, ws = (nodes + 1.0) / 2.0, weights / 2.0  # on [0, 1]
    with plain_model(lm, "ig", checkpointing=ctx.checkpointing), torch.enable_grad():
        x = embed(lm, ctx.ids[: pos + 1])
        b = baseline_embedding(lm, x, baseline)
        with torch.no_grad():
            hx, _ = forward_hidden(lm, torch.cat([x, b[None]]))
        obj = Objective.at(ctx, hx[0, -1])
        s_x, s_b = (float(v) for v in obj.score(hx[:, -1]))
        diff = x[0] - b
        total = torch.zeros(diff.shape, dtype=torch.float32, device=diff.device)
        for s in range(0, steps, batch_size):
            a = torch.tensor(alphas[s : s + batch_size], dtype=x.dtype, device=x.device)
            w = torch.tensor(ws[s : s + batch_size], dtype=torch.float32, device=x.device)
            path = (b + a[:, None, None] * diff).requires_grad_(True)
            hidden, _ = forward_hidden(lm, path)
            (g,) = torch.autograd.grad((obj.score(hidden[:, -1]) * w).sum(), path)
            total += g.float().sum(0)
    rel = (diff.float() * total).sum(-1)
    meta = {"baseline_score": s_b + obj.const, "completeness_error": float(rel.sum()) - (s_x - s_b)}
    return MethodResult(pad_to(rel, ctx.n), obj.spec, obj.u, obj.const, s_x, obj.logits, meta=meta)


__all__ = ["integrated_gradients"]
