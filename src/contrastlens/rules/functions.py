"""The autograd primitives of the rules.

Each returns exactly the values of the original operation in the forward pass (so a model under the
rules computes bit-identical outputs) and implements the rule's *modified* gradient in the backward
pass. The relevance of a tensor x is then ``x * grad`` (the efficient Gradient x Input form of LRP).
Backward nodes keep their class names (``NormRuleBackward`` ...) so the coverage check can see them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class NormRule(torch.autograd.Function):
    """A normalisation layer with its normaliser treated as a constant.

    RMS: y = w_eff * x * r,           r = 1/sqrt(mean(x^2) + eps) detached -> dx = w_eff * r * g
    Layer: y = w * (x - mean x) * r + b, r = 1/sqrt(var(x) + eps) detached -> dx = r * (wg - mean(wg))
    (the mean is still differentiated; the bias absorbs relevance).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: nn.Module, kind: str, weight_offset: float) -> torch.Tensor:
        y = type(module).forward(module, x)
        xf = x.float()
        if kind == "rms":  # the normaliser only (no n x d temporaries): rsqrt(|x|^2 / d + eps)
            sq = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(xf.shape[-1])
            r = sq.add_(_eps(module)).rsqrt_()
        else:
            r = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + _eps(module))
        ctx.save_for_backward(r)
        ctx.module, ctx.kind, ctx.offset, ctx.dtype = module, kind, weight_offset, x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (r,) = ctx.saved_tensors
        m = ctx.module
        w = getattr(m, "weight", None)
        scale = (w.float() + ctx.offset) if w is not None else torch.tensor(1.0 + ctx.offset, device=g.device)
        dx = g.float() * scale  # a fresh tensor: in-place below is safe
        if ctx.kind == "layer":
            dx.sub_(dx.mean(-1, keepdim=True))
        dx.mul_(r)
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
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        y = fn(x)
        # f(x)/x, with 0 where x == 0 (0/0); one temporary, computed in the input dtype
        ratio = torch.div(y, x).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        ctx.save_for_backward(ratio)
        ctx.dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return g * ratio, None


class GradScale(torch.autograd.Function):
    """Identity in the forward pass; the gradient is multiplied by ``scale`` (a float or a tensor that
    broadcasts over the last dimension). Used for the uniform rules: 1/2 on each factor of a gated
    product, 1/4 on query and key, 1/2 on value."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        s = ctx.scale
        if isinstance(s, torch.Tensor):
            s = s.to(device=g.device, dtype=g.dtype)
        return g * s, None


def grad_scale(x: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    return GradScale.apply(x, scale)
