"""Token weights for training: the table of one explanation against the explanation itself (relevance, ids,
segments, weights, provenance), the export to one Parquet file read back with pandas and DuckDB, the
analysis through a hand-built UnitContext and its report."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

import contrastlens as cl
from contrastlens.benchmarks.base import locate
from contrastlens.cases.schema import FailureCase
from contrastlens.collect.generate import generate_greedy
from contrastlens.errors import InputError
from contrastlens.study.analyses.token_weights import (
    COLUMNS,
    TokenWeightsAnalysis,
    TokenWeightsSettings,
    collect_token_weights,
    export_token_weights,
    max_abs_weights,
    segment_shares,
    token_weight_table,
)
from contrastlens.study.base import ModelRef, StudyInfo, UnitContext, get_analysis

INSTRUCTION = "Answer with exactly three bullet points."
QUERY = "What is the capital of Italy?"


def _case(lm, fi=3, cid="tw-1", bench="ifeval"):
    from contrastlens.attribution.logits import top_logits

    msgs = [{"role": "user", "content": f"{INSTRUCTION}\n{QUERY}"}]
    prompt = lm.apply_chat_template(msgs)
    pids = lm.encode(prompt, add_special_tokens=False)
    comp, stopped = generate_greedy(lm, [pids], max_new_tokens=fi + 3, batch_size=1)[0]
    top = top_logits(lm, pids + comp[:fi], 2)
    dl = top[0]["logit"] - top[1]["logit"]
    before = lm.tokenizer.decode(comp[:fi], skip_special_tokens=True)
    return FailureCase(
        id=cid, benchmark=bench, item_id=cid.split("-")[-1], model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=pids, completion=lm.tokenizer.decode(comp), completion_ids=comp, stopped=stopped,
        status="localised", failure_index=fi, target_id=comp[fi], contrast_id=top[1]["id"], delta_logit=dl,
        clean=dl > 1, method="manual", completion_before_err=before,
        segments={"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
                  "answer": [(len(prompt), len(prompt) + len(before))]},
        provenance=lm.provenance().to_dict())


@pytest.fixture(scope="module")
def lm():
    return cl.load_model("random:llama")


def test_max_abs_weights_by_hand():
    w = max_abs_weights([4.0, -2.0, 1.0, 10.0], [False, False, False, True])
    assert w.tolist() == [1.0, -0.5, 0.25, 0.0]
    assert max_abs_weights([0.0, 0.0], [False, False]).tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="special_mask"):
        max_abs_weights([1.0], [False, True])


def test_the_table_is_the_explanation(lm):
    case = _case(lm)
    ex = cl.explain(lm, case)
    t = token_weight_table(ex, case, model="small")
    assert list(t.columns) == list(COLUMNS) and len(t) == ex.n_tokens == len(case.ids_before_err)
    assert t["token_id"].tolist() == case.ids_before_err and t["position"].tolist() == list(range(ex.n_tokens))
    assert np.array_equal(t["relevance"].to_numpy(), np.asarray(ex.input_relevance, dtype=np.float64))
    sp = t["is_special"].to_numpy(bool)
    assert sp.tolist() == list(ex.special_mask) and sp.any()
    assert np.abs(t.loc[~sp, "weight"]).max() == pytest.approx(1.0, abs=0) and (t.loc[sp, "weight"] == 0).all()
    ref = ex.normalized("max_abs")
    assert np.allclose(t.loc[~sp, "weight"], ref[~sp], atol=1e-12)
    assert np.array_equal(t["weight_pos"] - t["weight_neg"], t["weight"])
    assert (t["weight_pos"] >= 0).all() and (t["weight_neg"] >= 0).all()
    assert t["is_failure_position"].tolist() == [i == ex.n_tokens - 1 for i in range(ex.n_tokens)]
    masks = ex.segment_masks()
    for name, m in masks.items():
        assert (t.loc[m, "segment"] == name).all() and m.any()
    assert t.loc[sp, "segment"].isna().all()
    assert (t["target_id"] == case.target_id).all() and (t["contrast_id"] == case.contrast_id).all()
    assert t["delta_logit"].iloc[0] == pytest.approx(case.delta_logit, abs=1e-3)
    assert (t["spec_hash"] == ex.spec.hash()).all() and (t["model_fingerprint"] == lm.fingerprint).all()
    assert (t["method"] == "attnlrp").all() and (t["model"] == "small").all()
    assert (t["case_id"] == case.id).all() and (t["benchmark"] == "ifeval").all() and (t["item_id"] == "1").all()
    assert t["token"].tolist() == lm.decode_tokens(case.ids_before_err)
    # a prompt without segments: segment is None
    bare = cl.explain(lm, "The capital of France is", " Paris", " Rome")
    assert token_weight_table(bare, case_id="p")["segment"].isna().all()


def test_export_reads_back_with_pandas_and_duckdb(lm, tmp_path):
    c1, c2 = _case(lm, 3, "tw-1"), _case(lm, 2, "tw-2", "math500")
    t1 = token_weight_table(cl.explain(lm, c1), c1, model="m")
    t2 = token_weight_table(cl.explain(lm, c2, method="ixg"), c2, model="m")
    # a store-like folder: unit files in nested folders, one with the store's columns, and an unrelated table
    (tmp_path / "store" / "a").mkdir(parents=True)
    (tmp_path / "store" / "b").mkdir()
    t1.assign(case=c1.id, rule="attnlrp").to_parquet(tmp_path / "store" / "a" / "tokens.parquet")
    t2.assign(case=c2.id, rule="attnlrp").to_parquet(tmp_path / "store" / "b" / "tokens.parquet")
    t2.assign(case=c2.id, rule="cp-lrp").to_parquet(tmp_path / "store" / "b" / "tokens-copy.parquet")  # duplicate
    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "store" / "other.parquet")
    out = export_token_weights(tmp_path / "store", tmp_path / "out" / "tw.parquet")
    back = pd.read_parquet(out)
    assert len(back) == len(t1) + len(t2) and list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert not back.duplicated(["case_id", "position"]).any()  # the duplicate explanation kept once
    assert back.loc[back["case_id"] == "tw-2", "rule"].nunique() == 1
    exp = pd.concat([t1, t2], ignore_index=True)
    b = back.set_index(["case_id", "position"]).sort_index()
    e = exp.set_index(["case_id", "position"]).sort_index()
    assert np.array_equal(b["relevance"].to_numpy(), e["relevance"].to_numpy())
    assert b["token"].tolist() == e["token"].tolist() and b["method"].tolist() == e["method"].tolist()
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rows = con.execute(f"SELECT case_id, count(*), max(abs(weight)), sum(is_failure_position::INT), "
                       f"any_value(method) FROM read_parquet('{out}') WHERE NOT is_special "
                       "GROUP BY case_id ORDER BY case_id").fetchall()
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("tw-1", 1.0, 1, "attnlrp"), ("tw-2", 1.0, 1, "ixg")]
    assert rows[0][1] == int((~t1["is_special"]).sum())
    # the same file from a DataFrame and from a mapping of tables
    p2 = export_token_weights({"tokens": exp}, tmp_path / "tw2.parquet")
    assert pd.read_parquet(p2)[list(COLUMNS)].equals(pd.read_parquet(out)[list(COLUMNS)])
    assert not list((tmp_path / "out").glob(".*tmp*"))
    with pytest.raises(InputError, match="no Parquet file with token weights"):
        export_token_weights(tmp_path / "store" / "other.parquet", tmp_path / "x.parquet")
    with pytest.raises(InputError, match="no 'tokens' table"):
        collect_token_weights({"metrics": exp})
    with pytest.raises(InputError, match="lacks the column"):
        collect_token_weights(exp.drop(columns="weight"))


def test_analysis_through_a_unit_context_and_its_report(lm):
    case = _case(lm)

    @functools.cache
    def _ex(method, items):
        return cl.explain(lm, case, method=method, method_params=dict(items) or None)

    def explain(method=None, **o):
        return _ex(method or "attnlrp", tuple(sorted(o.items())))

    study = StudyInfo("t", (ModelRef("m", "random:llama"),), {})
    an = get_analysis("token_weights")
    assert isinstance(an, TokenWeightsAnalysis) and an.version == 1
    assert an.skip(case, study.models[0], study, TokenWeightsSettings()) is None
    for settings, method in ((TokenWeightsSettings(), "attnlrp"), (TokenWeightsSettings(method="random",
                                                                                     method_options={"seed": 3}),
                                                                 "random")):
        ctx = UnitContext(case=case, lm=lm, model=study.models[0], rule="attnlrp", settings=settings, study=study,
                          explain=explain)
        t = an.run(ctx).tables["tokens"]
        ex = explain(method, **settings.method_options)
        assert np.array_equal(t["relevance"].to_numpy(), np.asarray(ex.input_relevance, dtype=np.float64))
        assert (t["method"] == method).all() and (t["model"] == "m").all()
    sec = an.report({"tokens": t}, study, TokenWeightsSettings())
    shares = sec.tables[0].frame.iloc[0]
    ref = t[t["weight_pos"] > 0].groupby("segment")["weight_pos"].sum() / t["weight_pos"].sum()
    for seg in ("instruction", "query", "answer"):
        assert shares[f"{seg}_share"] == pytest.approx(ref.get(seg, 0.0))
    assert "export_token_weights" in sec.text and shares["cases"] == 1
    two = segment_shares(pd.concat([t, t.assign(case_id="other", benchmark="math500")]))
    assert two["benchmark"].tolist() == ["all", "ifeval", "math500"] and two["cases"].tolist() == [2, 1, 1]


def test_export_from_a_study_results_folder_takes_the_current_units_only(lm, tmp_path):
    from contrastlens.study.base import UnitKey, UnitResult
    from contrastlens.study.store import Store

    c1, c2 = _case(lm, 3, "tw-1"), _case(lm, 2, "tw-2")
    t1 = token_weight_table(cl.explain(lm, c1), c1, model="m")
    t2 = token_weight_table(cl.explain(lm, c2, method="ixg"), c2, model="m")
    old = token_weight_table(cl.explain(lm, c2, method="random"), c2, model="m")  # a unit of old settings
    keys = [UnitKey("token_weights", "m", c.id, "attnlrp", d) for c, d in ((c1, "d1"), (c2, "d2"), (c2, "d0"))]
    with Store.for_run(tmp_path / "res", "s") as store:
        for key, t, c in zip(keys, (t1, t2, old), (c1, c2, c2), strict=True):
            store.write_unit(key, UnitResult(tables={"tokens": t}), benchmark=c.benchmark)
        store.write_manifest({"units": [{"analysis": "token_weights", "digest": d} for d in ("d1", "d2")]})
    back = pd.read_parquet(export_token_weights(tmp_path / "res", tmp_path / "tw.parquet"))
    assert len(back) == len(t1) + len(t2) and set(back["method"]) == {"attnlrp", "ixg"}
    assert {"case", "rule"} <= set(back.columns) and list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    with pytest.raises(InputError, match="no finished other unit"):
        export_token_weights(tmp_path / "res", tmp_path / "x.parquet", analysis="other")
