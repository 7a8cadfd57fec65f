"""The exact closed form against batch-packed replay, and the invariants of the edge definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastlens.graph._model import PositionEmbeddings, block_view
from contrastlens.graph.exact import ExactAttention, dense_attention_matrix
from contrastlens.graph.replay import replay_forward, replay_matrix, replay_rows
from contrastlens.rules.context import RULES, apply_rules

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "olmo2", "olmo3", "gpt2")


def _explain(lm, n: int, seed: int = 0, rule: str = "attnlrp"):
    from contrastlens.attribution.explain import explain

    ids = torch.randint(5, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return explain(lm, ids, target=11, contrast=17, keep_states=True, rule=rule)


def _rel(ex, name):
    h, g = ex.states[name]
    return (h.float() * g.float()).sum(-1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [13, 37])
def test_closed_form_matches_replay(random_lm, arch, n):
    lm = random_lm(arch)
    ex = _explain(lm, n)
    m, ad = lm.model, lm.adapter
    rs = RULES["attnlrp"]
    with apply_rules(m, "attnlrp"):
        pe = PositionEmbeddings(m, ad, n, device="cpu", dtype=torch.float32)
        for blk in range(ad.num_layers(m)):
            src, tgt = ("emb" if blk == 0 else str(blk - 1)), f"{blk}.mid"
            h, _ = ex.states[src]
            # the replayed sub-block maps (explicit masks, own rotary) reproduce the model's states
            torch.testing.assert_close(replay_forward(m, ad, src, tgt, h), ex.states[tgt][0], rtol=1e-5, atol=1e-5)
            Ar = replay_matrix(m, ad, src, tgt, h, ex.states[tgt][1], batch_size=7)
            ea = ExactAttention(block_view(m, ad, blk), h, ex.states[tgt][1], pe(blk), c_v=rs.v_scale,
                                c_k=rs.k_scale, block_rows=5)
            Ae = dense_attention_matrix(ea, _rel(ex, src))
            scale = Ar.abs().max()
            assert scale > 0
            assert (Ae - Ar).abs().max() <= 1e-5 * scale, (arch, blk)


@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "olmo3"])
def test_invariants_exact_graph(random_lm, arch):
    from contrastlens.graph.build import attribution_graph

    lm = random_lm(arch)
    ex = _explain(lm, 23, seed=1)
    g = attribution_graph(lm, explanation=ex)
    for s, t in g.transitions:
        A = g.matrix(s, t).astype(np.float64)
        R = g.relevance[s].astype(np.float64)
        scale = np.abs(R).max()
        np.testing.assert_allclose(A.sum(0), R, atol=1e-5 * scale)  # I1
        assert np.abs(np.triu(A, 1)).max() == 0.0  # I3
    last = g.relevance[g.layers[-1]]
    assert np.abs(last[:-1]).max() == 0.0  # I4: only the last position carries relevance ...
    share = g.meta["final_norm_bias_share"]
    assert abs(last[-1] + share - ex.logit_diff) <= 1e-4 * max(1.0, abs(ex.logit_diff))  # ... and it is the logit diff


def test_full_block_transition_equals_attention_transition(random_lm):
    """Without mid nodes, l-1 -> l (a whole block) has the same matrix as l-1 -> l.mid, by replay too."""
    from contrastlens.graph.build import attribution_graph

    lm = random_lm("llama")
    ex = _explain(lm, 17)
    g = attribution_graph(lm, explanation=ex, mid=False)
    assert g.layers == ["emb", "0", "1", "2"]
    with apply_rules(lm.model, "attnlrp"):
        Ar = replay_matrix(lm.model, lm.adapter, "0", "1", ex.states["0"][0], ex.states["1"][1]).numpy()
    Ae = g.matrix("0", "1")
    assert np.abs(Ae - Ar).max() <= 1e-5 * np.abs(Ar).max()


def test_cp_lrp_closed_form(random_lm):
    lm = random_lm("qwen3")
    ex = _explain(lm, 15, rule="cp-lrp")
    m, ad = lm.model, lm.adapter
    rs = RULES["cp-lrp"]
    with apply_rules(m, "cp-lrp"):
        pe = PositionEmbeddings(m, ad, 15, device="cpu", dtype=torch.float32)
        Ar = replay_matrix(m, ad, "0", "1.mid", ex.states["0"][0], ex.states["1.mid"][1])
        ea = ExactAttention(block_view(m, ad, 1), ex.states["0"][0], ex.states["1.mid"][1], pe(1),
                            c_v=rs.v_scale, c_k=rs.k_scale)
        Ae = dense_attention_matrix(ea, _rel(ex, "0"))
    assert (Ae - Ar).abs().max() <= 1e-5 * Ar.abs().max()


def test_replay_batch_size_invariance_and_progress(random_lm):
    lm = random_lm("qwen2")
    ex = _explain(lm, 19)
    h, g = ex.states["emb"][0], ex.states["1.mid"][1]
    calls = []
    with apply_rules(lm.model, "attnlrp"):
        A1 = replay_rows(lm.model, lm.adapter, "emb", "1.mid", h, g, batch_size=1)
        A5 = replay_rows(lm.model, lm.adapter, "emb", "1.mid", h, g, batch_size=5,
                         progress=lambda d, t: calls.append((d, t)))
        A19 = replay_rows(lm.model, lm.adapter, "emb", "1.mid", h, g, batch_size=19)
    torch.testing.assert_close(A1, A5, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(A1, A19, rtol=1e-5, atol=1e-7)
    assert calls == [(5, 19), (10, 19), (15, 19), (19, 19)]


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_replay_eager_equals_sdpa(random_lm, arch):
    res = []
    for attn in ("eager", "sdpa"):
        lm = random_lm(arch, attn)
        ex = _explain(lm, 21)
        with apply_rules(lm.model, "attnlrp"):
            res.append(replay_matrix(lm.model, lm.adapter, "0", "1.mid", ex.states["0"][0], ex.states["1.mid"][1],
                                     batch_size=8))
    torch.testing.assert_close(res[0], res[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "olmo3"])
def test_non_adjacent_replay_column_sums(random_lm, arch):
    from contrastlens.graph.build import attribution_graph

    lm = random_lm(arch)
    ex = _explain(lm, 16)
    g = attribution_graph(lm, explanation=ex, layers=["emb", "2"])
    assert g.edges[("emb", "2")].info["method"] == "replay"
    A = g.matrix("emb", "2").astype(np.float64)
    R = _rel(ex, "emb").double().numpy()
    np.testing.assert_allclose(A.sum(0), R, atol=1e-5 * np.abs(R).max())
    assert np.abs(np.triu(A, 1)).max() == 0.0


def test_exact_and_replay_graphs_agree_with_pruning(random_lm):
    from contrastlens.graph.build import attribution_graph

    lm = random_lm("qwen3")
    ex = _explain(lm, 29, seed=3)
    for prune, cache in (("cum_mass:0.85", 0), ("cum_mass:0.85", 0.001), ("cum_mass:0.85", None),
                         ("threshold:0.005", None), (None, None)):
        ge = attribution_graph(lm, explanation=ex, prune=prune, block_rows=4, cache_mib=cache)
        gr = attribution_graph(lm, explanation=ex, prune=prune, method="replay")
        for key in ge.transitions:
            a, b = ge.edges[key], gr.edges[key]
            assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols), (prune, cache, key)
            np.testing.assert_allclose(a.vals, b.vals, atol=1e-5 * max(np.abs(b.vals).max(), 1e-12))


def test_node_threshold_rows(random_lm):
    from contrastlens.graph.build import attribution_graph

    lm = random_lm("qwen3")
    ex = _explain(lm, 21)
    tau = 0.01
    g = attribution_graph(lm, explanation=ex, node_threshold=tau)
    gr = attribution_graph(lm, explanation=ex, node_threshold=tau, method="replay")
    for s, t in g.transitions:
        rows = set(g.edges[(s, t)].rows.tolist())
        assert all(abs(g.relevance[t][j]) > tau for j in rows)
        np.testing.assert_allclose(g.matrix(s, t), gr.matrix(s, t), atol=1e-5 * max(np.abs(gr.matrix(s, t)).max(), 1e-9))


def test_kernel_capture_leaves_no_trace_in_transformers():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    import contrastlens as cl

    before = set(AttentionInterface._global_mapping)
    lm = cl.load_model("random:qwen3")
    cl.attribution_graph(lm, "The capital of France is Paris", target=11, contrast=17)
    assert set(AttentionInterface._global_mapping) == before
    assert "contrastlens_capture" not in ALL_ATTENTION_FUNCTIONS
