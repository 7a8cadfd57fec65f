"""Segment breakdown: hand-computed segment sums and shares, the unit on a tiny model against an independent
explanation, and the report's means and CIs on a synthetic table."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

import contrastlens as cl
from contrastlens.attribution.explanation import Explanation
from contrastlens.attribution.spec import AttributionSpec
from contrastlens.errors import InputError
from contrastlens.study.analyses import segments as sg
from contrastlens.study.base import ModelRef, StudyInfo, UnitContext


def hand_explanation(r, special, segments, dl=2.5):
    n = len(r)
    return Explanation(
        source="hand", spec=AttributionSpec(target_id=1, contrast_id=2, position=n - 1), objective_description="Δℓ",
        target_str="a", contrast_str="b", input_ids=list(range(n)), tokens=[f"t{i}" for i in range(n)],
        special_mask=list(special), prompt=None, logit_diff=dl, input_relevance=np.asarray(r, float),
        layer_relevance=np.zeros((2, n)), mid_relevance=np.zeros((1, n)), segments=segments,
    )


def test_segment_row_by_hand():
    # 0 BOS (special, large), 1-2 instruction, 3-4 query, 5-6 answer
    r = [8.0, 1.0, -2.0, 4.0, 0.5, -1.0, 1.5]
    ex = hand_explanation(r, [True] + [False] * 6, {"instruction": [(1, 3)], "query": [(3, 5)], "answer": [(5, 7)]})
    row = sg.segment_row(ex)
    # max-abs over non-special tokens = 4
    assert row["instruction"] == pytest.approx(-0.25) and row["query"] == pytest.approx(1.125)
    assert row["answer"] == pytest.approx(0.125) and row["total"] == pytest.approx(1.0)
    mass = 10.0 / 4
    assert row["share_instruction"] == pytest.approx(0.75 / mass)
    assert row["share_query"] == pytest.approx(1.125 / mass) and row["share_answer"] == pytest.approx(0.625 / mass)
    assert row["special_share"] == pytest.approx(8 / 18)
    assert (row["n_instruction"], row["n_query"], row["n_answer"], row["delta_logit"]) == (2, 2, 2, 2.5)
    # the answer segment never takes instruction tokens; unsegmented tokens fall into the query
    ex2 = hand_explanation(r, [True] + [False] * 6, {"instruction": [(1, 3)], "answer": [(2, 6)]})
    row2 = sg.segment_row(ex2, "sum_abs")
    assert (row2["n_instruction"], row2["n_answer"], row2["n_query"]) == (2, 3, 1)
    assert row2["total"] == pytest.approx(4.0 / 10.0)
    with pytest.raises(InputError, match="norm must be one of"):
        sg.segment_row(ex, "l2")


def test_segment_row_all_zero_relevance():
    ex = hand_explanation([0.0] * 4, [False] * 4, {"query": [(0, 4)]})
    row = sg.segment_row(ex)
    assert row["total"] == 0 and np.isnan(row["share_query"]) and np.isnan(row["special_share"])


INSTRUCTION = "do not use any commas in your reply."
QUERY = "Write a short answer about the capital of France."


def make_case(lm, *, segments=True):
    from contrastlens.benchmarks.base import locate
    from contrastlens.cases.schema import FailureCase

    msgs = [{"role": "user", "content": f"{QUERY} Please {INSTRUCTION}"}]
    prompt = lm.apply_chat_template(msgs)
    comp_ids = lm.encode("The capital of France is Paris, and", add_special_tokens=False)
    fi = len(comp_ids) - 2
    before = lm.tokenizer.decode(comp_ids[:fi], skip_special_tokens=True)
    target, contrast = comp_ids[fi], lm.encode(" and", add_special_tokens=False)[0]
    segs = {"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
            "answer": [(len(prompt), len(prompt) + len(before))]} if segments else {}
    return FailureCase(
        id="ifeval-t1", benchmark="ifeval", item_id="t1", model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=lm.encode(prompt, add_special_tokens=False), chat=True, completion=lm.tokenizer.decode(comp_ids),
        completion_ids=comp_ids, status="localised", failure_index=fi, target_id=target, contrast_id=contrast,
        delta_logit=0.5, clean=False, method="manual", completion_before_err=before, segments=segs,
    )


def test_unit_matches_an_independent_explanation(random_lm):
    lm = random_lm("qwen2")
    case = make_case(lm)
    study = StudyInfo("s", (ModelRef("m0", "random:qwen2"),), {})
    calls = []

    @functools.cache
    def explain(method=None):
        calls.append(method)
        return cl.explain(lm, case, method=method or "cp-lrp", on_model_mismatch="ignore")

    ana = sg.SegmentsAnalysis()
    assert ana.skip(case, study.models[0], study, sg.SegmentsSettings()) is None
    res = ana.run(UnitContext(case, lm, study.models[0], "cp-lrp", sg.SegmentsSettings(), study, explain))
    (row,) = res.tables["segments"].to_dict("records")
    ex = cl.explain(lm, case, rule="cp-lrp", on_model_mismatch="ignore")
    assert row["delta_logit"] == pytest.approx(ex.logit_diff, abs=1e-5)
    r = ex.normalized()
    masks = ex.segment_masks()
    for name in ("instruction", "query", "answer"):
        assert row[name] == pytest.approx(float(r[masks[name]].sum()), abs=1e-5)
    assert row["total"] == pytest.approx(float(r[~np.asarray(ex.special_mask)].sum()), abs=1e-5)
    assert row["share_instruction"] + row["share_query"] + row["share_answer"] == pytest.approx(1.0)
    assert row["n_instruction"] > 0 and row["n_query"] > 0 and row["n_answer"] > 0
    assert calls == [None]  # the unit used the memoised explanation of its rule
    assert "no prompt segments" in ana.skip(make_case(lm, segments=False), study.models[0], study,
                                            sg.SegmentsSettings())


def _synthetic():
    rows = []
    rng = np.random.default_rng(0)
    for b in ("ifeval", "math500"):
        for i in range(6):
            for m, shift in (("small", 1.0), ("large", -1.0)):
                inst, query, ans = rng.normal(shift, 0.3, 3)
                rows.append({"case": f"{b}-{i}", "benchmark": b, "model": m, "rule": "attnlrp",
                             "delta_logit": 3 * shift + i, "instruction": inst, "query": query, "answer": ans,
                             "total": inst + query + ans})
    return pd.DataFrame(rows)


def test_report_means_and_cis_on_a_synthetic_table():
    table = _synthetic()
    study = StudyInfo("s", (ModelRef("small", "x"), ModelRef("large", "y")), {})
    sec = sg.SegmentsAnalysis().report({"segments": table}, study, sg.SegmentsSettings(n_boot=500))
    summary = sec.tables[0].frame
    assert list(dict.fromkeys(summary[summary["benchmark"] == "all"]["model"])) == ["small", "large"]
    for (b, m, seg), got in summary.set_index(["benchmark", "model", "segment"])["mean"].items():
        sub = table if b == "all" else table[table["benchmark"] == b]
        assert got == pytest.approx(sub[sub["model"] == m][seg].mean())
    assert (summary["low"] <= summary["mean"]).all() and (summary["mean"] <= summary["high"]).all()
    n = summary.set_index(["benchmark", "model", "segment"])["n"]
    assert n[("all", "small", "total")] == 12 and n[("ifeval", "large", "query")] == 6
    # the CI is the bootstrap of faithfulness.bootstrap_ci over the same values
    from contrastlens.study.analyses.faithfulness import bootstrap_ci

    vals = table[(table["model"] == "large") & (table["benchmark"] == "math500")]["instruction"]
    row = summary[(summary["benchmark"] == "math500") & (summary["model"] == "large")
                  & (summary["segment"] == "instruction")].iloc[0]
    assert (row["low"], row["high"]) == pytest.approx(bootstrap_ci(vals, n_boot=500))
    assert len(sec.figures) == 2  # all benchmarks, then one panel per benchmark
    assert len(sec.figures[1].figure.axes) == 2
    assert sg.SegmentsAnalysis().report({}, study, sg.SegmentsSettings()).text.startswith("No finished")
