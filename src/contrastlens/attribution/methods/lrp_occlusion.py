"""``lrp-occlusion``: AttnLRP shortlists, occlusion verifies.

1. One LRP explanation (the rule: ``attnlrp`` unless ``rule=`` says otherwise) gives input relevance R.
2. The ``k`` non-special positions with the largest |R| (the shortlist) are occluded, each alone (its
   embedding replaced by the baseline), in batched forwards that reuse the unchanged prefix: the LRP forward
   keeps its KV cache, and a batch runs only the suffix from its earliest position (batches are split so
   that the total suffix work is smallest).
3. Relevance: the occlusion effects S(x) − S(x without i) on the shortlist; elsewhere R, scaled by one
   positive factor to stay below the shortlist's smallest nonzero |effect| (order and signs kept), so a
   ranking by |relevance| puts the verified tokens first.

Cost: one LRP explanation plus the shortlist's suffixes (Σ over batches of rows × suffix length token-steps;
``ex.meta["token_steps"]``); no extra clean forward. Without a croppable cache (sliding-window layers) or
with ``checkpointing`` each batch recomputes from position 0.

Options: ``k`` (16), ``baseline`` (``zero``, ``mean``, ``pad``); runtime: ``batch_size`` (16, the most rows
per forward). ``meta``: ``shortlist`` (sorted positions), ``lrp_scale``, ``seconds_lrp``,
``seconds_occlusion``, ``prefix_reuse``, ``token_steps``.
"""

from __future__ import annotations

import time

import torch

from contrastlens.attribution.methods._common import (
    Objective,
    baseline_embedding,
    check_baseline,
    croppable,
    embed,
    forward_hidden,
    occluded_scores,
    plain_model,
    plan_groups,
    positive_int,
)
from contrastlens.attribution.methods.lrp import lrp_pass
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method


def shortlist(relevance: torch.Tensor, special: list[bool], k: int) -> list[int]:
    """The ``k`` non-special positions with the largest |relevance| (all positions if every one is
    special), sorted by position."""
    r = relevance.abs().tolist()
    candidates = [i for i in range(len(r)) if not special[i]] or list(range(len(r)))
    return sorted(sorted(candidates, key=lambda i: -r[i])[:k])


@register_method("lrp-occlusion", params={"k": 16, "baseline": "zero"}, runtime={"batch_size": 16},
                 rule="attnlrp", description="AttnLRP shortlists the k most relevant tokens, occlusion verifies them")
def lrp_occlusion(ctx: MethodContext, *, k: int, baseline: str, batch_size: int) -> MethodResult:
    k = positive_int("lrp-occlusion", "k", k)
    batch_size = positive_int("lrp-occlusion", "batch_size", batch_size)
    check_baseline("lrp-occlusion", baseline)
    assert ctx.rule is not None
    lm, pos = ctx.lm, ctx.position
    length = pos + 1
    t0 = time.perf_counter()
    # the rule forward's cache equals the plain one (rules change gradients only); under checkpointing the
    # backward pass re-runs the blocks, so no cache is taken from it then
    res, cache = lrp_pass(ctx, ctx.rule, hidden=False, use_cache=not ctx.checkpointing)
    t1 = time.perf_counter()
    R = res.input_relevance.detach().float().cpu()
    specials = lm.special_ids()
    chosen = shortlist(R[:length], [i in specials for i in ctx.ids[:length]], k)
    obj = Objective(res.objective, res.u, res.const, res.logits)
    with plain_model(lm, "lrp-occlusion"), torch.no_grad():
        x = embed(lm, ctx.ids[:length])
        b = baseline_embedding(lm, x, baseline)
        steps = 0
        if ctx.checkpointing:
            _, cache = forward_hidden(lm, x, want_cache=True)
            steps += length
        reuse = croppable(cache)
        groups = plan_groups(chosen, length, batch_size, prefix_reuse=reuse)
        scores, occ_steps = occluded_scores(lm, x, b, groups, obj, cache)
    effects = {i: res.score - scores[i] for i in chosen}
    rest = torch.ones(R.numel(), dtype=torch.bool)
    rest[chosen] = False
    rest[length:] = False
    nonzero = [abs(v) for v in effects.values() if v != 0.0]
    top_rest = float(R[rest].abs().max()) if bool(rest.any()) else 0.0
    scale = 1.0
    if top_rest > 0.0:
        scale = min(1.0, 0.5 * min(nonzero) / top_rest) if nonzero else 0.0
    rel = R * scale
    rel[chosen] = torch.tensor([effects[i] for i in chosen], dtype=torch.float32)
    meta = {"shortlist": chosen, "lrp_scale": scale, "seconds_lrp": t1 - t0,
            "seconds_occlusion": time.perf_counter() - t1, "prefix_reuse": reuse, "token_steps": steps + occ_steps}
    return MethodResult(rel, res.objective, res.u, res.const, res.score, res.logits, meta=meta)


__all__ = ["lrp_occlusion", "shortlist"]
