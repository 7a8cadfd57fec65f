"""The autograd primitives of the rules.

Each returns exactly the values of the original operation in the forward pass (so a model under the
rules computes bit-identical outputs) and implements the rule's *modified* gradient in the backward
pass. The relevance of a tensor x is then ``x * grad`` (the efficient Gradient x Input form of LRP).
Backward nodes keep their class names (``NormRuleBackward`` ...) so the coverage check can see them.
"""

from __future__ import annotations

import torch
from torch import nn


class NormRule(torch.autograd.Function):
    """A normalisation layer with its normaliser treated as a constant.

    RMS: y = w_eff * x * r,           r = 1/sqrt(mean(x^2) + eps) detached -> dx = w_eff * r * g
    Layer: y = w * (x - mean x) * r + b, r = 1/sqrt(var(x) + eps) detached -> dx = r * (wg - mean(wg))
    (the mean is still differentiated; the bias absorbs relevance).
    """

    @staticmethod
    def forward(ctx, x, module, kind, weight_offset):  # type: ignore[override]
        y = type(module).forward(module, x)
        xf = x.float()
        if kind == "rms":
            eps = _eps(module)
            r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        else:
            r = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + module.eps)
        ctx.save_for_backward(r)
        ctx.module, ctx.kind, ctx.offset, ctx.dtype = module, kind, weight_offset, x.dtype
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        m = ctx.module
        gf = g.float()
        w = getattr(m, "weight", None)
        if w is not None:
            gf = gf * (w.float() + ctx.offset)
        elif ctx.offset:
            gf = gf * (1.0 + ctx.offset)
        if ctx.kind == "rms":
            dx = gf * r
        else:
            dx = (gf - gf.mean(-1, keepdim=True)) * r
        return dx.to(ctx.dtype), None, None, None


def _eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(module, name, None)
        if v is not None:
            return float(v)
    raise AttributeError(f"{type(module).__name__} has no eps attribute")


class IdentityRule(torch.autograd.Function):
    """Element-wise activation y = f(x) passing relevance unchanged: dx = f(x)/x * g."""

    @staticmethod
    def forward(ctx, x, fn):  # type: ignore[override]
        y = fn(x)
        xf = x.float()
        safe = torch.where(xf == 0, torch.ones_like(xf), xf)
        ratio = torch.where(xf == 0, torch.zeros_like(xf), y.float() / safe)
        ctx.save_for_backward(ratio.to(x.dtype))
        ctx.dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (ratio,) = ctx.saved_tensors
        return (g.float() * ratio).to(ctx.dtype), None


class GradScale(torch.autograd.Function):
    """Identity in the forward pass; the gradient is multiplied by ``scale`` (a float or a tensor that
    broadcasts over the last dimension). Used for the uniform rules: 1/2 on each factor of a gated
    product, 1/4 on query and key, 1/2 on value."""

    @staticmethod
    def forward(ctx, x, scale):  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        s = ctx.scale
        if isinstance(s, torch.Tensor):
            s = s.to(device=g.device, dtype=g.dtype)
        return g * s, None


def grad_scale(x: torch.Tensor, scale) -> torch.Tensor:
    return GradScale.apply(x, scale)
