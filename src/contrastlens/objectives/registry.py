"""Objective registry.

Every objective here is linear in the last position's logits: S = Σ_v c_v ℓ_v for coefficients c chosen
from the (gradient-free) logits. The engine therefore never needs more than the last position's
logits, and S = h · (W_Uᵀ c) is exactly the relevance the final hidden state carries (final norm and
unembedding are linear under the rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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
#: the parameters each objective takes, with their defaults (e.g. ``topk_avg``: ``{"k": 10}``)
OBJECTIVE_PARAMS: dict[str, dict[str, Any]] = {}


def register_objective(name: str, *, params: Mapping[str, Any] | None = None, overwrite: bool = False
                       ) -> Callable[[Objective], Objective]:
    """Register ``fn(logits, target, contrast, **params) -> ObjectiveSpec`` under ``name``. ``params`` are the
    keyword parameters it takes, with defaults. An existing name is an error unless ``overwrite=True``."""
    def deco(fn: Objective) -> Objective:
        if name in OBJECTIVES and not overwrite:
            raise ContrastLensError(f"objective {name!r} is already registered; pass overwrite=True to replace it")
        OBJECTIVES[name] = fn
        OBJECTIVE_PARAMS[name] = dict(params or {})
        return fn

    return deco


def objective_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The full parameters of objective ``name``: its defaults updated by ``given`` (entries that are None
    are not given). A parameter the objective does not take is an :class:`InputError`, never ignored."""
    get_objective(name)
    takes = OBJECTIVE_PARAMS.get(name, {})
    out = dict(takes)
    for key, value in given.items():
        if value is None:
            continue
        if key not in takes:
            hint = f"it takes {', '.join(takes)}" if takes else "it takes no parameters"
            raise InputError(f"objective {name} has no parameter {key!r} ({hint})")
        out[key] = value
    return out


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ContrastLensError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}") from None


def _onehot(v: int, idx: int) -> torch.Tensor:
    c = torch.zeros(v, dtype=torch.float32)
    c[idx] = 1.0
    return c


def _no_contrast(name: str, contrast: int | None) -> None:
    if contrast is not None:
        raise InputError(f"objective {name} takes no contrast token (use logit_diff to contrast two tokens)")


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
    _no_contrast("max_logit", contrast)
    t = _top1(logits) if target is None else target
    return ObjectiveSpec("max_logit", _onehot(len(logits), t), t, None, f"logit[{t}]")


@register_objective("demean")
def demean(logits: torch.Tensor, target: int | None, contrast: int | None = None, **_) -> ObjectiveSpec:
    """ℓ(target) − mean over the whole vocabulary."""
    _no_contrast("demean", contrast)
    t = _top1(logits) if target is None else target
    c = torch.full((len(logits),), -1.0 / len(logits))
    c[t] += 1.0
    return ObjectiveSpec("demean", c, t, None, f"logit[{t}] - mean(logits)")


@register_objective("topk_avg", params={"k": 10})
def topk_avg(logits: torch.Tensor, target: int | None, contrast: int | None = None, *, k: int = 10, **_) -> ObjectiveSpec:
    """ℓ(target) − mean of the k largest logits (which include the top-1)."""
    t = _top1(logits) if target is None else target
    _no_contrast("topk_avg", contrast)
    if not 1 <= k <= len(logits):
        raise InputError(f"k must be in [1, {len(logits)}] (the vocabulary size), got {k}")
    idx = torch.topk(logits, k).indices
    c = torch.zeros(len(logits))
    c[idx] -= 1.0 / k
    c[t] += 1.0
    return ObjectiveSpec("topk_avg", c, t, None, f"logit[{t}] - mean(top-{k} logits)")


@register_objective("contrast_rank", params={"rank": 2})
def contrast_rank(logits: torch.Tensor, target: int | None = None, contrast: int | None = None, *, rank: int = 2, **_) -> ObjectiveSpec:
    """Top-1 logit − the logit of rank ``rank`` (1-based; rank 2 = runner-up)."""
    if target is not None or contrast is not None:
        raise InputError("objective contrast_rank picks its own tokens (top-1 vs rank `rank`); give no target or contrast")
    if rank < 2 or rank > len(logits):
        raise InputError(f"rank must be in [2, {len(logits)}], got {rank}")
    order = torch.topk(logits, rank).indices
    t, r = int(order[0]), int(order[rank - 1])
    c = _onehot(len(logits), t)
    c[r] -= 1.0
    return ObjectiveSpec("contrast_rank", c, t, r, f"logit[top1={t}] - logit[rank{rank}={r}]")
