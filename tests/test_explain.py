"""The explanation engine: identities, causality, a hand-built model, objectives, bad input."""

import numpy as np
import pytest
import torch

import contrastlens as cl
from contrastlens.errors import InputError, NumericalError, TokenizationError
from tests.conftest import ARCHS, PROMPT


@pytest.mark.parametrize("arch", ARCHS)
def test_final_layer_carries_logit_diff(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    ex = cl.explain(lm, ids, 11, 17)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0, -1].double()
    assert ex.logit_diff == pytest.approx(float(logits[11] - logits[17]), rel=1e-5, abs=1e-6)
    last = ex.layer_relevance[-1]
    assert last[-1] + ex.final_norm_bias_share == pytest.approx(ex.logit_diff, rel=1e-5, abs=1e-6)
    assert np.all(last[:-1] == 0.0)  # only the explained position carries relevance at the last layer
    if arch != "gpt2":
        assert ex.final_norm_bias_share == 0.0
    assert ex.layer_relevance.shape == (lm.num_layers + 1, len(ids))
    assert ex.mid_relevance.shape == (lm.num_layers, len(ids))
    assert ex.input_relevance.dtype == np.float32
    # rotary models: the block-0 input is the token embedding itself
    if arch != "gpt2":
        np.testing.assert_allclose(ex.layer_relevance[0], ex.input_relevance, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "olmo2", "gemma3"])
def test_relevance_after_explained_position_is_zero(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    p = 6
    ex = cl.explain(lm, ids, 11, 17, position=p)
    assert ex.position == p
    for rows in (ex.layer_relevance, ex.mid_relevance, ex.input_relevance[None]):
        assert np.all(rows[:, p + 1 :] == 0.0)
        assert np.any(rows[:, : p + 1] != 0.0)
    # and the result equals explaining the truncated prompt
    short = cl.explain(lm, ids[: p + 1], 11, 17)
    np.testing.assert_allclose(ex.input_relevance[: p + 1], short.input_relevance, rtol=1e-4, atol=1e-6)
    assert ex.layer_relevance[-1, p] + ex.final_norm_bias_share == pytest.approx(ex.logit_diff, rel=1e-5)


@pytest.mark.parametrize("objective,kw", [("max_logit", {}), ("demean", {}), ("topk_avg", {"k": 5}),
                                          ("contrast_rank", {"rank": 3}), ("logit_diff", {})])
def test_objectives_values_and_identity(random_lm, objective, kw):
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    contrast = 17 if objective == "logit_diff" else None
    ex = cl.explain(lm, ids, 11 if objective != "contrast_rank" else None, contrast, objective=objective, **kw)
    with torch.no_grad():
        z = lm.model(torch.tensor([ids])).logits[0, -1].double()
    order = torch.argsort(z, descending=True)
    expected = {
        "max_logit": z[11],
        "demean": z[11] - z.mean(),
        "topk_avg": z[11] - z[order[:5]].mean(),
        "contrast_rank": z[order[0]] - z[order[2]],
        "logit_diff": z[11] - z[17],
    }[objective]
    assert ex.logit_diff == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert ex.layer_relevance[-1, -1] == pytest.approx(ex.logit_diff, rel=1e-5, abs=1e-6)
    if objective == "contrast_rank":
        assert (ex.target_id, ex.contrast_id) == (int(order[0]), int(order[2]))


def _hand_built_model():
    """One Llama block whose answer is known: uniform attention (zero queries), identity value and
    output maps, no MLP; embeddings are orthonormal except token 5, which alone has a component along
    the unembedding difference of target 0 vs contrast 1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import random_tokenizer

    d, v = 16, 512
    cfg = LlamaConfig(vocab_size=v, hidden_size=d, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=d, max_position_embeddings=64, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for n in m.modules():
            if "RMSNorm" in type(n).__name__:
                n.weight.fill_(1.0)
        emb = m.model.embed_tokens.weight
        for tok in range(v):
            emb[tok, 2 + tok % (d - 2)] = 1.0  # orthogonal to dims 0 and 1
        emb[5, 0] = 1.5  # the one token that carries the answer
        att = m.model.layers[0].self_attn
        att.k_proj.weight.copy_(torch.randn(d, d, generator=g))
        att.v_proj.weight.copy_(torch.eye(d))
        att.o_proj.weight.copy_(torch.eye(d))
        m.lm_head.weight[0, 0] = 1.0
        m.lm_head.weight[1, 0] = -1.0
        m.lm_head.weight[2:, 2:] = 0.1 * torch.randn(v - 2, d - 2, generator=g)
    return LoadedModel(m, random_tokenizer(v), "hand-built")


def test_hand_built_model_puts_relevance_on_the_answer_token():
    lm = _hand_built_model()
    ids = [7, 9, 5, 11, 13, 8]
    ex = cl.explain(lm, ids, 0, 1)
    assert ex.logit_diff > 0.1
    r = ex.input_relevance
    assert r[2] > 0
    assert abs(r[2]) / np.abs(r).sum() > 0.999
    np.testing.assert_allclose(np.delete(r, 2), 0.0, atol=1e-6)
    # moving the answer token moves the relevance
    ex2 = cl.explain(lm, [5, 9, 7, 11, 13, 8], 0, 1)
    assert int(np.argmax(np.abs(ex2.input_relevance))) == 0


def test_string_targets_resolve_in_context(random_lm):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, "The capital of France is", target=" Paris", contrast=" Rome")
    assert ex.target_str == " Paris" and ex.contrast_str == " Rome"
    assert ex.target_id == lm.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    ex_ids = cl.explain(lm, "The capital of France is", target=ex.target_id, contrast=ex.contrast_id)
    np.testing.assert_array_equal(ex.input_relevance, ex_ids.input_relevance)


def test_chat_template(random_lm):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, "What is 3 + 5?", target=11, contrast=17, chat=True)
    assert "<|im_start|>" in ex.tokens and ex.special_mask[ex.tokens.index("<|im_start|>")]


def test_bad_inputs(random_lm):
    lm = random_lm("qwen3")
    with pytest.raises(InputError, match="empty"):
        cl.explain(lm, "   ", target=1, contrast=2)
    with pytest.raises(InputError, match="same token"):
        cl.explain(lm, PROMPT, target=" Paris", contrast=" Paris")
    with pytest.raises(TokenizationError, match="not one token.*tokenises as"):
        cl.explain(lm, PROMPT, target=" Parisxyz", contrast=" Rome")
    with pytest.raises(TokenizationError, match="outside the vocabulary"):
        cl.explain(lm, PROMPT, target=10**6, contrast=1)
    with pytest.raises(TokenizationError, match="outside the vocabulary"):
        cl.explain(lm, [1, 2, 99999], target=3, contrast=1)
    with pytest.raises(InputError, match="longer than the model's context"):
        cl.explain(lm, [5] * 2049, target=3, contrast=1)
    with pytest.raises(InputError, match="needs a contrast"):
        cl.explain(lm, PROMPT, target=3)
    with pytest.raises(cl.ContrastLensError, match="unknown objective"):
        cl.explain(lm, PROMPT, target=3, contrast=4, objective="nope")
    with pytest.raises(InputError, match="position"):
        cl.explain(lm, [1, 2, 3], target=3, contrast=4, position=5)


def test_nan_forward_is_a_clear_error():
    from contrastlens.models.loading import load_model

    lm = load_model("random:llama", dtype="float16")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.mul_(1e5)  # fp16 overflow
    with pytest.raises(NumericalError, match="NaN/inf"):
        cl.explain(lm, PROMPT, target=3, contrast=4)


def test_unknown_architecture_is_a_clear_error():
    from transformers import FalconConfig, FalconForCausalLM

    from contrastlens.errors import UnsupportedArchitectureError
    from contrastlens.models.loaded import LoadedModel

    m = FalconForCausalLM(FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedArchitectureError, match="'falcon' is not supported.*supported: .*qwen3"):
        LoadedModel(m, None, "falcon")


def test_save_load_roundtrip_and_renderings(tmp_path, random_lm):
    lm = random_lm("gemma3")
    ex = cl.explain(lm, PROMPT, target=11, contrast=17)
    path = ex.save(tmp_path / "ex.ctl")
    back = cl.Explanation.load(path)
    for f in ("input_relevance", "layer_relevance", "mid_relevance"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ex, f))
    assert back.tokens == ex.tokens and back.logit_diff == ex.logit_diff and back.top_logits == ex.top_logits
    html = ex.to_html(tmp_path / "ex.html")
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    assert html.count('class="cl-tok') == len(ex.tokens)
    assert f"{ex.logit_diff:.4f}" in html
    assert "cl-explanation" in ex._repr_html_()
    tex = ex.to_latex()
    assert tex.count(r"\colorbox") == len(ex.tokens)
    png = ex.to_png(tmp_path / "ex.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.ctl").write_text("nope")
    with pytest.raises(cl.ContrastLensError, match="not a readable explanation"):
        cl.Explanation.load(tmp_path / "bad.ctl")
