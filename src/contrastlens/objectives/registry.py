"""Objective registry.

Every objective here is linear in the last position's logits: S = Σ_v c_v ℓ_v for coefficients c chosen
from the (gradient-free) logits. The engine therefore never needs more than the last position's
logits, and S = h · (W_Uᵀ c) is exactly the relevance the final hidden state carries (final norm and
unembedding are linear under the rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from contrastlens.errors import ContrastLensError, InputError


@dataclass
class ObjectiveSpec:
    """The resolved objective: coefficients over the vocabulary and what they mean."""

    name: str
    coeffs: torch.Tensor  # [V] float32
    target_id: int
    contrast_id: int | None
    description: str


Objective = Callable[..., ObjectiveSpec]
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
    def deco(fn: Objective) -> Objective:
        OBJECTIVES[name] = fn
        return fn

    return deco


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ContrastLensError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}") from None


def _onehot(v: int, idx: int) -> torch.Tensor:
    c = torch.zeros(v, dtype=torch.float32)
    c[idx] = 1.0
    return c


def _top1(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


@register_objective("logit_diff")
def logit_diff(logits: torch.Tensor, target: int | None, contrast: int | None, **_) -> ObjectiveSpec:
    """ℓ(target) − ℓ(contrast): the paper's contrastive objective Δℓ."""
    t = _top1(logits) if target is None else target
    if contrast is None:
        raise InputError("objective logit_diff needs a contrast token (or use max_logit / contrast_rank)")
    if contrast == t:
        raise InputError(f"target and contrast are the same token (id {t}); choose a different contrast")
    c = _onehot(len(logits), t)
    c[contrast] -= 1.0
    return ObjectiveSpec("logit_diff", c, t, contrast, f"logit[{t}] - logit[{contrast}]")


@register_objective("max_logit")
def max_logit(logits: torch.Tensor, target: int | None, contrast: int | None = None, **_) -> ObjectiveSpec:
    """ℓ(target) (the top-1 token when no target is given)."""
    t = _top1(logits) if target is None else target
    return ObjectiveSpec("max_logit", _onehot(len(logits), t), t, None, f"logit[{t}]")


@register_objective("demean")
def demean(logits: torch.Tensor, target: int | None, contrast: int | None = None, **_) -> ObjectiveSpec:
    """ℓ(target) − mean over the whole vocabulary."""
    t = _top1(logits) if target is None else target
    c = torch.full((len(logits),), -1.0 / len(logits))
    c[t] += 1.0
    return ObjectiveSpec("demean", c, t, None, f"logit[{t}] - mean(logits)")


@register_objective("topk_avg")
def topk_avg(logits: torch.Tensor, target: int | None, contrast: int | None = None, *, k: int = 10, **_) -> ObjectiveSpec:
    """ℓ(target) − mean of the k largest logits (which include the top-1)."""
    t = _top1(logits) if target is None else target
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    k = min(k, len(logits))
    idx = torch.topk(logits, k).indices
    c = torch.zeros(len(logits))
    c[idx] -= 1.0 / k
    c[t] += 1.0
    return ObjectiveSpec("topk_avg", c, t, None, f"logit[{t}] - mean(top-{k} logits)")


@register_objective("contrast_rank")
def contrast_rank(logits: torch.Tensor, target: int | None = None, contrast: int | None = None, *, rank: int = 2, **_) -> ObjectiveSpec:
    """Top-1 logit − the logit of rank ``rank`` (1-based; rank 2 = runner-up)."""
    if rank < 2 or rank > len(logits):
        raise InputError(f"rank must be in [2, {len(logits)}], got {rank}")
    order = torch.topk(logits, rank).indices
    t, r = int(order[0]), int(order[rank - 1])
    c = _onehot(len(logits), t)
    c[r] -= 1.0
    return ObjectiveSpec("contrast_rank", c, t, r, f"logit[top1={t}] - logit[rank{rank}={r}]")
