r"""Failure taxonomy pre-labels (paper §4.7) with written criteria, and manual labels that override them.

The paper labels every clean failure by hand with an **outcome** (does an explanation show why the model
prefers the wrong token?) and, for explained failures, a **pattern**. This module pre-labels each unit
(case, model) automatically by the criteria below, computed from the unit's LRP explanation (its rule:
``attnlrp`` or ``cp-lrp``; hidden-state relevance is needed); a person then confirms or corrects the
labels with :func:`write_label` (``contrastlens study label``), and reports prefer the manual labels.

Notation. r: the raw input relevance (positive: toward the target, the wrong token; negative: toward the
contrast). r̂ = r / max_{i not special} |r_i| (max-abs normalisation over the non-special tokens, as the
heatmaps; the strongest token has |r̂| = 1). The segments (``Explanation.segment_masks``): instruction,
query, answer; a case without segments has every non-special token in the query. Δℓ = ℓ(target) −
ℓ(contrast) under the unit's model. All thresholds are :class:`TaxonomySettings` fields.

**Which units are labelled.** Only units where the model prefers the target clearly, Δℓ > ``min_delta``
(default 1, the clean-case rule and the ``Δℓ > 1`` of the notebooks' proxy); others get outcome ``n/a``.

**Outcome.**

- ``M-IA`` (the heatmap explains the preference): total = Σ_{i not special} r̂_i > ``total_threshold``
  (default 0). The notebooks' ``is_AG_required = (Inst+Answer+Query < 0) and (Δℓ > 1)`` is the negation,
  except at total = 0 exactly, which counts as *not* explained here (a heatmap that sums to zero gives no
  direction).
- Otherwise the heatmap does not explain it (NC-IA) and the per-layer relevance sums decide. The
  **trajectory** T is the relevance of each residual-stream state summed over the non-special positions
  (``trajectory="all"``: over every position), in forward order: T = (emb, L0.mid, L0, L1.mid, L1, …,
  L{L−1}) — ``layer_relevance`` row 0 (the embeddings), then for each block l its ``mid_relevance`` row
  (after attention, before the MLP; left out with ``use_mid=False``) and its ``layer_relevance`` row l+1
  (the block's output). Summed over the non-special positions, T[0] is the heatmap's total before
  normalisation, so the trajectory starts from the heatmap's verdict (an NC-IA case starts at T[0] ≤ 0);
  summed over all positions, a positive mass on BOS would put every such case "ahead from the start"
  (that mass is measured by ``bias_share`` instead). The last state is Δℓ by construction (only the
  explained position reaches the logits). The **overtaking state** k* is the first state from which
  every later state is > 0: T[k*−1] ≤ 0 < T[k*], …, T[last] (none when T[last] ≤ 0). Because
  T[last] = Δℓ > 0, a sign change at the last state says nothing the heatmap does not, so it does not
  count:

  - ``NC-IA+M-AG``: 1 ≤ k* ≤ last − 1, i.e. the sum changes sign from ≤ 0 to > 0 at an interior state and
    stays positive to the output: the graph shows where the target overtakes the contrast (the paper's
    Fig. 3: Sum < 0 up to L17, > 0 from L18 on);
  - ``NC-IA+AG``: no such state: the sum turns positive for good only at the last state (k* = last), or
    it is > 0 from the embeddings on (k* = 0; possible only with ``trajectory="all"`` or a
    ``total_threshold`` above 0).

**Pattern** (only for ``M-IA`` and ``NC-IA+M-AG``; empty otherwise). The *relevant* tokens R are the
segments of ``relevant[benchmark]`` (defaults: IFEval the instruction, the constraint; MATH-500 and
HumanEval+ the query, i.e. the problem or the function's specification; GAIA2 instruction and query, the
system rules and the task); for a benchmark not listed, the instruction when the case has instruction
tokens, else the query. The *irrelevant* tokens O are the other non-special tokens. s_R = Σ_{i∈R} r̂_i.

- ``URT`` (relevant tokens under-weighted or wrongly signed): R is not empty and either s_R ≥ 0 (no pull
  toward the contrast, or a pull toward the target) or (total > 0 and −``urt_margin`` < s_R < 0: the pull
  toward the contrast is weaker than ``urt_margin`` — default 1, the magnitude of the single strongest
  token — and is outweighed). With ``urt_margin = inf`` this is the notebooks' ``IF_cat`` on the
  instruction: Inst > 0 → under-weighted; Inst < 0 → under-weighted when the total is > 0, else "seems ok".
- ``OIT`` (irrelevant tokens over-weighted): with P = Σ_{i not special} max(r̂_i, 0) the mass toward the
  target and P_O the same sum over O: the strongest irrelevant token is high, max_{i∈O} r̂_i ≥ ``oit_peak``
  (default 0.5: at least half the strongest token), **and** the mass toward the target lies mostly
  outside the relevant segments, P_O / P > ``oit_share`` (default 0.5). The share alone would follow the
  segments' lengths; the peak alone would count one stray token. Where the notebooks' ``IF_cat`` applies
  (R is the instruction and the case has instruction phrases; ``follow_if_cat``) its
  ``underweight_rel_inst_AND_overweight_irrel_inst`` also counts as OIT: Inst > 0, the phrases that
  contain the target string (stripped of whitespace and quotes) sum to > 0 and the other phrases to < 0 or
  there are none — an instruction phrase that merely mentions the target token pulls toward it.
- ``bias-dominated`` (App. D: mass on BOS and other special tokens): the share of the raw |relevance| on
  special tokens, Σ_special |r_i| / Σ_all |r_i| > ``bias_share`` (default 0.5: most of the relevance is
  where the heatmap's normalisation does not look). It takes precedence over URT/OIT (whose flags stay in
  the table).
- the label: ``bias-dominated``, else ``URT+OIT`` / ``URT`` / ``OIT``, else ``none``.

Table ``labels``: one row per unit with the pre-label (``outcome``, ``pattern``) and every number that
decided it (``total``, the segment sums, ``relevant``, ``relevant_sum``, ``oit_peak``, ``oit_share``,
``bias_share``, the trajectory's first value and minimum, ``overtake_index`` / ``overtake_state``, the
flags ``urt``, ``oit``, ``bias`` and the notebooks' ``if_cat`` where it applies); the trajectory is also a
tensor.

**Manual labels** live in ``DIR/labels/taxonomy.csv`` (columns ``case, model, outcome, pattern, note,
updated``), one row per (case, model), written by :func:`write_label` (validated, atomic: a temporary file
renamed over the old one under a lock, existing labels kept) and read by :func:`read_labels`;
``settings.labels`` may name another CSV of the same columns (relative to the study file's folder), which
the results folder's labels override. The report shows the distribution per benchmark (and model) —
outcome shares over the labelled units, pattern shares over the explained ones — beside the paper's
(:data:`PAPER_OUTCOMES`, :data:`PAPER_PATTERNS`), a manual label replacing the pre-label of its unit, and
says how many labels are manual.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contrastlens.errors import InputError
from contrastlens.study.base import Figure, Section, Table, UnitResult, register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.study.base import ModelRef, StudyInfo, UnitContext

OUTCOMES = ("M-IA", "NC-IA+M-AG", "NC-IA+AG")
EXPLAINED = ("M-IA", "NC-IA+M-AG")
NOT_LABELLED = "n/a"
PATTERNS = ("URT", "OIT", "URT+OIT", "bias-dominated", "none")
IF_CATS = ("underweight_rel_inst", "underweight_rel_inst_AND_overweight_irrel_inst", "IF_seems_ok", "neutral")
LABEL_COLUMNS = ("case", "model", "outcome", "pattern", "note", "updated")
TRAJECTORIES = ("non_special", "all")

#: The paper's published distributions (Fig. 1, values read from the PDF's vector graphics, ±0.5 pp;
#: paper-notes §5.2 and §5.3), keyed by this package's benchmark names. ``n``: the implied case counts.
#: Reference numbers only: the paper labelled 15–21 clean cases per benchmark by hand (Qwen3 models).
PAPER_OUTCOMES: dict[str, dict[str, Any]] = {
    "ifeval": {"paper_benchmark": "IFEval", "n": 21, "M-IA": 90.5, "NC-IA+M-AG": 4.8, "NC-IA+AG": 4.8},
    "gaia2": {"paper_benchmark": "GAIA2", "n": 15, "M-IA": 86.7, "NC-IA+M-AG": 13.3, "NC-IA+AG": 0.0},
    "humaneval": {"paper_benchmark": "HumanEval", "n": 19, "M-IA": 78.9, "NC-IA+M-AG": 21.1, "NC-IA+AG": 0.0},
    "math500": {"paper_benchmark": "MATH", "n": 16, "M-IA": 37.5, "NC-IA+M-AG": 37.5, "NC-IA+AG": 25.0},
}
#: Patterns among the explained cases (%, Fig. 1 bottom). The paper gives no share for bias-dominated (a
#: graph-level pattern of one MATH case, App. D). GAIA2 and MATH counts disagree with the top panel (14 and
#: 9 explained, where the top panel implies 15 and 12).
PAPER_PATTERNS: dict[str, dict[str, Any]] = {
    "ifeval": {"paper_benchmark": "IFEval", "n": 20, "URT": 70.0, "OIT": 5.0, "URT+OIT": 25.0},
    "gaia2": {"paper_benchmark": "GAIA2", "n": 14, "URT": 50.0, "OIT": 14.3, "URT+OIT": 35.7},
    "humaneval": {"paper_benchmark": "HumanEval", "n": 19, "URT": 52.6, "OIT": 21.1, "URT+OIT": 26.3},
    "math500": {"paper_benchmark": "MATH", "n": 9, "URT": 77.8, "OIT": 22.2, "URT+OIT": 0.0},
}

#: relevant segments per benchmark (see the module docstring)
DEFAULT_RELEVANT: dict[str, list[str]] = {
    "ifeval": ["instruction"], "math500": ["query"], "humaneval": ["query"], "gaia2": ["instruction", "query"],
}
_QUOTES = "\"'`“”‘’"


# ------------------------------------------------------------------------------------------- settings
@dataclass
class TaxonomySettings:
    """The thresholds of the criteria (module docstring) and where extra manual labels are.

    ``min_delta``: units with Δℓ ≤ this are not labelled (``n/a``). ``total_threshold``: the heatmap
    explains the preference when its non-special normalised sum is above this. ``trajectory``: sum the
    per-layer relevance over the ``non_special`` positions or over ``all``. ``use_mid``: put the
    mid-block states in the trajectory. ``urt_margin``: the relevant segments' pull toward the contrast
    below which they count as under-weighted (``inf``: the notebooks' IF_cat). ``oit_peak``, ``oit_share``:
    the OIT peak and mass-share thresholds. ``bias_share``: the special-token share of |relevance| above
    which the case is bias-dominated. ``relevant``: benchmark -> relevant segments. ``follow_if_cat``:
    IF_cat's instruction-phrase OIT counts too. ``labels``: a CSV of manual labels (relative to the study
    file's folder). ``norm``: the normalisation of r̂."""

    min_delta: float = 1.0
    total_threshold: float = 0.0
    trajectory: str = "non_special"
    use_mid: bool = True
    urt_margin: float = 1.0
    oit_peak: float = 0.5
    oit_share: float = 0.5
    bias_share: float = 0.5
    relevant: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_RELEVANT.items()})
    follow_if_cat: bool = True
    labels: str | None = None
    norm: str = "max_abs"


# ------------------------------------------------------------------------------ criteria (pure functions)
def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _bool(x: Any, n: int, what: str) -> np.ndarray:
    m = np.zeros(n, dtype=bool) if x is None else np.asarray(x, dtype=bool).reshape(-1)
    if m.shape != (n,):
        raise InputError(f"{what} has {m.size} entries for {n} tokens")
    return m


def normalise(relevance: Any, special_mask: Any = None) -> np.ndarray:
    """r̂ = r / max_{i not special} |r_i| (zeros when that is 0)."""
    from contrastlens.viz.normalize import normalize

    return normalize(_f64(relevance), special_mask, "max_abs")


def heatmap_total(norm_relevance: Any, special_mask: Any = None) -> float:
    """Σ r̂ over the non-special tokens (Inst+Answer+Query)."""
    r = _f64(norm_relevance)
    return float(r[~_bool(special_mask, r.size, "special_mask")].sum())


def layer_trajectory(layer_sums: Any, mid_sums: Any = None) -> tuple[np.ndarray, list[str]]:
    """The states' relevance sums in forward order and their names: (emb, L0.mid, L0, …, L{L−1}) from
    ``layer_sums`` [L+1] (row 0 the embeddings, row l+1 block l's output) and ``mid_sums`` [L] (None: no
    mid states)."""
    s = _f64(layer_sums)
    if s.size < 1:
        raise InputError("layer_sums is empty: the explanation has no per-layer relevance")
    n_layers = s.size - 1
    values, names = [float(s[0])], ["emb"]
    mid = None if mid_sums is None else _f64(mid_sums)
    if mid is not None and mid.size != n_layers:
        raise InputError(f"mid_sums has {mid.size} entries for {n_layers} layers")
    for layer in range(n_layers):
        if mid is not None:
            values.append(float(mid[layer]))
            names.append(f"L{layer}.mid")
        values.append(float(s[layer + 1]))
        names.append(f"L{layer}")
    return np.asarray(values), names


def overtaking_index(trajectory: Any) -> int | None:
    """k*: the first index from which every value of ``trajectory`` is > 0 (None when the last is ≤ 0)."""
    t = _f64(trajectory)
    if t.size == 0 or not t[-1] > 0:
        return None
    k = t.size - 1
    while k > 0 and t[k - 1] > 0:
        k -= 1
    return k


def label_outcome(delta_logit: float, total: float, trajectory: Any, *, min_delta: float = 1.0,
                  total_threshold: float = 0.0) -> str:
    """``n/a``, ``M-IA``, ``NC-IA+M-AG`` or ``NC-IA+AG`` by the module docstring's criteria."""
    if not delta_logit > min_delta:
        return NOT_LABELLED
    if total > total_threshold:
        return "M-IA"
    t = _f64(trajectory)
    k = overtaking_index(t)
    return "NC-IA+M-AG" if k is not None and 1 <= k <= t.size - 2 else "NC-IA+AG"


def is_urt(relevant_sum: float, total: float, n_relevant: int, *, margin: float = 1.0) -> bool:
    """URT: relevant tokens exist and s_R ≥ 0, or (total > 0 and −margin < s_R < 0)."""
    if n_relevant <= 0:
        return False
    if relevant_sum >= 0:
        return True
    return bool(total > 0 and relevant_sum > -margin)


def oit_numbers(norm_relevance: Any, irrelevant_mask: Any, special_mask: Any = None) -> tuple[float, float]:
    """(peak, share): the largest r̂ among the irrelevant non-special tokens (0 when none is positive) and
    the irrelevant tokens' share P_O / P of the positive mass toward the target (0 when P = 0)."""
    r = _f64(norm_relevance)
    keep = ~_bool(special_mask, r.size, "special_mask")
    irr = _bool(irrelevant_mask, r.size, "irrelevant_mask") & keep
    pos = np.clip(r, 0.0, None)
    mass = float(pos[keep].sum())
    peak = float(pos[irr].max(initial=0.0))
    return peak, (float(pos[irr].sum()) / mass if mass > 0 else 0.0)


def is_oit(peak: float, share: float, *, min_peak: float = 0.5, min_share: float = 0.5) -> bool:
    """OIT: peak ≥ min_peak and share > min_share."""
    return bool(peak >= min_peak and share > min_share)


def bias_share(relevance: Any, special_mask: Any) -> float:
    """Σ_special |r_i| / Σ_all |r_i| of the raw relevance (0 when all relevance is 0)."""
    r = np.abs(_f64(relevance))
    sp = _bool(special_mask, r.size, "special_mask")
    tot = float(r.sum())
    return float(r[sp].sum()) / tot if tot > 0 else 0.0


def if_cat(instruction_sum: float, total: float, mention_sums: Sequence[float] = (),
           other_sums: Sequence[float] = ()) -> str:
    """The notebooks' IF_cat (paper-notes §4.7) from the instruction's normalised sum, the total, and the
    sums of the instruction phrases that contain the target string (``mention_sums``) and of the others."""
    if instruction_sum < 0:
        return "underweight_rel_inst" if total > 0 else "IF_seems_ok"
    if instruction_sum > 0:
        if len(mention_sums) and sum(mention_sums) > 0 and (not len(other_sums) or sum(other_sums) < 0):
            return "underweight_rel_inst_AND_overweight_irrel_inst"
        return "underweight_rel_inst"
    return "neutral"


def label_pattern(outcome: str, urt: bool, oit: bool, bias: bool) -> str:
    """The pattern of an explained outcome (``""`` otherwise): bias-dominated, URT+OIT, URT, OIT or none."""
    if outcome not in EXPLAINED:
        return ""
    if bias:
        return "bias-dominated"
    if urt and oit:
        return "URT+OIT"
    return "URT" if urt else "OIT" if oit else "none"


def relevant_segments(benchmark: str | None, has_instruction: bool,
                      table: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The relevant segments of a case of ``benchmark`` (``table``: benchmark -> segments, default
    :data:`DEFAULT_RELEVANT`); unlisted: the instruction when the case has instruction tokens, else the
    query."""
    table = DEFAULT_RELEVANT if table is None else table
    segs = table.get(str(benchmark)) if benchmark is not None else None
    if segs is None:
        segs = ["instruction"] if has_instruction else ["query"]
    bad = [s for s in segs if s not in ("instruction", "query", "answer")]
    if bad or not segs:
        raise InputError(f"analyses.taxonomy.relevant[{benchmark!r}]: segments must be instruction, query or "
                         f"answer, not {list(segs)!r}")
    return list(segs)


def prelabel(input_relevance: Any, special_mask: Any, masks: Mapping[str, Any], delta_logit: float,
             layer_sums: Any, mid_sums: Any = None, *, relevant: Sequence[str] = ("instruction",),
             phrase_masks: Sequence[Any] = (), mention: Sequence[bool] = (),
             settings: TaxonomySettings | None = None) -> dict[str, Any]:
    """The pre-label of one explanation from its arrays: ``input_relevance`` [n] (raw), ``special_mask``
    [n], ``masks`` (segment name -> bool [n]; missing segments are empty), Δℓ, ``layer_sums`` [L+1],
    ``mid_sums`` [L] (used when ``settings.use_mid``), the relevant segment names, and for IF_cat the
    instruction phrases' token masks with whether each contains the target string. Returns every number of
    the decision and ``outcome``, ``pattern`` (see the module docstring)."""
    s = settings or TaxonomySettings()
    raw = _f64(input_relevance)
    n = raw.size
    special = _bool(special_mask, n, "special_mask")
    seg = {k: _bool(masks.get(k), n, f"the {k} mask") & ~special for k in ("instruction", "query", "answer")}
    r = normalise(raw, special)
    total = heatmap_total(r, special)
    rel = np.zeros(n, dtype=bool)
    for name in relevant:
        rel |= seg[name]
    irr = ~special & ~rel
    rel_sum = float(r[rel].sum())
    traj, names = layer_trajectory(layer_sums, mid_sums if s.use_mid else None)
    k = overtaking_index(traj)
    outcome = label_outcome(delta_logit, total, traj, min_delta=s.min_delta, total_threshold=s.total_threshold)
    peak, share = oit_numbers(r, irr, special)
    bshare = bias_share(raw, special)
    cat = ""
    if list(relevant) == ["instruction"] and len(phrase_masks):
        if len(mention) != len(phrase_masks):
            raise InputError(f"{len(mention)} mention flags for {len(phrase_masks)} instruction phrases")
        sums = [float(r[_bool(m, n, "a phrase mask") & ~special].sum()) for m in phrase_masks]
        cat = if_cat(float(r[seg["instruction"]].sum()), total,
                     [x for x, f in zip(sums, mention, strict=True) if f],
                     [x for x, f in zip(sums, mention, strict=True) if not f])
    urt = is_urt(rel_sum, total, int(rel.sum()), margin=s.urt_margin)
    oit = is_oit(peak, share, min_peak=s.oit_peak, min_share=s.oit_share) or (
        s.follow_if_cat and cat == "underweight_rel_inst_AND_overweight_irrel_inst")
    bias = bool(bshare > s.bias_share)
    return {
        "delta_logit": float(delta_logit), "total": total,
        **{k2: float(r[m].sum()) for k2, m in seg.items()},
        "relevant": "+".join(relevant), "n_relevant": int(rel.sum()), "relevant_sum": rel_sum,
        "oit_peak": peak, "oit_share": share, "bias_share": bshare,
        "trajectory_first": float(traj[0]), "trajectory_min": float(traj.min()), "n_states": int(traj.size),
        "overtake_index": -1 if k is None else int(k), "overtake_state": "" if k is None else names[k],
        "urt": bool(urt), "oit": bool(oit), "bias": bias, "if_cat": cat,
        "outcome": outcome, "pattern": label_pattern(outcome, urt, oit, bias),
        "_trajectory": traj,
    }


# ------------------------------------------------------------------------------- from an explanation
def _strip(s: str) -> str:
    return s.strip().strip(_QUOTES).strip()


def instruction_phrases(lm: LoadedModel, case: FailureCase, n: int) -> tuple[list[np.ndarray], list[bool]]:
    """Token masks [n] of the case's instruction phrases (its ``segments["instruction"]`` character spans
    in the prompt) and whether each phrase's text contains the target string (stripped of whitespace and
    quotes; an empty string matches none)."""
    from contrastlens.cases.segments import prompt_offsets, spans_to_ranges

    spans = [(int(a), int(b)) for a, b in case.segments.get("instruction", [])]
    if not spans:
        return [], []
    offsets = prompt_offsets(lm.tokenizer, case.prompt, case.prompt_ids, add_special_tokens=not case.chat)
    target = _strip(case.target_str if case.target_str is not None else lm.tokenizer.decode([case.target_id]))
    masks, mention = [], []
    for a, b in spans:
        m = np.zeros(n, dtype=bool)
        for x, y in spans_to_ranges(offsets, [(a, b)]):
            m[x:min(y, n)] = True
        masks.append(m)
        mention.append(bool(target) and target in case.prompt[a:b])
    return masks, mention


def prelabel_explanation(ex: Explanation, case: FailureCase | None = None, lm: LoadedModel | None = None,
                         settings: TaxonomySettings | None = None) -> dict[str, Any]:
    """:func:`prelabel` of an LRP explanation (of ``case``, whose benchmark picks the relevant segments;
    with ``lm`` the instruction phrases feed IF_cat)."""
    s = settings or TaxonomySettings()
    if not ex.hidden_relevance:
        raise InputError(f"the taxonomy needs per-layer relevance, which method {ex.method} does not give "
                         "(use the rule attnlrp or cp-lrp)")
    if s.norm != "max_abs":
        raise InputError(f"analyses.taxonomy.norm: the criteria are defined on max-abs normalised relevance, "
                         f"not {s.norm!r}")
    if s.trajectory not in TRAJECTORIES:
        raise InputError(f"analyses.taxonomy.trajectory must be one of {', '.join(TRAJECTORIES)}, not {s.trajectory!r}")
    special = np.asarray(ex.special_mask, dtype=bool)
    cols = ~special if s.trajectory == "non_special" else np.ones(ex.n_tokens, dtype=bool)
    if ex.segments:
        masks = ex.segment_masks()
    else:
        masks = {"instruction": np.zeros(ex.n_tokens, bool), "answer": np.zeros(ex.n_tokens, bool),
                 "query": ~special}
    benchmark = case.benchmark if case is not None else None
    relevant = relevant_segments(benchmark, bool(masks["instruction"].any()), s.relevant)
    phrases: tuple[list[np.ndarray], list[bool]] = ([], [])
    if case is not None and lm is not None and relevant == ["instruction"] and case.segments.get("instruction"):
        phrases = instruction_phrases(lm, case, ex.n_tokens)
    return prelabel(ex.input_relevance, special, masks, ex.logit_diff,
                    np.asarray(ex.layer_relevance, dtype=np.float64)[:, cols].sum(axis=1),
                    np.asarray(ex.mid_relevance, dtype=np.float64)[:, cols].sum(axis=1),
                    relevant=relevant, phrase_masks=phrases[0], mention=phrases[1], settings=s)


# ------------------------------------------------------------------------------------- manual labels
def labels_path(out_dir: str | os.PathLike[str]) -> Path:
    """``DIR/labels/taxonomy.csv``."""
    return Path(out_dir) / "labels" / "taxonomy.csv"


def validate_label(outcome: str, pattern: str | None) -> tuple[str, str]:
    """(outcome, pattern) checked against the allowed values: an outcome of :data:`OUTCOMES`; for an
    explained outcome a pattern of :data:`PATTERNS`; for ``NC-IA+AG`` no pattern (``""`` or ``none``)."""
    outcome = (outcome or "").strip()
    pattern = (pattern or "").strip()
    if outcome not in OUTCOMES:
        raise InputError(f"unknown taxonomy outcome {outcome!r}; choose one of {', '.join(OUTCOMES)}")
    if outcome in EXPLAINED:
        if pattern not in PATTERNS:
            raise InputError(f"outcome {outcome} needs a pattern, one of {', '.join(PATTERNS)} (got {pattern!r})")
    elif pattern not in ("", "none"):
        raise InputError(f"outcome {outcome} takes no pattern (patterns apply to M-IA and NC-IA+M-AG), got {pattern!r}")
    else:
        pattern = ""
    return outcome, pattern


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise InputError(f"cannot read the labels file {path}: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    need = {"case", "model", "outcome", "pattern"}
    if reader.fieldnames is None:
        return []
    if not need <= set(reader.fieldnames):
        raise InputError(f"the labels file {path} lacks column(s) {', '.join(sorted(need - set(reader.fieldnames)))}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not (row.get("case") or "").strip() or not (row.get("model") or "").strip():
            raise InputError(f"{path}:{line}: a label needs a case and a model")
        try:
            outcome, pattern = validate_label(row["outcome"], row["pattern"])
        except InputError as e:
            raise InputError(f"{path}:{line}: {e}") from None
        rows.append({"case": row["case"].strip(), "model": row["model"].strip(), "outcome": outcome,
                     "pattern": pattern, "note": row.get("note") or "", "updated": row.get("updated") or ""})
    return rows


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no inter-process lock
        yield
        return
    with open(folder / ".taxonomy.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_label(out_dir: str | os.PathLike[str], case: str, model: str, outcome: str, pattern: str | None,
                note: str = "") -> Path:
    """Store the manual label of (case, model) in ``DIR/labels/taxonomy.csv``: validated
    (:func:`validate_label`), replacing that unit's earlier label and keeping every other one, written to a
    temporary file in the same folder and renamed over the old file (under a lock, so concurrent writers do
    not lose each other's labels). Returns the file's path."""
    case, model = str(case).strip(), str(model).strip()
    if not case or not model:
        raise InputError("a manual label needs a case id and a model name")
    outcome, pattern = validate_label(outcome, pattern)
    path = labels_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        rows = [r for r in _read_rows(path) if (r["case"], r["model"]) != (case, model)]
        rows.append({"case": case, "model": model, "outcome": outcome, "pattern": pattern, "note": str(note),
                     "updated": datetime.now(UTC).isoformat(timespec="seconds")})
        rows.sort(key=lambda r: (r["model"], r["case"]))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(LABEL_COLUMNS))
            w.writeheader()
            w.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return path


def read_labels(source: str | os.PathLike[str]) -> pd.DataFrame:
    """The manual labels of a results folder (``DIR/labels/taxonomy.csv``) or of a CSV file, validated;
    an empty table when there are none."""
    import pandas as pd

    p = Path(source)
    path = p if p.suffix.lower() == ".csv" else labels_path(p)
    return pd.DataFrame(_read_rows(path), columns=list(LABEL_COLUMNS))


def study_labels(study: StudyInfo, settings: TaxonomySettings) -> pd.DataFrame:
    """The manual labels of a study: ``settings.labels`` (relative to ``study.root``; a missing file is an
    error) overridden by those of the results folder ``study.out``."""
    import pandas as pd

    parts = []
    if settings.labels:
        p = Path(settings.labels)
        if not p.is_absolute() and study.root:
            p = Path(study.root) / p
        if not p.is_file():
            raise InputError(f"analyses.taxonomy.labels: no labels file {p}")
        parts.append(read_labels(p))
    if study.out:
        parts.append(read_labels(study.out))
    if not parts:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    both = pd.concat(parts, ignore_index=True)
    return both.drop_duplicates(["case", "model"], keep="last").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- report
def final_labels(pre: pd.DataFrame, manual: pd.DataFrame | None = None) -> pd.DataFrame:
    """The pre-label table with ``final_outcome``, ``final_pattern`` and ``source`` (``manual`` where a
    manual label of the unit's (case, model) exists, else ``pre-label``)."""
    out = pre.copy()
    out["final_outcome"], out["final_pattern"], out["source"] = out["outcome"], out["pattern"], "pre-label"
    if manual is not None and not manual.empty:
        m = manual.drop_duplicates(["case", "model"], keep="last").set_index(["case", "model"])
        keys = list(zip(out["case"], out["model"], strict=True))
        hit = np.array([k in m.index for k in keys], dtype=bool)
        if hit.any():
            sel = m.loc[[k for k, h in zip(keys, hit, strict=True) if h]]
            out.loc[hit, "final_outcome"] = sel["outcome"].to_numpy()
            out.loc[hit, "final_pattern"] = sel["pattern"].to_numpy()
            out.loc[hit, "source"] = "manual"
    return out


def distribution(labels: pd.DataFrame, by: Sequence[str] = ("benchmark", "model")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(outcomes, patterns) per group of ``by`` from a :func:`final_labels` table. Outcomes: ``n`` labelled
    units (``n/a`` ones counted in ``not_labelled``), ``manual``, and the % of each outcome; patterns: ``n``
    explained units and the % of each pattern. The paper's numbers of the benchmark (``paper_*``) beside."""
    import pandas as pd

    by = [b for b in by if b in labels.columns]
    orows, prows = [], []
    groups = labels.groupby(by, sort=False) if by else [((), labels)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ident = dict(zip(by, key, strict=True))
        lab = g[g["final_outcome"].isin(OUTCOMES)]
        n = len(lab)
        paper_o = PAPER_OUTCOMES.get(str(ident.get("benchmark")), {})
        row: dict[str, Any] = {**ident, "n": n, "not_labelled": int(len(g) - n),
                               "manual": int((lab["source"] == "manual").sum())}
        for o in OUTCOMES:
            row[o] = 100.0 * float((lab["final_outcome"] == o).sum()) / n if n else math.nan
        for o in OUTCOMES:
            row[f"paper {o}"] = paper_o.get(o, math.nan)
        row["paper n"] = paper_o.get("n", math.nan)
        orows.append(row)
        exp = lab[lab["final_outcome"].isin(EXPLAINED)]
        ne = len(exp)
        paper_p = PAPER_PATTERNS.get(str(ident.get("benchmark")), {})
        prow: dict[str, Any] = {**ident, "n": ne, "manual": int((exp["source"] == "manual").sum())}
        for p in PATTERNS:
            prow[p] = 100.0 * float((exp["final_pattern"] == p).sum()) / ne if ne else math.nan
        for p in ("URT", "OIT", "URT+OIT"):
            prow[f"paper {p}"] = paper_p.get(p, math.nan)
        prow["paper n"] = paper_p.get("n", math.nan)
        prows.append(prow)
    return pd.DataFrame(orows), pd.DataFrame(prows)


def distribution_figure(outcomes: pd.DataFrame, patterns: pd.DataFrame) -> Any:
    """Stacked bars of the outcome and pattern shares per group, each beside the paper's bar."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(max(6.5, 2.2 * len(outcomes) + 4), 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, table, cats, title in ((axes[0], outcomes, OUTCOMES, "outcome (% of labelled)"),
                                   (axes[1], patterns, PATTERNS, "pattern (% of explained)")):
        labels, stacks = [], []
        for _, r in table.iterrows():
            name = " / ".join(str(r[c]) for c in ("benchmark", "model") if c in table.columns)
            labels.append(f"{name}\n(n={int(r['n'])})")
            stacks.append([0.0 if not np.isfinite(r[c]) else float(r[c]) for c in cats])
            if np.isfinite(r.get(f"paper {cats[0]}", math.nan)):
                labels.append(f"paper {r.get('benchmark', '')}")
                stacks.append([float(r.get(f"paper {c}", 0.0)) if np.isfinite(r.get(f"paper {c}", math.nan)) else 0.0
                               for c in cats])
        x = np.arange(len(labels))
        bottom = np.zeros(len(labels))
        for j, c in enumerate(cats):
            v = np.array([s[j] for s in stacks]) if stacks else np.zeros(0)
            ax.bar(x, v, bottom=bottom, label=c)
            bottom += v
        ax.set_xticks(x, labels, rotation=30, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


@register_analysis
class TaxonomyAnalysis:
    """Outcome and pattern pre-labels per unit; manual labels preferred in the report."""

    name: ClassVar[str] = "taxonomy"
    Settings: ClassVar[type] = TaxonomySettings
    version: ClassVar[int] = 1
    report_settings: ClassVar[tuple[str, ...]] = ("labels",)  # manual labels: the report reads them

    def skip(self, case: FailureCase, model: ModelRef, study: StudyInfo, settings: Any) -> str | None:
        return None if case.status == "localised" else "the case is not localised"

    def run(self, ctx: UnitContext) -> UnitResult:
        import pandas as pd

        ex = ctx.explain()
        row = prelabel_explanation(ex, ctx.case, ctx.lm, ctx.settings)
        traj = row.pop("_trajectory")
        return UnitResult(tables={"labels": pd.DataFrame([row])}, tensors={"trajectory": traj},
                          meta={"method": ex.method})

    def report(self, tables: Mapping[str, pd.DataFrame], study: StudyInfo, settings: Any) -> Section:
        title = "Failure taxonomy"
        pre = tables.get("labels")
        if pre is None or pre.empty:
            return Section(title, "No finished taxonomy units.")
        manual = study_labels(study, settings)
        labels = final_labels(pre, manual)
        by = ["benchmark", "model"] + (["rule"] if "rule" in labels.columns and labels["rule"].nunique() > 1 else [])
        outcomes, patterns = distribution(labels, by)
        n_manual = int((labels["source"] == "manual").sum())
        used = set(zip(labels["case"], labels["model"], strict=True))
        unused = 0 if manual.empty else sum(1 for k in zip(manual["case"], manual["model"], strict=True)
                                            if k not in used)
        text = (
            f"{len(labels)} units: {n_manual} with a manual label, {len(labels) - n_manual} pre-labels "
            f"(automatic criteria, see the taxonomy module / docs/study-analyses.md)"
            + (f"; {unused} manual label(s) match no finished unit" if unused else "") + ". "
            f"Units with Δℓ ≤ {settings.min_delta:g} are not labelled (n/a). Outcome shares are over the "
            "labelled units, pattern shares over the explained ones (M-IA and NC-IA+M-AG). The paper's "
            "numbers (Fig. 1; Qwen3 models, 15–21 hand-labelled cases per benchmark) are given beside."
        )
        cols = [c for c in ("case", "benchmark", "model", "rule", "delta_logit", "total", "instruction", "query",
                            "answer", "relevant", "relevant_sum", "oit_peak", "oit_share", "bias_share",
                            "overtake_state", "if_cat", "outcome", "pattern", "final_outcome", "final_pattern",
                            "source") if c in labels.columns]
        return Section(title, text, tables=[
            Table("Attribution outcomes per benchmark and model (%), beside the paper's.", outcomes, "{:.1f}"),
            Table("Failure patterns among explained units (%), beside the paper's.", patterns, "{:.1f}"),
            Table("Labels per unit (manual labels replace pre-labels in final_*).", labels[cols]),
        ], figures=[Figure("Outcome and pattern shares, beside the paper's.", distribution_figure(outcomes, patterns))])


__all__ = [
    "DEFAULT_RELEVANT", "EXPLAINED", "IF_CATS", "LABEL_COLUMNS", "NOT_LABELLED", "OUTCOMES", "PAPER_OUTCOMES",
    "PAPER_PATTERNS", "PATTERNS", "TRAJECTORIES", "TaxonomyAnalysis", "TaxonomySettings", "bias_share", "distribution",
    "distribution_figure", "final_labels", "heatmap_total", "if_cat", "instruction_phrases", "is_oit", "is_urt",
    "label_outcome", "label_pattern", "labels_path", "layer_trajectory", "normalise", "oit_numbers",
    "overtaking_index", "prelabel", "prelabel_explanation", "read_labels", "relevant_segments", "study_labels",
    "validate_label", "write_label",
]
