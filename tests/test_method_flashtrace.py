"""``method="flashtrace"``: the adapter against FlashTrace's own public API and against an independent
re-derivation of Information Flow Routes from the model's modules; the properties its docs state (not Δℓ:
non-negative, the same for any target and contrast, stop tokens zero); the objective it reports; errors;
persistence; and one real SmolLM2 case (slow)."""

import importlib.util
import json
import time

import numpy as np
import pytest
import torch

import contrastlens as cl
from contrastlens.errors import InputError
from tests.conftest import PROMPT

try:
    HAS_FT = importlib.util.find_spec("flashtrace") is not None
except (ImportError, ValueError):  # a broken or blocked install
    HAS_FT = False
needs_ft = pytest.mark.skipif(not HAS_FT, reason="the flashtrace package is not installed (pip install "
                                                  "flashtrace==0.1.1)")
ARCHS = ("llama", "mistral", "qwen2", "qwen3")


# ------------------------------------------------------------------------------ independent references
def _stop(tok: str) -> bool:
    """FlashTrace's stop tokens as its docs state them: ',', '.' and whitespace-only tokens."""
    return tok.strip() in ("", ",", ".")


def ifr_reference(lm, ids):
    """Σ over layers of IFR token shares of the last position's hidden state, from the model's own modules
    (block input, attention output, eager attention weights, v_proj / o_proj, the input norm), no flashtrace
    code; and the largest error of the decomposition Σ_jh z_jh (+ the value-bias term) = attention output."""
    model = lm.model
    layers = model.model.layers
    cap = {}
    hooks = []
    for li, layer in enumerate(layers):
        def pre(mod, args, kwargs, li=li):
            cap["x", li] = (args[0] if args else kwargs["hidden_states"])[0].detach().double()

        def post(mod, args, kwargs, out, li=li):
            cap["a", li] = out[0][0].detach().double()

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_attentions=True)
            total = torch.zeros(len(ids), dtype=torch.float64)
            worst = 0.0
            i = len(ids) - 1
            for li, layer in enumerate(layers):
                x, a = cap["x", li], cap["a", li]
                A = out.attentions[li][0].double()  # [H, S, S]
                attn = layer.self_attn
                H = A.shape[0]
                wv, wo = attn.v_proj.weight.double(), attn.o_proj.weight.double()
                u = layer.input_layernorm(x.to(wv.dtype).float()).double()  # RMSNorm: exactly x · w / rms(x)
                kv = wv.shape[0] // (wo.shape[1] // H)
                hd = wo.shape[1] // H
                V = (u @ wv.T).view(len(ids), kv, hd).repeat_interleave(H // kv, dim=1)  # [S, H, hd], no bias
                F = torch.einsum("jhd,khd->jhk", V, wo.view(-1, H, hd))  # [S, H, d]
                z = A[:, i, :].T[..., None] * F
                vb = attn.v_proj.bias
                bias_part = (vb.double().view(kv, hd).repeat_interleave(H // kv, 0).reshape(-1) @ wo.T
                             if vb is not None else 0.0)
                worst = max(worst, float((z.sum((0, 1)) + bias_part - a[i]).abs().max() / a[i].abs().max()))
                xs = x[i] + a[i]  # the mid residual
                l1 = xs.abs().sum()
                p = torch.clamp(l1 - (z - xs).abs().sum(-1), min=0.0)  # [S, H]
                pr = torch.clamp(l1 - (x[i] - xs).abs().sum(), min=0.0)
                total += p.sum(1) / (p.sum() + pr + 1e-12)
    finally:
        for h in hooks:
            h.remove()
    return total, worst


def flashtrace_single_sink(total, tokens, hops):
    """FlashTrace with the explained position as its only sink, from the IFR totals: stop tokens zeroed, the
    sink kept, each hop adding r^h times the prompt scores (r: the sink's self share), the sink itself 0."""
    keep = torch.tensor([0.0 if _stop(t) else 1.0 for t in tokens], dtype=torch.float64)
    keep[-1] = 1.0
    base = total * keep
    r = float(base[-1] / base.sum())
    out = base * sum(r**h for h in range(hops + 1))
    out[-1] = 0.0
    return out.numpy()


def _fig(ex):
    return np.asarray(ex.input_relevance, dtype=np.float64)


# ------------------------------------------------------------------------------ against references
@needs_ft
@pytest.mark.parametrize("arch", ARCHS)
def test_equals_an_independent_ifr_of_the_explained_position(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    ex = cl.explain(lm, ids, 11, 17, method="flashtrace", method_params={"hops": 2})
    total, worst = ifr_reference(random_lm(arch, attn="eager"), ids)
    # IFR's per-token parts add up to the attention output (FlashTrace leaves the value bias aside)
    assert worst < 1e-5
    expected = flashtrace_single_sink(total, lm.decode_tokens(ids), hops=2)
    np.testing.assert_allclose(_fig(ex), expected, rtol=2e-4, atol=1e-6)
    assert ex.meta["attention"] == ("stored" if arch == "qwen3" else "recomputed")
    assert ex.meta["flashtrace_span"] == [len(ids) - 1, len(ids) - 1] and len(ex.meta["thinking_ratios"]) == 3
    assert ex.meta["flashtrace_version"] == "0.1.1" and ex.meta["sink_is_stop_token"] is False


@needs_ft
@pytest.mark.parametrize("arch,reasoning", [("llama", False), ("qwen2", True), ("qwen3", True)])
def test_equals_flashtraces_public_api_on_the_same_tokens(random_lm, arch, reasoning):
    """FlashTrace(model, tok).trace(prompt, target) tokenises text; our ids are that tokenisation, so the
    scores of the prompt tokens must agree (and the generated ones are 0 on both sides)."""
    from flashtrace import FlashTrace

    lm = random_lm(arch)
    tok = lm.tokenizer
    target = " Rome, and the capital" if reasoning else " Rome"
    pids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    gids = tok(target, add_special_tokens=False)["input_ids"]
    k = len(gids) - 1
    assert (k > 0) == reasoning and not _stop(tok.decode(gids[-1]))
    params = {"hops": 2, "reasoning_start": len(pids) if reasoning else None}
    ex = cl.explain(lm, pids + gids, 11, 17, method="flashtrace", method_params=params)
    ref = FlashTrace(random_lm(arch, attn="eager").model, tok).trace(
        prompt=PROMPT, target=target, output_span=(k, k), reasoning_span=(0, k - 1) if reasoning else None, hops=2)
    assert len(ref.scores) == len(pids)
    np.testing.assert_allclose(_fig(ex)[: len(pids)], ref.scores, rtol=1e-4, atol=1e-6)
    assert np.all(ex.input_relevance[len(pids):] == 0.0)
    np.testing.assert_allclose(ex.meta["thinking_ratios"], ref.thinking_ratios, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ documented properties
@needs_ft
def test_not_the_contrastive_objective_but_reports_it(random_lm):
    """The scores are non-negative and the same for any target, contrast and objective; ex.logit_diff is
    still S at the input, equal to a plain forward of the full model."""
    lm = random_lm("llama")
    ids = lm.encode(PROMPT)
    a = cl.explain(lm, ids, 11, 17, method="flashtrace")
    b = cl.explain(lm, ids, 40, 23, method="flashtrace")
    c = cl.explain(lm, ids, 11, objective="topk_avg", k=5, method="flashtrace")
    np.testing.assert_array_equal(a.input_relevance, b.input_relevance)
    np.testing.assert_array_equal(a.input_relevance, c.input_relevance)
    assert np.all(a.input_relevance >= 0) and np.count_nonzero(a.input_relevance) >= len(ids) // 2
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    assert a.logit_diff == pytest.approx(float(z[11] - z[17]), rel=1e-5, abs=1e-5)
    assert b.logit_diff == pytest.approx(float(z[40] - z[23]), rel=1e-5, abs=1e-5)
    ref = cl.explain(lm, ids, 11, objective="topk_avg", k=5)
    assert c.logit_diff == pytest.approx(ref.logit_diff, rel=1e-5, abs=1e-6)
    assert not a.hidden_relevance and not a.layer_relevance.any() and a.meta["hidden_relevance"] is False


@needs_ft
def test_stop_tokens_get_zero_and_a_stop_token_sink_is_kept(random_lm):
    lm = random_lm("qwen2")
    ids = lm.encode(PROMPT)
    tokens = lm.decode_tokens(ids)
    comma = tokens.index(",")
    ex = cl.explain(lm, ids, 11, 17, method="flashtrace")
    assert ex.input_relevance[comma] == 0.0 and ex.meta["sink_is_stop_token"] is False
    # explaining the position that holds ',' (FlashTrace alone would return NaN there)
    at = cl.explain(lm, ids, 11, 17, method="flashtrace", position=comma)
    assert at.meta["sink_is_stop_token"] is True
    total, _ = ifr_reference(random_lm("qwen2", attn="eager"), ids[: comma + 1])
    expected = flashtrace_single_sink(total, tokens[: comma + 1], hops=1)
    np.testing.assert_allclose(_fig(at)[: comma + 1], expected, rtol=2e-4, atol=1e-6)
    assert np.all(at.input_relevance[comma:] == 0.0) and at.input_relevance[:comma].sum() > 0


@needs_ft
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_recomputed_and_stored_attention_agree_and_the_model_is_restored(random_lm, arch):
    lm = random_lm(arch)
    ids = lm.encode(PROMPT)
    with torch.no_grad():
        before = lm.model(input_ids=torch.tensor([ids])).logits
    r = cl.explain(lm, ids, 11, 17, method="flashtrace", method_params={"attention": "recompute"})
    s = cl.explain(lm, ids, 11, 17, method="flashtrace", method_params={"attention": "stored"})
    assert r.meta["attention"] == "recomputed" and s.meta["attention"] == "stored"
    np.testing.assert_allclose(r.input_relevance, s.input_relevance, rtol=1e-4, atol=1e-6)
    assert r.spec == s.spec  # a runtime option: the numbers do not depend on it
    assert lm.attn_implementation == "sdpa" and s.spec.attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=torch.tensor([ids])).logits, before)


@needs_ft
def test_hops_and_reasoning_start_change_the_spec_and_save_load(random_lm, tmp_path):
    lm = random_lm("qwen3")
    ids = lm.encode(PROMPT)
    a = cl.explain(lm, ids, 11, 17, method="flashtrace")
    b = cl.explain(lm, ids, 11, 17, method="flashtrace", method_params={"hops": 3, "reasoning_start": 8})
    assert a.spec.options == {"hops": 1, "reasoning_start": None}
    assert b.spec.options == {"hops": 3, "reasoning_start": 8} and a.spec.hash() != b.spec.hash()
    assert np.all(b.input_relevance[8:] == 0.0) and b.input_relevance[:8].sum() > 0
    assert b.meta["flashtrace_span"] == [8, len(ids) - 1]
    for ex in (a, b):
        back = cl.Explanation.load(ex.save(tmp_path / f"ft{ex.spec.hash()}.ctl"))
        assert back.spec == ex.spec and back.meta == json.loads(json.dumps(ex.meta))
        np.testing.assert_array_equal(back.input_relevance, ex.input_relevance)
        assert "method flashtrace" in back.to_html()


@needs_ft
def test_importing_flashtrace_leaves_matplotlib_settings_alone():
    """flashtrace's import sets text.usetex and mathtext.default process-wide; the adapter restores them."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.rcParams['mathtext.default'] = 'it'\n"
            "from contrastlens.attribution.methods.flashtrace import load_flashtrace; load_flashtrace()\n"
            "print(matplotlib.rcParams['mathtext.default'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "it"


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("arch", ["gpt2", "gemma3", "olmo2"])
def test_unsupported_architectures_are_a_clear_error(random_lm, arch):
    kind = {"gemma3": "gemma3_text"}.get(arch, arch)
    with pytest.raises(InputError, match=f"flashtrace supports llama, mistral, qwen2, qwen3 .*this model is {kind}$"):
        cl.explain(random_lm(arch), PROMPT, 11, 17, method="flashtrace")


def test_a_missing_package_is_a_clear_error(random_lm, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "flashtrace", None)
    monkeypatch.setitem(sys.modules, "flashtrace.improved", None)
    with pytest.raises(InputError, match=r"method flashtrace needs the flashtrace package \(pip install "
                                         r"flashtrace==0\.1\.1\)"):
        cl.explain(random_lm("llama"), PROMPT, 11, 17, method="flashtrace")


@pytest.mark.parametrize("arch,options,msg", [
    ("qwen3", {"attention": "recompute"}, "attention='recompute' is not exact on this qwen3 model"),
    ("llama", {"attention": "fast"}, "attention must be one of auto, recompute, stored"),
    ("llama", {"hops": -1}, "hops must be a non-negative integer"),
    ("llama", {"reasoning_start": 0}, "reasoning_start 0 must lie in 1"),
    ("llama", {"reasoning_start": 99}, "reasoning_start 99 must lie in 1"),
    ("llama", {"reasoning_start": 2.5}, "reasoning_start must be a position"),
    ("llama", {"chunk_tokens": 0}, "chunk_tokens must be a positive integer"),
    ("llama", {"span": 1}, "method flashtrace has no option 'span'"),
])
def test_bad_options_are_errors(random_lm, arch, options, msg):
    with pytest.raises(InputError, match=msg):
        cl.explain(random_lm(arch), PROMPT, 11, 17, method="flashtrace", method_params=options)


# ------------------------------------------------------------------------------ a real model
@needs_ft
@pytest.mark.slow
def test_a_real_smollm2_ifeval_case(tmp_path):
    from contrastlens.cases.io import load_cases

    try:
        lm = cl.load_model("smollm2-135m-instruct")
    except Exception as e:  # pragma: no cover - no cached weights here
        pytest.skip(f"smollm2-135m-instruct cannot load: {e}")
    case = next(c for c in load_cases("examples/cases/ifeval.jsonl", clean_only=True) if c.id == "ifeval-1128")
    ids, target, contrast = case.explained_inputs()
    t0 = time.perf_counter()
    ex = cl.explain(lm, case, method="flashtrace")
    assert time.perf_counter() - t0 < 120
    rel = _fig(ex)
    assert np.isfinite(rel).all() and np.all(rel >= 0) and np.count_nonzero(rel) > len(ids) // 2
    assert rel[-1] == 0.0 and ex.meta["attention"] == "recomputed"
    with torch.no_grad():
        z = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    assert ex.logit_diff == pytest.approx(float(z[target] - z[contrast]), abs=1e-3)
    assert ex.logit_diff == pytest.approx(case.delta_logit, abs=1e-2)
    total, worst = ifr_reference(cl.load_model("smollm2-135m-instruct", attn_implementation="eager"), ids)
    assert worst < 1e-4
    np.testing.assert_allclose(rel, flashtrace_single_sink(total, lm.decode_tokens(ids), hops=1), rtol=1e-3,
                               atol=1e-5)
    stored = cl.explain(lm, case, method="flashtrace", method_params={"attention": "stored"})
    np.testing.assert_allclose(stored.input_relevance, rel, rtol=1e-3, atol=1e-5)
    back = cl.Explanation.load(ex.save(tmp_path / "case.ctl"))
    assert back.spec == ex.spec and back.segments == ex.segments
    np.testing.assert_array_equal(back.input_relevance, ex.input_relevance)


@needs_ft
def test_leaves_no_hooks_behind_and_attentions_still_work(random_lm):
    """transformers installs output-capturing hooks on the first ``output_attentions`` call (the stored-
    attention path, qwen3) and keeps them; the adapter restores the model as it found it."""
    lm = random_lm("qwen3", attn="eager", seed=3)
    ids = lm.encode(PROMPT)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    ex = cl.explain(lm, ids, 11, 17, method="flashtrace")
    assert ex.meta["attention"] == "stored"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([ids]), output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == len(lm.model.model.layers)
