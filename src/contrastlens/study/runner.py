"""Running a study: plan its units, run those not yet stored, store each as it finishes, summarise.

**Plan.** Every ``[[cases]]`` table is read (a file that cannot be read is listed in the summary and the run
goes on without it; ``ids`` and ``limit`` filter it). A unit is (case, model, analysis, rule) for every case
under every model of its table, every analysis and every ``[attribution] rules`` entry (only the first
for an analysis whose class sets ``per_rule = False``: its units do not depend on the rule). Its digest
(:func:`unit_digest`) covers the case record (its whole JSON), the model (its study entry; for a folder the
weight fingerprint instead of the path, for a ``.gguf`` file its sha256), the analysis name, its settings,
its class attribute ``version`` (default 1), the attribution settings, the rule and the study seed. So
changing one analysis' settings re-runs only its units, changing a model only that model's, adding a case
only the new case's units. Each unit is then, in this order:

- *skipped* when its case is not localised or ``analysis.skip(case, model, info, settings)`` gives a reason;
- *current* when the store holds its digest (nothing to do);
- *pending* when ``--only`` leaves its analysis out;
- else *to run*.

**Run.** Units to run are grouped by model load key (``ModelRef.load_key``: models with the same weights
share one load) and, within a model, by case. Each model is loaded once (by :class:`ModelWorker`, in this
process or as a Ray actor, see :mod:`contrastlens.study.ray_runner`) and freed before the next; a model that
cannot load fails all its units with that one-line reason and the run goes on. Before the units of a case
run on a model, the case must fit the model: its token ids inside the model's vocabulary, its length within
the model's context, and its target and contrast ids decoding, under the model's tokenizer, to the case's
``target_str`` / ``contrast_str``; otherwise those units are skipped with the reason (e.g. ``case ifeval-12:
token id 50310 outside qwen's vocabulary (49152)``). In a checkpoint series every model must have the
tokenizer of the series' first loadable checkpoint (by step; compared by a digest of the vocabulary and
the special tokens); the units of a model that differs are skipped with a message naming both. A unit that
raises is failed with its error (one line; the traceback goes to ``DIR/run.log``) and the run goes on.

``ctx.explain(method=None, **options)`` calls ``contrastlens.explain(lm, case, method=..., ...)``
(``method=None``: the unit's rule). ``options`` are the method's options (``method_params``: ``steps=32`` for
``ig``, ``seed=1`` for ``random``), except ``contrastlens.explain``'s own keywords (:data:`EXPLAIN_KEYWORDS`:
``objective``, ``keep_states``, ...; see :func:`explain_options`); ``on_model_mismatch`` defaults to
``"ignore"``, since a study explains cases under models other than their own on purpose. Explanations are
memoised per (case, method, options) within a model,
so the analyses of one case share explanations. Seeds: each explanation is computed after
``torch.manual_seed`` of a digest of (study seed, case, method, options), each unit runs after seeding
torch, numpy and ``random`` from (study seed, unit id): results do not depend on which runner, worker or
order ran them, nor on a resume.

The driver (this process) writes every result with :class:`~contrastlens.study.store.Store` (atomically)
as it arrives, the manifest at the start, every few seconds and at the end, and ``DIR/summary.json`` at
the end. A tqdm bar counts the units to run (with ETA).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import random
import time
import traceback as _tb
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from contrastlens.errors import ContrastLensError, InputError
from contrastlens.study.base import (
    ModelRef,
    Section,
    StudyInfo,
    UnitContext,
    UnitKey,
    UnitResult,
    canonical_json,
    digest,
    get_analysis,
)
from contrastlens.study.config import Study, as_study, parse_study
from contrastlens.study.store import Store, now

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel

log = logging.getLogger(__name__)

MANIFEST_EVERY_S = 10.0


# ---------------------------------------------------------------------------------------------- helpers
def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a ContrastLensError: its message alone)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, ContrastLensError):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def seed_of(*parts: Any) -> int:
    return int(digest(list(parts)), 16) % (2**31 - 1)


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def model_identity(ref: ModelRef) -> dict[str, Any]:
    """What a unit's digest knows of its model: the study entry, with a folder's weight fingerprint (or a
    ``.gguf`` file's sha256) in place of its path, so that new weights at the same path re-run the units and
    a moved folder does not."""
    from contrastlens.models.fingerprint import file_sha256, folder_fingerprint

    d = asdict(ref)
    src = ref.source
    try:
        if os.path.isdir(src):
            fp = folder_fingerprint(src)
            if fp is not None:
                d["source"] = {"weights": fp}
        elif src.endswith(".gguf") and os.path.isfile(src):
            d["source"] = {"gguf": file_sha256(src)}
    except OSError:
        pass
    return d


def unit_digest(*, case_record: Mapping[str, Any], model: Mapping[str, Any], analysis: str, settings: Any,
                attribution: Mapping[str, Any], rule: str, version: Any = 1, seed: int = 0,
                report_only: Sequence[str] = ()) -> str:
    """The digest that decides whether a stored unit is current (see the module docstring). Settings named
    in ``report_only`` (an analysis' ``report_settings``: read by its report, never by its units) are left
    out, so changing one re-renders the report and re-runs nothing."""
    kept = {k: v for k, v in asdict(settings).items() if k not in set(report_only)}
    return digest({"case": case_record, "model": model, "analysis": analysis, "settings": kept,
                   "attribution": dict(attribution), "rule": rule, "version": version, "seed": seed})


def tokenizer_fingerprint(tok: Any) -> str:
    """A digest of a tokenizer's vocabulary (token -> id) and its special tokens."""
    vocab = tok.get_vocab()
    special = sorted(getattr(tok, "all_special_tokens", []) or [])
    return digest({"vocab": sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])), "special": special})


# ---------------------------------------------------------------------------------------------- units
@dataclass
class Outcome:
    """What became of one unit: ``done`` (with its result and provenance ``record``), ``skipped`` or
    ``failed`` (with ``reason``; ``traceback`` for a failure)."""

    key: UnitKey
    status: str
    result: UnitResult | None = None
    reason: str | None = None
    traceback: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


#: keywords of ``contrastlens.explain`` that ``ctx.explain`` passes on as they are (with a case, the others —
#: target, contrast, chat, position — are errors); every other option is one of the method's options
EXPLAIN_KEYWORDS = frozenset({"objective", "rule", "method_params", "checkpointing", "keep_states",
                              "on_model_mismatch"})


def explain_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``ctx.explain``'s options as ``contrastlens.explain`` keywords: :data:`EXPLAIN_KEYWORDS` as they are,
    ``k`` and ``rank`` too when an ``objective`` is given (they are its parameters), every other option into
    ``method_params`` (e.g. ``steps=32`` for ``ig``, ``seed=1`` for ``random``, ``k=8`` for
    ``lrp-occlusion``); ``on_model_mismatch`` defaults to ``"ignore"``."""
    kw: dict[str, Any] = {}
    params: dict[str, Any] = dict(options.get("method_params") or {})
    for name, v in options.items():
        if name == "method_params":
            continue
        if name in EXPLAIN_KEYWORDS or (name in ("k", "rank") and "objective" in options):
            kw[name] = v
        else:
            params[name] = v
    if params:
        kw["method_params"] = params
    kw.setdefault("on_model_mismatch", "ignore")
    return kw


def _check_result(res: Any) -> UnitResult:
    import pandas as pd

    if not isinstance(res, UnitResult):
        raise TypeError(f"run() returned {type(res).__name__}, not a UnitResult")
    for name, df in res.tables.items():
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"table {name!r} is a {type(df).__name__}, not a pandas DataFrame")
    for name, a in list(res.tensors.items()):
        if hasattr(a, "detach"):  # a torch tensor
            t: Any = a.detach().cpu()
            res.tensors[name] = (t.float() if t.dtype.is_floating_point else t).numpy()
    try:
        json.dumps(res.meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the unit's meta is not JSON-able ({e})") from None
    return res


class ModelWorker:
    """One loaded model (every :class:`ModelRef` of one load key) and the units that run on it. The same
    class runs in the driver (in-process) and as a Ray actor.

    ``analyses``: analysis name -> class; ``settings``: name -> its Settings. ``load()`` returns a dict
    (``error`` or the model's fingerprint, provenance, tokenizer digest, vocabulary size); ``run_unit(case,
    key)`` an :class:`Outcome` (never raises, except on KeyboardInterrupt)."""

    def __init__(self, refs: Sequence[ModelRef], info: StudyInfo, analyses: Mapping[str, type],
                 settings: Mapping[str, Any], *, seed: int = 0, device: str = "cpu", threads: int | None = None):
        self.refs = {r.name: r for r in refs}
        self.info = info
        self.analyses = {name: cls() for name, cls in analyses.items()}
        self.settings = dict(settings)
        self.seed = seed
        self.device = device
        self.threads = threads
        self.lm: LoadedModel | None = None
        self.loads = 0  # models this worker loaded (one, by design)
        self.tokenizer_fp: str | None = None
        self._fit: dict[tuple[str, str], str | None] = {}
        self._memo: dict[tuple[str, str], Any] = {}
        self._memo_case: str | None = None

    # ------------------------------------------------------------------ loading
    def load(self) -> dict[str, Any]:
        import torch

        if self.threads:
            torch.set_num_threads(max(1, int(self.threads)))
        ref = next(iter(self.refs.values()))
        t0 = time.perf_counter()
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loads += 1
        try:
            from contrastlens.models.loading import load_model

            self.lm = load_model(ref.source, dtype=ref.dtype, revision=ref.revision, attn_implementation=ref.attn,
                                 device=None if device == "cpu" else device)
            self.tokenizer_fp = tokenizer_fingerprint(self.lm.tokenizer)
            prov = self.lm.provenance().to_dict()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - any load failure fails this model's units, the run goes on
            self.lm = None
            return {"error": one_line(e), "traceback": _tb.format_exc(), "seconds": time.perf_counter() - t0}
        return {"error": None, "seconds": time.perf_counter() - t0, "tokenizer": self.tokenizer_fp,
                "vocab_size": self.lm.vocab_size, "fingerprint": self.lm.fingerprint, "provenance": prov,
                "device": str(self.lm.device)}

    def close(self) -> None:
        """Free the model (a full garbage collection, slow with a large heap, only for models past 10M
        parameters, whose reference cycles would hold real memory)."""
        big = self.lm is not None and sum(p.numel() for p in self.lm.model.parameters()) > 10_000_000
        self.lm = None
        self._memo.clear()
        if big:
            gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - freeing is best effort
            pass

    # ------------------------------------------------------------------ checks
    def fit(self, case: FailureCase, ref: ModelRef) -> str | None:
        """Why ``case`` cannot be explained under this model (None when it can)."""
        k = (case.id, ref.name)
        if k not in self._fit:
            self._fit[k] = self._check_fit(case, ref)
        return self._fit[k]

    def _check_fit(self, case: FailureCase, ref: ModelRef) -> str | None:
        lm = self.lm
        assert lm is not None
        v = lm.vocab_size
        ids = list(case.prompt_ids) + list(case.completion_ids)
        ids += [int(x) for x in (case.target_id, case.contrast_id) if x is not None]
        bad = [i for i in ids if not 0 <= i < v]
        if bad:
            return f"case {case.id}: token id {max(bad)} outside {ref.name}'s vocabulary ({v})"
        n = len(case.ids_before_err)
        mc = lm.max_context
        if mc is not None and n > mc:
            return f"case {case.id}: {n} tokens, longer than {ref.name}'s context of {mc}"
        from contrastlens.cases.compat import check_ids_map

        try:  # the ids decode to the case's strings (catches a same-size tokenizer with other merges)
            check_ids_map(lm, case, what=ref.name)
        except InputError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------ units
    def _explainer(self, case: FailureCase, rule: str, used: list[dict[str, Any]]) -> Callable[..., Any]:
        from contrastlens.attribution.explain import explain as _explain

        lm = self.lm
        assert lm is not None

        def explain(method: str | None = None, **options: Any) -> Any:
            m = rule if method is None else method
            options = explain_options(options)
            try:
                okey: str | None = canonical_json(options)
            except (TypeError, ValueError):
                okey = None  # options that are not plain data: not memoised
            t0 = time.perf_counter()
            fresh = False
            if okey is not None and (m, okey) in self._memo:
                ex = self._memo[(m, okey)]
            else:
                import torch

                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed_of(self.seed, case.id, m, okey))
                    ex = _explain(lm, case, method=m, **options)
                fresh = True
                if okey is not None:
                    self._memo[(m, okey)] = ex
            spec = getattr(ex, "spec", None)
            used.append({"method": m, "options": okey, "spec": spec.to_dict() if spec is not None else None,
                         "spec_hash": spec.hash() if spec is not None else None,
                         "seconds": time.perf_counter() - t0 if fresh else 0.0, "memoised": not fresh})
            return ex

        return explain

    def run_unit(self, case: FailureCase, key: UnitKey) -> Outcome:
        from contrastlens.provenance import versions

        if self.lm is None:
            return Outcome(key, "failed", reason="the model is not loaded")
        ref = self.refs[key.model]
        started, t0 = now(), time.perf_counter()
        try:
            reason = self.fit(case, ref)
        except Exception as e:  # noqa: BLE001
            return Outcome(key, "failed", reason=one_line(e), traceback=_tb.format_exc())
        if reason is not None:
            return Outcome(key, "skipped", reason=reason)
        if case.id != self._memo_case:
            self._memo.clear()
            self._memo_case = case.id
        used: list[dict[str, Any]] = []
        ctx = UnitContext(case=case, lm=self.lm, model=ref, rule=key.rule, settings=self.settings[key.analysis],
                          study=self.info, explain=self._explainer(case, key.rule, used))
        seed_all(seed_of(self.seed, key.id))
        try:
            res = _check_result(self.analyses[key.analysis].run(ctx))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a failing unit is reported, the run goes on
            return Outcome(key, "failed", reason=one_line(e), traceback=_tb.format_exc())
        lm = self.lm
        spec = next((u for u in used if u["spec"] is not None), None)
        if spec is None:
            nominal = case.spec(rule=key.rule, dtype=lm.dtype_name, attn_implementation=lm.attn_implementation)
            spec = {"spec": nominal.to_dict(), "spec_hash": nominal.hash()}
        record = {
            "provenance": {"spec": spec["spec"], "spec_hash": spec["spec_hash"], "explanations": used,
                           "model": lm.provenance().to_dict(), "model_ref": asdict(ref),
                           "tokenizer": self.tokenizer_fp, "versions": dict(versions())},
            "timings": {"started": started, "seconds": time.perf_counter() - t0,
                        "explain_seconds": sum(u["seconds"] for u in used)},
            "worker": {"host": platform.node(), "pid": os.getpid(), "loads": self.loads},
        }
        return Outcome(key, "done", result=res, record=record)


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Entry:
    key: UnitKey
    status: str  # current | todo | skipped | failed | unselected
    reason: str | None = None


@dataclass
class Group:
    """The units to run on one load key (``refs``: the study models with those weights), ordered by case."""

    load_key: tuple[Any, ...]
    refs: list[ModelRef]
    tasks: list[UnitKey] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(r.name for r in self.refs)


@dataclass
class Plan:
    study: Study
    info: StudyInfo
    entries: dict[str, Entry]  # unit id -> entry, in plan order
    cases: dict[str, FailureCase]
    problems: list[tuple[str, str]]
    groups: list[Group]
    identities: dict[str, str]  # model name -> digest of its identity

    def todo(self) -> list[UnitKey]:
        return [e.key for e in self.entries.values() if e.status == "todo"]


def _read_cases(study: Study) -> tuple[dict[str, FailureCase], list[tuple[str, str]], list[tuple[str, str]]]:
    """(cases by id, (case id, model name) pairs in order, problems)."""
    from contrastlens.cases.io import load_cases

    cases: dict[str, FailureCase] = {}
    origin: dict[str, str] = {}
    pairs: dict[tuple[str, str], None] = {}
    problems: list[tuple[str, str]] = []
    for src in study.cases:
        where = f"{src.label} ({src.path})"
        try:
            found = load_cases(src.path, clean_only=src.clean_only)
        except ContrastLensError as e:
            problems.append((where, one_line(e)))
            continue
        if src.ids is not None:
            by_id = {c.id: c for c in found}
            missing = [i for i in src.ids if i not in by_id]
            if missing:
                what = "clean cases" if src.clean_only else "cases"
                problems.append((where, f"no {what} with id {', '.join(missing)} in the file"))
            found = [by_id[i] for i in dict.fromkeys(src.ids) if i in by_id]
        if src.limit is not None:
            found = found[: src.limit]
        for c in found:
            prev = cases.get(c.id)
            if prev is not None and prev.model_dump(mode="json") != c.model_dump(mode="json"):
                problems.append((f"{src.label} case {c.id}", f"{origin[c.id]} holds a different case with this id; "
                                                             "this one is left out"))
                continue
            cases.setdefault(c.id, c)
            origin.setdefault(c.id, src.label)
            for m in src.models:
                pairs[(c.id, m)] = None
    return cases, list(pairs), problems


def plan_study(study: Study, store: Store, *, only: Iterable[str] | None = None) -> Plan:
    """Every unit of the study with its digest and what to do with it (see the module docstring)."""
    only_set = set(only) if only else None
    if only_set is not None:
        unknown = sorted(only_set - set(study.analyses))
        if unknown:
            raise InputError(f"--only {', '.join(unknown)}: not an analysis of study {study.name!r} (its analyses: "
                             f"{', '.join(study.analyses)})")
    info = study.info(store.out)
    analyses = {name: get_analysis(name) for name in study.analyses}
    cases, pairs, problems = _read_cases(study)
    identities = {m.name: model_identity(m) for m in study.models}
    attribution = study.attribution_digest()
    records = {cid: c.model_dump(mode="json") for cid, c in cases.items()}
    entries: dict[str, Entry] = {}
    order = {m.name: i for i, m in enumerate(study.models)}
    for cid, mname in sorted(pairs, key=lambda p: order[p[1]]):  # stable: cases keep file order per model
        case, ref = cases[cid], study.model(mname)
        for aname, analysis in analyses.items():
            if aname in study.analysis_models and mname not in study.analysis_models[aname]:
                continue  # the analysis runs on other models: no unit
            settings = study.analyses[aname]
            version = getattr(type(analysis), "version", 1)
            skip: str | None = None
            failed: str | None = None
            if case.status != "localised":
                skip = f"case {cid} is not localised (no failure token); nothing to explain"
            else:
                try:
                    skip = analysis.skip(case, ref, info, settings)
                except Exception as e:  # noqa: BLE001
                    failed = f"skip() raised {one_line(e)}"
            # an analysis whose units do not depend on the rule (per_rule = False) runs once, under the first
            for rule in study.rules if getattr(type(analysis), "per_rule", True) else study.rules[:1]:
                d = unit_digest(case_record=records[cid], model=identities[mname], analysis=aname,
                                settings=settings, attribution=attribution, rule=rule, version=version,
                                seed=study.seed, report_only=getattr(type(analysis), "report_settings", ()))
                key = UnitKey(analysis=aname, model=mname, case=cid, rule=rule, digest=d)
                if failed is not None:
                    entry = Entry(key, "failed", failed)
                elif skip:
                    entry = Entry(key, "skipped", str(skip))
                elif store.has(aname, d):
                    entry = Entry(key, "current")
                elif only_set is not None and aname not in only_set:
                    entry = Entry(key, "unselected")
                else:
                    entry = Entry(key, "todo")
                entries[key.id] = entry
    # groups by load key, in model order; a group's tasks ordered by case (first appearance), then model
    case_order = {cid: i for i, cid in enumerate(cases)}
    by_key: dict[tuple[Any, ...], Group] = {}
    for m in study.models:
        g = by_key.setdefault(m.load_key(), Group(m.load_key(), []))
        g.refs.append(m)
    for entry in entries.values():
        if entry.status == "todo":
            by_key[study.model(entry.key.model).load_key()].tasks.append(entry.key)
    for g in by_key.values():
        g.tasks.sort(key=lambda k: (case_order[k.case], order[k.model]))
    return Plan(study=study, info=info, entries=entries, cases=cases, problems=problems,
                groups=list(by_key.values()), identities={n: digest(i) for n, i in identities.items()})


# ---------------------------------------------------------------------------------------------- series
class SeriesCheck:
    """The tokenizer check of checkpoint series: every model of a series must have the tokenizer of the
    series' first model (by step) that loads. ``known``: model name -> tokenizer digest from earlier runs."""

    def __init__(self, models: Sequence[ModelRef], known: Mapping[str, str] | None = None):
        self.models = list(models)
        self.state: dict[str, str | None] = dict(known or {})  # name -> tokenizer digest (None: did not load)

    def members(self, series: str) -> list[ModelRef]:
        return sorted((m for m in self.models if m.series == series), key=lambda m: (m.step or 0, m.name))

    def waiting_on(self, refs: Sequence[ModelRef]) -> set[str]:
        """The earlier checkpoints of these models' series whose tokenizers are not known yet."""
        names = {r.name for r in refs}
        out: set[str] = set()
        for r in refs:
            if r.series is None:
                continue
            for m in self.members(r.series):
                if m.name == r.name:
                    break
                if m.name not in names and m.name not in self.state:
                    out.add(m.name)
        return out

    def report(self, name: str, tokenizer: str | None) -> None:
        self.state[name] = tokenizer

    def reason(self, ref: ModelRef) -> str | None:
        if ref.series is None or self.state.get(ref.name) is None:
            return None
        first = next((m for m in self.members(ref.series) if self.state.get(m.name) is not None), None)
        if first is None or first.name == ref.name or self.state[first.name] == self.state[ref.name]:
            return None
        return (f"model {ref.name} (series {ref.series}, step {ref.step}) has another tokenizer than {first.name} "
                f"(step {first.step}), the series' first checkpoint: a checkpoint series needs one tokenizer, so "
                "its units are skipped")

    def needed(self, groups: Sequence[Group]) -> set[str]:
        """Models whose tokenizer must be learnt (loaded) because a later checkpoint of their series runs."""
        out: set[str] = set()
        for g in groups:
            if g.tasks:
                out |= self.waiting_on(g.refs)
        return out


# ---------------------------------------------------------------------------------------------- summary
@dataclass
class Summary:
    """What a run did. ``done``: units run and stored now; ``current``: already stored (not run again);
    ``skipped`` / ``failed``: (unit id, reason); ``pending``: units left out by ``--only``; ``problems``:
    (what, reason) for inputs left out before there were units (a case file that cannot be read, ids not in
    it, a clashing case id)."""

    study: str
    out: str
    done: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    runner: str = "in-process"
    interrupted: bool = False

    def per_analysis(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}

        def add(uid: str, what: str) -> None:
            a = uid.split("/", 1)[0]
            row = out.setdefault(a, {"done": 0, "current": 0, "skipped": 0, "failed": 0, "pending": 0})
            row[what] += 1

        for u in self.done:
            add(u, "done")
        for u in self.current:
            add(u, "current")
        for u, _ in self.skipped:
            add(u, "skipped")
        for u, _ in self.failed:
            add(u, "failed")
        for u in self.pending:
            add(u, "pending")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"study": self.study, "out": self.out, "runner": self.runner, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted,
                "counts": {"done": len(self.done), "current": len(self.current), "skipped": len(self.skipped),
                           "failed": len(self.failed), "pending": len(self.pending)},
                "per_analysis": self.per_analysis(), "done": self.done, "current": self.current,
                "skipped": [{"unit": u, "reason": r} for u, r in self.skipped],
                "failed": [{"unit": u, "error": r} for u, r in self.failed], "pending": self.pending,
                "problems": [{"what": w, "reason": r} for w, r in self.problems]}

    def table(self, limit: int = 20) -> str:
        lines = [f"study {self.study!r} ({self.runner}, {self.seconds:.1f} s): {len(self.done)} done, "
                 f"{len(self.current)} already current, {len(self.skipped)} skipped, {len(self.failed)} failed"
                 + (f", {len(self.pending)} pending (not selected)" if self.pending else "")
                 + (f", {len(self.problems)} input(s) left out" if self.problems else "")
                 + (" - INTERRUPTED" if self.interrupted else "") + f" -> {self.out}"]
        rows = self.per_analysis()
        if rows:
            w = max(8, *(len(a) for a in rows))
            cols = ("done", "current", "skipped", "failed", "pending")
            lines.append(f"  {'analysis':<{w}}" + "".join(f"{c:>9}" for c in cols))
            for a, row in rows.items():
                lines.append(f"  {a:<{w}}" + "".join(f"{row[c]:>9}" for c in cols))
        for title, items in (("left out", self.problems), ("skipped", self.skipped), ("failed", self.failed)):
            if not items:
                continue
            lines.append(f"{title}:")
            lines.extend(_grouped(items, limit))
        return "\n".join(lines)


def _grouped(items: Sequence[tuple[str, str]], limit: int) -> list[str]:
    """``unit: reason`` lines; a reason shared by several units is shown once with a count."""
    by_reason: dict[str, list[str]] = {}
    for u, r in items:
        by_reason.setdefault(r, []).append(u)
    out = []
    for r, units in list(by_reason.items())[:limit]:
        if len(units) == 1:
            out.append(f"  {units[0]}: {r}")
        else:
            shown = ", ".join(units[:2]) + (", ..." if len(units) > 2 else "")
            out.append(f"  {len(units)} units ({shown}): {r}")
    if len(by_reason) > limit:
        out.append(f"  ... and {len(by_reason) - limit} more reasons (see summary.json)")
    return out


# ---------------------------------------------------------------------------------------------- driver
class Driver:
    """The bookkeeping both runners share: the plan, the store, the series check, the summary, the
    progress bar and the manifest."""

    def __init__(self, plan: Plan, store: Store, *, progress: bool = True, runner: str = "in-process"):
        from tqdm.auto import tqdm

        self.plan, self.store = plan, store
        self.t0 = time.perf_counter()
        self.summary = Summary(study=plan.study.name, out=str(store.out), runner=runner)
        self.models: dict[str, dict[str, Any]] = self._known_models()
        self.series = SeriesCheck(plan.study.models, {n: m["tokenizer"] for n, m in self.models.items()
                                                      if m.get("tokenizer")})
        self._last_manifest = 0.0
        for e in plan.entries.values():
            if e.status == "current":
                self.summary.current.append(e.key.id)
            elif e.status == "skipped":
                self.summary.skipped.append((e.key.id, e.reason or ""))
            elif e.status == "failed":
                self.summary.failed.append((e.key.id, e.reason or ""))
            elif e.status == "unselected":
                self.summary.pending.append(e.key.id)
        self.summary.problems = list(plan.problems)
        groups = [g for g in plan.groups if g.tasks]
        needed = self.series.needed(groups)
        for g in plan.groups:
            if not g.tasks and any(r.name in needed for r in g.refs):
                groups.append(g)  # loaded only to learn its tokenizer (an earlier checkpoint of a series)
        self.groups = groups
        n = sum(len(g.tasks) for g in groups)
        self.bar = tqdm(total=n, unit="unit", disable=not progress, desc=f"study {plan.study.name}",
                        dynamic_ncols=True)

    def _known_models(self) -> dict[str, dict[str, Any]]:
        """Model facts (tokenizer digest, fingerprint) from the last manifest and the current units, where the
        model's identity is unchanged."""
        out: dict[str, dict[str, Any]] = {}
        man = self.store.read_manifest() or {}
        for name, m in (man.get("provenance", {}).get("models", {}) or {}).items():
            if isinstance(m, dict) and m.get("identity") == self.plan.identities.get(name):
                out[name] = dict(m)
        for e in self.plan.entries.values():
            if e.status == "current" and e.key.model not in out:
                rec = self.store.unit_record(e.key.analysis, e.key.digest) or {}
                prov = rec.get("provenance", {})
                if prov.get("tokenizer"):
                    mp = prov.get("model", {})
                    out[e.key.model] = {"identity": self.plan.identities[e.key.model], "tokenizer": prov["tokenizer"],
                                        "source": mp.get("model_source"), "revision": mp.get("model_revision"),
                                        "fingerprint": mp.get("model_fingerprint")}
        return out

    # ------------------------------------------------------------------ scheduling
    def ready(self, g: Group) -> bool:
        return not self.series.waiting_on(g.refs)

    def pick(self, remaining: Sequence[Group]) -> Group:
        return next((g for g in remaining if self.ready(g)), remaining[0])

    def loaded(self, g: Group, info: Mapping[str, Any]) -> dict[str, str]:
        """Record a group's load; returns model name -> why its units do not run (load failure or series)."""
        if info.get("error"):
            for r in g.refs:
                self.series.report(r.name, None)
            if info.get("traceback"):
                self._log(f"loading {g.label} failed", str(info["traceback"]))
            reason = f"model {g.label} cannot be loaded: {info['error']}"
            log.warning("%s", reason)
            return {r.name: reason for r in g.refs}
        for r in g.refs:
            self.series.report(r.name, info.get("tokenizer"))
            prov = info.get("provenance") or {}
            self.models[r.name] = {"identity": self.plan.identities[r.name], "tokenizer": info.get("tokenizer"),
                                   "vocab_size": info.get("vocab_size"), "fingerprint": info.get("fingerprint"),
                                   "source": prov.get("model_source"), "revision": prov.get("model_revision")}
        reasons = {}
        for r in g.refs:
            why = self.series.reason(r)
            if why:
                log.warning("%s", why)
                reasons[r.name] = why
        return reasons

    # ------------------------------------------------------------------ outcomes
    def finish(self, out: Outcome) -> None:
        key = out.key
        entry = self.plan.entries[key.id]
        if out.status == "done":
            assert out.result is not None
            try:
                self.store.write_unit(key, out.result, benchmark=self.plan.cases[key.case].benchmark,
                                      record=out.record)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a result that cannot be stored fails its unit
                out = Outcome(key, "failed", reason=f"cannot store the result: {one_line(e)}",
                              traceback=_tb.format_exc())
        if out.status == "done":
            entry.status, entry.reason = "done", None
            self.summary.done.append(key.id)
        elif out.status == "skipped":
            entry.status, entry.reason = "skipped", out.reason
            self.summary.skipped.append((key.id, out.reason or ""))
            log.debug("unit %s skipped: %s", key.id, out.reason)
        else:
            entry.status, entry.reason = "failed", out.reason
            self.summary.failed.append((key.id, out.reason or ""))
            log.warning("unit %s failed: %s", key.id, out.reason)
            if out.traceback:
                self._log(f"unit {key.id} ({key.digest}) failed: {out.reason}", out.traceback)
        self.bar.update(1)
        self.bar.set_postfix(done=len(self.summary.done), failed=len(self.summary.failed), refresh=False)
        if time.perf_counter() - self._last_manifest > MANIFEST_EVERY_S:
            self.write_manifest()

    def fail_tasks(self, tasks: Iterable[UnitKey], reasons: Mapping[str, str], status: str) -> list[UnitKey]:
        """Finish the tasks whose model has a reason (``status``: failed or skipped); return the rest."""
        rest = []
        for k in tasks:
            if k.model in reasons:
                self.finish(Outcome(k, status, reason=reasons[k.model]))
            else:
                rest.append(k)
        return rest

    def _log(self, title: str, text: str) -> None:
        try:
            with open(self.store.log_path, "a", encoding="utf-8") as f:
                f.write(f"--- {now()} {title}\n{text.rstrip()}\n")
        except OSError:
            log.warning("cannot write %s", self.store.log_path)

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        from contrastlens.provenance import versions

        st = self.plan.study
        units = []
        for e in self.plan.entries.values():
            k = e.key
            d: dict[str, Any] = {"id": k.id, "analysis": k.analysis, "model": k.model, "case": k.case, "rule": k.rule,
                                 "digest": k.digest}
            rec = self.store.unit_record(k.analysis, k.digest) if e.status in ("current", "done") else None
            if rec is not None:
                d["status"] = "done"
                d["provenance"] = rec.get("provenance")
                d["timings"] = rec.get("timings")
            elif e.status in ("skipped", "failed"):
                d["status"], d["reason"] = e.status, e.reason
            else:
                d["status"] = "pending"
            units.append(d)
        return {
            "format": "contrastlens-study-manifest", "version": 1, "study": st.name, "study_file": st.path,
            "updated": now(), "raw": st.raw, "settings": st.settings_dict(),
            "provenance": {"study": st.name, "study_file": st.path, "versions": dict(versions()),
                           "rules": list(st.rules), "seed": st.seed, "models": self.models,
                           "cases": [c.path for c in st.cases]},
            "problems": [{"what": w, "reason": r} for w, r in self.plan.problems],
            "units": units,
        }

    def write_manifest(self) -> None:
        self.store.write_manifest(self.manifest())
        self._last_manifest = time.perf_counter()

    def close(self) -> Summary:
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.t0
        self.write_manifest()
        self.store.write_summary({**self.summary.as_dict(), "finished": now()})
        return self.summary


# ---------------------------------------------------------------------------------------------- runners
def analysis_classes(study: Study) -> dict[str, type]:
    return {name: type(get_analysis(name)) for name in study.analyses}


def execute_in_process(driver: Driver) -> None:
    """Run the plan's groups in this process: one model loaded at a time."""
    plan = driver.plan
    classes = analysis_classes(plan.study)
    remaining = list(driver.groups)
    while remaining:
        g = driver.pick(remaining)
        remaining.remove(g)
        worker = ModelWorker(g.refs, plan.info, classes, plan.study.analyses, seed=plan.study.seed,
                             device=plan.study.runner.device)
        try:
            info = worker.load()
            reasons = driver.loaded(g, info)
            status = "failed" if info.get("error") else "skipped"
            for k in driver.fail_tasks(g.tasks, reasons, status):
                driver.finish(worker.run_unit(plan.cases[k.case], k))
        finally:
            worker.close()
            del worker


def run_study(study: Study | str | os.PathLike, out_dir: str | os.PathLike, *, ray: str | bool | None = None,
              progress: bool = True, only: Iterable[str] | None = None) -> Summary:
    """Run (or resume) a study into the results folder ``out_dir`` and return its :class:`Summary`.

    ``study``: a study file or a :class:`~contrastlens.study.config.Study`. ``ray``: None runs in this
    process; True, ``""`` or ``"local"`` starts a local Ray; any other string is the address of a Ray
    cluster to connect to (see :mod:`contrastlens.study.ray_runner`). ``only``: run only these analyses
    (the others' units stay as they are). Also writes ``DIR/manifest.json`` and ``DIR/summary.json``."""
    st = as_study(study)
    store = Store.for_run(out_dir, st.name)
    try:
        plan = plan_study(st, store, only=only)
        store.set_plan(_plan_digests(plan))
        use_ray = ray is not None and ray is not False
        driver = Driver(plan, store, progress=progress, runner="ray" if use_ray else "in-process")
        driver.write_manifest()
        try:
            if use_ray:
                from contrastlens.study.ray_runner import execute_ray

                execute_ray(driver, address=None if ray is True or ray in ("", "local") else str(ray))
            else:
                execute_in_process(driver)
        except KeyboardInterrupt:
            driver.summary.interrupted = True
            driver.close()
            raise
        return driver.close()
    finally:
        store.close()


def _plan_digests(plan: Plan) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in plan.entries.values():
        out.setdefault(e.key.analysis, []).append(e.key.digest)
    return out


# ---------------------------------------------------------------------------------------------- reading
def stored_study(store: Store) -> tuple[Study, dict[str, Any]]:
    """The study of a results folder, rebuilt from its manifest (plugins imported again), and the manifest."""
    man = store.read_manifest()
    if not man or "raw" not in man:
        raise InputError(f"{store.out} has no manifest yet; run `contrastlens study run STUDY.toml --out {store.out}`")
    settings = man.get("settings", {})
    st = parse_study(man["raw"], root=settings.get("root") or ".", label=str(store.out / "manifest.json"),
                     path=man.get("study_file"))
    return st, man


def study_status(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Per analysis: units done (stored and current), pending, stale (stored, settings changed), failed and
    skipped (with reasons, as of the last run), from the results folder alone."""
    store = Store.open(out_dir)
    man = store.read_manifest()
    if not man:
        raise InputError(f"{store.out} has no manifest yet; run `contrastlens study run STUDY.toml --out {store.out}`")
    per: dict[str, dict[str, Any]] = {}
    plan: dict[str, set[str]] = {}

    def row(a: str) -> dict[str, Any]:
        return per.setdefault(a, {"done": 0, "pending": 0, "stale": 0, "failed": 0, "skipped": 0,
                                  "failures": [], "skips": []})

    for u in man.get("units", []):
        a = u["analysis"]
        plan.setdefault(a, set()).add(u["digest"])
        r = row(a)
        if store.has(a, u["digest"]):
            r["done"] += 1
        elif u.get("status") == "failed":
            r["failed"] += 1
            r["failures"].append((u["id"], u.get("reason") or ""))
        elif u.get("status") == "skipped":
            r["skipped"] += 1
            r["skips"].append((u["id"], u.get("reason") or ""))
        else:
            r["pending"] += 1
    for a in store.analyses_on_disk():
        stale = [d for d in store.stored_digests(a) if d not in plan.get(a, set())]
        if stale:
            row(a)["stale"] += len(stale)
    summ = store.read_summary() or {}
    return {"study": man.get("study"), "out": str(store.out), "updated": man.get("updated"), "analyses": per,
            "problems": [(p["what"], p["reason"]) for p in man.get("problems", [])], "last_run": summ}


def format_status(status: Mapping[str, Any], limit: int = 20) -> str:
    lines = [f"study {status['study']!r} in {status['out']} (manifest of {status['updated']})"]
    per = status["analyses"]
    cols = ("done", "pending", "stale", "failed", "skipped")
    w = max([8, *(len(a) for a in per)])
    lines.append(f"  {'analysis':<{w}}" + "".join(f"{c:>9}" for c in cols))
    for a, r in per.items():
        lines.append(f"  {a:<{w}}" + "".join(f"{r[c]:>9}" for c in cols))
    fails = [x for r in per.values() for x in r["failures"]]
    skips = [x for r in per.values() for x in r["skips"]]
    for title, items in (("left out", list(status.get("problems", []))), ("failed", fails), ("skipped", skips)):
        if items:
            lines.append(f"{title}:")
            lines.extend(_grouped(items, limit))
    return "\n".join(lines)


def report_sections(store: Store, study: Study) -> list[Section]:
    """One section per analysis of the study, from the tables of its current units (an analysis whose
    report fails gets a section saying so)."""
    info = study.info(store.out)
    sections = []
    for name, settings in study.analyses.items():
        try:
            sec = get_analysis(name).report(store.tables(name), info, settings)
        except Exception as e:  # noqa: BLE001 - one broken section does not lose the report
            log.warning("the report of analysis %s failed: %s", name, one_line(e))
            sec = Section(title=name, text=f"The report of analysis `{name}` failed: {one_line(e)}")
        sections.append(sec)
    return sections


def render_study_report(out_dir: str | os.PathLike, *, fmt: str = "html") -> str:
    """The report of a results folder as one self-contained HTML or Markdown text: for each analysis of the
    study ``get_analysis(name).report(store.tables(name), info, settings)``, rendered by
    :func:`contrastlens.study.report.render_report` with the manifest's provenance and the last run's
    summary (the text carries the report marker, see :func:`contrastlens.study.report.write_report`)."""
    from contrastlens.study.report import render_report

    store = Store.open(out_dir)
    study, man = stored_study(store)
    sections = report_sections(store, study)
    provenance = portable_paths(man.get("provenance", {}), study.root)
    summary = portable_paths(store.read_summary() or {}, study.root)
    return render_report(sections, title=f"Study {study.name}", provenance=provenance, summary=summary, fmt=fmt)


def portable_paths(obj: Any, root: str, *, climb: int = 3) -> Any:
    """``obj`` (plain data) with every absolute path written relative to ``root`` (the study file's folder)
    when that climbs at most ``climb`` folders, and paths in the home folder as ``~/…``: a report names
    files the way the study file does, not by where this machine keeps them."""
    home = os.path.expanduser("~")
    root = os.path.abspath(root)

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v.startswith(os.sep):
            if home not in ("", os.sep) and (v == home or v.startswith(home + os.sep)) \
                    and not (root == home or root.startswith(home + os.sep)):
                return "~" + v[len(home):]
            rel = os.path.relpath(v, root)
            return rel if rel.split(os.sep).count("..") <= climb else v
        if isinstance(v, Mapping):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [fix(x) for x in v]
        return v

    return fix(obj)


__all__ = ["EXPLAIN_KEYWORDS", "Driver", "Entry", "Group", "ModelWorker", "Outcome", "Plan", "SeriesCheck", "Summary",
           "execute_in_process", "explain_options", "format_status", "model_identity", "one_line", "plan_study", "portable_paths",
           "render_study_report", "report_sections", "run_study", "stored_study", "study_status",
           "tokenizer_fingerprint", "unit_digest"]
