"""The collection run: generate, score, localise, write cases as they finish; resumable."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contrastlens.benchmarks.base import Benchmark, Item, ItemError
from contrastlens.cases.io import CaseStore
from contrastlens.cases.schema import FailureCase, case_id
from contrastlens.collect.generate import Progress, generate_greedy
from contrastlens.collect.localise import Localiser, chars_to_tokens, judge_payload, parse_judge
from contrastlens.errors import ContrastLensError
from contrastlens.models.loaded import LoadedModel


@dataclass
class CollectConfig:
    max_new_tokens: int = 256
    batch_size: int = 8
    k: int = 4
    max_probes: int = 12
    scan_probes: int | None = None  # uncertainty-scan probes after a failed binary search (None: max_probes)
    rollout_slack: int | None = 64  # rollouts stop this many tokens past the completion's length (None: off)
    batch_rows: int = 32  # rollouts per batch when several positions are probed together
    chat: bool = True
    regenerate: bool = False  # agent traces: generate instead of using the recorded completion
    sibling: LoadedModel | None = None
    judge: Callable[[str], str] | None = None
    failure_index: int | None = None  # manual localisation (with contrast)
    contrast: int | str | None = None
    progress: bool = True
    # test hook: called after each finished item with the number finished so far
    on_item: Callable[[int], None] | None = None


@dataclass
class Summary:
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


def _reason(e: Exception) -> str:
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


def collect(
    lm: LoadedModel,
    bench: Benchmark,
    items: list[Item],
    out: str,
    cfg: CollectConfig,
    *,
    bad_rows: list[tuple[str, str]] | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Run the pipeline over ``items`` and append cases to ``out``; returns the summary."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    store = CaseStore(out, resume=resume)
    summ = Summary(bench.name, lm.source, items=len(items) + len(bad_rows or []))
    for iid, reason in bad_rows or []:
        log(f"skip {iid}: {reason}")
        summ.skipped[_skip_key(reason)] += 1
    todo = []
    for it in items:
        if store.is_done(it.id):
            summ.resumed += 1
            rec = store.done[it.id]
            _count_done(summ, rec)
        else:
            todo.append(it)
    if summ.resumed:
        log(f"resuming: {summ.resumed} items already done, {len(todo)} to go")
    prog = Progress(total=len(todo), label=f"{bench.name}", enabled=cfg.progress)
    finished = 0
    chunk = max(1, cfg.batch_size)
    for c in range(0, len(todo), chunk):
        batch = todo[c : c + chunk]
        prepared: list[tuple[Item, list[dict[str, Any]], str, list[int]]] = []
        for it in batch:
            try:
                msgs = bench.messages(it)
                prompt = render_prompt(lm, msgs, cfg.chat, None if cfg.chat else bench.plain_prompt(it))
                ids = lm.encode(prompt, add_special_tokens=not cfg.chat)
                lm.check_prompt(ids)
                prepared.append((it, msgs, prompt, ids))
            except (ContrastLensError, KeyError, TypeError, ValueError) as e:
                _skip(store, summ, it.id, _reason(e), log)
        gen_in = [(i, p) for i, p in enumerate(prepared) if cfg.regenerate or p[0].recorded_completion is None]
        outs: dict[int, tuple[list[int], bool]] = {}
        if gen_in:
            tg = time.perf_counter()
            res = generate_greedy(lm, [p[3] for _, p in gen_in], max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.batch_size, progress=prog, settled=bench.settled)
            summ.gen_seconds += time.perf_counter() - tg
            summ.gen_tokens += sum(len(r[0]) for r in res)
            for (i, _), r in zip(gen_in, res, strict=True):
                outs[i] = r
        for i, (it, msgs, prompt, ids) in enumerate(prepared):
            if i in outs:
                comp_ids, stopped = outs[i]
                summ.generated += 1
            else:
                comp_ids = lm.encode(it.recorded_completion or "", add_special_tokens=False)
                stopped = True
                prog.update(1, 0)
            try:
                _one(lm, bench, it, msgs, prompt, ids, comp_ids, stopped, cfg, store, summ, log)
            except (ContrastLensError, KeyError, TypeError, ValueError) as e:
                _skip(store, summ, it.id, _reason(e), log)
            finished += 1
            if cfg.on_item is not None:
                cfg.on_item(finished)
    prog.close()
    summ.seconds = time.perf_counter() - t0
    return summ


def _count_done(summ: Summary, rec: dict[str, Any]) -> None:
    st = rec.get("status")
    if st == "passed":
        summ.passed += 1
    elif st == "case":
        summ.failed += 1
        if rec.get("localised"):
            summ.localised += 1
            if rec.get("method"):
                summ.methods[rec["method"]] += 1
            if rec.get("n_rollouts") is not None:
                summ.rollouts.append(int(rec["n_rollouts"]))
        if rec.get("clean"):
            summ.clean += 1
    elif st == "skipped":
        summ.skipped[_skip_key(str(rec.get("reason", "")))] += 1


def _skip(store: CaseStore, summ: Summary, iid: str, reason: str, log: Callable[[str], None]) -> None:
    log(f"skip {iid}: {reason}")
    summ.skipped[_skip_key(reason)] += 1
    store.mark(iid, "skipped", reason=reason)


def _one(lm, bench, it, msgs, prompt, ids, comp_ids, stopped, cfg, store, summ, log) -> None:
    tok = lm.tokenizer
    text = tok.decode(comp_ids, skip_special_tokens=True)
    if not text.strip():
        raise ItemError(f"{bench.name} item {it.id}: empty completion (the model stopped at once)")
    score = bench.score(it, text)
    if score.passed:
        summ.passed += 1
        store.mark(it.id, "passed")
        return
    summ.failed += 1
    # the checker's character offsets as completion tokens (one decoding pass for all of them)
    marks = [score.broke_at, *score.hints]
    toks = chars_to_tokens(lm, comp_ids, marks + list(score.region or ()))
    broke_tok, guided = toks[0], [t for t in toks[: len(marks)] if t is not None]
    region = None
    if score.region is not None:
        r0, r1 = toks[len(marks) :]
        region = (0 if r0 is None else r0, len(comp_ids) if r1 is None else r1)
    loc = Localiser(lm, bench, it, ids, comp_ids, k=cfg.k, max_new_tokens=max(cfg.max_new_tokens, len(comp_ids) + 1),
                    max_probes=cfg.max_probes, scan_probes=cfg.scan_probes, rollout_slack=cfg.rollout_slack,
                    batch_rows=cfg.batch_rows, region=region, sibling=cfg.sibling)
    if cfg.failure_index is not None:
        contrast = None
        if cfg.contrast is not None:
            contrast = lm.token_id(cfg.contrast, ids + comp_ids[: cfg.failure_index], what="contrast")
        res = loc.at(cfg.failure_index, "manual", contrast)
    else:
        res = loc.localise(guided)
        if res.failure_index is None and cfg.judge is not None:
            try:
                ans = cfg.judge(judge_payload(lm, prompt, comp_ids, json.dumps(score.details.get("gold"))
                                              if score.details.get("gold") else None))
                p = parse_judge(ans)
                if p is not None and 0 <= p < len(comp_ids):
                    res = loc.at(p, "judge")
                else:
                    res.notes.append(f"judge gave no usable token index: {ans[:100]!r}")
            except (OSError, ValueError, KeyError) as e:
                res.notes.append(f"judge failed: {_reason(e)}")
    case = FailureCase(
        id=case_id(bench.name, it.id), benchmark=bench.name, item_id=it.id, model_source=lm.source,
        model_revision=lm.revision, messages=msgs, prompt=prompt, prompt_ids=ids, chat=cfg.chat,
        completion=text, completion_ids=comp_ids, stopped=stopped, passed=False, details=score.details,
        n_rollouts=res.n_rollouts, n_positions=res.n_positions, rollouts=res.rollouts,
        notes=res.notes + ([f"checker: broke at completion token {broke_tok}"] if broke_tok is not None else [])
        + ([] if stopped else ["the completion hit max_new_tokens: a rollout may pass only by being shorter"]),
        segments=bench.segments(it, prompt),
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
        case.segments["answer"] = [(len(prompt), len(prompt) + len(before))]
        summ.localised += 1
        summ.methods[res.method or "?"] += 1
        summ.rollouts.append(res.n_rollouts)
        summ.clean += int(case.clean)
    case = FailureCase.model_validate(case.model_dump())
    store.write_case(case)
    log(f"case {case.summary()}")
