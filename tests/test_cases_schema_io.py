import json

import pytest

import contrastlens as cl
from contrastlens.cases.io import CaseStore, get_case, load_case, load_cases, repair_tail
from contrastlens.cases.schema import FailureCase, Rollout
from contrastlens.errors import InputError


def make_case(**over):
    base = dict(
        id="t-1", benchmark="t", item_id="1", model_source="random:qwen3", prompt="P", prompt_ids=[5, 6],
        completion="abc", completion_ids=[10, 11, 12], status="localised", failure_index=1, target_id=11,
        target_str="b", contrast_id=13, contrast_str="x", completion_before_err="a", delta_logit=2.5,
        clean=True, method="rollout",
        rollouts=[Rollout(rank=0, token_id=11, token_str="b", logit=3.0, continuation="bc", passed=False)],
        segments={"instruction": [(0, 1)], "answer": [(1, 2)]},
    )
    base.update(over)
    return FailureCase(**base)


def test_valid_case_and_ids_before_err():
    c = make_case()
    assert c.ids_before_err == [5, 6, 10]
    assert cl.FailureCase is FailureCase
    assert "clean" in c.summary()


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"target_id": 12}, "is not the completion token"),
        ({"failure_index": 3}, "outside the completion"),
        ({"contrast_id": 11}, "contrast_id equals target_id"),
        ({"clean": False}, "clean means > 1"),
        ({"delta_logit": 0.5}, "clean means > 1"),
        ({"schema_version": 99}, "schema_version"),
        ({"segments": {"middle": [(0, 1)]}}, "unknown segment"),
        ({"method": None}, "needs method"),
        ({"status": "unlocalised", "failure_index": None}, "cannot be clean"),
    ],
)
def test_invalid_cases_are_rejected(over, msg):
    with pytest.raises(ValueError, match=msg):
        make_case(**over)


def test_extra_field_rejected():
    with pytest.raises(ValueError):
        FailureCase.model_validate({**make_case().model_dump(), "surprise": 1})


def test_roundtrip_load_and_lookup(tmp_path):
    f = tmp_path / "c.jsonl"
    store = CaseStore(f)
    store.write_case(make_case())
    store.write_case(make_case(id="t-2", item_id="2", delta_logit=0.3, clean=False))
    store.write_case(make_case(id="t-2", item_id="2", delta_logit=0.3, clean=False))  # no duplicate
    cases = load_cases(f)
    assert [c.id for c in cases] == ["t-1", "t-2"]
    assert [c.id for c in cl.load_cases(f, clean_only=True)] == ["t-1"]
    assert get_case(f"{f}#t-2").delta_logit == pytest.approx(0.3)
    assert get_case(f"{f}#0").id == "t-1" and load_case(f"{f}#t-1").id == "t-1"
    with pytest.raises(InputError, match="no case"):
        get_case(f"{f}#nope")
    with pytest.raises(InputError, match="FILE#ID"):
        get_case(str(f))


def test_bad_line_names_its_number(tmp_path):
    f = tmp_path / "c.jsonl"
    rec = make_case().model_dump(mode="json")
    del rec["prompt"]
    f.write_text(json.dumps(make_case().model_dump(mode="json")) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(InputError, match=r"c.jsonl:2: not a valid case \(prompt"):
        load_cases(f)


def test_torn_last_line_is_repaired_and_resume_state(tmp_path):
    f = tmp_path / "c.jsonl"
    good = json.dumps(make_case().model_dump(mode="json"))
    f.write_text(good + "\n" + good[: len(good) // 2])
    assert repair_tail(f) is True
    assert len(load_cases(f)) == 1
    # a case whose progress line was never written still counts as done
    store = CaseStore(f)
    assert store.is_done("1") and not store.is_done("2")
    store.mark("2", "passed")
    assert CaseStore(f).is_done("2")
    assert not CaseStore(f, resume=False).is_done("1")


def test_case_attribution_inputs_are_its_ids_target_and_contrast(random_lm):
    from contrastlens.attribution.spec import Explainable
    from contrastlens.cases.explain import case_inputs

    c = make_case()
    assert isinstance(c, Explainable)
    assert case_inputs(c) == ([5, 6, 10], 11, 13)
    inp = c.attribution_inputs(random_lm("qwen3"))
    assert (inp.ids, inp.target_id, inp.contrast_id, inp.label) == ([5, 6, 10], 11, 13, "case t-1")
    assert inp.provenance is None  # a case without provenance (schema version 1)
    with pytest.raises(InputError, match="not localised"):
        case_inputs(make_case(status="unlocalised", clean=False, failure_index=None))
    big = make_case(prompt_ids=[5, 10**6])
    with pytest.raises(InputError, match="different tokenizer"):
        cl.explain(random_lm("qwen3"), big)
