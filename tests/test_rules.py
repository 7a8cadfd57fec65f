"""The rules: exact forward, the modified gradient against an independent reference, backends,
precision, restoration and isolation."""

import pytest
import torch

from contrastlens.rules import apply_rules, rules_active
from tests.conftest import ARCHS, PROMPT


def _ids(lm, text=PROMPT):
    return torch.tensor([lm.encode(text)])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_forward_bit_identical_under_rules(random_lm, arch, attn):
    lm = random_lm(arch, attn)
    ids = _ids(lm)
    with torch.no_grad():
        plain = lm.model(ids).logits
    with apply_rules(lm.model, "attnlrp"), torch.no_grad():
        ruled = lm.model(ids).logits
    with apply_rules(lm.model, "cp-lrp", checkpointing=True), torch.no_grad():
        cp = lm.model(ids).logits
    assert torch.equal(plain, ruled)
    assert torch.equal(plain, cp)


def _plain_input_grad(lm, ids, t, c):
    emb = lm.adapter.embedding(lm.model)(ids).detach().requires_grad_(True)
    logits = lm.model(inputs_embeds=emb).logits[0, -1]
    (g,) = torch.autograd.grad(logits[t] - logits[c], emb)
    return (emb * g).sum(-1)[0].detach()


@pytest.mark.parametrize("arch", ["qwen3", "gpt2"])
def test_rules_removed_after_context(random_lm, arch):
    lm = random_lm(arch)
    ids = _ids(lm)
    before = _plain_input_grad(lm, ids, 5, 7)
    with apply_rules(lm.model):
        assert rules_active(lm.model)
        ruled = _plain_input_grad(lm, ids, 5, 7)
    after = _plain_input_grad(lm, ids, 5, 7)
    assert not rules_active(lm.model)
    assert torch.equal(before, after)
    assert not torch.allclose(before, ruled, atol=1e-4)  # the rules did change the gradient
    assert all(p.requires_grad for p in lm.model.parameters())
    assert not any("forward" in m.__dict__ for m in lm.model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_rules_restored_after_exception(random_lm):
    lm = random_lm("llama")
    with pytest.raises(RuntimeError), apply_rules(lm.model):
        raise RuntimeError("boom")
    assert not rules_active(lm.model)
    assert not any("forward" in m.__dict__ for m in lm.model.modules())


def test_two_architectures_do_not_interact(random_lm):
    a, b = random_lm("qwen3"), random_lm("gpt2")
    ids_a, ids_b = _ids(a), _ids(b)
    plain_b = _plain_input_grad(b, ids_b, 3, 4)
    with apply_rules(a.model):
        ruled_a = _plain_input_grad(a, ids_a, 3, 4)
        assert torch.equal(_plain_input_grad(b, ids_b, 3, 4), plain_b)  # b untouched while a is patched
        with apply_rules(b.model, "cp-lrp"):
            assert torch.allclose(_plain_input_grad(a, ids_a, 3, 4), ruled_a, rtol=0, atol=0)
    # a second instance of the same architecture is untouched too
    from contrastlens.models.loading import load_model

    a2 = load_model("random:qwen3")
    with apply_rules(a.model):
        assert torch.equal(_plain_input_grad(a2, ids_a, 3, 4), _plain_input_grad(a2, ids_a, 3, 4))
        assert not torch.allclose(_plain_input_grad(a2, ids_a, 3, 4), ruled_a, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# An independent reference: the rules written out with plain autograd tricks on the model's own
# modules (forward hooks that replace outputs with "value + (linear surrogate - its detached self)"
# and tensor gradient hooks), then plain Input x Gradient. Different mechanism, same mathematics.
def _reference_relevance(lm, ids, t, c, rule="attnlrp"):
    import torch.nn as nn

    model, ad = lm.model, lm.adapter
    handles = []
    q_s, k_s, v_s = (0.25, 0.25, 0.5) if rule == "attnlrp" else (0.0, 0.0, 1.0)

    def surrogate(y, z):
        return y.detach() + (z - z.detach())

    def norm_hook(mod, args, y):
        x = args[0]
        xf = x.float()
        if isinstance(mod, nn.LayerNorm):
            r = torch.rsqrt(xf.var(-1, keepdim=True, unbiased=False) + mod.eps).detach()
            z = (xf - xf.mean(-1, keepdim=True)) * r * mod.weight.float()
        else:
            eps = getattr(mod, "variance_epsilon", None) or mod.eps
            r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()
            z = xf * r * (mod.weight.float() + ad.norm.weight_offset)
        return surrogate(y, z.to(y.dtype))

    def act_hook(mod, args, y):
        x = args[0]
        if rule == "cp-lrp" and ad.block.gate_product_consumer:
            return y.detach()
        ratio = torch.where(x == 0, torch.zeros_like(x), y / torch.where(x == 0, torch.ones_like(x), x)).detach()
        return surrogate(y, x * ratio)

    def scale_out(s):
        def hook(mod, args, y):
            if s == 0:
                return y.detach()
            y = y * 1.0
            y.register_hook(lambda g: g * s)
            return y
        return hook

    def fused_qkv(mod, args, y):
        d = y.shape[-1] // 3
        sc = torch.tensor([q_s] * d + [k_s] * d + [v_s] * d)
        y = y * 1.0
        y.register_hook(lambda g: g * sc)
        return y

    def half_in(mod, args):
        x = args[0] * 1.0
        x.register_hook(lambda g: g / 2)
        return (x,)

    mods = [ad.final_norm_module(model)]
    for blk in ad.blocks(model):
        mods += [blk.get_submodule(p) for p in ad.block.norms]
        handles.append(blk.get_submodule(ad.block.act).register_forward_hook(act_hook))
        if ad.block.qkv_proj:
            handles.append(blk.get_submodule(ad.block.qkv_proj).register_forward_hook(fused_qkv))
        else:
            for p, s in ((ad.block.q_proj, q_s), (ad.block.k_proj, k_s), (ad.block.v_proj, v_s)):
                handles.append(blk.get_submodule(p).register_forward_hook(scale_out(s)))
        if ad.block.gate_product_consumer and rule == "attnlrp":
            handles.append(blk.get_submodule(ad.block.gate_product_consumer).register_forward_pre_hook(half_in))
    handles += [m.register_forward_hook(norm_hook) for m in mods]
    try:
        model.eval()
        emb = ad.embedding(model)(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits[0, -1].float()
        s = logits[t] - logits[c]
        (g,) = torch.autograd.grad(s, emb)
    finally:
        for h in handles:
            h.remove()
    return (emb.detach() * g).float().sum(-1)[0], float(s)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rule", ["attnlrp", "cp-lrp"])
def test_relevance_matches_reference_implementation(random_lm, arch, rule):
    from contrastlens import explain

    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    ex = explain(lm, ids, 11, 17, rule=rule)
    ref, s = _reference_relevance(lm, torch.tensor([ids]), 11, 17, rule)
    assert ex.logit_diff == pytest.approx(s, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(torch.from_numpy(ex.input_relevance), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "gpt2", "olmo2"])
def test_eager_equals_sdpa(random_lm, arch):
    from contrastlens import explain

    a, b = random_lm(arch, "sdpa"), random_lm(arch, "eager")
    ids = a.encode(PROMPT)
    ea, eb = explain(a, ids, 11, 17), explain(b, ids, 11, 17)
    for f in ("input_relevance", "layer_relevance", "mid_relevance"):
        torch.testing.assert_close(torch.from_numpy(getattr(ea, f)), torch.from_numpy(getattr(eb, f)),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen3", "gpt2", "olmo3"])
def test_checkpointing_on_equals_off(random_lm, arch):
    from contrastlens import explain

    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    off, on = explain(lm, ids, 11, 17), explain(lm, ids, 11, 17, checkpointing=True)
    for f in ("input_relevance", "layer_relevance", "mid_relevance"):
        torch.testing.assert_close(torch.from_numpy(getattr(on, f)), torch.from_numpy(getattr(off, f)),
                                   rtol=1e-5, atol=1e-6)
    assert on.logit_diff == pytest.approx(off.logit_diff, rel=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "gpt2"])
def test_bf16_close_to_fp32(random_lm, arch):
    import numpy as np

    from contrastlens import explain

    f32, bf = random_lm(arch, dtype="float32"), random_lm(arch, dtype="bfloat16")
    ids = f32.encode(PROMPT)
    a, b = explain(f32, ids, 11, 17), explain(bf, ids, 11, 17)
    assert b.input_relevance.dtype == np.float32
    assert b.logit_diff == pytest.approx(a.logit_diff, abs=0.05 * max(1.0, abs(a.logit_diff)))
    ra, rb = a.input_relevance, b.input_relevance
    rel_err = np.linalg.norm(ra - rb) / np.linalg.norm(ra)
    assert rel_err < 0.1, rel_err
    assert np.corrcoef(ra, rb)[0, 1] > 0.99
