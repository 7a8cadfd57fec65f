"""The collection run: from benchmark items to failure cases, resumable.

Per item (:func:`collect_item`; :func:`collect` runs the same steps over many items):

1. **Prepare**: the benchmark's messages, rendered with the chat template (or the plain prompt), encoded
   and checked against the model's context.
2. **Complete**: greedy decoding up to ``max_new_tokens`` (stopping early once the benchmark says the
   verdict is settled), or the item's recorded completion (agent traces, unless ``regenerate``).
3. **Score** the completion with the benchmark's checker. A pass is a :class:`Passed`.
4. **Localise** a failure by rollouts (:class:`~contrastlens.collect.localise.Localiser`): the last
   completion position where one of the model's top-k alternatives, continued greedily, passes the
   checker; the checker's hints are probed first, then a binary search, then an uncertainty scan; then
   the sibling model, the LLM judge or the manual position as fallbacks.
5. **Case**: a :class:`~contrastlens.cases.schema.FailureCase` with the target (the model's token at the
   failure), the contrast (the best-ranked passing alternative), Δℓ between them and the rollouts;
   unlocalised failures are cases too.

Bad input of one item (missing fields, no chat template, a prompt past the context, code that hangs, an
empty completion) is a :class:`Skip` with a one-line reason, never an exception.

:func:`collect` loads and selects the items (or takes them), skips those its sink already holds (a
resumed run), prepares them in chunks of ``batch_size``, generates each chunk in one batched call, and
scores, localises and writes every item as soon as it is done, so a killed run loses at most the item in
flight. Messages go to the ``logging`` logger of this module; the progress bar is ``tqdm``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from contrastlens.benchmarks.base import Benchmark, Item, ItemError
from contrastlens.benchmarks.select import select_bad_rows, select_items
from contrastlens.cases.io import CaseStore
from contrastlens.cases.schema import FailureCase, case_id
from contrastlens.collect.generate import Completion, generate_greedy
from contrastlens.collect.localise import Localiser, chars_to_tokens, judge_payload, parse_judge
from contrastlens.collect.settings import CollectConfig, CollectResources, CollectSettings
from contrastlens.errors import ContrastLensError
from contrastlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the errors that make one item a :class:`Skip` instead of stopping the run
ITEM_ERRORS: tuple[type[Exception], ...] = (ContrastLensError, KeyError, TypeError, ValueError)


@dataclass(frozen=True)
class Passed:
    """The item's completion passed the checker: no case."""

    item_id: str


@dataclass(frozen=True)
class Skip:
    """The item could not be run (bad data, no chat template, prompt too long, ...): ``reason``, one line."""

    item_id: str
    reason: str


Outcome = FailureCase | Passed | Skip


@runtime_checkable
class CaseSink(Protocol):
    """Where a run records what it did per item (:class:`~contrastlens.cases.io.CaseStore` is one)."""

    def is_done(self, item_id: str) -> bool:
        """True when the item was finished by an earlier run (it is not run again)."""
        ...

    def write_case(self, case: FailureCase) -> None:
        """Keep a failure case (and record its item as done)."""
        ...

    def mark(self, item_id: str, status: str, **extra: Any) -> None:
        """Record an item as done without a case: ``status`` ``passed`` or ``skipped`` (``reason=...``)."""
        ...


def write_outcome(sink: CaseSink, outcome: Outcome) -> None:
    """Record one :func:`collect_item` result in ``sink``: a case is written, a pass or a skip is marked."""
    if isinstance(outcome, FailureCase):
        sink.write_case(outcome)
    elif isinstance(outcome, Passed):
        sink.mark(outcome.item_id, "passed")
    elif isinstance(outcome, Skip):
        sink.mark(outcome.item_id, "skipped", reason=outcome.reason)
    else:
        raise TypeError(f"not an outcome of collect_item: {type(outcome).__name__}")


@dataclass
class Summary:
    """Counts of a run. ``passed + failed + sum(skipped.values()) == items`` once the run is complete."""

    benchmark: str
    model: str
    items: int = 0
    resumed: int = 0
    generated: int = 0
    passed: int = 0
    failed: int = 0
    localised: int = 0
    clean: int = 0
    skipped: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    rollouts: list[int] = field(default_factory=list)
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        """Count one item's outcome."""
        if isinstance(outcome, Passed):
            self.passed += 1
        elif isinstance(outcome, Skip):
            self.skipped[_skip_key(outcome.reason)] += 1
        else:
            self.failed += 1
            if outcome.status == "localised":
                self.localised += 1
                self.methods[outcome.method or "?"] += 1
                self.rollouts.append(outcome.n_rollouts)
                self.clean += int(bool(outcome.clean))

    def add_record(self, rec: dict[str, Any]) -> None:
        """Count an item finished by an earlier run, from its progress record (see ``CaseStore.done``)."""
        st = rec.get("status")
        if st == "passed":
            self.passed += 1
        elif st == "case":
            self.failed += 1
            if rec.get("localised"):
                self.localised += 1
                if rec.get("method"):
                    self.methods[rec["method"]] += 1
                if rec.get("n_rollouts") is not None:
                    self.rollouts.append(int(rec["n_rollouts"]))
            if rec.get("clean"):
                self.clean += 1
        elif st == "skipped":
            self.skipped[_skip_key(str(rec.get("reason", "")))] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, "model": self.model, "items": self.items, "resumed": self.resumed,
            "generated": self.generated, "passed": self.passed, "failed": self.failed,
            "localised": self.localised, "clean": self.clean,
            "clean_rate_of_failed": round(self.clean / self.failed, 4) if self.failed else None,
            "skipped": dict(self.skipped), "methods": dict(self.methods),
            "rollouts_per_localised_case": round(sum(self.rollouts) / len(self.rollouts), 2) if self.rollouts else None,
            "rollouts_total": sum(self.rollouts),
            "gen_tokens_per_s": round(self.gen_tokens / self.gen_seconds, 2) if self.gen_seconds else None,
            "seconds": round(self.seconds, 1),
        }

    def table(self) -> str:
        d = self.as_dict()
        rows = [("benchmark", d["benchmark"]), ("model", d["model"]), ("items", d["items"]),
                ("already done (resumed)", d["resumed"]), ("generated", d["generated"]),
                ("passed", d["passed"]), ("failed", d["failed"]), ("localised", d["localised"]),
                ("clean (dl > 1)", d["clean"]), ("clean / failed", d["clean_rate_of_failed"]),
                ("rollouts per localised case", d["rollouts_per_localised_case"]),
                ("localised by", ", ".join(f"{k}: {v}" for k, v in d["methods"].items()) or "-"),
                ("generation tokens/s", d["gen_tokens_per_s"]), ("seconds", d["seconds"])]
        for reason, n in sorted(self.skipped.items()):
            rows.append((f"skipped: {reason}", n))
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def render_prompt(lm: LoadedModel, messages: list[dict[str, Any]], chat: bool, plain: str | None = None) -> str:
    """The chat-templated prompt; without ``chat``, the benchmark's ``plain`` prompt if it has one, else
    the messages' contents joined."""
    if chat:
        return lm.apply_chat_template(messages)
    if plain is not None:
        return plain
    return "\n\n".join(str(m["content"]) for m in messages)


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!s}" if e.args else "missing field"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _skip_key(msg: str) -> str:
    """A short category for the summary table."""
    low = msg.lower()
    for key in ("missing field", "chat template", "empty completion", "timed out", "unknown instruction",
                "outside", "context", "sandbox", "not valid json"):
        if key in low:
            return key
    return msg[:60]


# ---------------------------------------------------------------------------------- one item
@dataclass(frozen=True)
class PreparedItem:
    """An item with its messages, rendered prompt and prompt ids."""

    item: Item
    messages: list[dict[str, Any]]
    prompt: str
    prompt_ids: list[int]


def prepare_item(settings: CollectSettings, lm: LoadedModel, bench: Benchmark, item: Item) -> PreparedItem:
    """Step 1: messages, prompt (chat template unless ``settings.chat`` is off) and ids, checked against
    the model's context; raises on a bad item."""
    msgs = bench.messages(item)
    prompt = render_prompt(lm, msgs, settings.chat, None if settings.chat else bench.plain_prompt(item))
    ids = lm.encode(prompt, add_special_tokens=not settings.chat)
    lm.check_prompt(ids)
    return PreparedItem(item, msgs, prompt, ids)


def needs_generation(settings: CollectSettings, item: Item) -> bool:
    """Whether step 2 generates (else the item's recorded completion is used)."""
    return settings.regenerate or item.recorded_completion is None


def recorded_completion(lm: LoadedModel, item: Item) -> Completion:
    """The item's recorded completion as ids (it counts as stopped by itself)."""
    return Completion(lm.encode(item.recorded_completion or "", add_special_tokens=False), True)


def _as_completion(lm: LoadedModel, completion: Completion | tuple[list[int], bool] | str) -> Completion:
    if isinstance(completion, str):
        return Completion(lm.encode(completion, add_special_tokens=False), True)
    ids, stopped = completion
    return Completion([int(t) for t in ids], bool(stopped))


def score_and_localise(settings: CollectSettings, resources: CollectResources, bench: Benchmark,
                       prep: PreparedItem, completion: Completion) -> FailureCase | Passed:
    """Steps 3-5 for a prepared item and its completion; raises on a bad item (e.g. an empty completion)."""
    lm, it, ids = resources.lm, prep.item, prep.prompt_ids
    bench.unsafe_exec = settings.unsafe_exec  # the run's setting decides (the checker and the rollouts)
    comp_ids, stopped = completion
    tok = lm.tokenizer
    text = tok.decode(comp_ids, skip_special_tokens=True)
    if not text.strip():
        raise ItemError(f"{bench.name} item {it.id}: empty completion (the model stopped at once)")
    score = bench.score(it, text)
    if score.passed:
        return Passed(it.id)
    # the checker's character offsets as completion tokens (one decoding pass for all of them)
    marks = [score.broke_at, *score.hints]
    toks = chars_to_tokens(lm, comp_ids, marks + list(score.region or ()))
    broke_tok, guided = toks[0], [t for t in toks[: len(marks)] if t is not None]
    region = None
    if score.region is not None:
        r0, r1 = toks[len(marks) :]
        region = (0 if r0 is None else r0, len(comp_ids) if r1 is None else r1)
    loc = Localiser(lm, bench, it, ids, comp_ids, k=settings.top_k,
                    max_new_tokens=max(settings.new_tokens(bench), len(comp_ids) + 1),
                    max_probes=settings.max_probes, scan_probes=settings.scan_probes,
                    rollout_slack=settings.rollout_slack, batch_rows=settings.rollout_batch, region=region,
                    sibling=resources.sibling)
    if settings.failure_index is not None:
        contrast = None
        if settings.contrast is not None:
            contrast = lm.token_id(settings.contrast, ids + comp_ids[: settings.failure_index], what="contrast")
        res = loc.at(settings.failure_index, "manual", contrast)
    else:
        res = loc.localise(guided)
        if res.failure_index is None and resources.judge is not None:
            gold = score.details.get("gold")
            try:
                ans = resources.judge(judge_payload(lm, prep.prompt, comp_ids, json.dumps(gold) if gold else None))
                p = parse_judge(ans)
                if p is not None and 0 <= p < len(comp_ids):
                    res = loc.at(p, "judge")
                else:
                    res.notes.append(f"judge gave no usable token index: {ans[:100]!r}")
            except (OSError, ValueError, KeyError) as e:
                res.notes.append(f"judge failed: {_reason(e)}")
    case = FailureCase(
        id=case_id(bench.name, it.id), benchmark=bench.name, item_id=it.id, model_source=lm.source,
        model_revision=lm.revision, messages=prep.messages, prompt=prep.prompt, prompt_ids=ids, chat=settings.chat,
        completion=text, completion_ids=comp_ids, stopped=stopped, passed=False, details=score.details,
        n_rollouts=res.n_rollouts, n_positions=res.n_positions, rollouts=res.rollouts,
        notes=res.notes + ([f"checker: broke at completion token {broke_tok}"] if broke_tok is not None else [])
        + ([] if stopped else ["the completion hit max_new_tokens: a rollout may pass only by being shorter"]),
        segments=bench.segments(it, prep.prompt), provenance=lm.provenance().to_dict(),
    )
    if res.failure_index is not None and res.contrast_id is not None:
        p = res.failure_index
        before = tok.decode(comp_ids[:p], skip_special_tokens=True)
        dl = loc.delta_logit(p, res.contrast_id)
        case = case.model_copy(update={
            "status": "localised", "failure_index": p, "target_id": comp_ids[p],
            "target_str": tok.decode([comp_ids[p]]), "contrast_id": res.contrast_id,
            "contrast_str": tok.decode([res.contrast_id]), "completion_before_err": before,
            "delta_logit": dl, "clean": dl > 1.0, "method": res.method,
        })
        case.segments["answer"] = [(len(prep.prompt), len(prep.prompt) + len(before))]
    return FailureCase.model_validate(case.model_dump())


def _attempt(item_id: str, step: Callable[..., T], *args: Any) -> T | Skip:
    """``step(*args)``, or a :class:`Skip` with the reason when it fails on bad input of the item."""
    try:
        return step(*args)
    except ITEM_ERRORS as e:
        return Skip(item_id, _reason(e))


def collect_item(settings: CollectSettings, resources: CollectResources, bench: Benchmark, item: Item, *,
                 completion: Completion | tuple[list[int], bool] | str | None = None) -> Outcome:
    """Run one item: prepare, complete, score and localise it (see the module docstring).

    ``completion``: the completion to score (ids and whether the model stopped by itself, or text); None:
    the recorded completion when the item has one (and ``settings.regenerate`` is off), else a greedy
    generation now. Returns a :class:`~contrastlens.cases.schema.FailureCase`, :class:`Passed` or
    :class:`Skip`; writes nothing (see :func:`write_outcome`) and never raises for bad input of the item.
    Safe to call from a worker process: ``settings`` pickles, ``resources`` are the worker's own."""
    lm = resources.lm
    prep = _attempt(item.id, prepare_item, settings, lm, bench, item)
    if isinstance(prep, Skip):
        return prep
    comp: Completion | Skip
    if completion is not None:
        comp = _as_completion(lm, completion)
    elif needs_generation(settings, item):
        comp = _attempt(item.id, _generate_one, settings, lm, bench, prep)
        if isinstance(comp, Skip):
            return comp
    else:
        comp = recorded_completion(lm, item)
    return _attempt(item.id, score_and_localise, settings, resources, bench, prep, comp)


def _generate_one(settings: CollectSettings, lm: LoadedModel, bench: Benchmark, prep: PreparedItem) -> Completion:
    return generate_greedy(lm, [prep.prompt_ids], max_new_tokens=settings.new_tokens(bench), batch_size=1,
                           settled=bench.settled)[0]


# ---------------------------------------------------------------------------------- the run
def load_items(settings: CollectSettings, bench: Benchmark, data: str | os.PathLike | None = None
               ) -> tuple[list[Item], list[tuple[str, str]]]:
    """The benchmark's items from ``data`` (see :meth:`Benchmark.load`) selected by the settings, and the
    unreadable rows ``(id, reason)`` that belong to the selection."""
    items, bad = bench.load(data) if data is not None else bench.load()
    return select_items(items, **settings.selection()), select_bad_rows(bad, settings.items)


class _Progress:
    """The run's progress bar (tqdm): items done, generated tokens and tokens per second."""

    def __init__(self, total: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.tokens = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)

    def __call__(self, items: int, tokens: int) -> None:
        self.tokens += tokens
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens} tokens, {self.tokens / dt:.1f} tok/s", refresh=False)
        self.bar.update(items)

    def close(self) -> None:
        self.bar.close()


def _record(sink: CaseSink, summ: Summary, outcome: Outcome) -> None:
    write_outcome(sink, outcome)
    summ.add(outcome)
    if isinstance(outcome, Skip):
        log.info("skip %s: %s", outcome.item_id, outcome.reason)
    elif isinstance(outcome, FailureCase):
        log.info("case %s", outcome.summary())
    else:
        log.debug("pass %s", outcome.item_id)


def collect(settings: CollectSettings, resources: CollectResources, bench: Benchmark,
            out: str | os.PathLike | CaseSink, *legacy: Any, items: Iterable[Item] | None = None,
            data: str | os.PathLike | None = None, bad_rows: Sequence[tuple[str, str]] | None = None,
            resume: bool = True, on_item: Callable[[int], None] | None = None) -> Summary:
    """Run the pipeline over a benchmark and record every item in ``out``; returns the :class:`Summary`.

    ``out``: a case file (a :class:`~contrastlens.cases.io.CaseStore` on it: resumed unless ``resume`` is
    False) or any :class:`CaseSink`. Items: by default ``bench.load(data)`` selected by the settings
    (``items``, ``filters``, ``offset``, ``limit``; see :func:`load_items`); ``items`` given: exactly those
    (already selected, e.g. by :func:`load_items`). ``bad_rows``: unreadable rows ``(id, reason)`` to count
    as skipped (default: those of the loaded data). ``on_item(n)``: called after each item whose
    completion was scored, with the count so far.

    The deprecated form ``collect(lm, bench, items, out, CollectConfig(...))`` still works."""
    if not isinstance(settings, CollectSettings):
        if len(legacy) != 1 or not isinstance(legacy[0], CollectConfig):
            raise TypeError("collect(settings: CollectSettings, resources: CollectResources, bench, out, *, "
                            "items=..., ...)")
        cfg: CollectConfig = legacy[0]
        old_lm: Any = settings
        old_bench: Any = resources
        old_items: Any = bench
        return collect(cfg.settings(), cfg.resources(old_lm), old_bench, out, items=list(old_items),
                       bad_rows=bad_rows, resume=resume, on_item=on_item or cfg.on_item)
    if legacy:
        raise TypeError(f"collect() takes 4 positional arguments, got {4 + len(legacy)}")
    t0 = time.perf_counter()
    lm = resources.lm
    if items is None:
        todo_all, loaded_bad = load_items(settings, bench, data)
        bad = list(bad_rows) if bad_rows is not None else loaded_bad
    else:
        todo_all, bad = list(items), list(bad_rows or [])
    if isinstance(out, str | os.PathLike):
        sink: CaseSink = CaseStore(out, resume=resume)
    elif isinstance(out, CaseSink):
        sink = out
    else:
        raise TypeError(f"out must be a case file path or a CaseSink, not {type(out).__name__}")
    summ = Summary(bench.name, lm.source, items=len(todo_all) + len(bad))
    for iid, reason in bad:
        log.info("skip %s: %s", iid, reason)
        summ.skipped[_skip_key(reason)] += 1
    done_records = getattr(sink, "done", None)
    todo: list[Item] = []
    for it in todo_all:
        if sink.is_done(it.id):
            summ.resumed += 1
            rec = done_records.get(it.id) if isinstance(done_records, dict) else None
            if rec is not None:
                summ.add_record(rec)
        else:
            todo.append(it)
    if summ.resumed:
        log.info("resuming: %d items already done, %d to go", summ.resumed, len(todo))
    if todo and settings.chat and not getattr(lm.tokenizer, "chat_template", None):
        log.warning("the tokenizer of %s has no chat template; every item will be skipped (use --no-chat, "
                    "chat=False)", lm.source)
    bar = _Progress(len(todo), bench.name, settings.progress)
    finished = 0
    try:
        chunk = settings.batch_size
        for c in range(0, len(todo), chunk):
            prepared: list[PreparedItem] = []
            for it in todo[c : c + chunk]:
                prep = _attempt(it.id, prepare_item, settings, lm, bench, it)
                if isinstance(prep, Skip):
                    _record(sink, summ, prep)
                    bar(1, 0)
                else:
                    prepared.append(prep)
            gen_in = [i for i, p in enumerate(prepared) if needs_generation(settings, p.item)]
            outs: dict[int, Completion] = {}
            if gen_in:
                tg = time.perf_counter()
                res = generate_greedy(lm, [prepared[i].prompt_ids for i in gen_in],
                                      max_new_tokens=settings.new_tokens(bench), batch_size=settings.batch_size,
                                      progress=bar, settled=bench.settled)
                summ.gen_seconds += time.perf_counter() - tg
                summ.gen_tokens += sum(len(r[0]) for r in res)
                summ.generated += len(res)
                outs = {i: Completion(*r) for i, r in zip(gen_in, res, strict=True)}
            for i, prep in enumerate(prepared):
                comp = outs.get(i)
                if comp is None:
                    comp = recorded_completion(lm, prep.item)
                    bar(1, 0)
                outcome = _attempt(prep.item.id, score_and_localise, settings, resources, bench, prep, comp)
                _record(sink, summ, outcome)
                finished += 1
                if on_item is not None:
                    on_item(finished)
    finally:
        bar.close()
    summ.seconds = time.perf_counter() - t0
    return summ
