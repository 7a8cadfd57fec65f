"""Taxonomy pre-labels: every criterion and boundary on hand-built relevance vectors, manual labels (validated,
atomic, never lost, preferred in the report), and the unit on a tiny model."""

from __future__ import annotations

import csv
import functools
import math
import multiprocessing as mp
import os

import numpy as np
import pandas as pd
import pytest

import contrastlens as cl
from contrastlens.errors import InputError
from contrastlens.study.analyses import taxonomy as tx
from contrastlens.study.base import ModelRef, StudyInfo, UnitContext

# ------------------------------------------------------------------ the hand-built layout
# positions: 0 BOS (special), 1-2 instruction, 3-4 query, 5 answer
SPECIAL = np.array([True, False, False, False, False, False])
MASKS = {
    "instruction": np.array([0, 1, 1, 0, 0, 0], bool),
    "query": np.array([0, 0, 0, 1, 1, 0], bool),
    "answer": np.array([0, 0, 0, 0, 0, 1], bool),
}
POSITIVE = ([0.1, 0.2, 0.5, 1.5], [0.1, 0.5, 1.5])  # layer sums [L+1], mid sums [L]: positive after emb


def label(r, dl=3.0, layers=POSITIVE, special=SPECIAL, masks=MASKS, **kw):
    settings = kw.pop("settings", tx.TaxonomySettings())
    return tx.prelabel(np.asarray(r, float), special, masks, dl, layers[0], layers[1], settings=settings, **kw)


# ------------------------------------------------------------------ trajectory and outcome
def test_layer_trajectory_interleaves_mid_states():
    t, names = tx.layer_trajectory([1, 2, 3], [10, 20])
    assert t.tolist() == [1, 10, 2, 20, 3] and names == ["emb", "L0.mid", "L0", "L1.mid", "L1"]
    t, names = tx.layer_trajectory([1, 2, 3])
    assert t.tolist() == [1, 2, 3] and names == ["emb", "L0", "L1"]
    with pytest.raises(InputError, match="mid_sums has 1 entries for 2 layers"):
        tx.layer_trajectory([1, 2, 3], [1])


@pytest.mark.parametrize("traj, k", [
    ([-1, 2, 3], 1), ([1, 2], 0), ([-1, -2, 3], 2), ([1, -1, 2], 2), ([-1, 0, 1], 2),  # 0 counts as ≤ 0
    ([0, 0.5, 1], 1), ([1, -1], None), ([1, 0], None), ([-1, 2, -3, 4, 5], 3),
])
def test_overtaking_index(traj, k):
    assert tx.overtaking_index(traj) == k


@pytest.mark.parametrize("dl, total, traj, outcome", [
    (1.0, 0.5, [-1, 1, 1], "n/a"),  # Δℓ must be > min_delta = 1
    (0.5, -2.0, [-1, 1, 1], "n/a"),
    (1.0001, 0.5, [-1, -1, 1.0001], "M-IA"),  # the heatmap's total decides first
    (2.0, 1e-9, [1, 1, 2], "M-IA"),
    (2.0, 0.0, [-1, 0.5, 2], "NC-IA+M-AG"),  # total = 0 is not explained; crossing at an interior state
    (2.0, -0.3, [0.0, 0.5, 2], "NC-IA+M-AG"),  # from 0 (≤ 0) to > 0
    (2.0, -0.3, [-1, -0.5, 2], "NC-IA+AG"),  # the sum turns positive only at the last state (Δℓ)
    (2.0, -0.3, [0.3, 0.5, 2], "NC-IA+AG"),  # positive from the embeddings on: no sign change
    (2.0, -0.3, [-1, 0.5, -0.1, 2], "NC-IA+AG"),  # crosses, falls back, the decisive overtaking is the last
    (2.0, -0.3, [-1, 0.5, 0.2, 2], "NC-IA+M-AG"),
])
def test_label_outcome(dl, total, traj, outcome):
    assert tx.label_outcome(dl, total, traj) == outcome


def test_outcome_thresholds_are_settings():
    assert tx.label_outcome(1.5, 0.5, [-1, 1, 1.5], min_delta=2.0) == "n/a"
    assert tx.label_outcome(1.5, 0.5, [-1, 1, 1.5], total_threshold=0.5) == "NC-IA+M-AG"
    assert tx.label_outcome(1.5, 0.51, [-1, 1, 1.5], total_threshold=0.5) == "M-IA"


# ------------------------------------------------------------------ pattern criteria
@pytest.mark.parametrize("s_r, total, n, margin, expected", [
    (0.3, 1.0, 0, 1.0, False),  # no relevant tokens: never URT
    (0.0, 1.0, 3, 1.0, True),  # zero weight
    (0.2, -1.0, 3, 1.0, True),  # wrong sign, even when the total points to the contrast
    (-0.5, 0.3, 3, 1.0, True),  # pulls to the contrast, too weakly, outweighed
    (-0.999, 0.3, 3, 1.0, True),
    (-1.0, 0.3, 3, 1.0, False),  # −margin is not under-weighted (strict)
    (-0.5, -0.1, 3, 1.0, False),  # the heatmap already points to the contrast ("seems ok")
    (-0.5, 0.0, 3, 1.0, False),
    (-50.0, 0.3, 3, math.inf, True),  # margin=inf: the notebooks' IF_cat URT
])
def test_is_urt(s_r, total, n, margin, expected):
    assert tx.is_urt(s_r, total, n, margin=margin) is expected


def test_oit_numbers_by_hand():
    r = np.array([0.9, 1.0, -0.2, 0.6, 0.3, -1.0])
    irr = np.array([1, 0, 0, 1, 1, 1], bool)
    peak, share = tx.oit_numbers(r, irr, SPECIAL)  # position 0 is special: left out
    assert peak == pytest.approx(0.6)
    assert share == pytest.approx(0.9 / 1.9)
    assert tx.oit_numbers(np.zeros(6), irr, SPECIAL) == (0.0, 0.0)
    assert tx.oit_numbers(-np.ones(6), irr, SPECIAL) == (0.0, 0.0)


@pytest.mark.parametrize("peak, share, expected", [
    (0.5, 0.51, True), (0.49, 0.9, False), (0.9, 0.5, False), (1.0, 1.0, True),
])
def test_is_oit_boundaries(peak, share, expected):
    assert tx.is_oit(peak, share) is expected


def test_bias_share_boundary():
    sp = np.array([True, False, False])
    assert tx.bias_share([1.0, 0.5, -0.5], sp) == pytest.approx(0.5)
    assert tx.bias_share([-2.0, 0.5, -0.5], sp) == pytest.approx(2 / 3)
    assert tx.bias_share([0.0, 0.0, 0.0], sp) == 0.0
    # 0.5 exactly is not bias-dominated (strictly above the threshold)
    row = label([2.0, 0.25, 0.25, 1.0, -0.25, 0.25])  # exactly half of |r| on BOS
    assert row["bias_share"] == 0.5 and row["pattern"] == "URT+OIT"
    row = label([2.01, 0.25, 0.25, 1.0, -0.25, 0.25])
    assert row["pattern"] == "bias-dominated" and row["urt"] and row["oit"]  # flags kept


@pytest.mark.parametrize("inst, total, mention, other, expected", [
    (-0.5, 0.2, (), (), "underweight_rel_inst"),
    (-0.5, 0.0, (), (), "IF_seems_ok"),
    (-0.5, -1.0, (), (), "IF_seems_ok"),
    (0.4, -1.0, (), (), "underweight_rel_inst"),
    (0.4, 1.0, (0.5,), (-0.1,), "underweight_rel_inst_AND_overweight_irrel_inst"),
    (0.4, 1.0, (0.5,), (), "underweight_rel_inst_AND_overweight_irrel_inst"),  # other phrases absent
    (0.4, 1.0, (0.5,), (0.0,), "underweight_rel_inst"),  # others not < 0
    (0.4, 1.0, (0.0,), (-0.1,), "underweight_rel_inst"),  # mentions not > 0
    (0.0, 1.0, (), (), "neutral"),
])
def test_if_cat(inst, total, mention, other, expected):
    assert tx.if_cat(inst, total, mention, other) == expected


def test_label_pattern():
    assert tx.label_pattern("M-IA", True, True, False) == "URT+OIT"
    assert tx.label_pattern("NC-IA+M-AG", True, False, False) == "URT"
    assert tx.label_pattern("M-IA", False, True, False) == "OIT"
    assert tx.label_pattern("M-IA", False, False, False) == "none"
    assert tx.label_pattern("M-IA", True, True, True) == "bias-dominated"
    assert tx.label_pattern("NC-IA+AG", True, True, True) == ""
    assert tx.label_pattern("n/a", True, False, False) == ""


# ------------------------------------------------------------------ whole pre-labels, every label
def test_prelabel_m_ia_urt_plus_oit_numbers_by_hand():
    row = label([0.0, 0.2, 0.1, 1.0, -0.3, 0.1])
    assert row["total"] == pytest.approx(1.1) and row["outcome"] == "M-IA"
    assert row["instruction"] == pytest.approx(0.3) and row["query"] == pytest.approx(0.7)
    assert row["relevant"] == "instruction" and row["relevant_sum"] == pytest.approx(0.3)
    assert row["oit_peak"] == pytest.approx(1.0) and row["oit_share"] == pytest.approx(1.1 / 1.4)
    assert row["pattern"] == "URT+OIT"


def test_prelabel_normalises_over_non_special_tokens():
    # the same vector scaled by 4 with a BOS value that does not count in the max: same normalised numbers
    a, b = label([0.0, 0.2, 0.1, 1.0, -0.3, 0.1]), label([0.5, 0.8, 0.4, 4.0, -1.2, 0.4])
    for k in ("total", "instruction", "query", "answer", "relevant_sum", "oit_peak", "oit_share"):
        assert a[k] == pytest.approx(b[k])


@pytest.mark.parametrize("r, pattern", [
    ([0.0, 1.0, 0.2, 0.3, -0.2, 0.1], "URT"),  # instruction toward the target, no strong irrelevant token
    ([0.0, -0.6, -0.6, 1.0, 0.8, 0.2], "OIT"),  # instruction clearly toward the contrast (−1.2), outweighed
    ([0.0, 0.2, 0.1, 1.0, -0.3, 0.1], "URT+OIT"),
    ([5.0, 0.2, 0.1, 1.0, -0.3, 0.1], "bias-dominated"),
])
def test_prelabel_every_pattern(r, pattern):
    row = label(r)
    assert row["outcome"] == "M-IA" and row["pattern"] == pattern


def test_prelabel_pattern_none_needs_a_high_irrelevant_peak():
    sp = np.zeros(7, bool)
    masks = {"instruction": np.array([1, 1, 1, 0, 0, 0, 0], bool), "query": np.array([0, 0, 0, 1, 1, 1, 0], bool),
             "answer": np.zeros(7, bool)}
    r = [0.9, -1.0, -1.0, 0.45, 0.45, 0.4, 0.0]
    row = label(r, special=sp, masks=masks, layers=([0.1] * 4, [0.1] * 3))
    assert row["total"] == pytest.approx(0.2) and row["relevant_sum"] == pytest.approx(-1.1)
    assert row["oit_share"] == pytest.approx(1.3 / 2.2) and row["oit_peak"] == pytest.approx(0.45)
    assert (row["outcome"], row["pattern"]) == ("M-IA", "none")
    r[3] = 0.5  # the peak reaches oit_peak
    assert label(r, special=sp, masks=masks)["pattern"] == "OIT"


def test_prelabel_nc_ia_with_and_without_the_graph():
    r = [0.0, 0.3, 0.2, -1.0, -0.5, 0.1]  # total −0.9: the heatmap points to the contrast
    crossing = ([-0.9, -0.5, 1.0, 3.0], [-0.6, 0.5, 3.0])  # T = -0.9 -0.6 -0.5 0.5 1 3 3: overtakes at L1.mid
    row = label(r, layers=crossing)
    assert row["total"] == pytest.approx(-0.9)
    assert (row["outcome"], row["overtake_state"], row["overtake_index"]) == ("NC-IA+M-AG", "L1.mid", 3)
    assert row["pattern"] == "URT"  # instruction +0.5: wrongly signed; positive mass inside it
    no_mid = label(r, layers=crossing, settings=tx.TaxonomySettings(use_mid=False))
    assert (no_mid["outcome"], no_mid["overtake_state"]) == ("NC-IA+M-AG", "L1")
    late = label(r, layers=([-0.9, -0.5, -0.2, 3.0], [-0.6, -0.3, -0.1]))
    assert (late["outcome"], late["pattern"], late["overtake_state"]) == ("NC-IA+AG", "", "L2")
    early = label(r, layers=([0.4, 1.0, 2.0, 3.0], [0.5, 1.5, 3.0]))
    assert (early["outcome"], early["overtake_index"], early["trajectory_first"]) == ("NC-IA+AG", 0, 0.4)


def test_prelabel_not_labelled_below_min_delta():
    row = label([0.0, 0.2, 0.1, 1.0, -0.3, 0.1], dl=0.9)
    assert (row["outcome"], row["pattern"]) == ("n/a", "")


def test_prelabel_follows_if_cat_for_instruction_phrases():
    r = [0.0, 0.5, -0.0625, 0.375, -0.25, 0.125]  # normalised (exactly): 1, -0.125, 0.75, -0.5, 0.25
    phrases = [np.array([0, 1, 0, 0, 0, 0], bool), np.array([0, 0, 1, 0, 0, 0], bool)]
    row = label(r, phrase_masks=phrases, mention=[True, False])
    assert row["oit_share"] == 0.5 and row["oit_peak"] == 0.75  # the general OIT: no (share not > 0.5)
    assert row["if_cat"] == "underweight_rel_inst_AND_overweight_irrel_inst"
    assert row["pattern"] == "URT+OIT"
    assert label(r, phrase_masks=phrases, mention=[True, False],
                 settings=tx.TaxonomySettings(follow_if_cat=False))["pattern"] == "URT"
    assert label(r, phrase_masks=phrases, mention=[False, False])["if_cat"] == "underweight_rel_inst"
    # IF_cat applies only when the instruction is the relevant segment
    assert label(r, phrase_masks=phrases, mention=[True, False], relevant=["query"])["if_cat"] == ""


def test_relevant_segments_defaults_and_general_version():
    assert tx.relevant_segments("ifeval", True) == ["instruction"]
    assert tx.relevant_segments("math500", True) == ["query"]
    assert tx.relevant_segments("gaia2", True) == ["instruction", "query"]
    assert tx.relevant_segments("mybench", True) == ["instruction"]
    assert tx.relevant_segments("mybench", False) == ["query"]
    with pytest.raises(InputError, match="relevant"):
        tx.relevant_segments("x", True, {"x": ["prompt"]})
    # query as the relevant segment: instruction tokens become irrelevant
    row = label([0.0, 1.0, 0.9, -0.1, -0.2, 0.0], relevant=["query"])
    assert row["relevant_sum"] == pytest.approx(-0.3) and row["oit_share"] == pytest.approx(1.0)
    assert row["pattern"] == "URT+OIT"


# ------------------------------------------------------------------ manual labels
def test_validate_label():
    assert tx.validate_label("M-IA", "URT") == ("M-IA", "URT")
    assert tx.validate_label("NC-IA+AG", "none") == ("NC-IA+AG", "")
    for bad, match in ((("MIA", "URT"), "unknown taxonomy outcome"), (("M-IA", ""), "needs a pattern"),
                       (("M-IA", "urt"), "needs a pattern"), (("NC-IA+AG", "URT"), "takes no pattern")):
        with pytest.raises(InputError, match=match):
            tx.validate_label(*bad)


def test_write_label_keeps_every_other_label_and_updates_in_place(tmp_path):
    p = tx.write_label(tmp_path, "ifeval-1", "m0", "M-IA", "URT", note="commas, \"quoted\"\nsecond line")
    assert p == tmp_path / "labels" / "taxonomy.csv"
    tx.write_label(tmp_path, "ifeval-2", "m0", "NC-IA+AG", "")
    tx.write_label(tmp_path, "ifeval-1", "m1", "NC-IA+M-AG", "OIT")
    tx.write_label(tmp_path, "ifeval-1", "m0", "M-IA", "URT+OIT", note="fixed")
    got = tx.read_labels(tmp_path).set_index(["case", "model"])
    assert len(got) == 3
    assert got.loc[("ifeval-1", "m0"), "pattern"] == "URT+OIT" and got.loc[("ifeval-1", "m0"), "note"] == "fixed"
    assert got.loc[("ifeval-1", "m1"), "outcome"] == "NC-IA+M-AG"
    assert got.loc[("ifeval-2", "m0"), "pattern"] == ""
    assert sorted(os.listdir(tmp_path / "labels")) == [".taxonomy.lock", "taxonomy.csv"]  # no temporary left
    with pytest.raises(InputError, match="unknown taxonomy outcome"):
        tx.write_label(tmp_path, "ifeval-3", "m0", "bad", "URT")
    assert len(tx.read_labels(tmp_path)) == 3


def test_write_label_failure_leaves_the_old_file(tmp_path, monkeypatch):
    tx.write_label(tmp_path, "a", "m", "M-IA", "URT")
    before = (tmp_path / "labels" / "taxonomy.csv").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tx.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        tx.write_label(tmp_path, "b", "m", "M-IA", "OIT")
    assert (tmp_path / "labels" / "taxonomy.csv").read_bytes() == before


def _write_many(args):
    out, worker = args
    for i in range(8):
        tx.write_label(out, f"case-{worker}-{i}", "m", "M-IA", "URT")


def test_concurrent_writers_lose_no_label(tmp_path):
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_write_many, [(str(tmp_path), w) for w in range(4)])
    got = tx.read_labels(tmp_path)
    assert sorted(got["case"]) == sorted(f"case-{w}-{i}" for w in range(4) for i in range(8))


def test_read_labels_rejects_bad_files(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("case,model,outcome\nx,m,M-IA\n")
    with pytest.raises(InputError, match="lacks column"):
        tx.read_labels(f)
    f.write_text("case,model,outcome,pattern\nx,m,M-IA,URT\ny,m,M-IA,XYZ\n")
    with pytest.raises(InputError, match=r"l\.csv:3: outcome M-IA needs a pattern"):
        tx.read_labels(f)
    assert tx.read_labels(tmp_path / "nothing").empty


# ------------------------------------------------------------------ report on a synthetic table
def _study(tmp_path):
    return StudyInfo("s", (ModelRef("m0", "random:llama"),), {}, root=str(tmp_path), out=str(tmp_path / "out"))


def _pre_table():
    rows = [("c1", "M-IA", "URT"), ("c2", "M-IA", "URT"), ("c3", "M-IA", "URT+OIT"), ("c4", "NC-IA+M-AG", "OIT"),
            ("c5", "NC-IA+AG", ""), ("c6", "n/a", "")]
    return pd.DataFrame([{"case": c, "benchmark": "ifeval", "model": "m0", "rule": "attnlrp", "outcome": o,
                          "pattern": p, "delta_logit": 2.0} for c, o, p in rows])


def test_distribution_counts_and_paper_numbers():
    out, pat = tx.distribution(tx.final_labels(_pre_table()))
    (o,) = out.to_dict("records")
    assert (o["n"], o["not_labelled"], o["manual"]) == (5, 1, 0)
    assert (o["M-IA"], o["NC-IA+M-AG"], o["NC-IA+AG"]) == pytest.approx((60.0, 20.0, 20.0))
    assert o["paper M-IA"] == 90.5 and o["paper n"] == 21
    (p,) = pat.to_dict("records")
    assert p["n"] == 4 and (p["URT"], p["OIT"], p["URT+OIT"], p["none"]) == pytest.approx((50.0, 25.0, 25.0, 0.0))
    assert p["paper URT"] == 70.0


def test_report_prefers_manual_labels(tmp_path):
    study = _study(tmp_path)
    tx.write_label(study.out, "c5", "m0", "M-IA", "OIT")  # a person overrides the NC-IA+AG pre-label
    tx.write_label(study.out, "zz", "m0", "M-IA", "URT")  # a label of no finished unit
    extra = tmp_path / "extra.csv"
    with open(extra, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "model", "outcome", "pattern"])
        w.writerow(["c1", "m0", "NC-IA+M-AG", "URT"])  # from settings.labels
        w.writerow(["c5", "m0", "NC-IA+AG", ""])  # overridden by the results folder's label
    settings = tx.TaxonomySettings(labels="extra.csv")
    sec = tx.TaxonomyAnalysis().report({"labels": _pre_table()}, study, settings)
    outcomes = sec.tables[0].frame.iloc[0]
    assert (outcomes["n"], outcomes["manual"]) == (5, 2)
    assert (outcomes["M-IA"], outcomes["NC-IA+M-AG"], outcomes["NC-IA+AG"]) == pytest.approx((60.0, 40.0, 0.0))
    patterns = sec.tables[1].frame.iloc[0]
    assert patterns["n"] == 5 and patterns["OIT"] == pytest.approx(40.0)
    per_unit = sec.tables[2].frame.set_index("case")
    assert per_unit.loc["c5", "source"] == "manual" and per_unit.loc["c5", "final_pattern"] == "OIT"
    assert per_unit.loc["c5", "pattern"] == ""  # the pre-label stays beside it
    assert "2 with a manual label, 4 pre-labels" in sec.text and "1 manual label(s) match no finished unit" in sec.text
    assert sec.figures and sec.figures[0].figure.axes
    with pytest.raises(InputError, match="no labels file"):
        tx.TaxonomyAnalysis().report({"labels": _pre_table()}, study, tx.TaxonomySettings(labels="missing.csv"))


# ------------------------------------------------------------------ the unit on a tiny model
INSTRUCTION = "do not use any commas in your reply."
QUERY = "Write a short answer about the capital of France."


def make_case(lm):
    from contrastlens.benchmarks.base import locate
    from contrastlens.cases.schema import FailureCase

    msgs = [{"role": "user", "content": f"{QUERY} Please {INSTRUCTION}"}]
    prompt = lm.apply_chat_template(msgs)
    prompt_ids = lm.encode(prompt, add_special_tokens=False)
    comp_ids = lm.encode("The capital of France is Paris, and", add_special_tokens=False)
    fi = len(comp_ids) - 2
    before = lm.tokenizer.decode(comp_ids[:fi], skip_special_tokens=True)
    target = comp_ids[fi]
    contrast = lm.encode(" and", add_special_tokens=False)[0]
    return FailureCase(
        id="ifeval-t1", benchmark="ifeval", item_id="t1", model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=prompt_ids, chat=True, completion=lm.tokenizer.decode(comp_ids), completion_ids=comp_ids,
        status="localised", failure_index=fi, target_id=target, target_str=lm.tokenizer.decode([target]),
        contrast_id=contrast, contrast_str=lm.tokenizer.decode([contrast]), delta_logit=0.5, clean=False,
        method="manual", completion_before_err=before,
        segments={"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
                  "answer": [(len(prompt), len(prompt) + len(before))]},
    )


def test_unit_on_a_tiny_model(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    explain = functools.cache(lambda method=None: cl.explain(lm, case, method=method or "attnlrp",
                                                             on_model_mismatch="ignore"))
    study = StudyInfo("s", (ModelRef("m0", "random:llama"),), {})
    settings = tx.TaxonomySettings(min_delta=-100.0)  # label whatever this random model prefers
    ctx = UnitContext(case, lm, study.models[0], "attnlrp", settings, study, explain)
    res = tx.TaxonomyAnalysis().run(ctx)
    (row,) = res.tables["labels"].to_dict("records")
    ex = cl.explain(lm, case, on_model_mismatch="ignore")  # independent
    traj = res.tensors["trajectory"]
    # invariants of the trajectory: first state = Σ input relevance over non-special tokens, last = Δℓ
    special = np.asarray(ex.special_mask)
    assert special.sum() >= 3  # the chat template's tokens
    assert traj[0] == pytest.approx(float(ex.input_relevance[~special].sum()), rel=1e-4, abs=1e-5)
    assert traj[-1] == pytest.approx(ex.logit_diff, rel=1e-4, abs=1e-5)
    assert len(traj) == 2 * lm.num_layers + 1
    every = tx.prelabel_explanation(ex, case, lm, tx.TaxonomySettings(trajectory="all", use_mid=False))
    assert every["_trajectory"] == pytest.approx(ex.layer_relevance.sum(axis=1))
    with pytest.raises(InputError, match="trajectory must be one of"):
        tx.prelabel_explanation(ex, case, lm, tx.TaxonomySettings(trajectory="some"))
    assert row["delta_logit"] == pytest.approx(ex.logit_diff)
    sums = ex.segment_sums()
    for k in ("total", "instruction", "query", "answer"):
        assert row[k] == pytest.approx(sums[k])
    assert row["relevant"] == "instruction" and row["relevant_sum"] == pytest.approx(sums["instruction"])
    assert row["if_cat"] in tx.IF_CATS
    expected = tx.label_outcome(ex.logit_diff, sums["total"], traj, min_delta=-100.0)
    assert row["outcome"] == expected
    # the instruction phrase's token mask covers the phrase and only its tokens
    masks, mention = tx.instruction_phrases(lm, case, ex.n_tokens)
    (m,) = masks
    idx = np.flatnonzero(m)
    assert INSTRUCTION in lm.tokenizer.decode([case.ids_before_err[i] for i in idx])
    assert np.array_equal(m & ~np.asarray(ex.special_mask), ex.segment_masks()["instruction"])
    assert mention == [case.target_str.strip() in INSTRUCTION]


def test_unit_refuses_a_method_without_layer_relevance(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    ex = cl.explain(lm, case, method="ixg", on_model_mismatch="ignore")
    with pytest.raises(InputError, match="per-layer relevance"):
        tx.prelabel_explanation(ex, case, lm)
