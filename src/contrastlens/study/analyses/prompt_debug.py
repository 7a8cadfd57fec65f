r"""Prompt debugging as a closed loop: edit the tokens an explanation blames, regenerate, re-score.

The paper's "cheap prompt debugging": when a model fails, remove (or mask) the prompt tokens that the
input relevance says pushed it toward the wrong token, let the model continue from the failure point and
ask the benchmark's real checker whether the answer is now right. Flipping the token is not fixing the
answer, so both are measured.

For one failure case (``prompt_ids``, ``completion_ids``, ``failure_index`` f, target t, contrast c) and
one attribution vector r over the explained input ``prompt_ids + completion_ids[:f]``:

1. **Selection** (:func:`top_positions`): the prompt positions i (i < len(prompt_ids): never the
   completion prefix) that are not special tokens, are editable and have r_i > 0 (they support the
   target), ordered by r_i descending (ties: the earlier position), the first k of them (fewer when fewer
   qualify). Editable (``within``, :func:`editable_mask`): with ``segments`` (default) the tokens of the
   case's ``instruction`` and ``query`` segments (the benchmark's own prompt text, not the chat template's
   role names and newlines), or every prompt token when the case has neither; with ``prompt`` every
   prompt token.
2. **Edit** (``mode``): ``delete`` (default) removes those tokens from the prompt ids
   (:func:`delete_positions`; the sequence gets shorter); ``mask`` keeps the ids but replaces the token
   embeddings of those positions (``masking``: ``zero``, ``neutral`` with ``neutral_token``, ``mean``; as in
   the faithfulness suite's :class:`~contrastlens.study.analyses.faithfulness.DeltaForward`) and the model
   runs on ``inputs_embeds``.
3. **Regeneration** from the failure point: the edited prompt, then the case's completion before the error
   ``completion_ids[:f]``, continued greedily (argmax of the raw logits, as in collection) for at most
   ``max_new_tokens`` tokens (None: when the original completion stopped by itself, its remaining length
   len(completion_ids) − f plus ``slack``, at least ``min_new_tokens``; when it hit its token budget,
   exactly its remaining length, the same budget, so that an edit cannot pass just by having more room),
   stopping at a stop token or when the benchmark says the verdict is settled. Delete
   mode uses :func:`contrastlens.collect.generate.generate_greedy` (all variants of a case batched); mask
   mode needs a prefill from embeddings, which ``generate_greedy`` does not take, so
   :func:`continue_greedy_masked` prefills from ``inputs_embeds`` and then decodes one token per step with
   :func:`contrastlens.collect.generate.forward` and the KV cache.
4. **Re-scoring**: the text ``decode(completion_ids[:f] + new ids)`` (special tokens skipped, as the
   collection pipeline scores completions) goes to ``get_benchmark(case.benchmark).score(item, text)``,
   with the item found by ``case.item_id`` in the study's data folder (``StudyInfo.data``, else
   ``$CONTRASTLENS_DATA``). Code benchmarks run the code with their defaults (HumanEval+: in the
   bubblewrap sandbox, see ``docs/security.md``).

Per (method, k) one row: ``flipped_token`` (the first regenerated token differs from the target),
``delta_logit_edited`` (Δℓ = ℓ(t) − ℓ(c) at the failure point after the edit), ``passed`` (the checker's
verdict; None when the checker failed on the text, see ``score_error``), the edited prompt with the removed
tokens marked and the new continuation. With ``control``, a row ``method="none", k=0`` regenerates from the
unedited prompt (it should reproduce the failure: greedy decoding is deterministic).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from contrastlens.errors import ContrastLensError, InputError
from contrastlens.study.analyses.faithfulness import MASKINGS, fill_of
from contrastlens.study.base import register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.benchmarks.base import Benchmark, Item
    from contrastlens.cases.schema import FailureCase
    from contrastlens.collect.generate import Completion
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.study.base import UnitContext, UnitResult

log = logging.getLogger(__name__)

MODES = ("delete", "mask")
#: which prompt tokens may be edited
WITHIN = ("segments", "prompt")
#: the segments whose tokens are editable with ``within = "segments"``
EDITABLE_SEGMENTS = ("instruction", "query")
#: the method name of the control row (the unedited prompt regenerated)
CONTROL = "none"


@dataclass
class PromptDebugSettings:
    """Settings of the ``prompt_debug`` study analysis (``[analyses.prompt_debug]``).

    ``methods``: attribution methods whose input relevance picks the tokens (``explain(method=...)``),
    ``method_options`` ({method: {option: value}}); ``ks``: how many tokens to edit; ``within``: which
    prompt tokens may be edited (``segments``: the case's instruction and query, else the whole prompt;
    ``prompt``: every non-special prompt token); ``mode``: ``delete``
    or ``mask`` (with ``masking`` and, for ``neutral``, ``neutral_token``); ``max_new_tokens`` (None: the
    original completion's remaining length, + ``slack`` and at least ``min_new_tokens`` when it stopped by
    itself); ``control``: also
    regenerate from the unedited prompt; ``batch_size``: rows per batched generation (delete mode).
    Report only: ``show`` (cases whose edited prompts are shown) and ``context`` (prompt tokens shown on
    each side of an edited token; None: the whole prompt).
    """

    methods: list[str] = field(default_factory=lambda: ["attnlrp", "random"])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    ks: list[int] = field(default_factory=lambda: [1, 2, 5])
    within: str = "segments"
    mode: str = "delete"
    masking: str = "zero"
    neutral_token: str | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int = 64
    slack: int = 32
    control: bool = True
    batch_size: int = 8
    show: int = 6
    context: int | None = 40


def _positive_int(value: Any, key: str, *, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < (0 if zero else 1):
        raise InputError(f"{key} must be a {'non-negative' if zero else 'positive'} integer, got {value!r}")
    return int(value)


def check_settings(s: PromptDebugSettings) -> list[str]:
    """Validate ``s`` (an :class:`InputError` naming the key); the canonical method names."""
    from contrastlens.attribution.methods import get_method

    if isinstance(s.methods, str) or not isinstance(s.methods, Sequence) or not s.methods:
        raise InputError(f"methods must be a non-empty list of method names, got {s.methods!r}")
    names = []
    for m in s.methods:
        try:
            c = get_method(m).name
        except ContrastLensError as e:
            raise InputError(f"methods: {e}") from None
        if c not in names:
            names.append(c)
    if not isinstance(s.method_options, Mapping) or not all(isinstance(v, Mapping) for v in s.method_options.values()):
        raise InputError(f"method_options must be a table {{method: {{option: value}}}}, got {s.method_options!r}")
    if isinstance(s.ks, str) or not isinstance(s.ks, Sequence) or not s.ks:
        raise InputError(f"ks must be a non-empty list of positive integers, got {s.ks!r}")
    for k in s.ks:
        _positive_int(k, "ks")
    if s.within not in WITHIN:
        raise InputError(f"within must be one of {', '.join(WITHIN)}, not {s.within!r}")
    if s.mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {s.mode!r}")
    if s.masking not in MASKINGS:
        raise InputError(f"masking must be one of {', '.join(MASKINGS)}, not {s.masking!r}")
    if (s.masking == "neutral") != (s.neutral_token is not None):
        raise InputError("masking = 'neutral' needs neutral_token (and neutral_token needs masking = 'neutral')")
    if s.max_new_tokens is not None:
        _positive_int(s.max_new_tokens, "max_new_tokens")
    _positive_int(s.min_new_tokens, "min_new_tokens")
    _positive_int(s.slack, "slack", zero=True)
    _positive_int(s.batch_size, "batch_size")
    _positive_int(s.show, "show", zero=True)
    if s.context is not None:
        _positive_int(s.context, "context", zero=True)
    return names


# ------------------------------------------------------------------------------------ selection, edits
def top_positions(relevance: Any, special_mask: Sequence[bool], n_prompt: int, k: int | None = None, *,
                  editable: Sequence[bool] | np.ndarray | None = None) -> list[int]:
    """The prompt positions to edit, most relevant first: i < ``n_prompt``, not special, ``editable[i]``
    (None: every position), relevance > 0, ordered by relevance descending (ties: earlier first); the first
    ``k`` (None: all of them)."""
    r = np.asarray(relevance, dtype=np.float64).reshape(-1)
    special = np.asarray(special_mask, dtype=bool).reshape(-1)
    if special.size != r.size:
        raise InputError(f"special_mask has {special.size} entries for {r.size} relevance values")
    ed = np.ones(r.size, dtype=bool) if editable is None else np.asarray(editable, dtype=bool).reshape(-1)
    if ed.size != r.size:
        raise InputError(f"editable has {ed.size} entries for {r.size} relevance values")
    if not 0 <= n_prompt <= r.size:
        raise InputError(f"n_prompt {n_prompt} is outside [0, {r.size}]")
    if not np.isfinite(r).all():
        raise InputError("the relevance has NaN/inf entries")
    ok = np.flatnonzero((np.arange(r.size) < n_prompt) & ~special & ed & (r > 0))
    order = ok[np.argsort(-r[ok], kind="stable")]
    return [int(i) for i in (order if k is None else order[:k])]


def editable_mask(segments: Mapping[str, Sequence[tuple[int, int]]] | None, n: int, n_prompt: int,
                  within: str = "segments") -> np.ndarray:
    """Which of the ``n`` explained positions may be edited: the prompt positions (< ``n_prompt``) inside
    the ``instruction`` and ``query`` token spans of ``segments`` (``ex.segments``: ``[start, end)``
    ranges) with ``within="segments"``, or every prompt position when there are none of those spans or
    with ``within="prompt"``."""
    if within not in WITHIN:
        raise InputError(f"within must be one of {', '.join(WITHIN)}, not {within!r}")
    prompt = np.arange(n) < n_prompt
    if within == "prompt" or not segments:
        return prompt
    m = np.zeros(n, dtype=bool)
    for name in EDITABLE_SEGMENTS:
        for a, b in segments.get(name, []) or []:
            m[max(0, int(a)) : min(n, int(b))] = True
    return m & prompt if (m & prompt).any() else prompt


def delete_positions(ids: Sequence[int], positions: Sequence[int]) -> list[int]:
    """``ids`` without the tokens at ``positions``."""
    drop = {int(p) for p in positions}
    bad = [p for p in drop if not 0 <= p < len(ids)]
    if bad:
        raise InputError(f"positions {sorted(bad)} are outside the {len(ids)} ids")
    return [int(t) for i, t in enumerate(ids) if i not in drop]


def marked_prompt(tokens: Sequence[str], positions: Sequence[int], *, html_out: bool = False,
                  context: int | None = None) -> str:
    """The prompt with the edited tokens marked: ``[-token-]`` in text, ``<del>`` in (escaped) HTML. With
    ``context``, only the tokens within ``context`` of an edited one are shown (`` … `` between windows)."""
    marked = {int(p) for p in positions}
    n = len(tokens)
    if context is None or not marked:
        show = np.ones(n, dtype=bool)
    else:
        show = np.zeros(n, dtype=bool)
        for p in marked:
            show[max(0, p - context) : min(n, p + context + 1)] = True
    out: list[str] = []
    prev = True
    for i, tok in enumerate(tokens):
        if not show[i]:
            if prev:
                out.append(" … ")
            prev = False
            continue
        prev = True
        if html_out:
            t = html.escape(tok)
            out.append(f'<del style="background:#fdd;color:#a00" title="removed (position {i})">{t}</del>'
                       if i in marked else t)
        else:
            out.append(f"[-{tok}-]" if i in marked else tok)
    return "".join(out)


# ------------------------------------------------------------------------------------ model calls
@torch.no_grad()
def next_token_logits(lm: LoadedModel, ids: Sequence[int], masked: Sequence[int] = (), *, masking: str = "zero",
                      neutral_token_id: int | None = None) -> torch.Tensor:
    """The next-token logits [V] (float32) after ``ids``, the embeddings of the ``masked`` positions
    replaced (see :class:`~contrastlens.study.analyses.faithfulness.DeltaForward`)."""
    from contrastlens.collect.generate import forward

    if not masked:
        return forward(lm, torch.tensor([list(ids)], device=lm.device), use_cache=False,
                       logits_to_keep=1).logits[0, -1].float()
    out = _embeds_forward(lm, ids, masked, masking, neutral_token_id, use_cache=False)
    return out.logits[0, -1].float()


def _embeds_forward(lm: LoadedModel, ids: Sequence[int], masked: Sequence[int], masking: str,
                    neutral_token_id: int | None, *, use_cache: bool) -> Any:
    from contrastlens.models.kv_cache import forward_keywords

    emb_mod = lm.adapter.embedding(lm.model)
    x = emb_mod(torch.tensor([list(ids)], device=lm.device))
    if masked:
        fill = fill_of(lm, masking, neutral_token_id, x.dtype).to(x.device)
        x[0, torch.tensor(sorted(int(p) for p in masked), device=x.device)] = fill
    kw: dict[str, Any] = {"inputs_embeds": x, "use_cache": use_cache}
    if forward_keywords(lm.model)[1]:
        kw["logits_to_keep"] = 1
    return lm.model(**kw)


@torch.no_grad()
def continue_greedy_masked(lm: LoadedModel, ids: Sequence[int], masked: Sequence[int], *, max_new_tokens: int,
                           masking: str = "zero", neutral_token_id: int | None = None,
                           settled: Callable[[str], bool] | None = None) -> Completion:
    """Greedy continuation of ``ids`` with the embeddings of the ``masked`` positions replaced: one prefill
    from ``inputs_embeds`` (keeping the KV cache), then one token per step (argmax of the raw logits) until
    a stop token (excluded), ``settled(text of the new tokens)`` or ``max_new_tokens``. The same decoding
    as :func:`contrastlens.collect.generate.generate_greedy`, which cannot prefill from embeddings."""
    from contrastlens.collect.generate import Completion, forward, stop_ids
    from contrastlens.models.kv_cache import output_cache

    stops = set(stop_ids(lm))
    out = _embeds_forward(lm, ids, masked, masking, neutral_token_id, use_cache=True)
    cache = output_cache(out)
    new: list[int] = []
    pos = len(ids)
    for step in range(max_new_tokens):
        nxt = int(out.logits[0, -1].float().argmax())
        if nxt in stops:
            return Completion(new, True)
        new.append(nxt)
        if settled is not None and settled(lm.tokenizer.decode(new, skip_special_tokens=True)):
            return Completion(new, True)
        if step == max_new_tokens - 1:
            break
        out = forward(lm, torch.tensor([[nxt]], device=lm.device), cache=cache,
                      position_ids=torch.tensor([[pos]], device=lm.device))
        cache = output_cache(out)
        pos += 1
    return Completion(new, False)


# ------------------------------------------------------------------------------------ benchmark items
_BENCH_CACHE: dict[tuple[type, str], tuple[Benchmark, dict[str, Item]]] = {}


def benchmark_items(name: str, data: str | os.PathLike | None = None) -> tuple[Benchmark, dict[str, Item]]:
    """The benchmark ``name`` (its checker) and its items by id, from ``data`` (a file or the folder holding
    the benchmark's file; None: ``$CONTRASTLENS_DATA`` or the hub). Cached per benchmark class and data,
    so a checker's own caches (e.g. HumanEval+'s expected outputs) are kept between cases."""
    from contrastlens.benchmarks.registry import get_benchmark

    bench = get_benchmark(name)
    key = (type(bench), str(data) if data is not None else "")
    if key not in _BENCH_CACHE:
        items, _bad = bench.load(data) if data is not None else bench.load()
        _BENCH_CACHE[key] = (bench, {it.id: it for it in items})
    return _BENCH_CACHE[key]


def clear_benchmark_cache() -> None:
    """Forget the benchmarks and items :func:`benchmark_items` loaded."""
    _BENCH_CACHE.clear()


def case_item(case: FailureCase, data: str | os.PathLike | None = None) -> tuple[Benchmark, Item]:
    """The case's benchmark and item (an :class:`InputError` naming the case when the item is missing)."""
    bench, items = benchmark_items(case.benchmark, data)
    item = items.get(case.item_id)
    if item is None:
        raise InputError(f"case {case.id}: item {case.item_id!r} is not in the {case.benchmark} data"
                         + (f" ({data})" if data is not None else ""))
    return bench, item


# ------------------------------------------------------------------------------------ one case
def _new_tokens(case: FailureCase, s: PromptDebugSettings) -> int:
    if s.max_new_tokens is not None:
        return int(s.max_new_tokens)
    fi = int(case.failure_index or 0)
    rest = len(case.completion_ids) - fi
    if not case.stopped:  # the original hit its budget: the same budget, so a pass is not just more room
        return max(1, rest)
    return max(int(s.min_new_tokens), rest + int(s.slack))


def debug_case(lm: LoadedModel, case: FailureCase, relevances: Mapping[str, Any], *, bench: Benchmark, item: Item,
               settings: PromptDebugSettings | None = None, special_mask: Sequence[bool] | None = None,
               segments: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> pd.DataFrame:
    """The closed loop for one failure case: for every method's relevance in ``relevances`` ({name: r}, r
    over ``case.ids_before_err``) and every k of ``settings.ks``, edit the top-k prompt tokens, regenerate
    from the failure point and score with ``bench.score(item, text)``. ``segments``: the token spans of the
    explained input (``ex.segments``) that decide which tokens are editable (``settings.within``); None:
    every prompt token. One row per (method, k) (and the control row); see the module docstring for the
    columns' meaning."""
    import pandas as pd

    s = settings or PromptDebugSettings()
    check_settings(s)
    if case.status != "localised" or case.failure_index is None or case.target_id is None:
        raise InputError(f"case {case.id} is not localised; there is no failure point to regenerate from")
    tok = lm.tokenizer
    prompt_ids = [int(t) for t in case.prompt_ids]
    fi = int(case.failure_index)
    prefix = [int(t) for t in case.completion_ids[:fi]]
    ids = prompt_ids + prefix
    n_prompt = len(prompt_ids)
    if special_mask is None:
        specials = lm.special_ids()
        special_mask = [t in specials for t in ids]
    if len(special_mask) != len(ids):
        raise InputError(f"case {case.id}: special_mask has {len(special_mask)} entries for {len(ids)} tokens")
    editable = editable_mask(segments, len(ids), n_prompt, s.within)
    neutral = lm.token_id(s.neutral_token, what="neutral_token") if s.neutral_token is not None else None
    target, contrast = int(case.target_id), case.contrast_id
    head = tok.decode(prefix, skip_special_tokens=True)
    bench_settled = getattr(bench, "settled", None)
    settled = (lambda text: bool(bench_settled(head + text))) if bench_settled is not None else None
    max_new = _new_tokens(case, s)
    original = tok.decode(case.completion_ids[fi:], skip_special_tokens=True)

    variants: list[tuple[str, int, tuple[int, ...]]] = []
    if s.control:
        variants.append((CONTROL, 0, ()))
    for name, r in relevances.items():
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        if r.size != len(ids):
            raise InputError(f"case {case.id}: the relevance of {name} has {r.size} entries for {len(ids)} tokens "
                             "(prompt + completion before the error)")
        order = top_positions(r, special_mask, n_prompt, max(int(k) for k in s.ks), editable=editable)
        variants += [(str(name), int(k), tuple(order[: int(k)])) for k in s.ks]
    edits = list(dict.fromkeys(v[2] for v in variants))  # each distinct edit once

    def edited(pos: tuple[int, ...]) -> list[int]:
        return delete_positions(prompt_ids, pos) + prefix if s.mode == "delete" else ids

    logits = {p: next_token_logits(lm, edited(p), () if s.mode == "delete" else p, masking=s.masking,
                                   neutral_token_id=neutral) for p in edits}
    if s.mode == "delete":
        from contrastlens.collect.generate import generate_greedy

        comps = dict(zip(edits, generate_greedy(lm, [edited(p) for p in edits], max_new_tokens=max_new,
                                                batch_size=s.batch_size, settled=settled), strict=True))
    else:
        comps = {p: continue_greedy_masked(lm, ids, p, max_new_tokens=max_new, masking=s.masking,
                                           neutral_token_id=neutral, settled=settled) for p in edits}
    verdicts: dict[tuple[int, ...], tuple[bool | None, str | None]] = {}
    for p in edits:
        text = tok.decode(prefix + list(comps[p].ids), skip_special_tokens=True)
        try:
            verdicts[p] = (bool(bench.score(item, text).passed), None)
        except ContrastLensError as e:
            verdicts[p] = (None, str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
    prompt_tokens = lm.decode_tokens(prompt_ids)
    base = logits[()] if () in logits else next_token_logits(lm, ids)
    d0 = float(base[target] - base[contrast]) if contrast is not None else math.nan
    rows = []
    for name, k, pos in variants:
        comp, lg = comps[pos], logits[pos]
        first = int(comp.ids[0]) if comp.ids else int(lg.argmax())
        passed, err = verdicts[pos]
        rows.append({
            "case_id": case.id, "benchmark": case.benchmark, "item_id": case.item_id, "method": name, "k": k,
            "mode": s.mode, "within": "segments" if s.within == "segments" and segments else "prompt",
            "n_removed": len(pos), "removed_positions": json.dumps(list(pos)),
            "removed_tokens": json.dumps([prompt_tokens[i] for i in pos], ensure_ascii=False),
            "target_id": target, "contrast_id": contrast, "delta_logit": d0,
            "delta_logit_edited": float(lg[target] - lg[contrast]) if contrast is not None else math.nan,
            "first_token_id": first, "first_token": tok.decode([first]), "flipped_token": first != target,
            "passed": passed, "score_error": err, "stopped": bool(comp.stopped), "n_new_tokens": len(comp.ids),
            "new_completion": tok.decode(list(comp.ids), skip_special_tokens=True),
            "completion": tok.decode(prefix + list(comp.ids), skip_special_tokens=True),
            "completion_before_err": head, "original_continuation": original,
            "prompt_marked": marked_prompt(prompt_tokens, pos, context=s.context),
            "prompt_html": marked_prompt(prompt_tokens, pos, html_out=True, context=s.context),
        })
    out = pd.DataFrame(rows)
    out["passed"] = out["passed"].astype("boolean")
    return out


def _data_dir(study: Any) -> str | None:
    data = getattr(study, "data", None)
    if data is None:
        return None
    p = Path(data).expanduser()
    root = getattr(study, "root", None)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    return str(p)


def run_case(ctx: UnitContext) -> pd.DataFrame:
    """:func:`debug_case` for a unit: each method's relevance from ``ctx.explain(method=m, **options)``, the
    checker and item from the study's data folder."""
    s: PromptDebugSettings = ctx.settings
    names = check_settings(s)
    case = ctx.case
    bench, item = case_item(case, _data_dir(ctx.study))
    rel: dict[str, Any] = {}
    special: list[bool] | None = None
    segments: dict[str, Any] | None = None
    for name in names:
        ex = ctx.explain(method=name, **dict(s.method_options.get(name, {})))
        if list(ex.input_ids) != case.ids_before_err:
            raise InputError(f"case {case.id}: the {name} explanation is not of the case's input before the error")
        rel[name] = ex.input_relevance
        special = list(ex.special_mask)
        segments = dict(ex.segments) or None
    return debug_case(ctx.lm, case, rel, bench=bench, item=item, settings=s, special_mask=special,
                      segments=segments)


# ------------------------------------------------------------------------------------ the report
def fix_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per scope (``benchmark``; ``all``), method and k: ``cases``, ``flipped`` (the first regenerated
    token is not the target), ``passed`` (the checker now passes), ``flipped_not_passed``,
    ``passed_not_flipped``, ``errors`` (the checker failed; left out of the shares), ``flipped_share`` and
    ``passed_share`` (of the cases with a verdict). Rows of one case under several rules count once."""
    import pandas as pd

    df = table.copy()
    if "model" not in df:
        df["model"] = "model"
    key = df["model"].astype(str) + "/" + df["case_id"].astype(str)
    df = df.assign(case_key=key).drop_duplicates(["case_key", "method", "k"], keep="first")
    scopes = [("all", df)]
    if df["benchmark"].nunique() > 1:
        scopes += [(str(b), g) for b, g in df.groupby("benchmark", sort=True)]
    rows = []
    for scope, g in scopes:
        for (method, k), h in g.groupby(["method", "k"], sort=False):
            ok = h["passed"].notna()
            v = h[ok]
            flipped = v["flipped_token"].astype(bool)
            passed = v["passed"].astype(bool)
            n = int(len(v))
            rows.append({"benchmark": scope, "method": method, "k": int(k), "cases": n,
                         "flipped": int(flipped.sum()), "passed": int(passed.sum()),
                         "flipped_not_passed": int((flipped & ~passed).sum()),
                         "passed_not_flipped": int((passed & ~flipped).sum()), "errors": int((~ok).sum()),
                         "flipped_share": float(flipped.mean()) if n else math.nan,
                         "passed_share": float(passed.mean()) if n else math.nan})
    out = pd.DataFrame(rows)
    if len(out):
        out["_c"] = out["method"] == CONTROL
        out = out.sort_values(["benchmark", "_c", "method", "k"], key=None, kind="stable").drop(columns="_c")
        order = {b: i for i, b in enumerate(["all"] + sorted(set(out["benchmark"]) - {"all"}))}
        out = out.sort_values("benchmark", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return out


def _share(a: int, n: int) -> str:
    return f"{a}/{n} ({100 * a / n:.0f}%)" if n else f"{a}/0"


def edited_prompts_html(table: pd.DataFrame, *, show: int = 6) -> str:
    """Self-contained HTML of the edited prompts of up to ``show`` cases (those turned into passes first):
    per case and method the smallest k that passed (else the largest k), the prompt with the removed
    tokens struck through, the completion before the error and the new and the original continuation
    (every text escaped)."""
    import pandas as pd

    df = table[table["method"] != CONTROL]
    if df.empty or show == 0:
        return ""
    fixed = df.groupby("case_id", sort=False)["passed"].apply(lambda s: bool(s.fillna(False).any()))
    cases = list(fixed[fixed].index) + list(fixed[~fixed].index)
    parts = ['<div class="cl-prompt-debug">']
    for cid in cases[:show]:
        g = df[df["case_id"] == cid]
        parts.append(f"<h4>{html.escape(str(cid))}</h4>")
        for method, h in g.groupby("method", sort=False):
            good = h[h["passed"].fillna(False).astype(bool)]
            r = (good.sort_values("k").iloc[0] if len(good) else h.sort_values("k").iloc[-1])
            verdict = ("checker error" if pd.isna(r["passed"]) else "passes now" if bool(r["passed"])
                       else "still fails")
            tok_note = (f"first token {html.escape(repr(r['first_token']))} (was the target)"
                        if not r["flipped_token"] else f"first token {html.escape(repr(r['first_token']))} "
                        "(no longer the target)")
            parts.append(
                f'<p><b>{html.escape(str(method))}</b>, {html.escape(str(r["mode"]))} k={int(r["k"])} '
                f'({int(r["n_removed"])} removed): <b>{verdict}</b>; {tok_note}.</p>'
                '<pre style="white-space:pre-wrap;border:1px solid #ddd;padding:4px">'
                f'{r["prompt_html"]}<span style="color:#777">{html.escape(str(r["completion_before_err"]))}</span>'
                "</pre>"
                f'<p>new continuation: <code style="white-space:pre-wrap">{html.escape(str(r["new_completion"]))}'
                "</code><br>"
                f'original: <code style="white-space:pre-wrap">{html.escape(str(r["original_continuation"]))}'
                "</code></p>")
    parts.append("</div>")
    return "\n".join(parts)


def prompt_debug_section(tables: Mapping[str, pd.DataFrame], settings: PromptDebugSettings | None = None) -> Any:
    """The report :class:`~contrastlens.study.base.Section` from the concatenated ``edits`` tables: the
    fix table, text computed from it (share turned into passes per method and k, token flipped vs answer
    fixed, the control) and the edited prompts (:func:`edited_prompts_html`)."""
    from contrastlens.study.base import Section, Table

    s = settings or PromptDebugSettings()
    title = "Prompt debugging: edit the blamed tokens, regenerate, re-score"
    table = tables.get("edits")
    if table is None or len(table) == 0:
        return Section(title, text="No prompt-debugging unit has finished yet.")
    fixes = fix_table(table)
    allf = fixes[fixes["benchmark"] == "all"]
    mode = ", ".join(sorted(set(table["mode"].astype(str))))
    within = set(table["within"].astype(str)) if "within" in table else {"prompt"}
    where = ("only inside the instruction and query" if within == {"segments"} else
             "inside the instruction and query where a case has them, else anywhere in the prompt"
             if "segments" in within else "anywhere in the prompt")
    lines = [f"For each failure, the top-k prompt tokens of a method (positive relevance toward the wrong "
             f"token; never special tokens or the completion before the error; {where}) are edited ({mode}), "
             "the model "
             "continues greedily from the failure point and the benchmark's own checker scores the new "
             "answer. *Flipped*: the first regenerated token is no longer the wrong one; *passed*: the "
             "checker accepts the answer.", ""]
    ctrl = allf[allf["method"] == CONTROL]
    if len(ctrl):
        c = ctrl.iloc[0]
        lines.append(f"Control (unedited prompt regenerated): the failure is reproduced in "
                     f"{_share(int(c['cases']) - int(c['passed']), int(c['cases']))} cases"
                     + (" (greedy decoding is deterministic; a pass here means the regeneration differs "
                        "from the collected completion)." if int(c["passed"]) else "."))
    edits = allf[allf["method"] != CONTROL]
    for r in edits.itertuples(index=False):
        lines.append(f"- {r.method}, k={r.k}: token flipped in {_share(r.flipped, r.cases)}, answer fixed in "
                     f"{_share(r.passed, r.cases)}; flipped but still failing: {r.flipped_not_passed}"
                     + (f", fixed without flipping the first token: {r.passed_not_flipped}"
                        if r.passed_not_flipped else "") + (f"; checker errors: {r.errors}" if r.errors else ""))
    if len(edits):
        fl, ps = int(edits["flipped"].sum()), int(edits["passed"].sum())
        n = int(edits["cases"].sum())
        fnp, pnf = int(edits["flipped_not_passed"].sum()), int(edits["passed_not_flipped"].sum())
        if fnp or pnf:
            lines += ["", f"Flipping the token is not fixing the answer: over all methods and k, {_share(fl, n)} "
                      f"edits flipped the first token and {_share(ps, n)} fixed the answer; {fnp} flipped "
                      f"without fixing, {pnf} fixed without flipping."]
        else:
            lines += ["", f"Here flipping the token and fixing the answer coincided in every edit ({_share(fl, n)} "
                      "flipped, and exactly those passed); on real benchmarks they usually differ."]
        best = edits.sort_values(["passed_share", "k"], ascending=[False, True], kind="stable").iloc[0]
        lines.append(f"Most fixes: {best['method']} at k={int(best['k'])} "
                     f"({_share(int(best['passed']), int(best['cases']))}).")
        methods = list(dict.fromkeys(edits["method"]))
        if "random" in methods and len(methods) > 1:
            cmp = []
            for k, g in edits.groupby("k", sort=True):
                rnd = g[g["method"] == "random"]
                for r in g[g["method"] != "random"].itertuples(index=False):
                    if len(rnd):
                        cmp.append(f"k={k}: {r.method} {_share(r.passed, r.cases)} vs random "
                                   f"{_share(int(rnd.iloc[0]['passed']), int(rnd.iloc[0]['cases']))}")
            if cmp:
                lines.append("Against random tokens — " + "; ".join(cmp) + ".")
    tabs = [Table("Failures turned into passes per method and k (scope: benchmark; `all` = every case)", fixes,
                  "{:.3g}")]
    return Section(title, text="\n".join(lines).strip(), tables=tabs,
                   html=edited_prompts_html(table, show=s.show))


class PromptDebugAnalysis:
    """The ``prompt_debug`` study analysis: per unit :func:`run_case` (table ``edits``), per study
    :func:`prompt_debug_section`."""

    name: ClassVar[str] = "prompt_debug"
    Settings: ClassVar[type] = PromptDebugSettings
    version: ClassVar[int] = 1
    # the methods are named in the settings: a unit does not depend on the study's rule
    per_rule: ClassVar[bool] = False

    def skip(self, case: Any, model: Any, study: Any, settings: Any) -> str | None:
        if getattr(case, "status", None) != "localised" or getattr(case, "failure_index", None) is None:
            return "the case is not localised (no failure point to regenerate from)"
        if getattr(case, "passed", False):
            return "the case passed its checker (nothing to debug)"
        return None

    def run(self, ctx: UnitContext) -> UnitResult:
        from contrastlens.study.base import UnitResult

        table = run_case(ctx)
        meta = {"variants": int(len(table)), "passed": int(table["passed"].fillna(False).sum())}
        return UnitResult(tables={"edits": table}, meta=meta)

    def report(self, tables: Mapping[str, pd.DataFrame], study: Any, settings: Any) -> Any:
        return prompt_debug_section(tables, settings)


register_analysis(PromptDebugAnalysis)


__all__ = [
    "CONTROL", "EDITABLE_SEGMENTS", "MODES", "WITHIN", "PromptDebugAnalysis", "PromptDebugSettings",
    "benchmark_items", "case_item", "check_settings", "clear_benchmark_cache", "continue_greedy_masked",
    "debug_case", "delete_positions", "editable_mask",
    "edited_prompts_html", "fix_table", "marked_prompt", "next_token_logits", "prompt_debug_section", "run_case",
    "top_positions",
]
