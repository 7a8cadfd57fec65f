"""What the methods share: the plain (rule-free) model, embeddings and baselines, forwards that return only
hidden states (never logits), the objective at the input, KV-cache prefixes and batched occlusion."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from contrastlens.attribution.baselines import fill_vector
from contrastlens.attribution.explain import _objective_direction
from contrastlens.attribution.methods.registry import MethodContext
from contrastlens.errors import ContrastLensError, InputError
from contrastlens.models.kv_cache import cache_prefix, croppable, forward_hidden
from contrastlens.models.loaded import LoadedModel
from contrastlens.objectives.registry import ObjectiveSpec, get_objective
from contrastlens.rules.context import active_rule

BASELINES = ("zero", "mean", "pad")


def positive_int(method: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"method {method}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_baseline(method: str, baseline: Any) -> str:
    if baseline not in BASELINES:
        raise InputError(f"method {method}: baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    return str(baseline)


@contextlib.contextmanager
def plain_model(lm: LoadedModel, method: str, *, checkpointing: bool = False) -> Iterator[None]:
    """The model without rules, in eval mode, its parameters frozen (gradients reach the inputs only), each
    block recomputed in the backward pass with ``checkpointing``; everything is restored on exit."""
    model = lm.model
    if active_rule(model) is not None:
        raise ContrastLensError(f"LRP rules are applied to this model; method {method} needs the plain model "
                                "(call it outside apply_rules)")
    was_training = model.training
    frozen = [q for q in model.parameters() if q.requires_grad]
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        model.eval()
        for q in frozen:
            q.requires_grad_(False)
        if checkpointing:
            for blk in lm.adapter.blocks(model):
                orig: Callable[..., Any] = blk.forward
                patched.append((blk, blk.__dict__.get("forward")))  # an instance-level forward, if any

                def ckpt_forward(*args: Any, _f: Callable[..., Any] = orig, **kwargs: Any) -> Any:
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)

                blk.forward = ckpt_forward
        yield
    finally:
        for blk, old in reversed(patched):
            if old is not None:
                blk.forward = old
            else:
                del blk.forward
        for q in frozen:
            q.requires_grad_(True)
        model.train(was_training)


def embed(lm: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """The input embeddings [1, n, d] (what the first block's input is built from), detached."""
    with torch.no_grad():
        return lm.adapter.embedding(lm.model)(torch.tensor([list(ids)], device=lm.device)).detach()


def baseline_embedding(lm: LoadedModel, emb: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline [n, d] that replaces the embeddings ``emb`` [1, n, d]: ``zero``; ``mean`` (the mean
    embedding over the vocabulary, at every position); ``pad`` (the pad token's embedding); see
    :func:`contrastlens.attribution.baselines.fill_vector`."""
    vec = fill_vector(lm, kind, dtype=emb.dtype).to(emb.device)
    return vec.expand(emb.shape[1], -1).clone()


@dataclass
class Objective:
    """The objective resolved at the input: S(z) = h_pos(z) · u + const for any input z (u and const are
    fixed at the input x, so S is one linear function of the explained position's logits)."""

    spec: ObjectiveSpec
    u: torch.Tensor
    const: float
    logits: torch.Tensor

    @classmethod
    def at(cls, ctx: MethodContext, h: torch.Tensor) -> Objective:
        """Resolve the objective at the explained position's final hidden state ``h`` [d] of the input."""
        return cls(*_objective_direction(ctx.lm, h, get_objective(ctx.objective), ctx.prep.target_id,
                                         ctx.prep.contrast_id, ctx.objective_params))

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """h · u (S without const) of hidden states h [..., d], in float32."""
        return h.float() @ self.u


def pad_to(rel: torch.Tensor, n: int) -> torch.Tensor:
    """Relevance of positions 0..len(rel)-1, zeros after (positions after the explained one)."""
    out = torch.zeros(n, dtype=torch.float32)
    out[: rel.numel()] = rel.detach().float().cpu()
    return out


def plan_groups(positions: Sequence[int], length: int, max_batch: int, *, prefix_reuse: bool,
                overhead: float = 2.0) -> list[list[int]]:
    """Split the sorted ``positions`` (to occlude in a sequence of ``length``) into batches of at most
    ``max_batch`` consecutive ones. A batch runs only its suffix from its first position (the prefix comes
    from the KV cache), so it costs about (overhead + rows) × (length − first position) token-steps
    (``overhead``: the fixed cost of a batch, in rows); the split minimises the total (dynamic programming)."""
    p = sorted(positions)
    k = len(p)
    best = [0.0] + [math.inf] * k
    cut = [0] * (k + 1)
    for j in range(1, k + 1):
        for i in range(max(0, j - max_batch), j):
            suffix = length - p[i] if prefix_reuse else length
            c = best[i] + (overhead + j - i) * suffix
            if c < best[j]:
                best[j], cut[j] = c, i
    groups = []
    j = k
    while j > 0:
        groups.append(p[cut[j]: j])
        j = cut[j]
    return groups[::-1]


@torch.no_grad()
def masked_scores(lm: LoadedModel, emb: torch.Tensor, baseline: torch.Tensor, rows: Sequence[Sequence[int]],
                  objective: Objective, cache: Any, max_batch: int) -> tuple[list[float], int]:
    """h·u at the last position of ``emb`` [1, n, d] with the embeddings of every position of a row replaced
    by ``baseline`` [n, d], for each row of ``rows`` (sets of positions). Rows are sorted by their first
    position and run in batches of at most ``max_batch``; a batch runs only its suffix from its earliest
    position, the prefix taken from ``cache`` (the KV cache of the clean input). Returns the scores in the
    order of ``rows`` and the number of token-steps run."""
    order = sorted(range(len(rows)), key=lambda r: min(rows[r]))
    out = [0.0] * len(rows)
    steps = 0
    for b0 in range(0, len(order), max_batch):
        batch = order[b0: b0 + max_batch]
        out_b, steps_b = _masked_batch(lm, emb, baseline, [rows[r] for r in batch], objective, cache)
        for r, v in zip(batch, out_b, strict=True):
            out[r] = v
        steps += steps_b
    return out, steps


def _masked_batch(lm: LoadedModel, emb: torch.Tensor, baseline: torch.Tensor, rows: Sequence[Sequence[int]],
                  objective: Objective, cache: Any) -> tuple[list[float], int]:
    start = min(min(r) for r in rows)
    past = cache_prefix(cache, start, len(rows))
    if past is None:
        start = 0
    x = emb[:, start:].expand(len(rows), -1, -1).clone()
    for r, positions in enumerate(rows):
        for p in positions:
            x[r, p - start] = baseline[p]
    h, _ = forward_hidden(lm, x, start=start, cache=past)
    return objective.score(h[:, -1]).tolist(), len(rows) * x.shape[1]


@torch.no_grad()
def occluded_scores(lm: LoadedModel, emb: torch.Tensor, baseline: torch.Tensor, groups: Sequence[Sequence[int]],
                    objective: Objective, cache: Any) -> tuple[dict[int, float], int]:
    """h·u at the last position of ``emb`` [1, n, d] with the embedding of one position replaced by
    ``baseline`` [n, d], for every position of ``groups`` (one batched forward per group; each group runs only
    its suffix from its first position, the prefix taken from ``cache``, the KV cache of the clean input).
    Returns ({position: score}, the number of token-steps run)."""
    out: dict[int, float] = {}
    steps = 0
    for group in groups:
        vals, n = _masked_batch(lm, emb, baseline, [(p,) for p in group], objective, cache)
        out.update(zip(group, vals, strict=True))
        steps += n
    return out, steps


__all__ = ["BASELINES", "Objective", "baseline_embedding", "cache_prefix", "check_baseline", "croppable", "embed",
           "forward_hidden", "masked_scores", "occluded_scores", "pad_to", "plain_model", "plan_groups", "positive_int"]
