"""Prompt debugging, closed loop: the selected positions (positive relevance, prompt only, never special), the
edited ids, the regenerated continuation against a brute-force greedy decode (ids and embeddings), the
checker's verdict from a registered stub benchmark, the analysis through a hand-built UnitContext and the
report's numbers and HTML."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

import contrastlens as cl
from contrastlens.benchmarks import Benchmark, Item, Score
from contrastlens.benchmarks.base import locate
from contrastlens.benchmarks.registry import register_benchmark, unregister_benchmark
from contrastlens.cases.schema import FailureCase
from contrastlens.collect.generate import generate_greedy, stop_ids
from contrastlens.errors import InputError
from contrastlens.study.analyses import prompt_debug as pd_mod
from contrastlens.study.analyses.prompt_debug import (
    CONTROL,
    PromptDebugAnalysis,
    PromptDebugSettings,
    continue_greedy_masked,
    debug_case,
    delete_positions,
    editable_mask,
    fix_table,
    marked_prompt,
    prompt_debug_section,
    top_positions,
)
from contrastlens.study.base import ModelRef, StudyInfo, UnitContext, get_analysis

INSTRUCTION = "Write a short answer, and do not use any commas in your reply."
QUERY = "What is the sum of 3 and 5?"
BENCH = "pdstub"
N_NEW = 10
FI = 2


class Stub(Benchmark):
    """A checker whose verdict is known: a completion passes iff it differs from the case's original
    (failing) completion, and iff it does not contain the word ``never`` (never present: a sanity stub)."""

    name = BENCH
    bad = ""  # set by the fixture: the original completion's text
    calls: list[str] = []

    def load(self, path=None, *, data_dir=None):
        return [Item("7", {"x": 1}), Item("8", {"x": 2})], []

    def messages(self, item):
        return [{"role": "user", "content": f"{INSTRUCTION}\n{QUERY}"}]

    def score(self, item, completion):
        Stub.calls.append(completion)
        return Score(completion != Stub.bad, {})


def _brute_ids(lm, ids, n, stops):
    """Greedy decoding with a full forward per step, no cache."""
    seq, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            t = int(lm.model(input_ids=torch.tensor([seq])).logits[0, -1].float().argmax())
            if t in stops:
                return new, True
            new.append(t)
            seq.append(t)
    return new, False


def _brute_embeds(lm, ids, masked, n, stops):
    """Greedy decoding from embeddings with the ``masked`` rows zeroed, a full forward per step."""
    emb = lm.adapter.embedding(lm.model)
    seq, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            x = emb(torch.tensor([seq])).clone()
            if masked:
                x[0, list(masked)] = 0.0
            t = int(lm.model(inputs_embeds=x).logits[0, -1].float().argmax())
            if t in stops:
                return new, True
            new.append(t)
            seq.append(t)
    return new, False


@pytest.fixture(scope="module")
def setup():
    lm = cl.load_model("random:llama")
    msgs = [{"role": "user", "content": f"{INSTRUCTION}\n{QUERY}"}]
    prompt = lm.apply_chat_template(msgs)
    pids = lm.encode(prompt, add_special_tokens=False)
    comp, stopped = generate_greedy(lm, [pids], max_new_tokens=N_NEW, batch_size=1)[0]
    assert len(comp) > FI + 1
    from contrastlens.attribution.logits import top_logits

    top = top_logits(lm, pids + comp[:FI], 2)
    assert top[0]["id"] == comp[FI]
    dl = top[0]["logit"] - top[1]["logit"]
    before = lm.tokenizer.decode(comp[:FI], skip_special_tokens=True)
    case = FailureCase(
        id=f"{BENCH}-7", benchmark=BENCH, item_id="7", model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=pids, completion=lm.tokenizer.decode(comp, skip_special_tokens=True), completion_ids=comp,
        stopped=stopped, status="localised", failure_index=FI, target_id=comp[FI], contrast_id=top[1]["id"], delta_logit=dl,
        clean=dl > 1, method="manual", completion_before_err=before,
        segments={"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
                  "answer": [(len(prompt), len(prompt) + len(before))]},
        provenance=lm.provenance().to_dict())
    Stub.bad = case.completion
    register_benchmark(BENCH, Stub, overwrite=True)
    try:
        yield lm, case
    finally:
        unregister_benchmark(BENCH)
        pd_mod.clear_benchmark_cache()


def _ctx(lm, case, settings):
    @functools.cache
    def _ex(method, items):
        return cl.explain(lm, case, method=method, method_params=dict(items) or None)

    def explain(method=None, **o):
        return _ex(method or "attnlrp", tuple(sorted(o.items())))

    study = StudyInfo("t", (ModelRef("m", "random:llama"),), {})
    return UnitContext(case=case, lm=lm, model=study.models[0], rule="attnlrp", settings=settings, study=study,
                       explain=explain)


# ------------------------------------------------------------------------------------ selection, edits
def test_top_positions_take_only_positive_prompt_non_special_tokens():
    r = np.array([9.0, 0.5, -3.0, 2.0, 0.0, 2.0, 7.0, 8.0])
    special = [True, False, False, False, False, False, False, False]
    # n_prompt = 6: positions 6 and 7 are the completion prefix (the largest non-special scores)
    assert top_positions(r, special, 6) == [3, 5, 1]  # ties: earlier first; 0 special, 2 and 4 not positive
    assert top_positions(r, special, 6, 2) == [3, 5]
    assert top_positions(r, special, 8, 1) == [7]
    assert top_positions(-np.abs(r), special, 8) == []
    with pytest.raises(InputError, match="special_mask"):
        top_positions(r, special[:3], 6)
    with pytest.raises(InputError, match="NaN"):
        top_positions([np.nan, 1.0], [False, False], 2)


def test_editable_mask_keeps_to_the_instruction_and_query():
    seg = {"instruction": [(2, 4)], "query": [(5, 7)], "answer": [(8, 10)]}
    assert editable_mask(seg, 10, 8).tolist() == [False, False, True, True, False, True, True, False, False, False]
    assert editable_mask(seg, 10, 8, "prompt").tolist() == [True] * 8 + [False] * 2
    assert editable_mask({}, 4, 3).tolist() == [True, True, True, False]  # no segments: the whole prompt
    assert editable_mask({"answer": [(3, 4)]}, 4, 3).tolist() == [True, True, True, False]
    r = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert top_positions(r, [False] * 5, 5, editable=[False, True, False, True, True]) == [1, 3, 4]
    with pytest.raises(InputError, match="within must be one of"):
        editable_mask(seg, 10, 8, "everywhere")
    with pytest.raises(InputError, match="editable has"):
        top_positions(r, [False] * 5, 5, editable=[True])


def test_delete_positions_and_marks():
    assert delete_positions([10, 11, 12, 13], [0, 2]) == [11, 13]
    assert delete_positions([10, 11], []) == [10, 11]
    with pytest.raises(InputError, match="outside"):
        delete_positions([1, 2], [2])
    toks = ["a", "<b>", "c", "d", "e", "f"]
    assert marked_prompt(toks, [1, 4]) == "a[-<b>-]cd[-e-]f"
    h = marked_prompt(toks, [1], html_out=True)
    assert "<del" in h and "&lt;b&gt;" in h and "<b>" not in h
    assert marked_prompt(toks, [5], context=1) == " … e[-f-]"
    assert marked_prompt(toks, [0], context=1) == "[-a-]<b> … "


# ------------------------------------------------------------------------------------ the loop
def test_delete_mode_equals_brute_force_and_the_checker(setup):
    lm, case = setup
    ex = cl.explain(lm, case)
    n_prompt = len(case.prompt_ids)
    # a hand-made relevance with large scores on a special token and on the completion prefix: never taken
    hand = np.asarray(ex.input_relevance, dtype=np.float64).copy()
    specials = [i for i, s in enumerate(ex.special_mask) if s]
    assert specials and specials[0] < n_prompt
    hand[specials] = 100.0
    hand[n_prompt:] = 50.0
    rnd = cl.explain(lm, case, method="random").input_relevance
    s = PromptDebugSettings(ks=[1, 2, 5])  # the original hit its budget: the same budget by default
    assert not case.stopped and pd_mod._new_tokens(case, s) == len(case.completion_ids) - FI
    budget = len(case.completion_ids) - FI
    bench, item = pd_mod.case_item(case)
    Stub.calls.clear()
    table = debug_case(lm, case, {"hand": hand, "random": rnd}, bench=bench, item=item, settings=s)
    assert table["method"].tolist() == [CONTROL] + ["hand"] * 3 + ["random"] * 3
    stops = set(stop_ids(lm))
    prefix = case.completion_ids[:FI]
    for row in table.itertuples(index=False):
        pos = json.loads(row.removed_positions)
        assert len(pos) == row.n_removed <= row.k
        assert all(p < n_prompt and not ex.special_mask[p] for p in pos)
        r = hand if row.method == "hand" else rnd
        assert pos == top_positions(r, ex.special_mask, n_prompt, row.k)
        assert all(r[p] > 0 for p in pos)
        expected_ids = [t for i, t in enumerate(case.prompt_ids) if i not in set(pos)] + prefix
        assert len(expected_ids) == len(case.ids_before_err) - len(pos)
        new, stopped = _brute_ids(lm, expected_ids, budget, stops)
        assert lm.tokenizer.decode(new, skip_special_tokens=True) == row.new_completion
        assert row.n_new_tokens == len(new) and row.stopped == stopped
        text = lm.tokenizer.decode(prefix + new, skip_special_tokens=True)
        assert row.completion == text and row.passed == (text != Stub.bad)
        first = new[0] if new else None
        assert row.flipped_token == (first != case.target_id) and (first is None or row.first_token_id == first)
        with torch.no_grad():
            lg = lm.model(input_ids=torch.tensor([expected_ids])).logits[0, -1].float()
        assert row.delta_logit_edited == pytest.approx(float(lg[case.target_id] - lg[case.contrast_id]), abs=1e-4)
        assert json.loads(row.removed_tokens) == [lm.decode_tokens([case.prompt_ids[p]])[0] for p in pos]
    ctrl = table.iloc[0]
    assert ctrl.k == 0 and ctrl.n_removed == 0
    assert ctrl.completion == case.completion and not ctrl.passed and not ctrl.flipped_token  # the failure again
    assert ctrl.delta_logit == pytest.approx(case.delta_logit, abs=1e-3)
    assert ctrl.delta_logit_edited == pytest.approx(ctrl.delta_logit, abs=1e-6)
    assert all(c.startswith(case.completion_before_err) for c in table["completion"])
    assert len(Stub.calls) == len({tuple(json.loads(p)) for p in table["removed_positions"]})  # each edit once


def test_mask_mode_equals_brute_force_from_embeddings(setup):
    lm, case = setup
    ex = cl.explain(lm, case)
    s = PromptDebugSettings(ks=[1, 3], mode="mask", max_new_tokens=6, control=False)
    bench, item = pd_mod.case_item(case)
    table = debug_case(lm, case, {"attnlrp": ex.input_relevance}, bench=bench, item=item, settings=s)
    stops = set(stop_ids(lm))
    prefix = case.completion_ids[:FI]
    for row in table.itertuples(index=False):
        pos = json.loads(row.removed_positions)
        assert row.mode == "mask" and len(pos) == row.k
        new, stopped = _brute_embeds(lm, case.ids_before_err, pos, 6, stops)
        assert row.new_completion == lm.tokenizer.decode(new, skip_special_tokens=True) and row.stopped == stopped
        assert row.passed == (lm.tokenizer.decode(prefix + new, skip_special_tokens=True) != Stub.bad)
    # the function itself, with a neutral token as the fill: same as a brute-force decode with that row
    nid = lm.token_id(" the")
    comp = continue_greedy_masked(lm, case.ids_before_err, [3], max_new_tokens=4, masking="neutral",
                                  neutral_token_id=nid)
    emb = lm.adapter.embedding(lm.model)
    seq = list(case.ids_before_err)
    with torch.no_grad():
        for t in comp.ids:
            x = emb(torch.tensor([seq])).clone()
            x[0, 3] = emb(torch.tensor([nid]))[0]
            assert int(lm.model(inputs_embeds=x).logits[0, -1].argmax()) == t
            seq.append(t)


def test_analysis_through_a_unit_context_and_its_report(setup):
    lm, case = setup
    an = get_analysis("prompt_debug")
    assert isinstance(an, PromptDebugAnalysis) and an.version == 1
    settings = PromptDebugSettings(ks=[1, 2], max_new_tokens=N_NEW)
    study = StudyInfo("t", (ModelRef("m", "random:llama"),), {})
    assert an.skip(case, study.models[0], study, settings) is None
    assert "not localised" in an.skip(case.model_copy(update={"status": "unlocalised", "failure_index": None,
                                                               "clean": False}), study.models[0], study, settings)
    res = an.run(_ctx(lm, case, settings))
    t = res.tables["edits"]
    assert set(t["method"]) == {CONTROL, "attnlrp", "random"} and len(t) == 5 and (t["within"] == "segments").all()
    ex = cl.explain(lm, case)
    n_prompt = len(case.prompt_ids)
    editable = editable_mask(ex.segments, ex.n_tokens, n_prompt)
    (a, b), (c, d) = ex.segments["instruction"][0], ex.segments["query"][0]
    assert editable.sum() == (b - a) + (d - c) < n_prompt - sum(ex.special_mask[:n_prompt])
    for row in t[t["method"] != CONTROL].itertuples(index=False):
        pos = json.loads(row.removed_positions)
        assert pos and all(a <= p < b or c <= p < d for p in pos)  # never the chat template's text
        r = ex.input_relevance if row.method == "attnlrp" else cl.explain(lm, case, method="random").input_relevance
        assert pos == top_positions(r, ex.special_mask, n_prompt, row.k, editable=editable)
    # within = "prompt": the template's tokens are candidates too
    anywhere = an.run(_ctx(lm, case, PromptDebugSettings(ks=[5], within="prompt", max_new_tokens=2,
                                                         methods=["attnlrp"], control=False))).tables["edits"]
    assert json.loads(anywhere["removed_positions"][0]) == top_positions(ex.input_relevance, ex.special_mask,
                                                                         n_prompt, 5)
    sec = an.report({"edits": t.assign(model="m")}, study, settings)
    assert sec.tables and "<del" in sec.html and case.id in sec.html
    with pytest.raises(InputError, match="ks"):
        an.run(_ctx(lm, case, PromptDebugSettings(ks=[0])))
    with pytest.raises(InputError, match="not in the pdstub data"):
        an.run(_ctx(lm, case.model_copy(update={"item_id": "nope"}), settings))


def _row(case, method, k, flipped, passed, html_prompt="p"):
    return {"case_id": case, "benchmark": "b1" if case < "c3" else "b2", "item_id": case, "method": method, "k": k,
            "mode": "delete", "n_removed": k, "removed_positions": "[]", "removed_tokens": "[]", "target_id": 1,
            "contrast_id": 2, "delta_logit": 2.0, "delta_logit_edited": 1.0, "first_token_id": 3,
            "first_token": "<x>", "flipped_token": flipped, "passed": passed, "score_error": None, "stopped": True,
            "n_new_tokens": 3, "new_completion": "<script>alert(1)</script>", "completion": "c",
            "completion_before_err": "b", "original_continuation": "o", "prompt_marked": "p",
            "prompt_html": html_prompt}


def test_report_counts_follow_the_table():
    rows = []
    # 4 cases; attnlrp k=1: flips 3, fixes 1; k=2: flips 4, fixes 3 (one fix without a flip); random: nothing
    flips1, pass1 = [True, True, True, False], [True, False, False, False]
    flips2, pass2 = [True, True, True, True], [True, True, False, True]
    for i, c in enumerate(["c1", "c2", "c3", "c4"]):
        rows.append(_row(c, CONTROL, 0, False, False))
        rows.append(_row(c, "attnlrp", 1, flips1[i], pass1[i], '<del>tok</del>'))
        rows.append(_row(c, "attnlrp", 2, flips2[i], pass2[i] if i != 2 else None))
        rows.append(_row(c, "random", 1, False, i == 3 and False))
    rows.append(_row("c4", "random", 2, False, True))
    rows[-1]["flipped_token"] = False
    t = pd.DataFrame(rows)
    t["passed"] = t["passed"].astype("boolean")
    f = fix_table(t)
    a = f[f["benchmark"] == "all"].set_index(["method", "k"])
    assert (a.loc[("attnlrp", 1), ["cases", "flipped", "passed", "flipped_not_passed"]].tolist() == [4, 3, 1, 2])
    assert a.loc[("attnlrp", 2), "errors"] == 1 and a.loc[("attnlrp", 2), "cases"] == 3
    assert a.loc[("attnlrp", 2), "passed"] == 3 and a.loc[("attnlrp", 2), "passed_share"] == pytest.approx(1.0)
    assert a.loc[("random", 2), "passed_not_flipped"] == 1
    assert a.loc[(CONTROL, 0), "passed"] == 0
    b1 = f[f["benchmark"] == "b1"].set_index(["method", "k"])
    assert b1.loc[("attnlrp", 1), "cases"] == 2 and b1.loc[("attnlrp", 1), "passed"] == 1
    sec = prompt_debug_section({"edits": t}, PromptDebugSettings(show=2))
    assert "attnlrp, k=1: token flipped in 3/4 (75%), answer fixed in 1/4 (25%)" in sec.text
    assert "anywhere in the prompt" in sec.text  # the rows carry no `within` column
    assert "reproduced in 4/4" in sec.text
    # totals over the edit rows with a verdict: 4 + 3 + 4 + 1 = 12; flipped 3 + 3 = 6; fixed 1 + 3 + 1 = 5;
    # flipped without fixing 2 (attnlrp k=1); fixed without flipping 1 (random k=2)
    assert "6/12 (50%) edits flipped the first token and 5/12 (42%) fixed the answer; 2 flipped without " \
           "fixing, 1 fixed without flipping" in sec.text
    assert "Most fixes: attnlrp at k=2 (3/3 (100%))" in sec.text
    assert "&lt;script&gt;" in sec.html and "<script>" not in sec.html
    assert sec.html.count("<h4>") == 2 and "<del>tok</del>" in sec.html  # cases with a pass come first
    assert "No prompt-debugging unit" in prompt_debug_section({}, None).text
