"""Cross-size and cross-checkpoint comparisons: the ids-map check (raises on other tokenizers), Δℓ of every
unit against independent forwards, a tiny checkpoint series trained here, and the reports' counts on
synthetic tables."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import contrastlens as cl
from contrastlens.errors import InputError
from contrastlens.models.loaded import LoadedModel
from contrastlens.models.random import CHAT_TEMPLATE, SPECIALS, build_random_model
from contrastlens.study.analyses import cross_checkpoint as cc
from contrastlens.study.analyses import cross_size as cs
from contrastlens.study.base import ModelRef, StudyInfo, UnitContext

INSTRUCTION = "do not use any commas in your reply."
QUERY = "Write a short answer about the capital of France."


def make_case(lm, cut=2, cid="ifeval-t1"):
    from contrastlens.benchmarks.base import locate
    from contrastlens.cases.schema import FailureCase

    msgs = [{"role": "user", "content": f"{QUERY} Please {INSTRUCTION}"}]
    prompt = lm.apply_chat_template(msgs)
    comp_ids = lm.encode("The capital of France is Paris, and the capital of Italy", add_special_tokens=False)
    fi = len(comp_ids) - cut
    before = lm.tokenizer.decode(comp_ids[:fi], skip_special_tokens=True)
    target = comp_ids[fi]
    contrast = next(i for i in lm.encode(" and the", add_special_tokens=False) if i != target)
    return FailureCase(
        id=cid, benchmark="ifeval", item_id=cid, model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=lm.encode(prompt, add_special_tokens=False), chat=True, completion=lm.tokenizer.decode(comp_ids),
        completion_ids=comp_ids, status="localised", failure_index=fi, target_id=target,
        target_str=lm.tokenizer.decode([target]), contrast_id=contrast, contrast_str=lm.tokenizer.decode([contrast]),
        delta_logit=0.5, clean=False, method="manual", completion_before_err=before,
        segments={"instruction": [locate(prompt, INSTRUCTION)], "query": [locate(prompt, QUERY)],
                  "answer": [(len(prompt), len(prompt) + len(before))]},
    )


def other_tokenizer(vocab_size=512):
    """A byte-level BPE tokenizer with the same special tokens and chat template as the random models', trained
    on another text: same size, other merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(7)
    letters = np.array(list("zqxjkvbpygfwmucldrhsnioate"))
    text = [" ".join("".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(30)) for _ in range(200)]
    tok.train_from_iterator(text, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def plain_delta(model, case):
    """Δℓ by a plain HF forward (no contrastlens code)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([case.ids_before_err])).logits[0, -1].double()
    return float(logits[case.target_id] - logits[case.contrast_id])


def memo_explain(lm, case, rule="attnlrp"):
    def run(method=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cl.explain(lm, case, method=method or rule, on_model_mismatch="ignore")
    return functools.cache(run)


def tag(table, case, model, rule="attnlrp"):
    """What the store adds to a unit's table."""
    return table.assign(case=case.id, benchmark=case.benchmark, model=model, rule=rule)


# ------------------------------------------------------------------ the ids-map check
def test_check_ids_map_accepts_models_of_the_same_tokenizer(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    for other in (lm, random_lm("qwen2"), random_lm("gpt2"), cl.load_model("random:llama", seed=3)):
        cs.check_ids_map(other, case)


def test_check_ids_map_raises_on_another_tokenizer(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    model, _ = build_random_model("llama")
    other = LoadedModel(model, other_tokenizer(), "other-tokenizer")
    assert other.vocab_size == lm.vocab_size == len(other.tokenizer)  # every id is in range: only the meaning differs
    with pytest.raises(InputError, match=rf"case {case.id}: .* under other-tokenizer.*different tokenizer"):
        cs.check_ids_map(other, case)
    # and explaining it would have gone through silently
    cl.explain(other, case, on_model_mismatch="ignore")


def test_check_ids_map_raises_on_a_smaller_vocabulary(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    big = max(case.ids_before_err)
    small = LoadedModel(*build_random_model("llama", vocab_size=300), "random:llama-v300")
    assert big >= 300
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 300\) of random:llama-v300"):
        cs.check_ids_map(small, case)
    # an output layer padded past the tokenizer's vocabulary does not make the ids mean anything
    from contrastlens.models.random import random_tokenizer

    padded = LoadedModel(build_random_model("llama")[0], random_tokenizer(300), "padded")
    assert padded.vocab_size == 512
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 300\) of padded"):
        cs.check_ids_map(padded, case)


def test_check_ids_map_checks_each_string(random_lm):
    lm = random_lm("llama")
    case = make_case(lm)
    with pytest.raises(InputError, match="the target id .* decodes to"):
        cs.check_ids_map(lm, case.model_copy(update={"target_str": "zzz"}))
    with pytest.raises(InputError, match="the contrast id .* decodes to"):
        cs.check_ids_map(lm, case.model_copy(update={"contrast_str": "zzz"}))
    with pytest.raises(InputError, match="completion ids before the error"):
        cs.check_ids_map(lm, case.model_copy(update={"completion_before_err": "zzz"}))
    with pytest.raises(InputError, match="prompt ids do not decode"):
        cs.check_ids_map(lm, case.model_copy(update={"prompt": case.prompt + "x"}))
    cs.check_ids_map(lm, case.model_copy(update={"target_str": None, "contrast_str": None}))
    with pytest.raises(InputError, match="not localised"):
        cs.check_ids_map(lm, case.model_copy(update={"status": "unlocalised"}))


# ------------------------------------------------------------------ cross-size units
def test_cross_size_units_give_each_models_delta_logit(random_lm):
    base = random_lm("llama")
    models = {"base": base, "big": cl.load_model("random:llama", seed=1), "qwen": random_lm("qwen2")}
    study = StudyInfo("s", tuple(ModelRef(n, f"src-{n}") for n in models), {})
    cases = [make_case(base, 2, "ifeval-a"), make_case(base, 3, "ifeval-b")]
    ana, settings = cs.CrossSizeAnalysis(), cs.CrossSizeSettings()
    parts = []
    for case in cases:
        for ref, lm in zip(study.models, models.values(), strict=True):
            assert ana.skip(case, ref, study, settings) is None
            res = ana.run(UnitContext(case, lm, ref, "attnlrp", settings, study, memo_explain(lm, case)))
            (row,) = res.tables["cross_size"].to_dict("records")
            assert row["delta_logit"] == pytest.approx(plain_delta(lm.model, case), abs=1e-4)
            ex = cl.explain(lm, case, on_model_mismatch="ignore")
            assert row["delta_logit"] == pytest.approx(ex.logit_diff, abs=1e-6)
            assert row["total"] == pytest.approx(ex.segment_sums()["total"], abs=1e-6)
            assert row["role"] == ("base" if ref.name == "base" else "larger")
            parts.append(tag(res.tables["cross_size"], case, ref.name))
    deltas = {(c.id, m): plain_delta(models[m].model, c) for c in cases for m in models}
    assert len({round(v, 3) for v in deltas.values()}) == 6  # the models really differ
    sec = ana.report({"cross_size": pd.concat(parts, ignore_index=True)}, study, settings)
    wide = sec.tables[1].frame.set_index("case")
    for (cid, m), v in deltas.items():
        assert wide.loc[cid, m] == pytest.approx(v, abs=1e-4)
    counts = sec.tables[0].frame.set_index("model")
    for m in ("big", "qwen"):
        assert counts.loc[m, "corrected"] == sum(deltas[(c.id, m)] < 0 for c in cases)
        assert counts.loc[m, "below_diagonal"] == sum(deltas[(c.id, m)] < deltas[(c.id, "base")] for c in cases)


def test_cross_size_unit_refuses_another_tokenizer(random_lm):
    base = random_lm("llama")
    case = make_case(base)
    other = LoadedModel(build_random_model("llama", seed=2)[0], other_tokenizer(), "other-tokenizer")
    study = StudyInfo("s", (ModelRef("base", "b"), ModelRef("other", "o")), {})
    ctx = UnitContext(case, other, study.models[1], "attnlrp", cs.CrossSizeSettings(), study, memo_explain(other, case))
    with pytest.raises(InputError, match="model other .*different tokenizer"):
        cs.CrossSizeAnalysis().run(ctx)


def test_cross_size_settings_resolve_and_skip(random_lm):
    case = make_case(random_lm("llama"))
    study = StudyInfo("s", (ModelRef("a", "x"), ModelRef("b", "y"), ModelRef("c", "z")), {})
    assert cs.resolve_models(study, None, None) == ("a", ["b", "c"])
    assert cs.resolve_models(study, "b", ["c"]) == ("b", ["c"])
    with pytest.raises(InputError, match="analyses.cross_size.base: no model named 'q'"):
        cs.resolve_models(study, "q", None)
    with pytest.raises(InputError, match="analyses.cross_size.models: no model named 'q'"):
        cs.resolve_models(study, None, ["q"])
    with pytest.raises(InputError, match="lists the base model"):
        cs.resolve_models(study, "a", ["a"])
    ana = cs.CrossSizeAnalysis()
    assert "not in the cross-size comparison" in ana.skip(case, study.models[1], study, cs.CrossSizeSettings(
        base="a", models=["c"]))
    assert ana.skip(case, study.models[0], study, cs.CrossSizeSettings(base="a", models=["c"])) is None


def test_cross_size_report_counts_on_a_synthetic_table():
    base_dl = [2.0, 3.0, 4.0, 5.0, 6.0]
    big_dl = [-1.0, -0.5, -2.0, 7.0, 5.5]  # corrected 3 of 5; below y = x 4 of 5; region (< -1) 1
    rows = []
    for i, (b, g) in enumerate(zip(base_dl, big_dl, strict=True)):
        for m, dl, tot in (("base", b, 1.0 + i), ("big", g, -1.0 - i if g < 0 else 2.0)):
            rows.append({"case": f"c{i}", "benchmark": "ifeval", "model": m, "rule": "attnlrp", "delta_logit": dl,
                         "total": tot, "instruction": tot / 2, "query": tot / 4, "answer": tot / 4})
    study = StudyInfo("s", (ModelRef("base", "x"), ModelRef("big", "y")), {})
    sec = cs.CrossSizeAnalysis().report({"cross_size": pd.DataFrame(rows)}, study, cs.CrossSizeSettings(n_boot=200))
    (c,) = sec.tables[0].frame.to_dict("records")
    assert (c["model"], c["n"], c["corrected"], c["below_diagonal"], c["region"], c["kept"]) == ("big", 5, 3, 4, 1, 2)
    assert "corrected 3 of 5, below y = x 4 of 5" in sec.text
    shifts = sec.tables[3].frame.set_index(["group", "model", "segment"])["mean"]
    assert shifts[("corrected", "base", "total")] == pytest.approx(np.mean([1, 2, 3]))
    assert shifts[("corrected", "big", "total")] == pytest.approx(np.mean([-1, -2, -3]))
    assert shifts[("not corrected", "base", "total")] == pytest.approx(np.mean([4, 5]))
    assert shifts[("not corrected", "big", "instruction")] == pytest.approx(1.0)
    everyone = sec.tables[2].frame.set_index(["model", "segment"])["mean"]
    assert everyone[("base", "total")] == pytest.approx(3.0)
    scatter = sec.figures[0].figure.axes[0]
    assert "corrected 3/5" in scatter.get_title() and "below y=x 4/5" in scatter.get_title()
    assert cs.correction_counts([2.0, np.nan], [-3.0, -3.0])["n"] == 1


# ------------------------------------------------------------------ a tiny checkpoint series of our own
@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """ck-0 .. ck-3: a tiny random Llama and three checkpoints of a few SGD steps that lower Δℓ of the
    first case; 'ck-bad': the last weights saved with another tokenizer."""
    root = tmp_path_factory.mktemp("series")
    model, tok = build_random_model("llama", seed=5)
    lm0 = LoadedModel(model, tok, "tiny")
    cases = [make_case(lm0, 2, "ifeval-a"), make_case(lm0, 3, "ifeval-b")]
    ids = torch.tensor([cases[0].ids_before_err])
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    folders = {}
    for step in range(4):
        if step:
            for _ in range(2):
                opt.zero_grad()
                logits = model(input_ids=ids).logits[0, -1]
                (logits[cases[0].target_id] - logits[cases[0].contrast_id]).backward()
                opt.step()
        d = root / f"ck-{step}"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        folders[f"ck-{step}"] = d
    bad = root / "ck-bad"
    model.save_pretrained(bad)
    other_tokenizer().save_pretrained(bad)
    folders["ck-bad"] = bad
    return folders, cases


def test_checkpoint_trajectory_equals_independent_delta_logits(series):
    from transformers import AutoModelForCausalLM

    folders, cases = series
    # listed out of order: the series is sorted by step
    refs = [ModelRef(f"ck-{s}", str(folders[f"ck-{s}"]), series="ft", step=s) for s in (2, 0, 3, 1)]
    study = StudyInfo("s", (*refs, ModelRef("outside", "random:llama")), {})
    ana, settings = cc.CrossCheckpointAnalysis(), cc.CrossCheckpointSettings()
    assert [m.name for m in cc.checkpoint_order(study, "ft")] == ["ck-0", "ck-1", "ck-2", "ck-3"]
    assert "not a checkpoint of series ft" in ana.skip(cases[0], study.models[-1], study, settings)
    parts, expected = [], {}
    for ref in refs:
        lm = cl.load_model(ref.source)
        hf = AutoModelForCausalLM.from_pretrained(ref.source).eval()  # independent of contrastlens' loading
        for case in cases:
            assert ana.skip(case, ref, study, settings) is None
            res = ana.run(UnitContext(case, lm, ref, "attnlrp", settings, study, memo_explain(lm, case)))
            (row,) = res.tables["cross_checkpoint"].to_dict("records")
            expected[(case.id, ref.name)] = plain_delta(hf, case)
            assert row["delta_logit"] == pytest.approx(expected[(case.id, ref.name)], abs=1e-4)
            assert (row["series"], row["step"], row["index"]) == ("ft", ref.step, ref.step)
            ex = cl.explain(lm, case, on_model_mismatch="ignore")
            assert row["instruction"] == pytest.approx(ex.segment_sums()["instruction"], abs=1e-6)
            parts.append(tag(res.tables["cross_checkpoint"], case, ref.name))
    first = [expected[("ifeval-a", f"ck-{s}")] for s in range(4)]
    assert all(b < a for a, b in zip(first, first[1:], strict=False))  # training lowered Δℓ of the trained case
    sec = ana.report({"cross_checkpoint": pd.concat(parts, ignore_index=True)}, study, settings)
    summary = sec.tables[0].frame
    assert list(summary["model"]) == ["ck-0", "ck-1", "ck-2", "ck-3"] and list(summary["step"]) == [0, 1, 2, 3]
    for _, r in summary.iterrows():
        vals = [expected[(c.id, r["model"])] for c in cases]
        assert r["delta_logit_mean"] == pytest.approx(np.mean(vals), abs=1e-4)
        assert r["corrected"] == sum(v < 0 for v in vals)
    wide = sec.tables[1].frame.set_index("case")
    assert wide.loc["ifeval-a", "ck-3"] == pytest.approx(first[-1], abs=1e-4)
    assert len(sec.figures) == 2


def test_checkpoint_with_another_tokenizer_is_refused(series):
    folders, cases = series
    refs = (ModelRef("ck-0", str(folders["ck-0"]), series="ft", step=0),
            ModelRef("ck-bad", str(folders["ck-bad"]), series="ft", step=9))
    study = StudyInfo("s", refs, {})
    lm = cl.load_model(refs[1].source)
    ctx = UnitContext(cases[0], lm, refs[1], "attnlrp", cc.CrossCheckpointSettings(), study,
                      memo_explain(lm, cases[0]))
    with pytest.raises(InputError, match=r"series ft, checkpoint ck-bad \(step 9\): its tokenizer does not agree"):
        cc.CrossCheckpointAnalysis().run(ctx)


def test_series_resolution():
    a = ModelRef("a", "x", series="s1", step=1)
    b = ModelRef("b", "y", series="s2", step=1)
    assert cc.resolve_series(StudyInfo("s", (a, ModelRef("c", "z")), {}), None) == "s1"
    with pytest.raises(InputError, match="several series"):
        cc.resolve_series(StudyInfo("s", (a, b), {}), None)
    with pytest.raises(InputError, match="no checkpoint series"):
        cc.resolve_series(StudyInfo("s", (ModelRef("c", "z"),), {}), None)
    with pytest.raises(InputError, match="no series named 'zz'"):
        cc.resolve_series(StudyInfo("s", (a, b), {}), "zz")


def test_cross_checkpoint_report_on_a_synthetic_table():
    refs = tuple(ModelRef(f"s{k}", "x", series="ft", step=k * 1000) for k in (1, 2, 3))
    study = StudyInfo("s", refs, {})
    dl = {"s1": [3.0, 2.0, 1.5, 4.0], "s2": [1.0, -0.5, 0.5, 3.0], "s3": [-1.0, -2.0, 0.2, 2.5]}
    rows = [{"case": f"c{i}", "benchmark": "ifeval", "model": m, "rule": "attnlrp", "delta_logit": v,
             "total": v / 2, "instruction": -k, "query": 0.0, "answer": 0.5, "series": "ft", "step": refs[k].step}
            for k, m in enumerate(dl) for i, v in enumerate(dl[m])]
    sec = cc.CrossCheckpointAnalysis().report({"cross_checkpoint": pd.DataFrame(rows)}, study,
                                              cc.CrossCheckpointSettings(n_boot=200))
    s = sec.tables[0].frame.set_index("model")
    assert list(s["corrected"]) == [0, 1, 2] and list(s["share_corrected"]) == [0.0, 0.25, 0.5]
    assert list(s["share_above"]) == [1.0, 0.25, 0.25]
    assert s.loc["s2", "delta_logit_mean"] == pytest.approx(1.0) and s.loc["s3", "instruction"] == -2
    assert s.loc["s1", "delta_logit_low"] <= 2.625 <= s.loc["s1", "delta_logit_high"]
    assert "corrected at the last checkpoint: 2 of 4" in sec.text
    traj_ax = sec.figures[0].figure.axes[0]
    assert len(traj_ax.lines) == 4 + 1 + 1  # four cases, the mean, the zero line
    assert np.allclose(traj_ax.lines[4].get_ydata(), [2.625, 1.0, -0.075])
