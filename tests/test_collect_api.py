"""Collection as a library: CollectSettings (plain data, validated), CollectResources, collect_item, the
CaseSink protocol, and logging instead of prints."""

import dataclasses
import json
import logging
import pickle

import pytest
import torch

from contrastlens.benchmarks import Benchmark, Item, Score
from contrastlens.cases.io import CaseStore, load_cases
from contrastlens.cases.schema import FailureCase
from contrastlens.collect import (
    CaseSink,
    CollectResources,
    CollectSettings,
    Passed,
    Skip,
    collect,
    collect_item,
    write_outcome,
)
from contrastlens.errors import InputError
from contrastlens.models.loading import load_model

FAST = {"max_new_tokens": 6, "top_k": 2, "max_probes": 2, "scan_probes": 0, "progress": False}


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_model("random:llama")


class Tiny(Benchmark):
    """Item ``pass`` passes, ``bad`` has no ``text`` field (a skip), every other item fails."""

    name = "tiny"

    def load(self, path=None, *, data_dir=None):
        return [Item(i, {"text": f"Say {i}.", "level": n % 2}) for n, i in enumerate(["a", "pass", "b", "c"])], []

    def messages(self, item):
        return [{"role": "user", "content": item.data["text"]}]

    def score(self, item, completion):
        return Score(item.id == "pass", {})


# ------------------------------------------------------------------ settings
def test_settings_are_plain_serialisable_data():
    s = CollectSettings(max_new_tokens=32, items=["a", "b"], filters=["level=1"], rollout_slack=None, contrast="#3",
                        failure_index=1)
    assert s.items == ("a", "b") and s.filters == ("level=1",)  # lists are stored as tuples
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d and d["items"] == ["a", "b"]
    assert CollectSettings.from_dict(d) == s
    assert CollectSettings.from_json(s.to_json()) == s
    assert pickle.loads(pickle.dumps(s)) == s
    assert CollectSettings.from_dict({}) == CollectSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 2  # type: ignore[misc]
    assert s.replace(batch_size=2).batch_size == 2
    with pytest.raises(InputError, match="unknown collect setting.*bogus"):
        CollectSettings.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="not valid JSON"):
        CollectSettings.from_json("{")


@pytest.mark.parametrize("bad, msg", [
    ({"max_new_tokens": 0}, "max-new-tokens"), ({"max_new_tokens": -5}, "max-new-tokens"),
    ({"batch_size": 0}, "batch-size"), ({"limit": -1}, "limit"), ({"offset": -1}, "offset"),
    ({"top_k": 0}, "top-k"), ({"rollout_batch": 0}, "rollout-batch"), ({"max_probes": -1}, "max-probes"),
    ({"filters": ["level"]}, "FIELD=VALUE"), ({"filters": ["=1"]}, "no field name"),
    ({"filters": ["level="]}, "no values"), ({"batch_size": "8"}, "must be an integer"),
    ({"chat": "yes"}, "true or false"), ({"contrast": "x"}, "--contrast needs --failure-index"),
    ({"items": []}, "names no item id"), ({"rollout_slack": -1}, "rollout-slack"),
])
def test_settings_reject_bad_values_with_one_line_errors(bad, msg):
    with pytest.raises(InputError, match=msg) as e:
        CollectSettings(**bad)
    assert len(str(e.value).splitlines()) == 1


def test_new_tokens_default_to_the_benchmark():
    assert CollectSettings().new_tokens(Tiny()) == Tiny.default_max_new_tokens
    assert CollectSettings(max_new_tokens=9).new_tokens(Tiny()) == 9


def test_resources_refuse_a_sibling_with_another_tokenizer(lm):
    other = load_model("random:gpt2")
    other.tokenizer = type("T", (), {"get_vocab": lambda self: {"x": 0}})()
    with pytest.raises(InputError, match="does not share the tokenizer"):
        CollectResources(lm, sibling=other)


def test_collect_config_is_a_deprecated_alias(lm, tmp_path):
    from contrastlens.collect import CollectConfig

    with pytest.warns(DeprecationWarning, match="CollectSettings"):
        cfg = CollectConfig(max_new_tokens=6, k=2, max_probes=2, scan_probes=0, progress=False)
    assert cfg.settings() == CollectSettings(**{**FAST, "max_new_tokens": 6})
    bench = Tiny()
    summ = collect(lm, bench, bench.load()[0][:2], str(tmp_path / "c.jsonl"), cfg)  # the old call form
    assert (summ.passed, summ.failed) == (1, 1)


# ------------------------------------------------------------------ one item, sinks
def test_collect_item_outcomes_match_the_batched_run(lm, tmp_path):
    bench = Tiny()
    items = {it.id: it for it in bench.load()[0]}
    s = CollectSettings(**FAST)
    res = CollectResources(lm)
    assert collect_item(s, res, bench, items["pass"]) == Passed("pass")
    broken = Item("bad", {})
    out = collect_item(s, res, bench, broken)
    assert isinstance(out, Skip) and out.item_id == "bad" and "missing field text" in out.reason
    case = collect_item(s, res, bench, items["a"])
    assert isinstance(case, FailureCase) and case.item_id == "a" and case.benchmark == "tiny"
    # the batched run builds the same case from the same per-item code
    collect(s.replace(batch_size=3), res, bench, str(tmp_path / "c.jsonl"), items=[items["a"], items["b"]])
    batched = load_cases(tmp_path / "c.jsonl")[0]
    assert batched.model_dump() == case.model_dump()
    # a given completion is scored as is (ids and stopped, or text)
    given = collect_item(s, res, bench, items["a"], completion=(case.completion_ids, case.stopped))
    assert isinstance(given, FailureCase) and given.completion_ids == case.completion_ids
    text = collect_item(s, res, bench, items["a"], completion="   ")
    assert isinstance(text, Skip) and "empty completion" in text.reason
    # outcomes are small picklable values (a worker process can send them back)
    assert pickle.loads(pickle.dumps(Skip("x", "why"))) == Skip("x", "why")


class MemorySink:
    def __init__(self, done=()):
        self.cases, self.marks, self.done_ids = [], [], set(done)

    def is_done(self, item_id):
        return item_id in self.done_ids

    def write_case(self, case):
        self.cases.append(case)

    def mark(self, item_id, status, **extra):
        self.marks.append((item_id, status, extra))


def test_case_store_and_any_sink_satisfy_the_protocol(lm, tmp_path):
    assert isinstance(CaseStore(tmp_path / "s.jsonl"), CaseSink)
    sink = MemorySink(done={"c"})
    assert isinstance(sink, CaseSink)
    bench = Tiny()
    items = bench.load()[0] + [Item("bad", {})]
    summ = collect(CollectSettings(**FAST), CollectResources(lm), bench, sink, items=items)
    assert summ.resumed == 1 and summ.passed == 1 and summ.failed == 2 and sum(summ.skipped.values()) == 1
    assert [c.item_id for c in sink.cases] == ["a", "b"]
    assert ("pass", "passed", {}) in sink.marks
    assert any(m[0] == "bad" and m[1] == "skipped" and "missing field" in m[2]["reason"] for m in sink.marks)
    write_outcome(sink, Skip("z", "because"))
    assert sink.marks[-1] == ("z", "skipped", {"reason": "because"})
    with pytest.raises(TypeError, match="CaseSink"):
        collect(CollectSettings(**FAST), CollectResources(lm), bench, object(), items=items)


def test_collect_applies_the_settings_selection_when_it_loads(lm, tmp_path):
    bench = Tiny()
    sink = MemorySink()
    s = CollectSettings(**FAST, filters=("level=0",), offset=1, limit=1)
    summ = collect(s, CollectResources(lm), bench, sink)
    assert summ.items == 1 and [c.item_id for c in sink.cases] == ["b"]


# ------------------------------------------------------------------ logging, not prints
def test_library_logs_and_does_not_print(lm, tmp_path, caplog, capsys):
    bench = Tiny()
    items = bench.load()[0][:2] + [Item("bad", {})]
    f = tmp_path / "c.jsonl"
    with caplog.at_level(logging.INFO, logger="contrastlens.collect"):
        collect(CollectSettings(**FAST), CollectResources(lm), bench, str(f), items=items)
        collect(CollectSettings(**FAST), CollectResources(lm), bench, str(f), items=items)
    msgs = [r.getMessage() for r in caplog.records if r.name == "contrastlens.collect.pipeline"]
    assert any(m.startswith("case tiny-a") for m in msgs)
    assert any(m.startswith("skip bad: missing field text") for m in msgs)
    assert any(m.startswith("resuming: 3 items already done") for m in msgs)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_bar_is_tqdm_with_tokens_per_second(lm, tmp_path, monkeypatch):
    import tqdm.auto

    made = []

    class FakeBar:
        def __init__(self, **kw):
            self.kw, self.postfix, self.n = kw, "", 0
            made.append(self)

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

        def update(self, n):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    bench = Tiny()
    collect(CollectSettings(**{**FAST, "progress": True}), CollectResources(lm), bench, str(tmp_path / "c.jsonl"),
            items=bench.load()[0][:3])
    (bar,) = made
    assert bar.kw["total"] == 3 and bar.kw["disable"] is False and bar.n == 3
    assert "tokens" in bar.postfix and "tok/s" in bar.postfix
    collect(CollectSettings(**FAST), CollectResources(lm), bench, str(tmp_path / "d.jsonl"), items=bench.load()[0][:1])
    assert made[-1].kw["disable"] is True


def test_resources_load_like_the_cli():
    res = CollectResources.load(CollectSettings(dtype="float32"), "random:llama", judge_url="http://127.0.0.1:9/v1",
                                judge_model="j")
    assert res.lm.source == "random:llama" and res.sibling is None and callable(res.judge)
    with pytest.raises(InputError, match="--judge-url needs --judge-model"):
        CollectResources.load(CollectSettings(), "random:llama", judge_url="http://x")
