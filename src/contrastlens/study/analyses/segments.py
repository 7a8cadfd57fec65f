r"""Segment breakdown: how much of a failure's input relevance each prompt segment carries (paper Fig. 5, 7).

Per unit (case, model): the input relevance of the case's explanation is max-abs normalised over the
non-special tokens (``Explanation.normalized``: r̂ = r / max_{i not special} |r_i|, so the strongest token
has |r̂| = 1) and summed over the three prompt segments of ``Explanation.segment_masks`` (the one home of
the segment definition: ``instruction``, tokens overlapping the instruction; ``answer``, tokens of the
completion before the error minus instruction tokens; ``query``, every other non-special token). The
``total`` ("Inst+Answer+Query") is their sum, so special tokens are left out, as in the paper. Positive
sums support the target (the wrong token), negative ones the contrast.

Columns of the table ``segments`` (one row per unit; the store adds ``case``, ``benchmark``, ``model``,
``rule``):

- ``delta_logit``: Δℓ = ℓ(target) − ℓ(contrast) under the unit's model (from the explanation);
- ``instruction``, ``query``, ``answer``, ``total``: the normalised segment sums (``Explanation.segment_sums``);
- ``share_instruction``, ``share_query``, ``share_answer``: each segment's share of the absolute normalised
  relevance Σ|r̂| over the non-special tokens (they add up to 1; NaN when all relevance is zero);
- ``special_share``: the share of the raw |relevance| on special tokens (BOS, chat-template tokens),
  Σ_special |r_i| / Σ_all |r_i|, which the normalisation leaves out;
- ``n_instruction``, ``n_query``, ``n_answer``: the number of tokens of each segment;
- ``norm``: the normalisation (``max_abs`` by default; ``sum_abs`` and ``abs_sum`` as in the viewer).

Report: the mean of each segment sum (and of Δℓ) per model, over all benchmarks and per benchmark, with
percentile bootstrap confidence intervals over cases (``faithfulness.bootstrap_ci``, seeded), and a bar
figure of the means per segment and model (one panel per benchmark), the layout of the paper's Fig. 5(a).

:func:`segment_row` is shared by the cross-size and cross-checkpoint analyses (same numbers, same names).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contrastlens.errors import InputError
from contrastlens.study.base import Figure, Section, Table, UnitResult, register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.cases.schema import FailureCase
    from contrastlens.study.base import ModelRef, StudyInfo, UnitContext

#: the segment columns in the paper's order (``total`` is "Inst+Answer+Query")
SEGMENT_COLUMNS = ("total", "instruction", "query", "answer")
SEGMENT_LABELS = {"total": "Inst+Answer+Query", "instruction": "Instruction", "query": "Query", "answer": "Answer"}
NORMS = ("max_abs", "sum_abs", "abs_sum")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    return norm


def segment_row(ex: Explanation, norm: str = "max_abs") -> dict[str, Any]:
    """The segment numbers of one explanation (see the module docstring for every key)."""
    check_norm(norm)
    sums = ex.segment_sums(norm)
    masks = ex.segment_masks()
    r = np.asarray(ex.normalized(norm), dtype=np.float64)
    raw = np.abs(np.asarray(ex.input_relevance, dtype=np.float64))
    special = np.asarray(ex.special_mask, dtype=bool)
    mass = float(np.abs(r[~special]).sum())
    row: dict[str, Any] = {"delta_logit": float(ex.logit_diff)}
    row.update({k: float(sums[k]) for k in SEGMENT_COLUMNS})
    for name in ("instruction", "query", "answer"):
        row[f"share_{name}"] = float(np.abs(r[masks[name]]).sum() / mass) if mass > 0 else math.nan
    row["special_share"] = float(raw[special].sum() / raw.sum()) if raw.sum() > 0 else math.nan
    for name in ("instruction", "query", "answer"):
        row[f"n_{name}"] = int(masks[name].sum())
    row["norm"] = norm
    return row


def model_order(names: Sequence[str], study: StudyInfo | None) -> list[str]:
    """``names`` in the study's model order (names the study does not list last, sorted)."""
    order = [m.name for m in study.models] if study is not None else []
    present = set(names)
    return [n for n in order if n in present] + sorted(present - set(order))


def mean_with_ci(values: Any, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile bootstrap CI."""
    from contrastlens.study.analyses.faithfulness import bootstrap_ci

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    low, high = bootstrap_ci(x, "mean", n_boot=n_boot, level=level, seed=seed)
    return float(x.mean()), low, high


def segment_means(table: pd.DataFrame, by: Sequence[str] = ("model",), *, columns: Sequence[str] = SEGMENT_COLUMNS,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Long table of the mean of each column in ``columns`` per group of ``by``, with its bootstrap CI:
    columns ``*by, segment, mean, low, high, n``."""
    import pandas as pd

    missing = [c for c in (*by, *columns) if c not in table.columns]
    if missing:
        raise InputError(f"the segments table has no column(s) {', '.join(missing)}")
    rows = []
    groups = table.groupby(list(by), sort=False, dropna=False) if by else [((), table)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for col in columns:
            mean, low, high = mean_with_ci(g[col], n_boot=n_boot, level=level, seed=seed)
            rows.append({**dict(zip(by, key, strict=True)), "segment": col, "mean": mean, "low": low, "high": high,
                         "n": int(np.isfinite(g[col].to_numpy(dtype=np.float64)).sum())})
    return pd.DataFrame(rows, columns=[*by, "segment", "mean", "low", "high", "n"])


def segment_bar_figure(means: pd.DataFrame, models: Sequence[str], *, panel: str | None = None,
                       title: str = "") -> Any:
    """Grouped bars (segments on the x axis, one bar per model) of a :func:`segment_means` table, with the
    CIs as error bars; one panel per value of ``panel`` (e.g. ``benchmark``)."""
    from matplotlib.figure import Figure as MplFigure

    panels = list(dict.fromkeys(means[panel])) if panel else [None]
    fig = MplFigure(figsize=(max(4.5, 3.2 * len(panels) + 1.5), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    segs = [s for s in SEGMENT_COLUMNS if s in set(means["segment"])]
    width = 0.8 / max(1, len(models))
    for ax, p in zip(axes, panels, strict=True):
        sub = means if p is None else means[means[panel] == p]
        for j, m in enumerate(models):
            rows = sub[sub["model"] == m].set_index("segment").reindex(segs)
            x = np.arange(len(segs)) + (j - (len(models) - 1) / 2) * width
            y = rows["mean"].to_numpy(dtype=float)
            err = np.vstack([y - rows["low"].to_numpy(dtype=float), rows["high"].to_numpy(dtype=float) - y])
            ax.bar(x, y, width, label=m, yerr=np.nan_to_num(err), capsize=2)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(segs)), [SEGMENT_LABELS[s] for s in segs], rotation=20, fontsize=8)
        ax.set_ylabel("mean normalised relevance")
        ax.set_title(str(p) if p is not None else title, fontsize=9)
    axes[-1].legend(fontsize=7)
    return fig


def summarize_segments(table: pd.DataFrame, study: StudyInfo | None = None, *, n_boot: int = 2000,
                       level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Means with CIs of Δℓ and every segment sum per benchmark (``all`` for all benchmarks together) and
    model (and rule when the table has several), in the study's model order."""
    import pandas as pd

    by = ["model", "rule"] if "rule" in table.columns and table["rule"].nunique() > 1 else ["model"]
    cols = ("delta_logit", *SEGMENT_COLUMNS)
    parts = [segment_means(table, by, columns=cols, n_boot=n_boot, level=level, seed=seed).assign(benchmark="all")]
    if "benchmark" in table.columns and table["benchmark"].nunique() > 1:
        parts.append(segment_means(table, ["benchmark", *by], columns=cols, n_boot=n_boot, level=level, seed=seed))
    out = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(model_order(list(out["model"].unique()), study))}
    out["_o"] = out["model"].map(order)
    out = out.sort_values(["benchmark", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return out[["benchmark", *by, "segment", "mean", "low", "high", "n"]]


@dataclass
class SegmentsSettings:
    """``norm``: the heatmap normalisation of the sums; ``n_boot``, ``level``, ``seed``: the bootstrap CIs."""

    norm: str = "max_abs"
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0


@register_analysis
class SegmentsAnalysis:
    """Per-segment sums of normalised input relevance per case and model (see the module docstring)."""

    name: ClassVar[str] = "segments"
    Settings: ClassVar[type] = SegmentsSettings
    version: ClassVar[int] = 1

    def skip(self, case: FailureCase, model: ModelRef, study: StudyInfo, settings: Any) -> str | None:
        if case.status != "localised":
            return "the case is not localised"
        if not case.segments:
            return "the case has no prompt segments"
        return None

    def run(self, ctx: UnitContext) -> UnitResult:
        import pandas as pd

        ex = ctx.explain()
        row = segment_row(ex, ctx.settings.norm)
        return UnitResult(tables={"segments": pd.DataFrame([row])}, meta={"method": ex.method})

    def report(self, tables: Mapping[str, pd.DataFrame], study: StudyInfo, settings: Any) -> Section:
        table = tables.get("segments")
        title = "Segment breakdown"
        if table is None or table.empty:
            return Section(title, "No finished segment units.")
        s = settings
        summary = summarize_segments(table, study, n_boot=s.n_boot, level=s.level, seed=s.seed)
        models = model_order(list(table["model"].unique()), study)
        segs = summary[summary["segment"].isin(SEGMENT_COLUMNS)]
        figs = [Figure("Mean normalised input relevance per segment and model, all benchmarks "
                       f"({int(s.level * 100)}% bootstrap CIs over cases).",
                       segment_bar_figure(segs[segs["benchmark"] == "all"], models, title="all benchmarks"))]
        if "benchmark" in table.columns and table["benchmark"].nunique() > 1:
            figs.append(Figure("The same per benchmark.",
                               segment_bar_figure(segs[segs["benchmark"] != "all"], models, panel="benchmark")))
        text = (
            f"{len(table)} units ({table['case'].nunique()} cases, {len(models)} models). Input relevance "
            f"normalised by `{s.norm}` over non-special tokens and summed per prompt segment "
            "(Explanation.segment_sums); Inst+Answer+Query is their sum. Positive: toward the target (the "
            "wrong token); negative: toward the contrast. Means over cases with percentile bootstrap CIs "
            f"({s.n_boot} resamples, seed {s.seed})."
        )
        return Section(title, text, tables=[
            Table("Mean Δℓ and segment sums per benchmark and model, with CIs.", summary),
            Table("Per unit.", table),
        ], figures=figs)


__all__ = [
    "NORMS", "SEGMENT_COLUMNS", "SEGMENT_LABELS", "SegmentsAnalysis", "SegmentsSettings", "check_norm", "mean_with_ci",
    "model_order", "segment_bar_figure", "segment_means", "segment_row", "summarize_segments",
]
