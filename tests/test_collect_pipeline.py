"""End-to-end tests of generation, rollout localisation and the resumable pipeline on a tiny random model
with fake checkers whose answers are known."""

import json

import pytest
import torch

from contrastlens.benchmarks import Benchmark, Item, Score
from contrastlens.cases.io import load_cases
from contrastlens.collect import CollectResources, CollectSettings, collect
from contrastlens.collect.generate import PrefixCache, generate_greedy, rollout_batch, rollout_rows
from contrastlens.errors import InputError
from contrastlens.models.loading import load_model

N_NEW = 12


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_model("random:qwen3")


PROMPTS = ["Write a list of fruits.", "Count to ten.", "The answer is 42.", "def add(a, b):", "Hello there",
           "Tell me a story about a dog.", "Why is the sky blue?"]


class PrefixBench(Benchmark):
    """Passes iff the completion does not start with ``bad_prefix[item]`` (the greedy text of the first
    ``fail_at + 1`` tokens): any alternative before or at ``fail_at`` rescues, later ones cannot, so the
    failure position is exactly ``fail_at``. With ``want`` set, it passes only if the completion starts
    with that exact text (one specific rescue)."""

    name = "prefixbench"

    def __init__(self, bad_prefix=None, want=None, broke=None, bad_items=()):
        self.bad_prefix = bad_prefix or {}
        self.want = want or {}
        self.broke = broke or {}
        self.bad_items = set(bad_items)

    def load(self, path=None, *, data_dir=None):
        return [Item(str(i), {"text": p}) for i, p in enumerate(PROMPTS)], []

    def messages(self, item):
        if item.id in self.bad_items:
            raise KeyError("text")
        return [{"role": "user", "content": item.data["text"]}]

    def score(self, item, completion):
        if item.id in self.want:
            return Score(completion.startswith(self.want[item.id]), {}, self.broke.get(item.id))
        bad = self.bad_prefix.get(item.id)
        if bad is None:
            return Score(True, {})
        return Score(not completion.startswith(bad), {"prefix": bad}, self.broke.get(item.id))


def greedy(lm, i):
    ids = lm.encode(lm.apply_chat_template(PROMPTS[i]), add_special_tokens=False)
    comp, _ = generate_greedy(lm, [ids], max_new_tokens=N_NEW, batch_size=1)[0]
    return ids, comp


def test_batched_left_padded_generation_equals_one_by_one(lm):
    prompts = [lm.encode(lm.apply_chat_template(p), add_special_tokens=False) for p in PROMPTS[:4]]
    assert len({len(p) for p in prompts}) > 1  # really padded
    batched = generate_greedy(lm, prompts, max_new_tokens=N_NEW, batch_size=4)
    single = [generate_greedy(lm, [p], max_new_tokens=N_NEW, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(len(c) == N_NEW or s for c, s in batched)


def test_rollouts_with_shared_prefix_cache_equal_plain_generation(lm):
    ids, comp = greedy(lm, 0)
    full = ids + comp
    pc = PrefixCache(lm, full)
    p = len(ids) + 3
    alts = torch.topk(pc.logits[p - 1], 3).indices.tolist()
    kv = pc.prefix(p, 3)  # the cache really is reused: cut to the prefix and repeated for the batch
    assert kv is not None and kv.get_seq_length() == p and kv.layers[0].keys.shape[0] == 3
    cached = rollout_batch(lm, full[:p], alts, max_new_tokens=6, cache=pc)
    plain = rollout_batch(lm, full[:p], alts, max_new_tokens=6, cache=None)
    assert cached == plain
    # the rollout of the greedy token reproduces the greedy completion
    again = rollout_batch(lm, full[:p], [full[p]], max_new_tokens=N_NEW - 4, cache=pc)[0][0]
    assert again == comp[4:][: len(again)]


def _bad_prefix(lm, i, fail_at):
    ids, comp = greedy(lm, i)
    return ids, comp, lm.tokenizer.decode(comp[: fail_at + 1], skip_special_tokens=True)


def _top_alternative(lm, ids, comp, p):
    lg = PrefixCache(lm, ids + comp).logits[len(ids) + p - 1]
    order = torch.argsort(lg, descending=True).tolist()
    return [t for t in order if t != comp[p] and t not in lm.special_ids()][:4], lg


def test_binary_search_finds_the_exact_failure_token(lm, tmp_path):
    ids, comp, bad = _bad_prefix(lm, 0, 5)
    bench = PrefixBench(bad_prefix={"0": bad})
    cfg = CollectSettings(max_new_tokens=N_NEW, batch_size=2, top_k=3, progress=False)
    summ = collect(cfg, CollectResources(lm), bench, str(tmp_path / "c.jsonl"), items=bench.load()[0][:1])
    (case,) = load_cases(tmp_path / "c.jsonl")
    assert case.status == "localised" and case.method == "rollout"
    assert case.failure_index == 5 and case.target_id == comp[5]
    alts, lg = _top_alternative(lm, ids, comp, 5)
    assert case.contrast_id == alts[0]  # best-ranked passing alternative
    assert case.delta_logit == pytest.approx(float(lg[comp[5]] - lg[alts[0]]), abs=1e-4)
    assert case.clean == (case.delta_logit > 1)
    assert case.completion_before_err == lm.tokenizer.decode(comp[:5], skip_special_tokens=True)
    assert case.ids_before_err == ids + comp[:5]
    assert case.n_positions <= 5 < len(comp)  # far fewer probes than tokens
    assert case.n_rollouts == 3 * case.n_positions
    r0 = case.rollouts[0]
    assert r0.token_id == comp[5] and r0.passed is False
    assert case.rollouts[1].passed is True and case.rollouts[1].token_id == alts[0]
    assert summ.failed == 1 and summ.localised == 1 and summ.rollouts == [case.n_rollouts]
    assert case.segments["answer"] == [(len(case.prompt), len(case.prompt) + len(case.completion_before_err))]


def test_checker_guided_probe_costs_one_batch(lm, tmp_path):
    ids, comp, bad = _bad_prefix(lm, 1, 4)
    broke = len(lm.tokenizer.decode(comp[:4], skip_special_tokens=True))
    bench = PrefixBench(bad_prefix={"1": bad}, broke={"1": broke})
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=3, progress=False)
    collect(cfg, CollectResources(lm), bench, str(tmp_path / "c.jsonl"), items=bench.load()[0][1:2])
    (case,) = load_cases(tmp_path / "c.jsonl")
    assert case.failure_index == 4 and case.n_positions == 1 and case.n_rollouts == 3


def test_sibling_fallback(lm, tmp_path):
    ids, comp = greedy(lm, 2)
    sib = load_model("random:qwen3", seed=1)
    mine, _ = _top_alternative(lm, ids, comp, 3)
    slg = PrefixCache(sib, ids + comp).logits[len(ids) + 2]
    x = next(t for t in torch.argsort(slg, descending=True).tolist()
             if t not in (comp[3], mine[0]) and t not in lm.special_ids())
    want = lm.tokenizer.decode(comp[:3] + [x], skip_special_tokens=True)
    broke = len(lm.tokenizer.decode(comp[:3], skip_special_tokens=True))
    bench = PrefixBench(want={"2": want}, broke={"2": broke})
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=1, max_probes=4, progress=False)
    collect(cfg, CollectResources(lm, sibling=sib), bench, str(tmp_path / "c.jsonl"), items=bench.load()[0][2:3])
    (case,) = load_cases(tmp_path / "c.jsonl")
    assert case.method == "sibling" and case.failure_index == 3 and case.contrast_id == x
    assert any(r.source == "sibling" and r.passed for r in case.rollouts)


def test_judge_and_manual_fallbacks(lm, tmp_path):
    bench = PrefixBench(want={"3": "never produced \u2603"})
    asked = []

    def judge(payload):
        asked.append(json.loads(payload))
        return 'Sure: {"error_token": "x", "token_index": 2, "explanation": "wrong"}'

    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=2, max_probes=3, progress=False)
    collect(cfg, CollectResources(lm, judge=judge), bench, str(tmp_path / "j.jsonl"), items=bench.load()[0][3:4])
    (case,) = load_cases(tmp_path / "j.jsonl")
    assert case.method == "judge" and case.failure_index == 2
    assert "[0]" in asked[0]["indexed_completion"] and asked[0]["completion"] == case.completion
    assert any("no alternative passed" in n for n in case.notes)

    ids, comp = greedy(lm, 3)
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=2, failure_index=1, contrast=comp[1] + 1, progress=False)
    collect(cfg, CollectResources(lm), bench, str(tmp_path / "m.jsonl"), items=bench.load()[0][3:4])
    (case,) = load_cases(tmp_path / "m.jsonl")
    assert case.method == "manual" and case.failure_index == 1 and case.contrast_id == comp[1] + 1
    cfg = CollectSettings(max_new_tokens=N_NEW, failure_index=1, contrast=comp[1], progress=False)
    summ = collect(cfg, CollectResources(lm), bench, str(tmp_path / "m2.jsonl"), items=bench.load()[0][3:4])
    assert summ.skipped and "contrast equals" in next(iter(summ.skipped))


def _full_bench(lm):
    bad = {}
    for i in range(len(PROMPTS)):
        _, comp = greedy(lm, i)
        bad[str(i)] = lm.tokenizer.decode(comp[:3], skip_special_tokens=True)
    bad.pop("4")  # item 4 passes
    return PrefixBench(bad_prefix=bad, bad_items={"5"})


def test_resume_after_interruption_loses_and_duplicates_nothing(lm, tmp_path):
    bench = _full_bench(lm)
    items = bench.load()[0]
    ref_file = tmp_path / "ref.jsonl"
    settings = CollectSettings(max_new_tokens=N_NEW, top_k=2, batch_size=3, progress=False)
    res = CollectResources(lm)
    ref = collect(settings, res, bench, str(ref_file), items=items)
    f = tmp_path / "c.jsonl"

    class Stop(Exception):
        pass

    def boom(n):
        if n == 4:
            raise Stop

    with pytest.raises(Stop):
        collect(settings, res, bench, str(f), items=items, on_item=boom)
    partial = load_cases(f)
    assert 0 < len(partial) < len(load_cases(ref_file))
    # simulate a kill in the middle of writing a line
    with open(f, "a") as fh:
        fh.write('{"schema_version": 1, "id": "torn')
    summ = collect(settings, res, bench, str(f), items=items)
    got = load_cases(f)
    want = load_cases(ref_file)
    assert [c.item_id for c in got] == [c.item_id for c in want]
    assert len({c.id for c in got}) == len(got)
    assert [(c.failure_index, c.contrast_id) for c in got] == [(c.failure_index, c.contrast_id) for c in want]
    assert summ.resumed == 5  # 4 finished + the item skipped while preparing the batch
    assert (summ.passed, summ.failed, summ.localised) == (ref.passed, ref.failed, ref.localised) == (1, 5, 5)
    assert summ.skipped == ref.skipped and sum(summ.skipped.values()) == 1
    # a third run does nothing
    again = collect(CollectSettings(max_new_tokens=N_NEW, progress=False), res, bench, str(f), items=items)
    assert again.resumed == len(items) and again.generated == 0 and len(load_cases(f)) == len(got)


def test_bad_items_are_skipped_with_reasons(lm, tmp_path):
    class Picky(PrefixBench):
        def score(self, item, completion):
            if item.id == "1":
                raise InputError("item 1: code hangs")
            return Score(False, {})

    bench = Picky(bad_items={"0"})
    items = bench.load()[0][:3]
    no_template = load_model("random:qwen3")
    no_template.tokenizer.chat_template = None
    summ = collect(CollectSettings(max_new_tokens=4, progress=False), CollectResources(no_template), bench,
                   str(tmp_path / "a.jsonl"), items=items)
    assert sum(summ.skipped.values()) == 3 and "chat template" in summ.skipped
    summ = collect(CollectSettings(max_new_tokens=4, top_k=2, max_probes=2, progress=False), CollectResources(lm),
                   bench, str(tmp_path / "b.jsonl"), items=items)
    assert summ.skipped == {"missing field": 1, "item 1: code hangs": 1}
    assert summ.failed == 1 and summ.localised == 0
    (case,) = load_cases(tmp_path / "b.jsonl")
    assert case.status == "unlocalised" and not case.clean
    table = summ.table()
    assert "skipped: item 1: code hangs" in table and "failed" in table


def test_empty_completion_is_skipped(lm, tmp_path, monkeypatch):
    import contrastlens.collect.pipeline as pl

    monkeypatch.setattr(pl, "generate_greedy", lambda lm, prompts, **kw: [([], True) for _ in prompts])
    bench = PrefixBench()
    summ = collect(CollectSettings(progress=False), CollectResources(lm), bench, str(tmp_path / "e.jsonl"),
                   items=bench.load()[0][:2])
    assert summ.skipped == {"empty completion": 2}


def test_first_token_is_probed_even_when_the_budget_is_spent(lm, tmp_path):
    ids, comp, bad = _bad_prefix(lm, 6, 0)
    bench = PrefixBench(bad_prefix={"6": bad})
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=2, max_probes=2, progress=False)
    collect(cfg, CollectResources(lm), bench, str(tmp_path / "c.jsonl"), items=bench.load()[0][6:7])
    (case,) = load_cases(tmp_path / "c.jsonl")
    assert case.failure_index == 0 and case.n_positions == 3
    assert any("boundary lies in tokens [0, " in n for n in case.notes)


def test_settled_stops_generation_and_rollouts_where_the_verdict_is_fixed(lm):
    ids, full = greedy(lm, 3)
    dec = lm.tokenizer.decode
    n_chars = len(dec(full[:4], skip_special_tokens=True))

    def settled(text):
        return len(text) >= n_chars

    ((comp, stopped),) = generate_greedy(lm, [ids], max_new_tokens=N_NEW, batch_size=1, settled=settled)
    shortest = next(i + 1 for i in range(len(full)) if settled(dec(full[: i + 1], skip_special_tokens=True)))
    assert comp == full[:shortest] and stopped and shortest < len(full)
    # a rollout after two tokens of the completion stops at the same place: the head counts
    p = 2
    head = dec(full[:p], skip_special_tokens=True)
    ((gen, st),) = rollout_batch(lm, ids + full[:p], [full[p]], max_new_tokens=N_NEW, settled=settled, head=head)
    assert [full[p]] + gen == full[p:shortest] and st


def order_all(marg):
    return sorted(range(len(marg)), key=lambda q: marg[q])


def test_uncertainty_scan_finds_a_lone_rescuable_position(lm, tmp_path):
    """Only one alternative at one position passes, so rescuable positions are not a prefix of the
    completion and the binary search misses it; the scan probes by ascending margin and finds it."""
    from contrastlens.collect.localise import Localiser

    ids, comp = greedy(lm, 5)
    assert len(comp) == N_NEW
    p = 8
    alts, lg = _top_alternative(lm, ids, comp, p)
    want = lm.tokenizer.decode(comp[:p] + [alts[0]], skip_special_tokens=True)
    bench = PrefixBench(want={"5": want})
    item = bench.load()[0][5]
    loc = Localiser(lm, bench, item, ids, comp, k=3, max_new_tokens=N_NEW, max_probes=2, scan_probes=N_NEW,
                    batch_rows=3)  # one position per batch
    assert loc.search() == p
    probed = [q for q, _ in loc.probes]
    assert probed[:3] == [6, 3, 0]  # the binary search (two probes, then the first token) found nothing
    # the scan's order is the margin order, computed here from the full-sequence logits
    logits = PrefixCache(lm, ids + comp).logits
    marg = []
    for q in range(N_NEW):
        row = logits[len(ids) + q - 1].clone()
        chosen = float(row[comp[q]])
        row[comp[q]] = float("-inf")
        row[sorted(lm.special_ids() | set(loc.excluded))] = float("-inf")
        marg.append(chosen - float(row.max()))
    order = [q for q in sorted(range(N_NEW), key=lambda q: marg[q]) if q not in (6, 3, 0)]
    until = order.index(p)
    assert probed[3 : 4 + until] == order[: until + 1]
    assert all(q > p for q in probed[4 + until :])  # after the find only later positions are worth a probe
    assert any("uncertainty scan" in n for n in loc.search_notes)
    # several positions per batch: the same answer and the same rollouts at every shared position
    many = Localiser(lm, bench, item, ids, comp, k=3, max_new_tokens=N_NEW, max_probes=2, scan_probes=N_NEW,
                     batch_rows=12)
    assert many.search() == p
    shared = set(loc.probes) & set(many.probes)
    assert (p, "model") in shared and all(loc.probes[q] == many.probes[q] for q in shared)
    # a region keeps the scan inside it (the checker's "where a change can matter")
    inside = Localiser(lm, bench, item, ids, comp, k=3, max_new_tokens=N_NEW, max_probes=0, scan_probes=4,
                       batch_rows=3, region=(p + 1, N_NEW))
    assert inside.search() is None and [q for q, _ in inside.probes] == [q for q in order_all(marg) if q > p][:4]
    # with the scan off nothing is found; through the pipeline the case records the scan
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=3, max_probes=2, scan_probes=0, progress=False)
    collect(cfg, CollectResources(lm), bench, str(tmp_path / "off.jsonl"), items=[item])
    assert load_cases(tmp_path / "off.jsonl")[0].status == "unlocalised"
    cfg = CollectSettings(max_new_tokens=N_NEW, top_k=3, max_probes=2, scan_probes=N_NEW, progress=False)
    collect(cfg, CollectResources(lm), bench, str(tmp_path / "on.jsonl"), items=[item])
    (case,) = load_cases(tmp_path / "on.jsonl")
    assert case.failure_index == p and case.contrast_id == alts[0] and case.method == "rollout"
    assert any("uncertainty scan" in n for n in case.notes)


def test_rollout_slack_caps_each_continuation(lm):
    from contrastlens.collect.localise import Localiser

    ids, comp = greedy(lm, 4)
    bench = PrefixBench(bad_prefix={"4": "x"})
    item = bench.load()[0][4]
    n, p = len(comp), 3
    for slack, cap in ((2, n - p - 1 + 2), (None, 40 - p - 1)):
        loc = Localiser(lm, bench, item, ids, comp, k=3, max_new_tokens=40, rollout_slack=slack)
        assert loc.budget(p) == cap
        rolls = loc.probe(p)
        # each continuation is the alternative plus at most ``cap`` tokens (fewer if it stopped)
        want = rollout_batch(lm, ids + comp[:p], [r.token_id for r in rolls], max_new_tokens=cap)
        assert [r.continuation for r in rolls] == [lm.tokenizer.decode([r.token_id] + g, skip_special_tokens=True)
                                                   for r, (g, _) in zip(rolls, want, strict=True)]


@pytest.mark.parametrize("use_cache", [True, False])
def test_rollouts_at_many_positions_in_one_batch_equal_one_position_at_a_time(lm, use_cache):
    ids, comp = greedy(lm, 6)
    full = ids + comp
    pc = PrefixCache(lm, full)
    positions = [1, 4, 4, 9, 2]
    alts = [int(torch.topk(pc.logits[len(ids) + p - 1], 3).indices[1 + (i % 2)]) for i, p in enumerate(positions)]
    budgets = [5, 3, 7, 2, 6]
    starts = [len(ids) + p for p in positions]
    got = rollout_rows(lm, full, starts, alts, budgets=budgets, cache=pc if use_cache else None)
    for (gen, st), s, a, b in zip(got, starts, alts, budgets, strict=True):
        ((want, wst),) = rollout_batch(lm, full[:s], [a], max_new_tokens=b, cache=None)
        assert gen == want and st == wst

