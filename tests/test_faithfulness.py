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
    np.testing.assert_allclose(a, o, atol=1e-6, rtol=0)
    np.testing.assert_allclose(b, o, atol=1e-6, rtol=0)
    assert (five.n_forwards, one.n_forwards, one.n_variants) == (5, 23, 23)
    # the metrics, batched (one call) and one mask at a time
    scores = np.random.default_rng(3).normal(size=len(ids))
    for fn in (deletion_curve, insertion_curve):
        np.testing.assert_allclose(fn(auto, scores), fn(OneByOne(one), scores), atol=1e-6, rtol=0)
    m1, l1 = morf_lerf_curves(auto, scores)
    m2, l2 = morf_lerf_curves(OneByOne(one), scores)
    np.testing.assert_allclose(np.r_[m1, l1], np.r_[m2, l2], atol=1e-6, rtol=0)
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
        "oracle_tokens_to_flip": [1, 1, 2, 2, 3, 3], "oracle_censored": [False] * 6,
    })
    out = summarize(table, n_boot=300, seed=0).set_index("method")
    assert out.index.tolist() == ["lrp", "random", "oracle"]
    assert out.loc["lrp", "tokens_to_flip_mean"] == pytest.approx(8 / 3)
    assert out.loc["lrp", "flipped_within_2"] == pytest.approx(2 / 3)
    assert out.loc["random", "flipped_within_5"] == pytest.approx(1 / 3)
    assert out.loc["random", "censored_share"] == pytest.approx(2 / 3)
    assert out.loc["lrp", "mean_area_between"] == pytest.approx(2.0)
    assert out.loc["oracle", "tokens_to_flip_mean"] == pytest.approx(2.0) and out.loc["oracle", "cases"] == 3
    assert math.isnan(out.loc["oracle", "mean_area_between"])
    assert summarize(table, n_boot=300, seed=0).equals(summarize(table, n_boot=300, seed=0))
