"""The resolved attribution spec, provenance and fingerprints, and everything built from an explanation
taking its spec from it."""

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import contrastlens as cl
from contrastlens.attribution.spec import AttributionSpec
from contrastlens.errors import InputError
from contrastlens.provenance import ModelMismatchWarning
from tests.conftest import PROMPT


# ----------------------------------------------------------------------------------------- the spec
def test_explain_records_the_resolved_spec(random_lm):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="CP_LRP")
    ids = lm.encode(PROMPT)
    assert ex.spec == AttributionSpec(target_id=11, contrast_id=17, position=len(ids) - 1, objective="logit_diff",
                                      objective_params=(), rule="cp-lrp", dtype="float32", attn_implementation="sdpa")
    assert (ex.rule, ex.objective, ex.target_id, ex.contrast_id, ex.position) == ("cp-lrp", "logit_diff", 11, 17,
                                                                               len(ids) - 1)
    top = cl.explain(lm, PROMPT, 11, objective="topk_avg")
    assert top.spec.params == {"k": 10} and top.spec.contrast_id is None
    ranked = cl.explain(lm, PROMPT, objective="contrast_rank", rank=3)
    assert ranked.spec.params == {"rank": 3} and ranked.spec.target_id == ranked.top_logits[0][0]


def test_spec_hash_is_stable_across_processes_and_changes_with_the_spec():
    spec = AttributionSpec(target_id=11, contrast_id=17, position=12, objective="topk_avg",
                           objective_params=(("k", 5),), rule="cp-lrp", dtype="bfloat16", attn_implementation="eager")
    assert AttributionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    code = ("from contrastlens.attribution.spec import AttributionSpec as S; print(S(target_id=11, contrast_id=17, "
            "position=12, objective='topk_avg', objective_params=(('k', 5),), rule='cp-lrp', dtype='bfloat16', "
            "attn_implementation='eager').hash())")
    hashes = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert hashes == {spec.hash()}
    assert len(spec.hash()) == 16
    others = [AttributionSpec(**{**spec.__dict__, field: value}) for field, value in
              (("target_id", 12), ("contrast_id", None), ("position", 11), ("rule", "attnlrp"), ("dtype", "float32"),
               ("attn_implementation", "sdpa"), ("objective_params", (("k", 6),)))]
    assert len({spec.hash()} | {o.hash() for o in others}) == len(others) + 1


@pytest.mark.parametrize("kw, msg", [
    ({"objective": "logit_diff", "k": 3}, "has no parameter 'k'"),
    ({"objective": "topk_avg", "rank": 3}, "has no parameter 'rank'"),
    ({"objective": "max_logit", "contrast": 17}, "takes no contrast"),
    ({"objective": "topk_avg", "k": 10_000_000}, "k must be in"),
    ({"objective": "contrast_rank", "target": 11}, "picks its own tokens"),
])
def test_a_keyword_that_cannot_apply_is_an_error(random_lm, kw, msg):
    lm = random_lm("qwen3")
    kw = {"target": 11, "contrast": None, **kw}
    if kw["objective"] == "contrast_rank" and "target" not in kw:
        kw["target"] = None
    with pytest.raises(InputError, match=msg):
        cl.explain(lm, PROMPT, **kw)


# ------------------------------------------------------------- graphs and neurons reuse the spec
def test_graph_from_a_cp_lrp_explanation_equals_the_direct_cp_lrp_graph(random_lm):
    """The bug: the graph of a reused CP-LRP explanation was built with AttnLRP factors (off-diagonal
    edges differ by up to 0.05 on random:qwen3; column sums still matched)."""
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp", keep_states=True)
    reused = cl.attribution_graph(lm, explanation=ex)
    direct = cl.attribution_graph(lm, PROMPT, 11, 17, rule="cp-lrp")
    attn = cl.attribution_graph(lm, PROMPT, 11, 17, rule="attnlrp")
    assert reused.spec == direct.spec == ex.spec and reused.spec.rule == "cp-lrp"
    assert reused.meta["spec_hash"] == ex.spec.hash()
    for key in direct.edges:
        a, b = reused.edges[key], direct.edges[key]
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_allclose(a.vals, b.vals, rtol=1e-5, atol=1e-7)
    # and the rule really matters for these edges (so the check above can fail)
    diff = max(np.abs(direct.matrix(s, t) - attn.matrix(s, t)).max() for s, t in direct.transitions)
    assert diff > 1e-3


def test_a_conflicting_rule_or_objective_with_an_explanation_is_an_error(random_lm):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp", keep_states=True)
    with pytest.raises(InputError, match="conflicts with the explanation"):
        cl.attribution_graph(lm, explanation=ex, rule="attnlrp")
    with pytest.raises(InputError, match="conflicts with the explanation"):
        cl.attribution_graph(lm, explanation=ex, objective="max_logit")
    with pytest.raises(InputError, match="cannot apply with explanation="):
        cl.attribution_graph(lm, PROMPT, explanation=ex)
    with pytest.raises(InputError, match="cannot apply with explanation="):
        cl.attribution_graph(lm, explanation=ex, chat=True)
    cl.attribution_graph(lm, explanation=ex, rule="cp_lrp", layers="emb,0")  # repeating it is fine
    from contrastlens.graph.neurons import edge_dimensions, mlp_neurons

    with pytest.raises(InputError, match="conflicts with the explanation"):
        mlp_neurons(lm, ex, 0, -1, rule="attnlrp")
    with pytest.raises(InputError, match="conflicts with the explanation"):
        edge_dimensions(lm, ex, "emb", "0", -1, 2, rule="attnlrp")


def test_edge_drill_down_uses_the_explanations_rule(random_lm):
    """Per-dimension edge relevance sums to the edge of the graph made with the same rule."""
    from contrastlens.graph.neurons import edge_dimensions

    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp", keep_states=True)
    # the reference is built directly with rule="cp-lrp" (not from the explanation)
    g = cl.attribution_graph(lm, PROMPT, 11, 17, rule="cp-lrp", layers="emb,0.mid")
    A = g.matrix("emb", "0.mid")
    n = g.n
    j, i = n - 1, int(np.argmax(np.abs(A[n - 1, : n - 1])))
    df = edge_dimensions(lm, ex, "emb", "0.mid", j, i, top_k=10_000)
    assert df.attrs["total"] == pytest.approx(float(A[j, i]), rel=1e-4, abs=1e-6)
    attn = cl.attribution_graph(lm, PROMPT, 11, 17, rule="attnlrp", layers="emb,0.mid").matrix("emb", "0.mid")
    assert abs(attn[j, i] - A[j, i]) > 1e-4  # the rule changes this edge


# --------------------------------------------------------------------- provenance and fingerprints
def test_provenance_and_fingerprints(random_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTLENS_CACHE", str(tmp_path / "cache"))
    lm = random_lm("llama")
    ex = cl.explain(lm, PROMPT, 11, 17)
    p = ex.provenance
    assert p.model_source == "random:llama" and p.model_fingerprint == lm.fingerprint
    assert p.model_fingerprint.startswith("state:")
    import torch
    import transformers

    assert p.versions["torch"] == torch.__version__ and p.versions["transformers"] == transformers.__version__
    assert p.versions["contrastlens"] == cl.__version__
    # the same seed gives the same weights and fingerprint; another seed, another one
    assert cl.load_model("random:llama").fingerprint == lm.fingerprint
    assert cl.load_model("random:llama", seed=1).fingerprint != lm.fingerprint
    # a folder is fingerprinted from its files, once (the hash is cached)
    folder = tmp_path / "m"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    a = cl.load_model(str(folder))
    assert a.fingerprint.startswith("files:")
    cache = json.loads((tmp_path / "cache" / "fingerprints.json").read_text())
    assert any("model.safetensors" in k for k in cache)
    from contrastlens.models import fingerprint as fp

    calls = []
    real = fp.hashlib.sha256
    monkeypatch.setattr(fp.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert cl.load_model(str(folder)).fingerprint == a.fingerprint
    assert len(calls) == 1  # only the combining hash: no file was read again
    monkeypatch.setattr(fp.hashlib, "sha256", real)
    # changed weights in the folder: a new fingerprint
    import torch

    with torch.no_grad():
        a.model.model.embed_tokens.weight[0, 0] += 1.0
    a.model.save_pretrained(folder)
    assert cl.load_model(str(folder)).fingerprint != a.fingerprint


def test_saved_explanation_keeps_spec_provenance_and_segments(random_lm, tmp_path):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17, rule="cp-lrp")
    ex.segments = {"instruction": [(1, 3)]}
    back = cl.Explanation.load(ex.save(tmp_path / "ex.ctl"))
    assert back.spec == ex.spec and back.provenance == ex.provenance and back.segments == ex.segments
    d = json.loads(ex.to_json())
    assert d["spec"]["rule"] == "cp-lrp" and d["spec_hash"] == ex.spec.hash()
    assert d["provenance"]["model_fingerprint"] == lm.fingerprint


def test_explanation_files_of_format_1_still_load(random_lm, tmp_path):
    lm = random_lm("qwen3")
    ex = cl.explain(lm, PROMPT, 11, 17)
    meta = {k: v for k, v in ex.to_dict().items()
            if k not in ("input_relevance", "layer_relevance", "mid_relevance", "spec", "spec_hash", "provenance",
                         "segments")}
    meta.update(format_version=1, rule="attnlrp", objective="logit_diff", target_id=11, contrast_id=17,
                position=ex.position, meta={"dtype": "float32", "attn_implementation": "sdpa", "seconds": 0.1})
    path = tmp_path / "old.ctl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for k in ("input_relevance", "layer_relevance", "mid_relevance"):
            buf = io.BytesIO()
            np.save(buf, getattr(ex, k))
            z.writestr(f"{k}.npy", buf.getvalue())
    old = cl.Explanation.load(path)
    assert old.spec == ex.spec and old.provenance is None
    np.testing.assert_array_equal(old.input_relevance, ex.input_relevance)


def test_graph_records_provenance_and_refuses_another_models_explanation(random_lm, tmp_path):
    lm = random_lm("llama")
    ex = cl.explain(lm, PROMPT, 11, 17, keep_states=True)
    g = cl.attribution_graph(lm, explanation=ex, layers="emb,0")
    assert g.provenance == ex.provenance and g.spec == ex.spec
    back = cl.AttributionGraph.load(g.save(tmp_path / "g.npz"))
    assert back.provenance == ex.provenance and back.spec == ex.spec
    other = cl.load_model("random:llama", seed=1)
    with pytest.raises(InputError, match="was made with model"):
        cl.attribution_graph(other, explanation=ex)



# ------------------------------------------------------------------ cases: segments and provenance
INSTRUCTION = "Écris «bonjour» en MAJUSCULES 😀, sans virgule."
QUERY = "Le mot est: naïve café."


@pytest.fixture
def chat_case(random_lm):
    """A hand-made localised case on a chat-templated prompt with multi-byte characters (byte-level BPE
    splits them into several tokens)."""
    from contrastlens.benchmarks.base import locate
    from contrastlens.cases.schema import FailureCase

    lm = random_lm("llama")
    msgs = [{"role": "user", "content": f"{INSTRUCTION}\n{QUERY}"}]
    prompt = lm.apply_chat_template(msgs)
    prompt_ids = lm.encode(prompt, add_special_tokens=False)
    comp_ids = lm.encode("Réponse: BONJOUR 😀 ÇA VA", add_special_tokens=False)
    fi = len(comp_ids) - 2
    before = lm.tokenizer.decode(comp_ids[:fi], skip_special_tokens=True)
    target = comp_ids[fi]
    case = FailureCase(
        id="t-1", benchmark="t", item_id="1", model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=prompt_ids, chat=True, completion=lm.tokenizer.decode(comp_ids), completion_ids=comp_ids,
        status="localised", failure_index=fi, target_id=target, contrast_id=(target + 1) % lm.vocab_size,
        delta_logit=0.5, clean=False, method="manual", completion_before_err=before,
        segments={"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
                  "answer": [(len(prompt), len(prompt) + len(before))]},
        provenance=lm.provenance().to_dict(),
    )
    return lm, case


def test_case_segments_map_to_token_spans(chat_case):
    from contrastlens.cases.segments import (
        case_token_segments,
        decoded_offsets,
        prompt_offsets,
        spans_to_ranges,
    )

    lm, case = chat_case
    ids, tok = case.ids_before_err, lm.tokenizer
    seg = case_token_segments(lm, case)
    for name, text in (("instruction", INSTRUCTION), ("query", QUERY)):
        ((a, b),) = seg[name]
        assert text in tok.decode(ids[a:b])  # the span covers the segment...
        assert text not in tok.decode(ids[a + 1 : b]) and text not in tok.decode(ids[a : b - 1])  # ...minimally
    assert seg["answer"] == [(len(case.prompt_ids), len(ids))]
    assert any(len(tok.decode([i])) == 1 and "\ufffd" in tok.decode([i]) for i in ids)  # split multi-byte chars
    # an independent mapping (decoding prefixes instead of the offset mapping) agrees on the prompt
    by_decoding = decoded_offsets(tok, case.prompt_ids, skip_special_tokens=False)
    by_offsets = prompt_offsets(tok, case.prompt, case.prompt_ids, add_special_tokens=False)
    for name in ("instruction", "query"):
        spans = [tuple(s) for s in case.segments[name]]
        assert spans_to_ranges(by_decoding, spans) == spans_to_ranges(by_offsets, spans) == seg[name]


def test_segment_sums_of_a_case_explanation(chat_case):
    lm, case = chat_case
    ex = cl.explain(lm, case)
    assert ex.segments == {k: list(v) for k, v in case.attribution_inputs(lm).segments.items()}
    masks = ex.segment_masks()
    special = np.array(ex.special_mask)
    assert special.any() and not any((m & special).any() for m in masks.values())
    assert not (masks["instruction"] & masks["answer"]).any() and not (masks["query"] & masks["answer"]).any()
    assert ((masks["instruction"] | masks["query"] | masks["answer"]) == ~special).all()
    for norm in ("max_abs", "sum_abs", "abs_sum"):
        sums = ex.segment_sums(norm)
        r = ex.normalized(norm)
        for name, m in masks.items():
            assert sums[name] == pytest.approx(float(r[m].sum()), abs=1e-9)
        assert sums["total"] == pytest.approx(float(r[~special].sum()), abs=1e-9)
    with pytest.raises(InputError, match="no prompt segments"):
        cl.explain(lm, PROMPT, 11, 17).segment_sums()


@pytest.mark.parametrize("kw", [{"target": 5}, {"contrast": 5}, {"chat": True}, {"chat": False}, {"position": 3},
                                {"add_special_tokens": True}])
def test_explaining_a_case_rejects_keywords_it_fixes(chat_case, kw):
    lm, case = chat_case
    with pytest.raises(InputError, match="fixes its own prompt, target and contrast"):
        cl.explain(lm, case, **kw)


def test_a_case_of_another_model_warns_or_errors(chat_case):
    lm, case = chat_case
    other = cl.load_model("random:llama", seed=1)
    with pytest.warns(ModelMismatchWarning, match="was made with model"):
        cl.explain(other, case)
    with pytest.raises(InputError, match="was made with model"):
        cl.explain(other, case, on_model_mismatch="error")
    old = case.model_copy(update={"provenance": None})  # a version-1 case has nothing to compare
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        cl.explain(other, old)
        cl.explain(other, case, on_model_mismatch="ignore")
        ex = cl.explain(lm, case)
    assert ex.provenance.model_fingerprint == case.provenance["model_fingerprint"]


def test_cli_graph_and_explain_take_a_case_and_its_model(chat_case, tmp_path, capsys):
    from contrastlens.cli.main import main

    lm, case = chat_case
    f = tmp_path / "cases.jsonl"
    f.write_text(json.dumps(case.model_dump(mode="json")) + "\n")
    ref = f"{f}#{case.id}"
    out = tmp_path / "g.npz"
    assert main(["graph", "--case", ref, "--layers", "emb,0", "--out", str(out), "--quiet"]) == 0
    g = cl.AttributionGraph.load(out)
    assert g.spec == case.spec(attn_implementation="sdpa")
    assert g.provenance.model_fingerprint == case.provenance["model_fingerprint"]
    assert g.logit_diff == pytest.approx(cl.explain(lm, case).logit_diff, rel=1e-5)
    js = tmp_path / "ex.json"
    assert main(["explain", "--case", ref, "--json", str(js), "--quiet"]) == 0  # no --model: the case's
    assert json.loads(js.read_text())["spec"]["target_id"] == case.target_id
    capsys.readouterr()
    for extra in (["--prompt", "x"], ["--target", "#3"], ["--contrast", "#3"], ["--chat"]):
        assert main(["explain", "--case", ref, "--quiet", *extra]) == 2
        assert "--case fixes the prompt" in capsys.readouterr().err
    assert main(["graph", "--case", ref, "--quiet", "--target", "#3"]) == 2
    assert main(["graph", "--model", "random:llama", "--prompt", "x y z", "--quiet"]) == 2
    assert "--target and --contrast" in capsys.readouterr().err


def test_case_files_written_before_provenance_still_load(tmp_path):
    """Schema version 1 (the shipped examples were begun with it; a resumed collection appends version 2
    records to the same file) loads, and is written back as version 2."""
    from pathlib import Path

    from contrastlens.cases.io import CaseStore
    from contrastlens.cases.schema import SCHEMA_VERSION

    files = sorted((Path(__file__).resolve().parents[1] / "examples" / "cases").rglob("*.jsonl"))
    begun_v1 = [f for f in files if json.loads(f.read_text(encoding="utf-8").splitlines()[0])["schema_version"] == 1]
    assert len(begun_v1) >= 3  # the legacy files (later collections begin at version 2)
    for f in files:
        versions = [json.loads(line)["schema_version"] for line in f.read_text(encoding="utf-8").splitlines()]
        cases = cl.load_cases(f)
        assert cases and len(cases) == len(versions)
        for c, v in zip(cases, versions, strict=True):
            # version 1 records carry no provenance; version 2 records (appended by a resumed run) do
            assert (c.provenance is None and c.model_provenance is None) if v == 1 else c.provenance is not None
    case = cl.load_cases(begun_v1[0])[0]
    store = CaseStore(tmp_path / "c.jsonl")
    store.write_case(case)
    again = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert again["schema_version"] == SCHEMA_VERSION == 2


def test_a_collected_case_explained_in_another_process_gives_the_same_delta_and_fingerprint(tmp_path, monkeypatch):
    from contrastlens.cli.main import main

    monkeypatch.setenv("CONTRASTLENS_CACHE", str(tmp_path / "cache"))
    lm = cl.load_model("random:llama")
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({
        "messages": [{"role": "system", "content": "You call tools."},
                     {"role": "user", "content": "Find the capital of Italy."},
                     {"role": "assistant", "content": 'Action: search\nAction Input: {"q": "capital of France"}'}],
        "expected": {"tool": "search", "args": {"q": "capital of Italy"}},
    }))
    out = tmp_path / "cases.jsonl"
    assert main(["collect", "--benchmark", "agent", "--model", str(folder), "--data", str(trace), "--out", str(out),
                 "--failure-index", "3", "--contrast", "#5", "--no-progress"]) == 0
    (case,) = cl.load_cases(out)
    assert case.status == "localised" and case.provenance["model_fingerprint"].startswith("files:")
    code = ("import json, sys, contrastlens as cl; c = cl.load_cases(sys.argv[1])[0]; lm = cl.load_model(sys.argv[2]); "
            "ex = cl.explain(lm, c); print(json.dumps({'dl': ex.logit_diff, 'fp': ex.provenance.model_fingerprint, "
            "'spec': ex.spec.to_dict()}))")
    r = subprocess.run([sys.executable, "-c", code, str(out), str(folder)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "CONTRASTLENS_CACHE": str(tmp_path / "cache2")})
    assert r.returncode == 0, r.stderr
    there = json.loads(r.stdout.strip().splitlines()[-1])
    assert there["dl"] == pytest.approx(case.delta_logit, abs=1e-4)
    assert there["fp"] == case.provenance["model_fingerprint"] == cl.load_model(str(folder)).fingerprint
    assert AttributionSpec.from_dict(there["spec"]) == case.spec(attn_implementation="sdpa")
