"""Attribution methods: each one's values against an independent computation, the registry, the spec,
persistence and rendering, the CLI."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch

import contrastlens as cl
from contrastlens.attribution.methods import METHODS, MethodResult, get_method, register_method
from contrastlens.attribution.spec import AttributionSpec
from contrastlens.errors import ContrastLensError, InputError
from tests.conftest import PROMPT

ALL = ("attnlrp", "cp-lrp", "ixg", "ig", "occlusion", "random", "lrp-occlusion")


# ------------------------------------------------------------------------------ independent references
def _emb(lm, ids):
    with torch.no_grad():
        return lm.adapter.embedding(lm.model)(torch.tensor([ids])).detach()


def _score(lm, emb, t=11, c=17):
    """ℓ(t) − ℓ(c) at the last position from the full model (all logits, no contrastlens code)."""
    z = lm.model(inputs_embeds=emb).logits[:, -1].double()
    return z[:, t] - z[:, c]


def _objective_grad(lm, emb):
    e = emb.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_score(lm, e).sum(), e)
    return g


def _head_rows(lm):
    """Record the number of positions every call of the unembedding gets."""
    rows = []
    handle = lm.adapter.head(lm.model).register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].numel() // args[0].shape[-1]))
    return rows, handle


# ---------------------------------------------------------------------------------------------- ixg
@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "gemma3"])
def test_ixg_is_embeddings_times_the_autograd_gradient_of_the_objective(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    ex = cl.explain(lm, ids, 11, 17, method="ixg")
    emb = _emb(lm, ids)
    expected = (emb * _objective_grad(lm, emb))[0].sum(-1).numpy()
    np.testing.assert_allclose(ex.input_relevance, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert ex.logit_diff == pytest.approx(float(_score(lm, emb)), rel=1e-5, abs=1e-6)
    assert ex.spec.method == "ixg" and ex.spec.rule is None and ex.rule is None


def test_ixg_at_an_earlier_position_and_with_checkpointing(random_lm):
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    p = 6
    ex = cl.explain(lm, ids, 11, 17, method="ixg", position=p)
    emb = _emb(lm, ids[: p + 1])
    expected = (emb * _objective_grad(lm, emb))[0].sum(-1).numpy()
    np.testing.assert_allclose(ex.input_relevance[: p + 1], expected, rtol=1e-4, atol=1e-6)
    assert np.all(ex.input_relevance[p + 1 :] == 0.0)
    ck = cl.explain(lm, ids, 11, 17, method="ixg", position=p, checkpointing=True)
    np.testing.assert_allclose(ck.input_relevance, ex.input_relevance, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------- ig
@pytest.mark.parametrize("arch,baseline", [("gpt2", "zero"), ("qwen3", "mean"), ("llama", "mean")])
def test_ig_completeness_error_shrinks_with_steps(random_lm, arch, baseline):
    """Σ R = S(x) − S(b) up to the quadrature error, checked against S(b) from the full model."""
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    errors = {}
    for steps in (2, 8, 32):
        ex = cl.explain(lm, ids, 11, 17, method="ig", method_params={"steps": steps, "baseline": baseline})
        from contrastlens.attribution.methods._common import baseline_embedding

        b = baseline_embedding(lm, _emb(lm, ids), baseline)[None]
        with torch.no_grad():
            s_b = float(_score(lm, b))
        assert ex.meta["baseline_score"] == pytest.approx(s_b, rel=1e-4, abs=1e-5)
        errors[steps] = float(ex.input_relevance.astype(np.float64).sum()) - (ex.logit_diff - s_b)
        assert errors[steps] == pytest.approx(ex.meta["completeness_error"], abs=1e-4)
    scale = max(1.0, abs(ex.logit_diff - s_b))
    assert abs(errors[32]) < 1e-3 * scale, errors
    assert abs(errors[8]) < abs(errors[2]) and abs(errors[32]) <= abs(errors[8]) + 1e-5, errors


def test_ig_with_one_step_is_the_midpoint_gradient_and_batching_does_not_change_it(random_lm):
    """Gauss–Legendre with one node: R = (x − b) ⊙ ∇S(b + (x − b)/2), computed here by plain autograd."""
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    x = _emb(lm, ids)
    one = cl.explain(lm, ids, 11, 17, method="ig", method_params={"steps": 1})
    expected = (x * _objective_grad(lm, x / 2))[0].sum(-1).numpy()
    np.testing.assert_allclose(one.input_relevance, expected, rtol=1e-4, atol=1e-6)
    a = cl.explain(lm, ids, 11, 17, method="ig", method_params={"steps": 12, "batch_size": 5})
    b = cl.explain(lm, ids, 11, 17, method="ig", method_params={"steps": 12, "batch_size": 12})
    np.testing.assert_allclose(a.input_relevance, b.input_relevance, rtol=1e-5, atol=1e-6)
    assert a.spec == b.spec  # the batch size does not decide the numbers: not in the spec
    assert a.spec.options == {"steps": 12, "baseline": "zero"} and a.meta["method_runtime"] == {"batch_size": 5}


# ----------------------------------------------------------------------------------------- occlusion
@pytest.mark.parametrize("arch,baseline", [("qwen3", "zero"), ("gemma3", "zero"), ("gpt2", "mean"),
                                           ("llama", "pad")])
def test_occlusion_equals_a_brute_force_loop(random_lm, arch, baseline):
    from contrastlens.attribution.methods._common import baseline_embedding

    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    rows, handle = _head_rows(lm)
    try:
        ex = cl.explain(lm, ids, 11, 17, method="occlusion",
                        method_params={"baseline": baseline, "batch_size": 3})
    finally:
        handle.remove()
    assert rows and set(rows) == {1}  # only the explained position's logits, once
    emb = _emb(lm, ids)
    b = baseline_embedding(lm, emb, baseline)
    with torch.no_grad():
        s_x = float(_score(lm, emb))
        brute = []
        for i in range(len(ids)):
            e = emb.clone()
            e[0, i] = b[i]
            brute.append(s_x - float(_score(lm, e)))
    np.testing.assert_allclose(ex.input_relevance, brute, rtol=1e-4, atol=2e-6)
    assert ex.meta["prefix_reuse"] is (arch != "gemma3")  # gemma3's sliding-window cache cannot be cut


def test_occlusion_at_an_earlier_position(random_lm):
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    p = 5
    ex = cl.explain(lm, ids, 11, 17, method="occlusion", position=p)
    short = cl.explain(lm, ids[: p + 1], 11, 17, method="occlusion")
    np.testing.assert_allclose(ex.input_relevance[: p + 1], short.input_relevance, rtol=1e-5, atol=1e-6)
    assert np.all(ex.input_relevance[p + 1 :] == 0.0)


# ------------------------------------------------------------------------------------- lrp-occlusion
@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_lrp_occlusion_verifies_the_attnlrp_shortlist(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    k = 5
    # no refinement and a budget that admits the whole shortlist: the shortlist carries its single effects
    lo = cl.explain(lm, ids, 11, 17, method="lrp-occlusion",
                    method_params={"k": k, "recent": 0, "batch_size": 2, "refine": False, "budget": 100})
    occ = cl.explain(lm, ids, 11, 17, method="occlusion")
    lrp = cl.explain(lm, ids, 11, 17)
    sl = lo.meta["shortlist"]
    # the shortlist: the k largest AttnLRP values, the tokens supporting the target most (no special
    # tokens in this prompt); rank="abs" takes the k largest |AttnLRP|
    assert sl == sorted(np.argsort(-lrp.input_relevance, kind="stable")[:k].tolist())
    ab = cl.explain(lm, ids, 11, 17, method="lrp-occlusion",
                    method_params={"k": k, "recent": 0, "refine": False, "budget": 100, "rank": "abs"})
    assert ab.meta["shortlist"] == sorted(np.argsort(-np.abs(lrp.input_relevance), kind="stable")[:k].tolist())
    assert ab.meta["shortlist"] != sl
    # with recent=r the r latest positions join the shortlist (the explained one included)
    rc = cl.explain(lm, ids, 11, 17, method="lrp-occlusion",
                    method_params={"k": k, "recent": 3, "refine": False, "budget": 100})
    n = len(ids)
    assert rc.meta["recent"] == [n - 3, n - 2, n - 1]
    assert rc.meta["shortlist"] == sorted(set(sl) | {n - 3, n - 2, n - 1})
    np.testing.assert_allclose(rc.input_relevance[rc.meta["shortlist"]], occ.input_relevance[rc.meta["shortlist"]],
                               rtol=1e-4, atol=2e-6)
    # its values are the occlusion effects, so its ranking is occlusion's
    np.testing.assert_allclose(lo.input_relevance[sl], occ.input_relevance[sl], rtol=1e-4, atol=2e-6)
    assert (np.argsort(-np.abs(lo.input_relevance[sl])) == np.argsort(-np.abs(occ.input_relevance[sl]))).all()
    # elsewhere: AttnLRP scaled by one positive factor, below every verified effect
    rest = np.setdiff1d(np.arange(len(ids)), sl)
    scale = lo.meta["lrp_scale"]
    assert 0 < scale <= 1
    np.testing.assert_allclose(lo.input_relevance[rest], scale * lrp.input_relevance[rest], rtol=1e-4, atol=1e-7)
    assert np.abs(lo.input_relevance[rest]).max() < np.abs(lo.input_relevance[sl]).min()
    top = np.argsort(-np.abs(lo.input_relevance))[:k]
    assert sorted(top.tolist()) == sl
    assert lo.logit_diff == pytest.approx(lrp.logit_diff, rel=1e-6)
    assert lo.spec.rule == "attnlrp" and not lo.spec.rule_based and not lo.hidden_relevance


def test_lrp_occlusion_runs_only_the_suffix_after_the_earliest_shortlisted_position(random_lm):
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    n = len(ids)
    shapes = []
    block0 = lm.adapter.blocks(lm.model)[0]
    handle = block0.register_forward_pre_hook(
        lambda _m, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[:2])),
        with_kwargs=True)
    try:
        lo = cl.explain(lm, ids, 11, 17, method="lrp-occlusion",
                        method_params={"k": 4, "refine": False, "budget": 100})
    finally:
        handle.remove()
    sl = lo.meta["shortlist"]
    assert shapes[0] == (1, n)  # the LRP forward, whose KV cache is reused: no other full forward
    batches = shapes[1:]
    assert sum(b for b, _ in batches) == len(sl)
    assert all(s < n for _, s in batches) and max(s for _, s in batches) == n - sl[0]
    assert lo.meta["token_steps"] == sum(b * s for b, s in batches)
    # the same values with checkpointing (no cache taken from the rule forward then)
    ck = cl.explain(lm, ids, 11, 17, method="lrp-occlusion", method_params={"k": 4, "refine": False, "budget": 100},
                    checkpointing=True)
    np.testing.assert_allclose(ck.input_relevance, lo.input_relevance, rtol=1e-4, atol=1e-6)


def _masked_score(lm, ids, positions, t=11, c=17):
    """Δℓ with the embeddings at ``positions`` set to zero, from the full model."""
    emb = _emb(lm, ids).clone()
    emb[0, list(positions)] = 0.0
    with torch.no_grad():
        return float(_score(lm, emb, t, c)[0])


@pytest.mark.parametrize(("arch", "target", "contrast"), [("llama", 11, 17), ("qwen3", 11, 17), ("llama", 215, 135),
                                                          ("qwen2", 304, 86), ("qwen3", 318, 67)])
def test_lrp_occlusion_greedy_refinement_is_the_greedy_search_over_the_shortlist(random_lm, arch, target, contrast):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT * 2)
    lo = cl.explain(lm, ids, target, contrast, method="lrp-occlusion",
                    method_params={"k": 6, "recent": 3, "budget": 1000})
    sl, picks, path = lo.meta["shortlist"], lo.meta["greedy"], lo.meta["greedy_scores"]
    assert 6 <= len(sl) <= 9 and picks and len(path) == len(picks) and set(picks) <= set(sl)
    # brute force: each pick lowers Δℓ the most among the shortlisted positions not yet picked
    chosen: list[int] = []
    for t, p in enumerate(picks):
        trial = {c: _masked_score(lm, ids, chosen + [c], target, contrast) for c in sl if c not in chosen}
        best = min(trial.values())
        assert trial[p] == pytest.approx(best, abs=2e-4), (t, trial)
        assert path[t] == pytest.approx(trial[p], rel=1e-3, abs=2e-4)
        chosen.append(p)
    # the LRP prefix: the shortlist in AttnLRP order, occluded cumulatively
    lrp = cl.explain(lm, ids, target, contrast)
    # AttnLRP's MoRF order over the non-special positions
    order = [int(i) for i in np.argsort(-lrp.input_relevance, kind="stable") if not lrp.special_mask[i]]
    prefix = lo.meta["prefix_scores"]
    assert 1 <= len(prefix) <= 6
    for m, v in enumerate(prefix):
        assert v == pytest.approx(_masked_score(lm, ids, order[: m + 1], target, contrast), rel=1e-3, abs=2e-4), m
    prefix_flip = next((m + 1 for m, v in enumerate(prefix) if v < 0), None)
    # the greedy search stops at its first flip, when the shortlist runs out, or at a flipping prefix's size
    assert all(v >= 0 for v in path[:-1])
    assert path[-1] < 0 or len(picks) == len(sl) or len(picks) == prefix_flip
    # the lead: the smaller flipping set (greedy on a tie), ranked first in its order
    greedy_flip = path[-1] < 0
    if prefix_flip is not None and (not greedy_flip or prefix_flip < len(picks)):
        assert lo.meta["lead_from"] == "prefix" and lo.meta["lead"] == order[:prefix_flip]
    elif greedy_flip:
        assert lo.meta["lead_from"] == "greedy" and lo.meta["lead"] == picks
    else:  # neither flips: the greedy picks down to the lowest point of their path, when below the start
        low = int(np.argmin(path))
        want = picks[: low + 1] if path[low] < lo.logit_diff else []
        assert lo.meta["lead"] == want and lo.meta["lead_from"] == ("greedy" if want else None)
    lead = lo.meta["lead"]
    assert lo.meta["flipped"] == (greedy_flip or prefix_flip is not None)
    if lo.meta["flipped"]:
        assert _masked_score(lm, ids, lead, target, contrast) < 0
    top = np.argsort(-lo.input_relevance, kind="stable")[: len(lead)].tolist()
    assert top == lead
    # behind the lead the verified ranking: shortlisted positions carry their single effect (brute force),
    # the rest AttnLRP scaled by one positive factor below the smallest nonzero effect
    clean = _masked_score(lm, ids, [], target, contrast)
    for i in sl:
        if i not in lead:
            assert lo.input_relevance[i] == pytest.approx(clean - _masked_score(lm, ids, [i], target, contrast),
                                                          rel=1e-3, abs=2e-4), i
    rest = [i for i in range(len(ids)) if i not in lead and i not in sl]
    scale = lo.meta["lrp_scale"]
    assert 0 < scale <= 1
    np.testing.assert_allclose(lo.input_relevance[rest], scale * lrp.input_relevance[rest], rtol=1e-5, atol=1e-8)
    effects = np.abs(np.asarray(list(lo.meta["effects"].values())))
    assert np.abs(lo.input_relevance[rest]).max() < effects[effects > 0].min()
    if lo.meta["lead_from"] == "greedy":  # the picks carry at least their drop of Δℓ
        drops = -np.diff([lo.logit_diff] + path)
        assert np.all(lo.input_relevance[picks] >= drops.astype(np.float32) - 1e-6)


def test_lrp_occlusion_lead_is_the_smaller_flipping_set():
    from contrastlens.attribution.methods.lrp_occlusion import choose_lead

    order = [7, 3, 9]
    # greedy flips with 2, the prefix with 3: greedy; drops are the falls of S + const
    assert choose_lead(2.0, [3, 9], [1.0, -0.5], order, [1.5, 0.2, -0.1]) == ([3, 9], [1.0, 1.5], "greedy", True)
    # the prefix flips with 2, greedy needs 3: the prefix (a prefix step may raise S: a negative drop)
    assert choose_lead(2.0, [3, 9, 7], [1.0, 0.5, -0.5], order, [2.5, -0.1, -0.3]) == (
        [7, 3], [-0.5, 2.6], "prefix", True)
    # a tie: greedy; greedy does not flip, the prefix does: the prefix; neither: the greedy path
    assert choose_lead(2.0, [3, 9], [1.0, -0.5], order, [1.5, -0.1])[2] == "greedy"
    assert choose_lead(2.0, [3], [1.0], order, [1.5, 0.5, -0.1])[2:] == ("prefix", True)
    assert choose_lead(2.0, [3, 9], [1.0, 0.5], order, [1.5, 0.7]) == ([3, 9], [1.0, 0.5], "greedy", False)
    # neither flips: the picks down to the path's lowest point; none when no pick lowered S
    assert choose_lead(2.0, [3, 9, 7], [1.0, 1.4, 1.2], order, []) == ([3], [1.0], "greedy", False)
    assert choose_lead(2.0, [3], [2.5], order, [2.5]) == ([], [], "greedy", False)


def test_interleave_alternates_and_keeps_each_position_once():
    from contrastlens.attribution.methods.lrp_occlusion import interleave

    assert interleave([5, 2, 9], [12, 11, 10, 9, 8]) == [5, 12, 2, 11, 9, 10, 8]
    assert interleave([], [3, 2]) == [3, 2] and interleave([4], []) == [4]


def test_candidates_interleave_the_top_of_r_with_the_latest_non_special_positions():
    from contrastlens.attribution.methods.lrp_occlusion import candidates

    r = torch.tensor([0.1, 3.0, -5.0, 2.0, 0.5, 4.0, 0.0])
    special = [True, False, False, False, False, False, True]
    # R's top 3 by support: 5, 1, 3; the 2 latest non-special: 5, 4 (6 is special)
    assert candidates(r, special, 3, 2) == ([5, 1, 4, 3], [5, 4])
    # by |R|: 2, 5, 1; no recent positions: R's order alone
    assert candidates(r, special, 3, 0, "abs") == ([2, 5, 1], [])
    assert candidates(r, special, 0, 3) == ([5, 4, 3], [5, 4, 3])


def test_lrp_occlusion_stays_within_its_budget_at_any_length(random_lm):
    from contrastlens.attribution.methods.lrp_occlusion import FORWARD_OVERHEAD, work

    lm = random_lm("qwen3")
    for reps in (1, 4, 12):
        ids = lm.encode(PROMPT * reps)
        n = len(ids)
        for budget in (0.5, 1.5, 3.0):
            lo = cl.explain(lm, ids, 11, 17, method="lrp-occlusion", method_params={"k": 16, "budget": budget})
            m = lo.meta
            assert m["budget_steps"] == budget * n
            # the work run (suffix token-steps plus the per-forward overhead) fits the budget, except the one
            # shortlisted position always admitted
            assert m["work"] <= max(budget * n, n + FORWARD_OVERHEAD), (reps, budget, m)
            assert m["token_steps"] <= m["work"]
            assert 1 <= len(m["shortlist"]) <= 16
        # a larger budget never admits fewer positions
        sizes = [len(cl.explain(lm, ids, 11, 17, method="lrp-occlusion",
                                method_params={"budget": b, "refine": False}).meta["shortlist"]) for b in (0.5, 2, 8)]
        assert sizes == sorted(sizes)
    assert work([10, 3, 7], 2) == 2 * 10 + FORWARD_OVERHEAD + 1 * 3 + FORWARD_OVERHEAD


def test_lrp_occlusion_skips_special_tokens_and_takes_a_rule(random_lm):
    lm = random_lm("qwen3")
    lo = cl.explain(lm, "What is 3 + 5?", 11, 17, chat=True, method="lrp-occlusion",
                    method_params={"k": 3, "budget": 100})
    sl = lo.meta["shortlist"]
    assert not any(lo.special_mask[i] for i in sl) and 3 <= len(sl) <= 3 + 8
    # the recent positions: the 8 latest non-special ones (a chat prompt ends in special tokens)
    latest = [i for i in range(lo.n_tokens - 1, -1, -1) if not lo.special_mask[i]][:8]
    assert any(lo.special_mask[min(latest):]) and lo.meta["recent"] == sorted(latest)
    cp = cl.explain(lm, PROMPT, 11, 17, method="lrp-occlusion", rule="cp-lrp",
                    method_params={"k": 3, "recent": 0, "budget": 100})
    lrp = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp")
    assert cp.spec.rule == "cp-lrp"
    assert cp.meta["shortlist"] == sorted(np.argsort(-lrp.input_relevance, kind="stable")[:3].tolist())


# ---------------------------------------------------------------------------------------------- random
def test_random_is_deterministic_per_seed_and_differs_across_seeds(random_lm):
    lm = random_lm("qwen3")
    a = cl.explain(lm, PROMPT, 11, 17, method="random")
    b = cl.explain(lm, PROMPT, 11, 17, method="random", method_params={"seed": 0})
    c = cl.explain(lm, PROMPT, 11, 17, method="random", method_params={"seed": 1})
    np.testing.assert_array_equal(a.input_relevance, b.input_relevance)
    assert not np.allclose(a.input_relevance, c.input_relevance)
    n = a.n_tokens
    np.testing.assert_array_equal(a.input_relevance, torch.randn(n, generator=torch.Generator().manual_seed(0)))
    assert a.spec != c.spec and a.spec.hash() != c.spec.hash()
    p = cl.explain(lm, PROMPT, 11, 17, method="random", position=4)
    assert np.all(p.input_relevance[5:] == 0.0)


# ------------------------------------------------------------------- the objective and hidden arrays
@pytest.mark.parametrize("method", ["ixg", "ig", "occlusion", "random", "lrp-occlusion"])
def test_other_methods_leave_zero_hidden_relevance_and_need_one_row_of_logits(random_lm, method):
    lm = random_lm("qwen3")
    rows, handle = _head_rows(lm)
    try:
        ex = cl.explain(lm, PROMPT, 11, objective="topk_avg", k=5, method=method)
    finally:
        handle.remove()
    assert set(rows) == {1}
    ref = cl.explain(lm, PROMPT, 11, objective="topk_avg", k=5)
    assert ex.logit_diff == pytest.approx(ref.logit_diff, rel=1e-5, abs=1e-6)
    assert ex.spec.objective == "topk_avg" and ex.spec.params == {"k": 5} and ex.target_id == 11
    assert ex.layer_relevance.shape == ref.layer_relevance.shape and ex.mid_relevance.shape == ref.mid_relevance.shape
    assert not ex.layer_relevance.any() and not ex.mid_relevance.any()
    assert ex.meta["hidden_relevance"] is False and ref.meta["hidden_relevance"] is True
    assert not ex.hidden_relevance and ref.hidden_relevance
    with pytest.raises(InputError, match="input relevance only"):
        cl.attribution_graph(lm, explanation=ex)


# ------------------------------------------------------------------- method=, rule= and options
def test_rule_is_a_synonym_and_conflicts_are_errors(random_lm):
    lm = random_lm("qwen3")
    a = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp")
    b = cl.explain(lm, PROMPT, 11, 17, method="CP_LRP")
    c = cl.explain(lm, PROMPT, 11, 17, method="cp-lrp", rule="cp_lrp")
    np.testing.assert_array_equal(a.input_relevance, b.input_relevance)
    np.testing.assert_array_equal(a.layer_relevance, c.layer_relevance)
    assert a.spec == b.spec == c.spec and a.spec.method == "cp-lrp" and a.spec.rule_based
    assert cl.explain(lm, PROMPT, 11, 17).spec.method == "attnlrp"
    with pytest.raises(InputError, match="conflicts with method"):
        cl.explain(lm, PROMPT, 11, 17, method="attnlrp", rule="cp-lrp")
    with pytest.raises(InputError, match="uses no LRP rule"):
        cl.explain(lm, PROMPT, 11, 17, method="ixg", rule="attnlrp")
    with pytest.raises(ContrastLensError, match="unknown attribution method 'nope'.*attnlrp, cp-lrp"):
        cl.explain(lm, PROMPT, 11, 17, method="nope")
    with pytest.raises(InputError, match="keep_states=True needs hidden-state relevance"):
        cl.explain(lm, PROMPT, 11, 17, method="ixg", keep_states=True)
    with pytest.raises(InputError, match="applies to methods with a backward pass; method occlusion has none"):
        cl.explain(lm, PROMPT, 11, 17, method="occlusion", checkpointing=True)


@pytest.mark.parametrize("method,options,msg", [
    ("ig", {"step": 8}, "method ig has no option 'step' .*it takes steps, baseline, batch_size"),
    ("attnlrp", {"steps": 8}, "method attnlrp has no option 'steps' .*takes no options"),
    ("ig", {"steps": 0}, "steps must be a positive integer"),
    ("ig", {"baseline": "noise"}, "baseline must be one of zero, mean, pad"),
    ("occlusion", {"batch_size": 1.5}, "batch_size must be a positive integer"),
    ("random", {"seed": "x"}, "seed must be an integer"),
    ("lrp-occlusion", {"k": True}, "k must be a positive integer"),
    ("lrp-occlusion", {"recent": -1}, "recent must be a non-negative integer"),
])
def test_unknown_or_bad_method_options_are_errors(random_lm, method, options, msg):
    with pytest.raises(InputError, match=msg):
        cl.explain(random_lm("qwen3"), PROMPT, 11, 17, method=method, method_params=options)


def test_the_registry_refuses_to_overwrite_and_takes_new_methods(random_lm):
    with pytest.raises(ContrastLensError, match="already registered"):
        register_method("ixg")(lambda ctx: None)
    with pytest.raises(ContrastLensError, match="already registered"):
        register_method("CP_LRP")(lambda ctx: None)
    assert get_method("ixg").fn.__name__ == "input_x_gradient"
    orig = METHODS["random"]
    try:
        register_method("random", params={"seed": 0}, backward=False, overwrite=True)(orig.fn)
    finally:
        METHODS["random"] = orig

    @register_method("test-constant", params={"value": 1.0}, backward=False)
    def constant(ctx, *, value):
        ref = get_method("random").fn(ctx, seed=0)
        return MethodResult(torch.full((ctx.n,), float(value)), ref.objective, ref.u, ref.const, ref.score,
                            ref.logits)

    try:
        ex = cl.explain(random_lm("qwen3"), PROMPT, 11, 17, method="test_constant", method_params={"value": 2.5})
        assert np.all(ex.input_relevance == 2.5) and ex.spec.method == "test-constant"
        assert ex.spec.options == {"value": 2.5}
    finally:
        del METHODS["test-constant"]


# ------------------------------------------------------------------------ persistence and rendering
def test_every_method_saves_loads_renders_and_prints(random_lm, tmp_path):
    from rich.console import Console

    lm = random_lm("qwen3")
    hashes = set()
    for method in ALL:
        ex = cl.explain(lm, PROMPT, 11, 17, method=method, method_params={"steps": 4} if method == "ig" else None)
        back = cl.Explanation.load(ex.save(tmp_path / f"{method}.ctl"))
        assert back.spec == ex.spec and back.meta == json.loads(json.dumps(ex.meta))
        for f in ("input_relevance", "layer_relevance", "mid_relevance"):
            np.testing.assert_array_equal(getattr(back, f), getattr(ex, f))
        d = json.loads(ex.to_json())
        assert d["spec"].get("method", d["spec"]["rule"]) == method and d["spec_hash"] == ex.spec.hash()
        assert d["spec"]["spec_version"] == (1 if ex.spec.rule_based else 2)
        assert AttributionSpec.from_dict(d["spec"]) == ex.spec
        html = back.to_html()
        assert html.count('class="cl-tok') == len(ex.tokens)
        assert (f"rule {method}" if ex.spec.rule_based else f"method {ex.spec.method_label}") in html
        buf = io.StringIO()
        back.print(console=Console(file=buf, width=200))
        assert "Δℓ" in buf.getvalue() and method in buf.getvalue()
        assert method in repr(ex.spec) and method in ex.spec.describe()
        hashes.add(ex.spec.hash())
    assert len(hashes) == len(ALL)


def test_old_specs_keep_their_hash_and_old_files_still_load(random_lm, tmp_path):
    spec = AttributionSpec(target_id=11, contrast_id=17, position=12, objective="topk_avg",
                           objective_params=(("k", 5),), rule="cp-lrp", dtype="bfloat16", attn_implementation="eager")
    assert spec.method == "cp-lrp" and spec.method_params == ()
    assert spec.hash() == "41a0f87887c10eb3"  # the hash before methods existed
    assert AttributionSpec(target_id=11, contrast_id=17, position=12).hash() == "07bd25fbd206e6ec"
    # a format-2 file written before methods existed (no method in its spec)
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp")
    meta = {k: v for k, v in ex.to_dict().items() if k not in ("input_relevance", "layer_relevance", "mid_relevance")}
    assert "method" not in meta["spec"]
    meta["meta"] = {"seconds": 0.1, "checkpointing": False, "n_tokens": ex.n_tokens}  # no hidden_relevance
    path = tmp_path / "v2.ctl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for k in ("input_relevance", "layer_relevance", "mid_relevance"):
            buf = io.BytesIO()
            np.save(buf, getattr(ex, k))
            z.writestr(f"{k}.npy", buf.getvalue())
    old = cl.Explanation.load(path)
    assert old.spec == ex.spec and old.method == "cp-lrp" and old.hidden_relevance
    assert old.spec.hash() == ex.spec.hash()
    with pytest.raises(InputError, match="spec version 3 is not supported"):
        AttributionSpec.from_dict({**spec.to_dict(), "spec_version": 3})


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_method(tmp_path, capsys, random_lm):
    from contrastlens.cli.main import main

    args = ["explain", "--model", "random:qwen3", "--prompt", PROMPT, "--target", "#11", "--contrast", "#17"]
    assert main([*args, "--method", "ixg", "--json", str(tmp_path / "e.json")]) == 0
    assert "method ixg" in capsys.readouterr().out
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["spec"]["method"] == "ixg" and d["spec"]["rule"] is None
    ref = cl.explain(random_lm("qwen3"), PROMPT, 11, 17, method="ixg")
    np.testing.assert_allclose(d["input_relevance"], ref.input_relevance, rtol=1e-6)
    assert main([*args, "--method", "random", "--method-opt", "seed=3", "--quiet",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["spec"]["method_params"] == {"seed": 3}
    capsys.readouterr()
    for extra, msg in ((["--method", "nope"], "unknown attribution method 'nope'"),
                       (["--method", "ig", "--method-opt", "stepz=3"], "has no option 'stepz'"),
                       (["--method", "ixg", "--rule", "cp-lrp"], "uses no LRP rule"),
                       (["--method-opt", "steps"], "KEY=VALUE")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_drill_downs_of_an_input_only_method_say_why(random_lm):
    from contrastlens.graph.neurons import edge_dimensions, mlp_neurons, state_dimensions

    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, method="ixg")
    for call in (lambda: state_dimensions(ex, "0", -1), lambda: mlp_neurons(lm, ex, 0, -1),
                 lambda: edge_dimensions(lm, ex, "emb", "0", -1, 1)):
        with pytest.raises(InputError, match="input relevance only"):
            call()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fill_vectors_are_the_embeddings_they_name(random_lm, arch):
    from contrastlens.attribution.baselines import fill_vector

    lm = random_lm(arch)
    layer = lm.adapter.embedding(lm.model)
    with torch.no_grad():
        table = layer(torch.arange(lm.vocab_size)[None])[0].double()  # through the module: scaled for gemma3
    assert torch.equal(fill_vector(lm, "zero"), torch.zeros(table.shape[1]))
    torch.testing.assert_close(fill_vector(lm, "mean").double(), table.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fill_vector(lm, "token", token_id=7).double(), table[7])
    with pytest.raises(InputError, match="outside the vocabulary"):
        fill_vector(lm, "token", token_id=lm.vocab_size)
    with pytest.raises(InputError, match="unknown fill"):
        fill_vector(lm, "noise")
