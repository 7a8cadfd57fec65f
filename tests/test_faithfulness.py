"""Faithfulness metrics: the batched masked forward against independent computations, every metric on a
synthetic additive forward against hand-computed numbers, the oracle against brute force, aggregation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import contrastlens as cl
from contrastlens.attribution.logits import head_logits, top_logits
from contrastlens.errors import InputError
from contrastlens.study.analyses import (
    DeltaForward,
    Flip,
    aopc,
    aopc_score,
    area_between,
    area_between_curves,
    auc,
    auto_batch_size,
    bootstrap_ci,
    deletion_auc,
    deletion_curve,
    exhaustive_flip,
    faithfulness,
    flip_point,
    greedy_oracle,
    insertion_auc,
    insertion_curve,
    lerf_order,
    morf_lerf_curves,
    morf_order,
    random_scores,
    summarize,
    summarize_tokens_to_flip,
    tokens_to_flip,
)

PROMPT = "The capital of France is Paris, and the capital of Italy is"


# ------------------------------------------------------------------------------------------ helpers
class Additive:
    """Δℓ(mask) = c − Σ_{masked i} w_i (optionally through a monotone g); records every mask it sees."""

    def __init__(self, w, c, g=None):
        self.w, self.c, self.g = np.asarray(w, dtype=np.float64), float(c), g
        self.calls: list[np.ndarray] = []

    def __call__(self, masks):
        masks = np.asarray(masks, dtype=bool)
        self.calls.append(masks.copy())
        v = self.c - masks.astype(np.float64) @ self.w
        return self.g(v) if self.g is not None else v


class OneByOne:
    """A forward that runs each mask alone (for batched-vs-one-by-one checks)."""

    def __init__(self, f):
        self.f = f
        self.maskable = getattr(f, "maskable", None)

    def __call__(self, masks):
        return np.array([float(np.asarray(self.f(m[None]))[0]) for m in np.asarray(masks, dtype=bool)])


def _top2(lm, ids, position=-1):
    top = top_logits(lm, ids, 2, position=position)
    return top[0]["id"], top[1]["id"]


def _ids_with_bos(lm):
    return [lm.tokenizer.bos_token_id] + lm.encode(PROMPT)


@torch.no_grad()
def _full_delta(lm, ids, t, c, pos, *, embeds=None):
    """Δℓ from the full model's n×V logits (the independent reference)."""
    if embeds is None:
        out = lm.model(input_ids=torch.tensor([ids]))
    else:
        out = lm.model(inputs_embeds=embeds)
    logits = out.logits[0, pos].double()
    return float(logits[t] - logits[c])


def _brute_force(lm, ids, t, c, pos, masks, fill, special):
    """One forward per mask, the embeddings edited by hand (special tokens left alone)."""
    emb_mod = lm.model.get_input_embeddings()
    out = []
    for m in masks:
        with torch.no_grad():
            emb = emb_mod(torch.tensor([ids])).clone()
            for j in np.flatnonzero(m & ~special):
                emb[0, j] = fill
        out.append(_full_delta(lm, ids, t, c, pos, embeds=emb))
    return np.array(out)


# ------------------------------------------------------------------------------- the masked forward
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "qwen2"])
def test_unmasked_delta_equals_explanation_and_full_model(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    t, c = _top2(lm, ids)
    ex = cl.explain(lm, ids, t, c)
    f = DeltaForward.from_explanation(lm, ex)
    d0 = f(np.zeros((1, len(ids)), dtype=bool))
    assert d0.dtype == np.float64 and d0.shape == (1,)
    assert d0[0] == pytest.approx(ex.logit_diff, abs=1e-4)
    assert d0[0] == pytest.approx(_full_delta(lm, ids, t, c, len(ids) - 1), abs=1e-4)
    assert f.unmasked == pytest.approx(d0[0], abs=1e-12)
    # an earlier explained position: the later tokens are cut off, the value is the model's there
    ex5 = cl.explain(lm, ids, t, c, position=5)
    f5 = DeltaForward.from_explanation(lm, ex5)
    assert f5.position == 5 and not f5.maskable[6:].any()
    assert f5.unmasked == pytest.approx(ex5.logit_diff, abs=1e-4)
    assert f5.unmasked == pytest.approx(_full_delta(lm, ids, t, c, 5), abs=1e-4)


def test_soft_cap_and_head_bias_are_applied(random_lm, monkeypatch):
    lm = random_lm("gemma3")
    monkeypatch.setattr(lm.model.config, "final_logit_softcapping", 0.7)  # small: the cap matters
    ids = lm.encode(PROMPT)
    t, c = _top2(lm, ids)
    f = DeltaForward(lm, ids, t, c)
    full = _full_delta(lm, ids, t, c, len(ids) - 1)
    assert abs(full) < 1.4  # capped logits lie in (-0.7, 0.7)
    assert f.unmasked == pytest.approx(full, abs=1e-5)
    with torch.no_grad():
        h = lm.adapter.base(lm.model)(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    _, capped = head_logits(lm, h)
    assert f.unmasked == pytest.approx(float(capped[t] - capped[c]), abs=1e-5)

    # a head with a bias (none of the random models has one): the bias difference is added
    biased = cl.load_model("random:llama", dtype="float32", seed=3)
    old = biased.model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.copy_(torch.randn(old.out_features, generator=torch.Generator().manual_seed(1)))
    biased.model.lm_head = new
    ids = biased.encode(PROMPT)
    t, c = 10, 20
    assert abs(float(new.bias.detach()[t] - new.bias.detach()[c])) > 0.1
    fb = DeltaForward(biased, ids, t, c)
    assert fb.unmasked == pytest.approx(_full_delta(biased, ids, t, c, len(ids) - 1), abs=1e-5)
    masks = np.random.default_rng(0).random((4, len(ids))) < 0.4
    ref = _brute_force(biased, ids, t, c, len(ids) - 1, masks, torch.zeros(new.in_features), np.zeros(len(ids), bool))
    np.testing.assert_allclose(fb(masks), ref, atol=1e-5)


def _fill(lm, masking, neutral):
    emb_mod = lm.model.get_input_embeddings()
    d = emb_mod.weight.shape[1]
    with torch.no_grad():
        if masking == "zero":
            return torch.zeros(d)
        if masking == "neutral":
            return emb_mod(torch.tensor([neutral]))[0]
        return emb_mod(torch.arange(emb_mod.weight.shape[0])).mean(0)  # every row through the module


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("masking", ["zero", "neutral", "mean"])
def test_masked_variants_equal_a_brute_force_loop(random_lm, arch, masking):
    lm = random_lm(arch)
    ids = _ids_with_bos(lm)
    n, pos = len(ids), len(ids) - 3  # the last two tokens come after the explained position
    t, c = _top2(lm, ids, position=pos)
    neutral = lm.encode(" ")[0] if masking == "neutral" else None
    f = DeltaForward(lm, ids, t, c, pos, masking=masking, neutral_token_id=neutral)
    special = np.array([i in lm.special_ids() for i in ids])
    assert special[0] and special.sum() == 1
    np.testing.assert_array_equal(f.maskable, ~special & (np.arange(n) <= pos))
    rng = np.random.default_rng(1)
    masks = rng.random((7, n)) < 0.35
    masks[0] = False
    masks[1] = True  # everything, the special token and the positions after the explained one included
    masks[2] = False
    masks[2, 0] = True  # only the special token: nothing changes
    masks[3] = False
    masks[3, pos + 1 :] = True  # only positions after the explained one: nothing changes
    got = f(masks)
    # the brute force masks every requested position but the special one (later ones too: causal)
    ref = _brute_force(lm, ids, t, c, pos, masks, _fill(lm, masking, neutral), special)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert got[2] == pytest.approx(got[0], abs=1e-9) and got[3] == pytest.approx(got[0], abs=1e-9)
    assert abs(got[1] - got[0]) > 1e-3  # masking does something
    assert f(torch.from_numpy(masks)).tolist() == pytest.approx(got.tolist(), abs=1e-12)  # a tensor works too


def test_masking_choices_differ_and_mean_includes_the_embedding_scale(random_lm):
    lm = random_lm("gemma3")  # Gemma scales the embeddings by sqrt(d)
    ids = lm.encode(PROMPT)
    t, c = _top2(lm, ids)
    m = np.zeros((1, len(ids)), dtype=bool)
    m[0, 3] = True
    vals = {k: DeltaForward(lm, ids, t, c, masking=k, neutral_token_id=9 if k == "neutral" else None)(m)[0]
            for k in ("zero", "neutral", "mean")}
    assert len({round(v, 6) for v in vals.values()}) == 3
    f = DeltaForward(lm, ids, t, c, masking="mean")
    emb = lm.model.get_input_embeddings()
    expected = emb.weight.detach().double().mean(0) * 8.0  # embed_scale = sqrt(64)
    np.testing.assert_allclose(f._fill.double().numpy(), expected.numpy(), atol=1e-5)


def test_batched_equals_one_by_one(random_lm):
    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    masks = np.random.default_rng(2).random((23, len(ids))) < 0.3
    auto = DeltaForward(lm, ids, t, c)
    five = DeltaForward(lm, ids, t, c, batch_size=5)
    one = DeltaForward(lm, ids, t, c, batch_size=1)
    a, b, o = auto(masks), five(masks), one(masks)
    # chunks reuse the unmasked prefix's KV cache from their earliest masked position, so a variant's
    # suffix differs with its chunk: float32 rounding (~1e-6) apart
    np.testing.assert_allclose(a, o, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b, o, atol=1e-5, rtol=0)
    assert (five.n_forwards, one.n_forwards, one.n_variants) == (5, 23, 23)
    # one by one, each variant runs only the suffix from its first masked position (an unmasked one: 1 token)
    firsts = [int(np.flatnonzero(r & one.maskable)[0]) if (r & one.maskable).any() else len(ids) - 1
              for r in masks]
    assert one.n_token_steps == sum(len(ids) - f for f in firsts)
    # and equals the full model on the masked embeddings (no cache at all)
    emb = lm.adapter.embedding(lm.model)(torch.tensor([ids]))[0].detach()
    for r in (0, 7, 19):
        x = emb.clone()
        x[masks[r] & one.maskable] = 0.0
        with torch.no_grad():
            z = lm.model(inputs_embeds=x[None]).logits[0, -1].double()
        assert o[r] == pytest.approx(float(z[t] - z[c]), abs=1e-5)
    # the metrics, batched (one call) and one mask at a time
    scores = np.random.default_rng(3).normal(size=len(ids))
    for fn in (deletion_curve, insertion_curve):
        np.testing.assert_allclose(fn(auto, scores), fn(OneByOne(one), scores), atol=1e-5, rtol=0)
    m1, l1 = morf_lerf_curves(auto, scores)
    m2, l2 = morf_lerf_curves(OneByOne(one), scores)
    np.testing.assert_allclose(np.r_[m1, l1], np.r_[m2, l2], atol=1e-5, rtol=0)
    assert tokens_to_flip(auto, scores) == tokens_to_flip(OneByOne(one), scores)
    sizes = [auto_batch_size(lm, n) for n in (16, 128, 1024, 8192)]
    assert sizes == sorted(sizes, reverse=True) and 1 <= sizes[-1] and sizes[0] <= 32  # CPU: <= 32, ~4096 tokens


def test_the_n_by_v_logits_are_never_built(random_lm, monkeypatch):
    lm = random_lm("llama")
    ids = lm.encode(PROMPT)
    t, c = _top2(lm, ids)
    expected = DeltaForward(lm, ids, t, c).unmasked

    def refuse(*a, **k):
        raise AssertionError("the unembedding module ran")

    monkeypatch.setattr(lm.adapter.head(lm.model), "forward", refuse)
    f = DeltaForward(lm, ids, t, c)
    assert f.unmasked == pytest.approx(expected, abs=1e-12)
    assert len(f(np.random.default_rng(0).random((6, len(ids))) < 0.5)) == 6


def test_bad_inputs_are_clear_errors(random_lm):
    lm = random_lm("llama")
    ids = lm.encode(PROMPT)
    with pytest.raises(InputError, match="no contrast"):
        DeltaForward(lm, ids, 5, None)
    with pytest.raises(InputError, match="masking must be"):
        DeltaForward(lm, ids, 5, 6, masking="noise")
    with pytest.raises(InputError, match="neutral_token_id"):
        DeltaForward(lm, ids, 5, 6, masking="neutral")
    with pytest.raises(InputError, match="same token"):
        DeltaForward(lm, ids, 5, 5)
    f = DeltaForward(lm, ids, 5, 6)
    with pytest.raises(InputError, match=r"masks must be \[B"):
        f(np.zeros((2, len(ids) + 1), dtype=bool))
    with pytest.raises(InputError, match="boolean"):
        f(np.zeros((2, len(ids)), dtype=np.int64))
    with pytest.raises(InputError, match="entries"):
        tokens_to_flip(Additive([1, 2], 1), [1, 2, 3], maskable=[True, True])


# ------------------------------------------------------------------------------- orderings
def test_orderings():
    s = [0.5, 2.0, -1.0, 2.0, 0.0]
    assert morf_order(s).tolist() == [1, 3, 0, 4, 2]  # ties: earlier first
    assert lerf_order(s).tolist() == [2, 4, 0, 3, 1]  # the exact reverse
    assert morf_order(s, [True, False, True, True, True]).tolist() == [3, 0, 4, 2]
    r = random_scores(10, seed=4)
    assert sorted(r.tolist()) == list(range(10)) and (r == random_scores(10, seed=4)).all()
    assert not (r == random_scores(10, seed=5)).all()
    with pytest.raises(InputError, match="NaN"):
        morf_order([1.0, math.nan])


# ------------------------------------------------------------------------------- the synthetic case
# w = (3, -1, 0.5, 2, 0.25), Δℓ_0 = 4. MoRF order by w: 0, 3, 2, 4, 1; LeRF: 1, 4, 2, 3, 0.
W, C = [3.0, -1.0, 0.5, 2.0, 0.25], 4.0
MORF = [4.0, 1.0, -1.0, -1.5, -1.75, -0.75]
LERF = [4.0, 5.0, 4.75, 4.25, 2.25, -0.75]
INSERTION = [-0.75, 2.25, 4.25, 4.75, 5.0, 4.0]


def test_curves_on_the_additive_forward_are_the_hand_computed_ones():
    f = Additive(W, C)
    m, lf = morf_lerf_curves(f, W)
    assert m.tolist() == MORF and lf.tolist() == LERF
    assert len(f.calls) == 1 and len(f.calls[0]) == 10  # one batched call; k=0 and k=5 shared
    assert deletion_curve(f, W).tolist() == MORF
    assert insertion_curve(f, W).tolist() == INSERTION
    assert deletion_curve(f, W, steps=2).tolist() == MORF[:3]
    m2, l2 = morf_lerf_curves(f, W, steps=2)
    assert m2.tolist() == MORF[:3] and l2.tolist() == LERF[:3]


def test_metrics_on_the_additive_forward_equal_hand_computed_numbers():
    f = Additive(W, C)
    # ABPC = (1/5)[(5-1) + (4.75+1) + (4.25+1.5) + (2.25+1.75) + (-0.75+0.75)] = 19.5/5
    assert area_between_curves(f, W) == pytest.approx(3.9)
    assert area_between(MORF, LERF) == pytest.approx(3.9)
    # AOPC = (1/5)[3 + 5 + 5.5 + 5.75 + 4.75] = 24/5
    assert aopc(f, W) == pytest.approx(4.8)
    assert aopc_score(MORF) == pytest.approx(4.8)
    # deletion: y = MoRF/4 = (1, .25, -.25, -.375, -.4375, -.1875); (1/5) Σ (y_{k-1}+y_k)/2 = -0.40625/5
    assert deletion_auc(f, W) == pytest.approx(-0.08125)
    # unnormalised: the same trapezoid on Δℓ itself
    assert deletion_auc(f, W, normalize=False) == pytest.approx(-0.325)
    # insertion: y = (-.1875, .5625, 1.0625, 1.1875, 1.25, 1); (1/5)·(8.9375/2)
    assert insertion_auc(f, W) == pytest.approx(0.89375)
    assert auc([2.0, 0.0], 2.0) == pytest.approx(0.5) and math.isnan(auc([1.0], 1.0)) and math.isnan(auc([1, 0], 0))
    # a worse ordering (the reverse) scores worse on every metric
    bad = [-x for x in W]
    assert area_between_curves(f, bad) == pytest.approx(-3.9)
    assert aopc(f, bad) < aopc(f, W) and deletion_auc(f, bad) > deletion_auc(f, W)
    assert insertion_auc(f, bad) < insertion_auc(f, W)


def test_tokens_to_flip_on_constructed_cases():
    assert tokens_to_flip(Additive(W, C), W) == Flip(2, False)  # Δℓ: 4, 1, -1
    assert flip_point(MORF) == 2 and flip_point(LERF[:5]) is None
    assert tokens_to_flip(Additive(W, C), W, limit=1) == Flip(1, True)  # censored at the limit
    assert tokens_to_flip(Additive(W, 10.0), W) == Flip(5, True)  # never flips: 10 - 5.75 > 0
    assert tokens_to_flip(Additive(W, -1.0), W) == Flip(0, False)  # already the contrast
    # one specific position flips; the scores rank it last: every other one has to go first
    w = [0.1, 0.2, 5.0, 0.3]
    assert tokens_to_flip(Additive(w, 1.0), w) == Flip(1, False)
    assert tokens_to_flip(Additive(w, 1.0), [3.0, 2.0, -9.0, 1.0]) == Flip(4, False)
    # a non-maskable position (special, or after the explained one) is never masked, whatever its score
    f = Additive([100.0, 0.4, 0.4, 0.4], 1.0)
    assert tokens_to_flip(f, [9.0, 1.0, 1.0, 1.0], maskable=[False, True, True, True]) == Flip(3, False)
    assert all(not m[:, 0].any() for m in f.calls)
    # growing batches, stopping at the first flip
    g = Additive(np.ones(100), 20.5)
    assert tokens_to_flip(g, np.arange(100.0)) == Flip(21, False)
    assert [len(m) for m in g.calls] == [8, 16]


def _brute_min(w, c, maskable, g=None):
    idx = [i for i in range(len(w)) if maskable[i]]
    f = Additive(w, c, g)
    for size in range(len(idx) + 1):
        for sub in itertools.combinations(idx, size):
            m = np.zeros(len(w), dtype=bool)
            m[list(sub)] = True
            if f(m[None])[0] < 0:
                return size
    return None


@pytest.mark.parametrize("seed", range(8))
def test_oracle_is_never_worse_than_an_ordering_and_is_the_brute_force_minimum(seed):
    rng = np.random.default_rng(seed)
    n = 7
    w = rng.normal(size=n)
    c = float(rng.uniform(0.1, 1.5))
    maskable = rng.random(n) < 0.85
    g = np.tanh if seed % 2 else None  # a monotone function of an additive score: greedy stays exact
    f = Additive(w, c, g)
    orc = greedy_oracle(f, maskable)
    brute = _brute_min(w, c, maskable, g)
    ex = exhaustive_flip(Additive(w, c, g), maskable)
    if brute is None:
        assert orc.censored and ex.censored and orc.tokens == maskable.sum()
    else:
        assert (orc.tokens, orc.censored) == (brute, False) == (ex.tokens, ex.censored)
        assert Additive(w, c, g)(np.isin(np.arange(n), orc.positions)[None])[0] < 0
        assert orc.curve[-1] < 0 <= min(orc.curve[:-1])
    assert set(orc.positions) <= set(np.flatnonzero(maskable))
    orderings = [w, -w, rng.normal(size=n), random_scores(n, seed)]
    for s in orderings:
        flip = tokens_to_flip(Additive(w, c, g), s, maskable=maskable)
        assert orc.tokens <= flip.tokens
        assert not orc.censored or flip.censored
    # one batched call per step (every candidate at once), plus the unmasked input
    assert len(f.calls) == 1 + orc.tokens
    assert all(len(m) == maskable.sum() - k for k, m in enumerate(f.calls[1:]))


def test_oracle_limit_and_exhaustive_budget():
    f = Additive(W, C)
    assert greedy_oracle(f, n=5).positions == (0, 3)
    lim = greedy_oracle(f, n=5, limit=1)
    assert (lim.tokens, lim.censored, lim.curve) == (1, True, (4.0, 1.0))
    assert greedy_oracle(Additive(W, -1.0), n=5) == (0, False, (), (-1.0,))
    with pytest.raises(InputError, match="max_variants"):
        exhaustive_flip(Additive(np.ones(30), 5.0), n=30, max_variants=1000)
    with pytest.raises(InputError, match="maskable or n"):
        greedy_oracle(Additive(W, C))


@pytest.mark.parametrize("seed", range(6))
def test_oracle_given_singles_and_a_candidate_pool(seed):
    rng = np.random.default_rng(seed)
    n = 40
    w = rng.normal(size=n) + 0.3
    c = float(np.sort(w)[::-1][:4].sum()) - 0.05  # flips at 4 tokens
    full = greedy_oracle(Additive(w, c), n=n, limit=6)
    # the single-mask values given: step 1 runs one probe instead of n variants, the same result
    f = Additive(w, c)
    given = greedy_oracle(f, n=n, limit=6, singles=c - w)
    assert given == full
    assert [len(m) for m in f.calls] == [1, 1] + [n - k for k in range(1, full.tokens)]
    # wrong single values (another objective): detected at the probe, computed anew, the same result
    f = Additive(w, c)
    assert greedy_oracle(f, n=n, limit=6, singles=c - w + 1.0) == full
    assert [len(m) for m in f.calls][:3] == [1, 1, n]
    # a pool of 8: steps 2… try only the 8 best single positions (exact for an additive score)
    f = Additive(w, c)
    pooled = greedy_oracle(f, n=n, limit=6, candidates=8)
    assert pooled == full
    assert [len(m) for m in f.calls] == [1, n] + [8 - k for k in range(1, full.tokens)]
    # a pool too small to flip: censored at the pool's size, never a position outside it
    f = Additive(w, c)
    small = greedy_oracle(f, n=n, limit=6, candidates=2)
    assert small.censored and small.tokens == 2 and set(small.positions) == set(np.argsort(-w)[:2])
    with pytest.raises(InputError, match="candidates must be a positive integer"):
        greedy_oracle(Additive(w, c), n=n, candidates=0)
    with pytest.raises(InputError, match="singles has 3 values"):
        greedy_oracle(Additive(w, c), n=n, singles=[1.0, 2.0, 3.0])


def test_oracle_takes_its_first_step_from_occlusion_on_a_real_model(random_lm):
    from contrastlens.study.analyses.faithfulness import FaithfulnessSettings, evaluate_case

    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    explain = _explainer(lm, ids, t, c)
    common = dict(methods=["attnlrp", "occlusion"], limit=3, oracle_limit=3, oracle_candidates=None)
    shared = evaluate_case(lm, explain, FaithfulnessSettings(**common), case="c")
    alone = evaluate_case(lm, explain, FaithfulnessSettings(**common, method_options={"occlusion": {"baseline": "mean"}}),
                          case="c")
    assert shared.meta["oracle_singles_from"] == "occlusion" and alone.meta["oracle_singles_from"] is None
    ref = greedy_oracle(DeltaForward.from_explanation(lm, explain("attnlrp")), limit=3)
    for res in (shared, alone):
        oc = res.curves[res.curves["method"] == "oracle"].sort_values("k")["logit_diff"].to_numpy()
        np.testing.assert_allclose(oc, ref.curve, rtol=1e-6, atol=1e-6)
        assert (res.metrics["oracle_tokens_to_flip"] == ref.tokens).all()
    # the single masks replaced by one probe (exact counts: test_oracle_given_singles_and_a_candidate_pool)
    assert shared.meta["variants"] < alone.meta["variants"]


def test_oracle_on_a_tiny_real_input_against_exhaustive_search(random_lm):
    lm = random_lm("llama")
    ids = [lm.tokenizer.bos_token_id] + lm.encode("The capital of France is")[:6]
    t, c = _top2(lm, ids)
    f = DeltaForward(lm, ids, t, c)
    assert not f.maskable[0] and f.unmasked > 0
    orc = greedy_oracle(f)
    exact = exhaustive_flip(f)
    # the exhaustive minimum, checked by an independent loop over every subset of the maskable positions
    idx = np.flatnonzero(f.maskable)
    subsets = [s for k in range(len(idx) + 1) for s in itertools.combinations(idx, k)]
    rows = np.zeros((len(subsets), len(ids)), dtype=bool)
    for r, s in enumerate(subsets):
        rows[r, list(s)] = True
    vals = f(rows)
    flipping = [len(s) for s, v in zip(subsets, vals, strict=True) if v < 0]
    if flipping:
        assert (exact.tokens, exact.censored) == (min(flipping), False)
        assert orc.tokens >= exact.tokens
    else:
        assert exact.censored and orc.censored
    assert 0 not in orc.positions and 0 not in exact.positions


# ------------------------------------------------------------------------------- the table
def test_faithfulness_table_matches_the_single_metrics(random_lm):
    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    ex = cl.explain(lm, ids, t, c)
    assert ex.special_mask[0]
    rand = random_scores(len(ids), 1)
    seen = []

    class Recording(DeltaForward):
        def __call__(self, masks):
            seen.append(np.asarray(masks, dtype=bool).copy())
            return super().__call__(masks)

    f = Recording.from_explanation(lm, ex)
    df = faithfulness(ex, lm, methods={"attnlrp": ex.input_relevance, "random": rand}, forward=f, case="c1")
    assert df["method"].tolist() == ["attnlrp", "random"] and (df["case"] == "c1").all()
    assert (df["n_maskable"] == len(ids) - 1).all()
    assert all(not m[:, 0].any() for m in seen)  # the special token was never masked
    assert seen[0].shape[0] <= 2 * 3 * len(ids)  # all curves of both methods in one call (deduplicated)
    ref = DeltaForward.from_explanation(lm, ex)
    for row, s in zip(df.itertuples(), [ex.input_relevance, rand], strict=True):
        assert row.logit_diff == pytest.approx(ex.logit_diff, abs=1e-4)
        flip = tokens_to_flip(ref, s)
        assert (row.tokens_to_flip, row.censored) == (flip.tokens, flip.censored)
        assert row.area_between == pytest.approx(area_between_curves(ref, s), abs=1e-9)
        assert row.aopc == pytest.approx(aopc(ref, s), abs=1e-9)
        assert row.deletion_auc == pytest.approx(deletion_auc(ref, s), abs=1e-9)
        assert row.insertion_auc == pytest.approx(insertion_auc(ref, s), abs=1e-9)
        orc = greedy_oracle(ref)
        assert (row.oracle_tokens_to_flip, row.oracle_censored) == (orc.tokens, orc.censored)
    default = faithfulness(ex, lm, oracle=False, steps=3, limit=5)
    assert default["method"].tolist() == ["attnlrp"] and "oracle_tokens_to_flip" not in default
    assert default["tokens_to_flip"][0] == min(tokens_to_flip(ref, ex.input_relevance, limit=5).tokens, 5)
    assert default["aopc"][0] == pytest.approx(aopc(ref, ex.input_relevance, steps=3), abs=1e-9)


def test_faithfulness_table_on_the_synthetic_forward(random_lm):
    lm = random_lm("llama")
    ids = lm.encode(PROMPT)[:5]
    ex = cl.explain(lm, ids, 5, 6)
    assert not any(ex.special_mask)
    df = faithfulness(ex, None, methods={"perfect": W, "reverse": [-x for x in W]}, forward=Additive(W, C))
    p = df.set_index("method").loc["perfect"]
    assert (p.logit_diff, p.tokens_to_flip, p.censored, p.steps, p.limit) == (4.0, 2, False, 5, 5)
    assert p.area_between == pytest.approx(3.9) and p.aopc == pytest.approx(4.8)
    assert p.deletion_auc == pytest.approx(-0.08125) and p.insertion_auc == pytest.approx(0.89375)
    assert (df["oracle_tokens_to_flip"] == 2).all() and df["masking"].eq("custom").all()
    r = df.set_index("method").loc["reverse"]
    assert r.tokens_to_flip == 5 and r.area_between == pytest.approx(-3.9)
    # one mask at a time: the same numbers
    one = faithfulness(ex, None, methods={"perfect": W, "reverse": [-x for x in W]},
                       forward=OneByOne(Additive(W, C)))
    assert one.drop(columns="case").equals(df.drop(columns="case"))


# ------------------------------------------------------------------------------- aggregation
def test_bootstrap_ci_contains_the_statistic_and_is_deterministic_per_seed():
    x = np.random.default_rng(0).exponential(3.0, size=40)
    lo, hi = bootstrap_ci(x, seed=7)
    assert lo < x.mean() < hi
    assert bootstrap_ci(x, seed=7) == (lo, hi)
    assert bootstrap_ci(x, seed=8) != (lo, hi)
    mlo, mhi = bootstrap_ci(x, "median", seed=7)
    assert mlo <= np.median(x) <= mhi
    wide = bootstrap_ci(x, level=0.99, seed=7)
    assert wide[0] <= lo and wide[1] >= hi
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_ci(x, lambda v: float(np.max(v)), seed=1)[1] == pytest.approx(x.max())
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    with pytest.raises(InputError):
        bootstrap_ci(x, level=1.5)


def test_summaries_over_cases_equal_hand_computed_numbers():
    s = summarize_tokens_to_flip([1, 2, 3, 6, 10], [False, False, False, False, True], n_boot=500, seed=3)
    assert s["cases"] == 5 and s["tokens_to_flip_mean"] == pytest.approx(4.4) and s["tokens_to_flip_median"] == 3
    assert s["flipped_within_2"] == pytest.approx(0.4) and s["flipped_within_5"] == pytest.approx(0.6)
    assert s["censored_share"] == pytest.approx(0.2)
    assert s["tokens_to_flip_mean_low"] <= 4.4 <= s["tokens_to_flip_mean_high"]
    assert s["tokens_to_flip_median_low"] <= 3 <= s["tokens_to_flip_median_high"]
    assert summarize_tokens_to_flip([1, 2, 3, 6, 10], [0, 0, 0, 0, 1], n_boot=500, seed=3) == s

    import pandas as pd

    table = pd.DataFrame({
        "case": ["a", "a", "b", "b", "c", "c"],
        "method": ["lrp", "random"] * 3,
        "tokens_to_flip": [1, 4, 2, 6, 5, 9], "censored": [False, False, False, True, False, True],
        "area_between": [3.0, 1.0, 2.0, 0.0, 1.0, -1.0], "aopc": [1.0] * 6,
        "deletion_auc": [0.1] * 6, "insertion_auc": [0.9] * 6,
        "oracle_tokens_to_flip": [1, 1, 2, 2, 6, 6], "oracle_censored": [False] * 6,
    })
    out = summarize(table, n_boot=300, seed=0).set_index("method")
    assert out.index.tolist() == ["lrp", "random", "oracle", "best found"]
    assert out.loc["lrp", "tokens_to_flip_mean"] == pytest.approx(8 / 3)
    assert out.loc["lrp", "flipped_within_2"] == pytest.approx(2 / 3)
    assert out.loc["random", "flipped_within_5"] == pytest.approx(1 / 3)
    assert out.loc["random", "censored_share"] == pytest.approx(2 / 3)
    assert out.loc["lrp", "mean_area_between"] == pytest.approx(2.0)
    assert out.loc["oracle", "tokens_to_flip_mean"] == pytest.approx(3.0) and out.loc["oracle", "cases"] == 3
    assert math.isnan(out.loc["oracle", "mean_area_between"])
    # the greedy oracle is beaten on case c (lrp flips with 5 < 6): the best found set per case
    from contrastlens.study.analyses.faithfulness import best_found

    best = best_found(table).set_index("case")
    assert best["tokens_to_flip"].tolist() == [1, 2, 5] and best.loc["c", "by"] == "lrp"
    assert best.loc["a", "by"] == "oracle" and not best["censored"].any()
    assert out.loc["best found", "tokens_to_flip_mean"] == pytest.approx(8 / 3)
    censored = table.assign(oracle_censored=[True] * 6, oracle_tokens_to_flip=[10] * 6)
    assert best_found(censored)["tokens_to_flip"].tolist() == [1, 2, 5]
    assert summarize(table, n_boot=300, seed=0).equals(summarize(table, n_boot=300, seed=0))


# ------------------------------------------------------------------------------- curves and the study analysis
def _explainer(lm, ids, t, c):
    """A memoised ``explain(method=..., **options)`` of one input, as a UnitContext gives it."""
    import functools

    @functools.cache
    def _ex(method, items):
        return cl.explain(lm, ids, t, c, method=method, method_params=dict(items) or None)

    return lambda method=None, **o: _ex(method or "attnlrp", tuple(sorted(o.items())))


def test_curves_are_the_single_curve_functions(random_lm):
    from contrastlens.study.analyses.faithfulness import faithfulness_and_curves

    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    ex = cl.explain(lm, ids, t, c)
    rand = random_scores(len(ids), 2)
    ref = DeltaForward.from_explanation(lm, ex)
    metrics, curves = faithfulness_and_curves(ex, lm, methods={"attnlrp": ex.input_relevance, "random": rand},
                                              steps=6, oracle_limit=3, case="c")
    assert metrics.equals(faithfulness(ex, lm, methods={"attnlrp": ex.input_relevance, "random": rand}, steps=6,
                                       oracle_limit=3, case="c"))
    for name, s in (("attnlrp", ex.input_relevance), ("random", rand)):
        got = {k: g.sort_values("k")["logit_diff"].to_numpy() for k, g in curves[curves["method"] == name].groupby("kind")}
        morf, lerf = morf_lerf_curves(ref, s, steps=6)
        np.testing.assert_allclose(got["morf"], morf, atol=1e-9)
        np.testing.assert_allclose(got["lerf"], lerf, atol=1e-9)
        np.testing.assert_allclose(got["insertion"], insertion_curve(ref, s, steps=6), atol=1e-9)
        assert curves[curves["method"] == name]["k"].max() == 6
    orc = greedy_oracle(ref, limit=3)
    oc = curves[curves["method"] == "oracle"].sort_values("k")
    np.testing.assert_allclose(oc["logit_diff"], orc.curve, atol=1e-12)
    assert (oc["kind"] == "morf").all() and (metrics["oracle_tokens_to_flip"] == orc.tokens).all()
    assert orc.tokens <= 3 and (metrics["limit"] == len(ids) - 1).all()  # the methods' limit is unchanged


def test_evaluate_case_runs_every_method_and_times_it(random_lm):
    from contrastlens.study.analyses.faithfulness import FaithfulnessSettings, evaluate_case

    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    explain = _explainer(lm, ids, t, c)
    s = FaithfulnessSettings(methods=["attnlrp", "ixg", "occlusion", "lrp-occlusion", "random"],
                             method_options={"lrp-occlusion": {"k": 4}}, random_seeds=[0, 5], oracle_limit=4)
    res = evaluate_case(lm, explain, s, case="c1")
    m = res.metrics
    assert m["method"].tolist() == ["attnlrp", "ixg", "occlusion", "lrp-occlusion", "random", "random"]
    assert m["seed"].tolist()[-2:] == [0, 5] and m["seed"].isna().tolist()[:4] == [True] * 4
    ref = explain("attnlrp")
    assert (m["attnlrp_seconds"] == ref.meta["seconds"]).all()
    np.testing.assert_allclose(m["cost_vs_attnlrp"], m["seconds"] / ref.meta["seconds"])
    assert m.loc[0, "cost_vs_attnlrp"] == 1.0
    assert m.loc[3, "seconds"] == explain("lrp-occlusion", k=4).meta["seconds"]
    direct = faithfulness(ref, lm, methods={"attnlrp": ref.input_relevance, "ixg": explain("ixg").input_relevance,
                                            "r5": explain("random", seed=5).input_relevance}, oracle_limit=4)
    for i, j in ((0, 0), (1, 1), (5, 2)):
        for col in ("tokens_to_flip", "censored", "area_between", "aopc", "deletion_auc", "insertion_auc",
                    "oracle_tokens_to_flip"):
            assert m.loc[i, col] == pytest.approx(direct.loc[j, col], abs=1e-9), col
    assert set(res.curves["method"]) == {"attnlrp", "ixg", "occlusion", "lrp-occlusion", "random", "oracle"}
    assert res.skipped.empty and res.meta["variants"] > 0
    # a long input: the expensive methods are skipped with a reason, the curves are cut, no oracle
    short = FaithfulnessSettings(methods=["attnlrp", "occlusion", "random"], random_seeds=[1], max_positions=5,
                                 long_steps=3, long_limit=4, oracle_max_positions=3)
    res = evaluate_case(lm, explain, short, case="c1")
    assert res.metrics["method"].tolist() == ["attnlrp", "random"] and res.metrics["long_input"].all()
    assert (res.metrics["steps"] == 3).all() and (res.metrics["limit"] == 4).all()
    assert "oracle_tokens_to_flip" not in res.metrics
    assert res.skipped["method"].tolist() == ["occlusion", "oracle"]
    assert "max_positions=5" in res.skipped["reason"][0]


@pytest.mark.parametrize("bad, match", [
    ({"methods": ["attnlrp", "nope"]}, "methods: unknown attribution method 'nope'"),
    ({"methods": []}, "methods must be a non-empty list"),
    ({"masking": "neutral"}, "needs neutral_token"),
    ({"masking": "blur"}, "masking must be one of"),
    ({"method_options": {"ig": {"steps": 4}}, "methods": ["attnlrp"]}, "method_options.ig: ig is not one of"),
    ({"method_options": {"random": {"seed": 1}}}, "give the seeds as random_seeds"),
    ({"random_seeds": []}, "random_seeds must be a non-empty list"),
    ({"steps": -1}, "steps must be"),
    ({"curve_x": "log"}, "curve_x must be one of"),
])
def test_bad_faithfulness_settings_name_the_key(bad, match):
    from contrastlens.study.analyses.faithfulness import FaithfulnessSettings, check_settings

    with pytest.raises(InputError, match=match):
        check_settings(FaithfulnessSettings(**bad))


def _synthetic_metrics():
    """10 cases in two benchmarks; 'good' is strictly better than attnlrp everywhere and costs 1.5×;
    'exact' is best but costs 50×; random is cheap and bad. AttnLRP flips in about 2 tokens on b1 only."""
    import pandas as pd

    att = {"b1": [1, 2, 2, 3, 2], "b2": [10, 12, 14, 16, 18]}
    rows = []
    for b in ("b1", "b2"):
        for i, tok in enumerate(att[b]):
            case = f"{b}-{i}"
            base = {"case": case, "benchmark": b, "model": "m", "rule": "attnlrp", "n_tokens": 40, "masking": "zero",
                    "logit_diff": 2.0, "censored": False, "aopc": 1.0, "deletion_auc": 0.2, "insertion_auc": 0.8,
                    "oracle_tokens_to_flip": 1, "oracle_censored": False, "limit": 39, "steps": 39}
            for method, t, area, cost, seed in (("attnlrp", tok, 2.0, 1.0, None), ("good", tok - 1, 1.0, 1.5, None),
                                                ("exact", 0, 3.0, 50.0, None), ("random", 30, 0.0, 0.1, 0),
                                                ("random", 31, 0.1, 0.1, 1)):
                rows.append({**base, "method": method, "tokens_to_flip": t, "area_between": area, "seed": seed,
                             "seconds": 0.01 * cost, "cost_vs_attnlrp": cost})
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


def test_report_recommendation_and_claim_follow_the_numbers():
    from contrastlens.study.analyses.faithfulness import (
        FaithfulnessSettings,
        claim_check,
        faithfulness_section,
        oracle_gaps,
        recommend,
        summary_table,
        timing_table,
    )

    m = _synthetic_metrics()
    rec = recommend(m, max_cost=2.0)
    assert (rec.method, rec.best_any_cost, rec.cases) == ("good", "exact", 10)
    assert rec.table["method"].tolist() == ["exact", "good", "attnlrp"]  # random is a baseline, never a candidate
    assert recommend(m, max_cost=100).method == "exact" and recommend(m, max_cost=1.2).method == "attnlrp"
    assert recommend(m, max_cost=0.5).method is None
    # a tie in tokens-to-flip is broken by the area between the curves
    tie = m.copy()
    tie.loc[tie["method"] == "good", "tokens_to_flip"] = tie.loc[tie["method"] == "attnlrp", "tokens_to_flip"].values
    assert recommend(tie).method == "attnlrp"
    s = summary_table(m, n_boot=500)
    assert s[["model", "benchmark"]].drop_duplicates().values.tolist() == [["all", "all"], ["all", "b1"], ["all", "b2"]]
    a = s[(s["benchmark"] == "all")].set_index("method")
    assert a.loc["attnlrp", "tokens_to_flip_mean"] == pytest.approx(8.0)
    assert a.loc["random", "cases"] == 10 and a.loc["random", "rows"] == 20
    assert a.loc["random", "tokens_to_flip_mean"] == pytest.approx(30.5)
    assert a.loc["oracle", "tokens_to_flip_mean"] == 1.0 and a.loc["oracle", "cases"] == 10
    assert a.loc["oracle", "rows"] == 10 and a.loc["best found", "rows"] == a.loc["best found", "cases"] == 10
    claim = claim_check(s, tokens=2.0, tolerance=1.0).set_index("benchmark")
    assert claim.loc["b1", "verdict"] == "holds" and claim.loc["b2", "verdict"] == "does not hold"
    assert claim.loc["all", "verdict"] == "does not hold" and claim.loc["b1", "mean"] == pytest.approx(2.0)
    assert claim.loc["b1", "flipped_within_2"] == pytest.approx(0.8)
    straddle = s[(s["benchmark"] == "all") & (s["method"] == "attnlrp")].assign(
        tokens_to_flip_mean_low=2.0, tokens_to_flip_mean_high=4.0)
    assert claim_check(straddle)["verdict"].tolist() == ["inconclusive"]
    tm = timing_table(m).set_index("method")
    assert tm.loc["exact", "median_cost"] == 50.0 and tm.loc["good", "median_seconds"] == pytest.approx(0.015)
    g = oracle_gaps(m).set_index("method")
    assert g.loc["attnlrp", "mean_gap"] == pytest.approx(7.0) and g.loc["exact", "share_at_oracle"] == 1.0
    # the same case under a second rule does not count twice
    twice = pd_concat([m, m.assign(rule="cp-lrp")])
    assert summary_table(twice, n_boot=200).equals(summary_table(m, n_boot=200))
    sec = faithfulness_section({"metrics": m}, FaithfulnessSettings(n_boot=500))
    assert "**Recommended method: good**" in sec.text
    assert "At any cost, exact is best" in sec.text and "50.00×" in sec.text
    assert "the claim **does not hold** here" in sec.text and "It does not hold on: b2." in sec.text
    assert "b1: mean 2.00" in sec.text and "holds" in sec.text
    assert "attnlrp +7.00" in sec.text
    assert len(sec.figures) == 1 and sec.figures[0].figure.axes  # no curves table: the flip figure only
    flip_ax = sec.figures[0].figure.axes[0]
    shares = {ln.get_label(): ln.get_ydata() for ln in flip_ax.lines if not ln.get_label().startswith("_")}
    assert shares["exact"][0] == 1.0 and shares["attnlrp"][2] == pytest.approx(0.4)  # 4 of 10 within 2
    assert shares["oracle"][1] == 1.0 and shares["random"][20] == 0.0


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def test_curves_figure_plots_the_normalised_means():
    import pandas as pd

    from contrastlens.study.analyses.faithfulness import curves_figure

    rows = []
    for case, d0 in (("a", 2.0), ("b", 4.0)):
        for kind, vals in (("morf", [d0, d0 / 2, -d0]), ("lerf", [d0, d0, d0 * 1.5])):
            rows += [{"case": case, "method": "x", "kind": kind, "k": k, "logit_diff": v} for k, v in enumerate(vals)]
    rows.append({"case": "c", "method": "x", "kind": "morf", "k": 0, "logit_diff": 0.0})  # Δℓ_0 = 0: left out
    fig = curves_figure(pd.DataFrame(rows), x="k")
    ys = [ln.get_ydata() for ln in fig.axes[0].lines if len(ln.get_ydata()) == 3]
    np.testing.assert_allclose(ys[0], [1.0, 0.5, -1.0])
    np.testing.assert_allclose(ys[1], [1.0, 1.0, 1.5])
    frac = curves_figure(pd.DataFrame(rows), x="fraction")
    line = [ln for ln in frac.axes[0].lines if len(ln.get_xdata()) == 51][0]
    assert line.get_ydata()[25] == pytest.approx(0.5) and line.get_xdata()[-1] == 1.0


def test_the_analysis_through_a_unit_context(random_lm):
    from contrastlens.cases.schema import FailureCase
    from contrastlens.study.analyses.faithfulness import FaithfulnessAnalysis, FaithfulnessSettings
    from contrastlens.study.base import ModelRef, StudyInfo, UnitContext, get_analysis

    lm = random_lm("llama")
    ids = lm.encode(PROMPT)
    t, c = _top2(lm, ids)
    comp = [t]
    dl = float(cl.explain(lm, ids, t, c).logit_diff)
    case = FailureCase(id="f-1", benchmark="b", item_id="1", model_source=lm.source, prompt=PROMPT, prompt_ids=ids,
                       chat=False, completion=lm.tokenizer.decode(comp), completion_ids=comp, status="localised",
                       failure_index=0, target_id=t, contrast_id=c, delta_logit=dl, clean=dl > 1, method="manual",
                       completion_before_err="", provenance=lm.provenance().to_dict())
    an = get_analysis("faithfulness")
    assert isinstance(an, FaithfulnessAnalysis) and an.version == 3
    study = StudyInfo("s", (ModelRef("m", "random:llama"),), {})
    settings = FaithfulnessSettings(methods=["attnlrp", "ixg", "random"], random_seeds=[0], n_boot=200)
    assert an.skip(case, study.models[0], study, settings) is None
    ctx = UnitContext(case=case, lm=lm, model=study.models[0], rule="attnlrp", settings=settings, study=study,
                      explain=lambda method=None, **o: cl.explain(lm, case, method=method, method_params=o or None))
    res = an.run(ctx)
    assert set(res.tables) == {"metrics", "curves"} and (res.tables["metrics"]["benchmark"] == "b").all()
    assert res.tables["metrics"]["case"].eq("f-1").all() and res.meta["n_tokens"] == len(ids)
    tables = {k: v.assign(model="m", rule="attnlrp") for k, v in res.tables.items()}
    sec = an.report(tables, study, settings)
    assert len(sec.figures) == 2 and sec.tables[0].frame["method"].tolist() == ["attnlrp", "ixg", "random", "oracle",
                                                                                   "best found"]
    assert "Recommended method" in sec.text
    assert "No faithfulness unit" in an.report({}, study, settings).text


def test_flip_search_past_the_curve_equals_tokens_to_flip_and_repeats_no_variant(random_lm):
    lm = random_lm("llama")
    ids = _ids_with_bos(lm)
    t, c = _top2(lm, ids)
    ex = cl.explain(lm, ids, t, c)
    ref = DeltaForward.from_explanation(lm, ex)
    methods = {f"r{s}": random_scores(len(ids), s) for s in range(4)} | {"attnlrp": ex.input_relevance}
    seen = []

    class Recording(DeltaForward):
        def __call__(self, masks):
            seen.append(np.asarray(masks, dtype=bool).copy())
            return super().__call__(masks)

    f = Recording.from_explanation(lm, ex)
    df = faithfulness(ex, lm, methods=methods, forward=f, steps=2, oracle=False).set_index("method")
    for name, s in methods.items():
        flip = tokens_to_flip(ref, s)
        assert (df.loc[name, "tokens_to_flip"], df.loc[name, "censored"]) == (flip.tokens, flip.censored)
    assert (df["tokens_to_flip"] > 2).any()  # some searches went past the curve
    rows = np.vstack(seen)
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    # no curve prefix is run again; the only possible repeat is "every maskable position masked" (the
    # insertion curve's start, reached again by a search that goes to k = m)
    assert all(np.array_equal(u, f.maskable) for u in uniq[counts > 1])


def test_report_only_settings_leave_the_unit_digest_alone():
    from contrastlens.study.analyses.faithfulness import FaithfulnessAnalysis, FaithfulnessSettings
    from contrastlens.study.runner import unit_digest

    def d(**kw):
        return unit_digest(case_record={"id": "c"}, model={"source": "m"}, analysis="faithfulness",
                           settings=FaithfulnessSettings(**kw), attribution={}, rule="attnlrp",
                           version=FaithfulnessAnalysis.version, report_only=FaithfulnessAnalysis.report_settings)

    base = d()
    for key, value in (("n_boot", 50), ("level", 0.9), ("seed", 3), ("max_cost", 5.0), ("claim_tokens", 3.0),
                       ("claim_tolerance", 0.5), ("curve_x", "fraction")):
        assert d(**{key: value}) == base, key
    for key, value in (("steps", 4), ("limit", 4), ("masking", "mean"), ("oracle_limit", 2)):
        assert d(**{key: value}) != base, key
    assert set(FaithfulnessAnalysis.report_settings) <= set(FaithfulnessSettings.__dataclass_fields__)
