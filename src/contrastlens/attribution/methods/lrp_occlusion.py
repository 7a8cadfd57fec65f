"""``lrp-occlusion``: AttnLRP shortlists, occlusion verifies, a greedy search re-ranks.

1. One LRP explanation (the rule: ``attnlrp`` unless ``rule=`` says otherwise) gives input relevance R.
2. **Shortlist.** Non-special positions are occluded, each alone (its embedding replaced by the baseline),
   in batched forwards that reuse the unchanged prefix: the LRP forward keeps its KV cache, and a batch runs
   only the suffix from its earliest position (batches are split so that the total suffix work is
   smallest). Effect e_i = S(x) − S(x without i). Candidates are admitted alternately from two lists
   (R's first, the latest, R's second, the second latest, …; each position once): the ``k`` positions with
   the largest R (``rank="support"``, default: the tokens that support the target most; occluding one that
   supports the contrast only raises S) or the largest |R| (``rank="abs"``, verifies both signs), and the
   ``recent`` latest positions (the explained one and those just before it). The recent positions are
   both cheap (a suffix of a few tokens) and, on real failures, where single occlusion finds most of its
   large effects while AttnLRP often ranks them low
   (the tokens that set up the next one: "the answer is", the "$" before a number); the positions far
   back that R ranks first each cost nearly a full forward.
3. **Refinement** (``refine``), two searches for a small set M whose occlusion flips the prediction
   (S(x without M) + const < 0):

   - the **LRP prefix**: the top positions by R (AttnLRP's MoRF order, whether or not shortlisted),
     occluded cumulatively (prefixes of 2, 3, … up to ``k`` positions while they fit half the budget left,
     one batched forward); the first prefix that flips is a candidate for M;
   - the **greedy search**: starting from M = {the largest single effect} (already run by step 2), repeatedly
     add the shortlisted position whose occlusion together with M lowers S the most (every shortlisted
     position is a candidate, whatever the sign of its single effect: interactions are the point), one
     batched forward of the candidates per step, until the prediction flips, the candidates run out, the
     budget does, or M reaches the size of a flipping LRP prefix.

   The lead is the smaller flipping set (the greedy one on a tie; the LRP prefix when only it flips). When
   neither flips, the lead is the greedy path up to its lowest score (the set that lowered S most), if that
   is below the clean score. So the ordering flips with no more tokens than AttnLRP's whenever AttnLRP's
   flips within the prefixes run, and the greedy search catches interactions single occlusion misses (two
   tokens that each carry the answer alone).
4. **Relevance.** The verified ranking: the shortlisted positions carry e_i, the rest R scaled by one
   positive factor that keeps it below the shortlist's smallest nonzero |e_i| (order and signs kept), so
   measured effects rank ahead of unmeasured ones and a shortlisted token whose occlusion raises S ranks
   below every unmeasured supporting one. With ``refine`` the lead then moves to the front in its order:
   each lead value is the drop of S its addition made, raised where needed to the smallest value that
   keeps that order ahead of every other position.

**Cost.** The work after the LRP explanation is bounded by ``budget`` × n token-steps (n: the explained
length; one plain forward of the input is n token-steps, about half an AttnLRP explanation on a CPU; every
batch also counts ``FORWARD_OVERHEAD`` token-steps, the fixed cost of a forward), half for the shortlist and
the rest for the refinement: the shortlist is admitted in rank order while its estimated
suffix work fits (at least one position always is), and the LRP prefix and each greedy step run only when
they fit what is left. So the method stays within a fixed multiple of one AttnLRP explanation at any length
(occluding every position is n forwards). ``ex.meta["token_steps"]`` reports the work actually run.
Without a croppable cache (sliding-window layers) or with ``checkpointing`` each batch recomputes from
position 0 (the budget then admits fewer rows).

Options: ``k`` (16), ``recent`` (8; 0: R alone picks the shortlist), ``budget`` (1.5), ``refine`` (True),
``rank`` (``support``, ``abs``), ``baseline`` (``zero``, ``mean``, ``pad``); runtime: ``batch_size`` (16, the most rows per forward). ``meta``:
``shortlist`` (sorted positions), ``greedy`` (picked positions in order), ``greedy_scores`` (S + const after
each pick), ``prefix_scores`` (S + const after each LRP prefix, from 1 position), ``lead`` (the positions
ranked first: empty when no search lowered S), ``lead_from`` (``greedy``, ``prefix`` or None),
``flipped`` (a flipping set was found), ``effects`` ({position: e_i} of the shortlist),
``lrp_scale``, ``seconds_lrp``, ``seconds_occlusion``, ``prefix_reuse``, ``token_steps``, ``budget_steps``.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from contrastlens.attribution.methods._common import (
    Objective,
    baseline_embedding,
    check_baseline,
    croppable,
    embed,
    forward_hidden,
    masked_scores,
    occluded_scores,
    plain_model,
    plan_groups,
    positive_int,
)
from contrastlens.attribution.methods.lrp import lrp_pass
from contrastlens.attribution.methods.registry import MethodContext, MethodResult, register_method
from contrastlens.errors import InputError

RANKS = ("support", "abs")


def candidates(relevance: torch.Tensor, special: list[bool], k: int, recent: int, rank: str = "support"
               ) -> tuple[list[int], list[int]]:
    """The shortlist's admission order and the recent positions: R's first (:func:`ranked`), the latest
    non-special position, R's second, the second latest, ... (:func:`interleave`; each position once), from
    R's top ``k`` and the ``recent`` latest non-special positions (the explained one included). Returns
    (admission order, the recent positions from the latest back)."""
    latest = [i for i in range(len(special) - 1, -1, -1) if not special[i]][:recent]
    return interleave(ranked(relevance, special, rank)[:k], latest), latest


def ranked(relevance: torch.Tensor, special: list[bool], rank: str = "support") -> list[int]:
    """Non-special positions (all if every one is special) by decreasing relevance (``rank="support"``) or
    decreasing |relevance| (``"abs"``), ties by position."""
    r = (relevance.abs() if rank == "abs" else relevance).tolist()
    candidates = [i for i in range(len(r)) if not special[i]] or list(range(len(r)))
    return sorted(candidates, key=lambda i: (-r[i], i))


def interleave(first: list[int], second: list[int]) -> list[int]:
    """``first[0], second[0], first[1], second[1], …``, each position once (at its first occurrence)."""
    out: list[int] = []
    seen: set[int] = set()
    for pair in itertools.zip_longest(first, second):
        for i in pair:
            if i is not None and i not in seen:
                seen.add(i)
                out.append(i)
    return out


#: the fixed cost of one forward, in token-steps (on a CPU a forward of 8 tokens costs about as much as
#: 30 more tokens; on a GPU far more): the budget counts it for every batch
FORWARD_OVERHEAD = 32


def work(suffixes: list[int], batch_size: int) -> int:
    """Estimated work of rows with these suffix lengths run in batches of ``batch_size``: Σ suffix plus
    ``FORWARD_OVERHEAD`` per batch (an upper bound of what the batches run: each runs its longest suffix)."""
    s = sorted(suffixes, reverse=True)
    batches = [s[i: i + batch_size] for i in range(0, len(s), batch_size)]
    return sum(len(b) * b[0] + FORWARD_OVERHEAD for b in batches)


def admit(order: list[int], length: int, k: int, budget: float, batch_size: int, *, prefix_reuse: bool
          ) -> list[int]:
    """The first positions of ``order`` (at most ``k``) whose occlusion rows fit ``budget`` (see
    :func:`work`; a row for position i runs the suffix of length − i with a reusable prefix, else all
    ``length``); at least one position. Sorted by position."""
    chosen: list[int] = []
    for i in order[:k]:
        trial = chosen + [i]
        if chosen and work([length - j if prefix_reuse else length for j in trial], batch_size) > budget:
            continue
        chosen = trial
    return sorted(chosen)


def choose_lead(start: float, picks: list[int], greedy_path: list[float], lrp_order: list[int],
                prefix_path: list[float]) -> tuple[list[int], list[float], str, bool]:
    """The positions to rank first: the greedy picks or the LRP prefix, whichever is the smaller flipping
    set (the greedy picks on a tie). When neither flips: the greedy picks up to the lowest point of their
    path, when it is below ``start`` (else none). ``start``: S + const of the clean input;
    ``greedy_path`` / ``prefix_path``: S + const after each pick / each prefix length (from 1). Returns
    (lead, the drop of S each lead position made, "greedy" or "prefix", whether the lead flips)."""
    greedy_flip = bool(greedy_path) and greedy_path[-1] < 0
    prefix_flip = next((m + 1 for m, v in enumerate(prefix_path) if v < 0), None)
    if prefix_flip is not None and (not greedy_flip or prefix_flip < len(picks)):
        levels = [start, *prefix_path[:prefix_flip]]
        return lrp_order[:prefix_flip], [levels[m] - levels[m + 1] for m in range(prefix_flip)], "prefix", True
    if not greedy_flip:  # the picks that lowered S most together (none when no pick lowered it)
        low = min(range(len(greedy_path)), key=lambda m: (greedy_path[m], m)) if greedy_path else -1
        picks = picks[: low + 1] if low >= 0 and greedy_path[low] < start else []
    levels = [start, *greedy_path]
    return list(picks), [levels[m] - levels[m + 1] for m in range(len(picks))], "greedy", greedy_flip


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(f"lrp-occlusion: {name} must be a positive number, got {value!r}")
    return float(value)


@register_method("lrp-occlusion", params={"k": 16, "recent": 8, "budget": 1.5, "refine": True,
                                          "rank": "support", "baseline": "zero"},
                 runtime={"batch_size": 16}, rule="attnlrp",
                 description="AttnLRP shortlists the k most relevant tokens (after the recent ones), occlusion "
                             "verifies them, a greedy search re-ranks them (within budget × n token-steps)")
def lrp_occlusion(ctx: MethodContext, *, k: int, recent: int, budget: float, refine: bool, rank: str,
                  baseline: str, batch_size: int) -> MethodResult:
    k = positive_int("lrp-occlusion", "k", k)
    if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
        raise InputError(f"lrp-occlusion: recent must be a non-negative integer, got {recent!r}")
    batch_size = positive_int("lrp-occlusion", "batch_size", batch_size)
    budget = _number("budget", budget)
    if not isinstance(refine, bool):
        raise InputError(f"lrp-occlusion: refine must be true or false, got {refine!r}")
    if rank not in RANKS:
        raise InputError(f"lrp-occlusion: rank must be one of {', '.join(RANKS)}, got {rank!r}")
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
    special = [i in specials for i in ctx.ids[:length]]
    order = ranked(R[:length], special, rank)
    admission, latest = candidates(R[:length], special, k, recent, rank)
    obj = Objective(res.objective, res.u, res.const, res.logits)
    budget_steps = budget * length
    with plain_model(lm, "lrp-occlusion"), torch.no_grad():
        x = embed(lm, ctx.ids[:length])
        b = baseline_embedding(lm, x, baseline)
        steps = 0
        if ctx.checkpointing:
            _, cache = forward_hidden(lm, x, want_cache=True)
            steps += length
        reuse = croppable(cache)
        chosen = admit(admission, length, len(admission), budget_steps * (0.5 if refine else 1.0), batch_size,
                       prefix_reuse=reuse)
        groups = plan_groups(chosen, length, batch_size, prefix_reuse=reuse)
        scores, occ_steps = occluded_scores(lm, x, b, groups, obj, cache)
        steps += occ_steps
        used = occ_steps + FORWARD_OVERHEAD * len(groups)
        effects = {i: res.score - scores[i] for i in chosen}
        picks: list[int] = []
        path: list[float] = []
        prefix_path: list[float] = []
        prefix_flip: int | None = None
        lrp_order: list[int] = []
        if refine:
            # the LRP prefix: the top positions by R, occluded cumulatively (its first prefix is one position,
            # whose score step 2 has when that position was shortlisted)
            lrp_order = order[:k] if rank == "support" else ranked(R[:length], special, "support")[:k]
            known = lrp_order[0] in scores
            prefix_path = [scores[lrp_order[0]] + res.const] if known else []
            rows: list[tuple[int, ...]] = []
            if not (known and prefix_path[0] < 0):  # prefixes of 1 (2), 3, ... positions while they fit half the rest
                for m in range(2 if known else 1, len(lrp_order) + 1):
                    trial = [*rows, tuple(lrp_order[:m])]
                    if used + work([length - min(r) if reuse else length for r in trial],
                                   batch_size) > used + (budget_steps - used) / 2:
                        break
                    rows = trial
            if rows:
                vals, n_steps = masked_scores(lm, x, b, rows, obj, cache, batch_size)
                steps += n_steps
                used += n_steps + FORWARD_OVERHEAD * -(-len(rows) // batch_size)
                prefix_path += [v + res.const for v in vals]
            prefix_flip = next((m + 1 for m, v in enumerate(prefix_path) if v < 0), None)
            cands = sorted(chosen, key=lambda i: (-effects[i], i))
            # the first greedy step is the single occlusion already run: the largest effect
            picks.append(cands.pop(0))
            cur = scores[picks[0]]
            path.append(cur + res.const)
            while cands and cur + res.const >= 0 and (prefix_flip is None or len(picks) < prefix_flip):
                first = min(picks) if picks else length
                est = work([length - min(first, c) if reuse else length for c in cands], batch_size)
                if used + est > budget_steps:
                    break
                vals, n_steps = masked_scores(lm, x, b, [(*picks, c) for c in cands], obj, cache, batch_size)
                steps += n_steps
                used += n_steps + FORWARD_OVERHEAD * -(-len(cands) // batch_size)
                best = min(range(len(cands)), key=lambda j: (vals[j], j))
                picks.append(cands.pop(best))
                cur = vals[best]
                path.append(cur + res.const)
        lead, lead_drops, lead_from, flipped = choose_lead(res.score + res.const, picks, path, lrp_order,
                                                           prefix_path)
    # the verified ranking: the shortlist carries its single effects, the rest R scaled below them
    scale = 1.0
    rest = torch.ones(R.numel(), dtype=torch.bool)
    rest[chosen] = False
    rest[length:] = False
    nonzero = [abs(v) for v in effects.values() if v != 0.0]
    top_rest = float(R[rest].abs().max()) if bool(rest.any()) else 0.0
    if top_rest > 0.0:
        scale = min(1.0, 0.5 * min(nonzero) / top_rest) if nonzero else 0.0
    rel = R * scale
    rel[chosen] = torch.tensor([effects[i] for i in chosen], dtype=torch.float32)
    if lead:
        others = [float(rel[i]) for i in range(length) if i not in lead]
        floor = max(others) if others else -math.inf
        values = []
        for d in reversed(lead_drops):  # last of the lead first: each value just above the next one's
            v = d if d > floor else _above(floor)
            values.append(v)
            floor = v
        rel[lead] = torch.tensor(values[::-1], dtype=torch.float32)
    meta = {"shortlist": chosen, "recent": sorted(latest), "greedy": picks, "greedy_scores": path,
            "prefix_scores": prefix_path,
            "lead": lead, "lead_from": lead_from if lead else None, "flipped": flipped, "lrp_scale": scale,
            "effects": {int(i): float(effects[i]) for i in chosen},
            "seconds_lrp": t1 - t0, "seconds_occlusion": time.perf_counter() - t1, "prefix_reuse": reuse,
            "token_steps": steps, "work": used, "budget_steps": budget_steps}
    return MethodResult(rel, res.objective, res.u, res.const, res.score, res.logits, meta=meta)


def _above(v: float) -> float:
    """The next float32 value above ``v`` (plus a relative margin, so the order survives rounding)."""
    if v == -math.inf:
        return 0.0
    step = max(abs(v) * 1e-5, 1e-7)
    return float(torch.tensor(v + step, dtype=torch.float32))


__all__ = ["FORWARD_OVERHEAD", "RANKS", "admit", "candidates", "choose_lead", "interleave", "lrp_occlusion", "ranked", "work"]
