r"""Cross-checkpoint comparison: how Δℓ and the segment relevance of failures evolve along training (§4.4).

A checkpoint series is the study's models with the same ``series`` name, ordered by ``step``
(``StudyInfo.series``). The cases (found with one checkpoint, usually the first) are explained, with the same
ids, target and contrast, under every checkpoint. The checkpoints must share the tokenizer of the case:
:func:`~contrastlens.study.analyses.cross_size.check_ids_map` is run for every unit, and a checkpoint whose
tokenizer does not map the case's ids fails with a message naming the checkpoint, the series and the case.
Models outside the series are skipped.

Per unit (case, checkpoint): Δℓ = ℓ(target) − ℓ(contrast) under the checkpoint (from the explanation),
its ``series``, ``step`` and position ``index`` in the ordered series, and the segment sums of
:func:`~contrastlens.study.analyses.segments.segment_row` (NaN when the case has no segments). Table
``cross_checkpoint``.

Report, along the ordered series:

- per-case Δℓ trajectories (thin lines) and their mean over cases (thick), with Δℓ = 0 marked;
- per step: the number of cases, the mean Δℓ with a bootstrap CI, the share *corrected* (Δℓ < 0), the
  share still above the clean-case threshold (Δℓ > 1) and the mean of every segment sum (Inst+Answer+Query,
  Instruction, Query, Answer; the paper's Fig. 6 and 7), as a table and two figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contrastlens.errors import InputError
from contrastlens.study.analyses.cross_size import check_ids_map
from contrastlens.study.analyses.segments import (
    SEGMENT_COLUMNS,
    SEGMENT_LABELS,
    check_norm,
    mean_with_ci,
    segment_row,
)
from contrastlens.study.base import Figure, Section, Table, UnitResult, register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.cases.schema import FailureCase
    from contrastlens.study.base import ModelRef, StudyInfo, UnitContext


def resolve_series(study: StudyInfo, name: str | None) -> str:
    """The series to follow: ``name``, or the study's only series when ``name`` is None."""
    names = list(dict.fromkeys(m.series for m in study.models if m.series is not None))
    if name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise InputError("analyses.cross_checkpoint: the study has no checkpoint series (give models a series "
                             "and a step)")
        raise InputError(f"analyses.cross_checkpoint.series: the study has several series ({', '.join(names)}); "
                         "name one")
    if name not in names:
        raise InputError(f"analyses.cross_checkpoint.series: no series named {name!r} "
                         f"(series: {', '.join(names) or 'none'})")
    return name


def checkpoint_order(study: StudyInfo, series: str) -> list[ModelRef]:
    """The models of ``series`` in step order (a model without a step last)."""
    return study.series(series)


def trajectory_table(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per-case Δℓ along the series: rows (benchmark, case), columns the checkpoints in ``order``."""
    idx = ["benchmark", "case"] if "benchmark" in table.columns else ["case"]
    wide = table.pivot_table(index=idx, columns="model", values="delta_logit", aggfunc="first")
    return wide.reindex(columns=[m for m in order if m in wide.columns])


def step_summary(table: pd.DataFrame, order: list[ModelRef], *, clean_threshold: float = 1.0, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per checkpoint of ``order`` that has units: ``index``, ``model``, ``step``, ``n``, the mean Δℓ
    and its CI (``delta_logit_mean``, ``_low``, ``_high``), ``corrected`` / ``share_corrected`` (Δℓ < 0),
    ``share_above`` (Δℓ > clean_threshold) and the mean of every segment sum."""
    import pandas as pd

    rows = []
    for i, m in enumerate(order):
        g = table[table["model"] == m.name]
        if g.empty:
            continue
        dl = g["delta_logit"].to_numpy(dtype=np.float64)
        mean, low, high = mean_with_ci(dl, n_boot=n_boot, level=level, seed=seed)
        row: dict[str, Any] = {"index": i, "model": m.name, "step": m.step, "n": int(len(g)),
                               "delta_logit_mean": mean, "delta_logit_low": low, "delta_logit_high": high,
                               "corrected": int((dl < 0).sum()), "share_corrected": float((dl < 0).mean()),
                               "share_above": float((dl > clean_threshold).mean())}
        for c in SEGMENT_COLUMNS:
            if c in g.columns:
                v = g[c].to_numpy(dtype=np.float64)
                row[c] = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _labels(summary: pd.DataFrame) -> list[str]:
    return [f"{m}\n({s})" if s is not None and s == s else str(m) for m, s in zip(summary["model"], summary["step"],
                                                                                     strict=True)]


def trajectory_figure(wide: pd.DataFrame, summary: pd.DataFrame) -> Any:
    """Per-case Δℓ (thin lines) and the mean (thick) along the series; below it the share corrected."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(max(5.0, 0.7 * len(summary) + 2.5), 5.2), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    x = np.arange(len(summary))
    cols = list(summary["model"])
    w = wide.reindex(columns=cols)
    for _, r in w.iterrows():
        ax.plot(x, r.to_numpy(dtype=float), color="tab:blue", lw=0.7, alpha=0.45)
    ax.plot(x, summary["delta_logit_mean"].to_numpy(float), color="black", lw=2.6, marker="o", label="mean")
    ax.axhline(0, color="tab:green", lw=0.9, ls="--")
    ax.set_ylabel("Δℓ")
    ax.legend(fontsize=8)
    ax.set_title(f"Δℓ of {len(w)} cases along the checkpoints", fontsize=9)
    ax2.bar(x, summary["share_corrected"].to_numpy(float), color="tab:green")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share Δℓ < 0", fontsize=8)
    ax2.set_xticks(x, _labels(summary), rotation=30, fontsize=7)
    return fig


def segment_trajectory_figure(summary: pd.DataFrame) -> Any:
    """Mean normalised relevance of every segment along the series (the paper's Fig. 7)."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(max(5.0, 0.7 * len(summary) + 2.5), 3.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(summary))
    for c in SEGMENT_COLUMNS:
        if c in summary.columns:
            ax.plot(x, summary[c].to_numpy(float), marker="o", lw=2 if c == "total" else 1.2, label=SEGMENT_LABELS[c])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("mean normalised relevance")
    ax.set_xticks(x, _labels(summary), rotation=30, fontsize=7)
    ax.legend(fontsize=7)
    return fig


@dataclass
class CrossCheckpointSettings:
    """``series``: the checkpoint series to follow (None: the study's only one); ``norm``: the segment
    normalisation; ``clean_threshold``: the Δℓ of the "still a clean failure" share; ``n_boot``, ``level``,
    ``seed``: the bootstrap CI of the mean Δℓ."""

    series: str | None = None
    norm: str = "max_abs"
    clean_threshold: float = 1.0
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0


@register_analysis
class CrossCheckpointAnalysis:
    """Δℓ and segment sums of the same cases along an ordered checkpoint series."""

    name: ClassVar[str] = "cross_checkpoint"
    Settings: ClassVar[type] = CrossCheckpointSettings
    version: ClassVar[int] = 1

    def skip(self, case: FailureCase, model: ModelRef, study: StudyInfo, settings: Any) -> str | None:
        series = resolve_series(study, settings.series)
        if model.series != series:
            return f"model {model.name} is not a checkpoint of series {series}"
        if case.status != "localised":
            return "the case is not localised"
        return None

    def run(self, ctx: UnitContext) -> UnitResult:
        import pandas as pd

        check_norm(ctx.settings.norm)
        series = resolve_series(ctx.study, ctx.settings.series)
        order = [m.name for m in checkpoint_order(ctx.study, series)]
        if ctx.model.name not in order:
            raise InputError(f"model {ctx.model.name} is not a checkpoint of series {series}")
        try:
            check_ids_map(ctx.lm, ctx.case, what=f"checkpoint {ctx.model.name}")
        except InputError as e:
            raise InputError(f"series {series}, checkpoint {ctx.model.name} (step {ctx.model.step}): its tokenizer "
                             f"does not agree with the case's ids: {e}") from None
        ex = ctx.explain()
        if ctx.case.segments:
            row = segment_row(ex, ctx.settings.norm)
        else:
            row = {"delta_logit": float(ex.logit_diff), **dict.fromkeys(SEGMENT_COLUMNS, float("nan"))}
        row.update(series=series, step=ctx.model.step, index=order.index(ctx.model.name))
        return UnitResult(tables={"cross_checkpoint": pd.DataFrame([row])}, meta={"method": ex.method})

    def report(self, tables: Mapping[str, pd.DataFrame], study: StudyInfo, settings: Any) -> Section:
        title = "Cross-checkpoint comparison"
        table = tables.get("cross_checkpoint")
        if table is None or table.empty:
            return Section(title, "No finished cross-checkpoint units.")
        s = settings
        series = resolve_series(study, s.series)
        order = checkpoint_order(study, series)
        rules = list(dict.fromkeys(table["rule"])) if "rule" in table.columns else [None]
        section = Section(title)
        lines = [f"Series **{series}**: {', '.join(f'{m.name} (step {m.step})' for m in order)}. Corrected: Δℓ < 0."]
        for rule in rules:
            t = table if rule is None else table[table["rule"] == rule]
            tag = f" (rule {rule})" if len(rules) > 1 else ""
            summary = step_summary(t, order, clean_threshold=s.clean_threshold, n_boot=s.n_boot, level=s.level,
                                   seed=s.seed)
            if summary.empty:
                lines.append(f"No finished units of the series' checkpoints{tag}.")
                continue
            wide = trajectory_table(t, [m.name for m in order])
            first, last = summary.iloc[0], summary.iloc[-1]
            lines.append(f"- {len(wide)} cases{tag}: mean Δℓ {first['delta_logit_mean']:.3g} at {first['model']} → "
                         f"{last['delta_logit_mean']:.3g} at {last['model']}; corrected at the last checkpoint: "
                         f"{int(last['corrected'])} of {int(last['n'])}.")
            section.tables += [Table(f"Per checkpoint: Δℓ, share corrected and mean segment sums{tag}.", summary),
                               Table(f"Per-case Δℓ along the series{tag}.", wide.reset_index())]
            section.figures += [
                Figure(f"Per-case Δℓ (thin) and the mean (thick) along {series}, and the share corrected{tag}.",
                       trajectory_figure(wide, summary)),
                Figure(f"Mean normalised relevance per segment along {series}{tag}.",
                       segment_trajectory_figure(summary)),
            ]
        section.text = "\n".join(lines)
        return section


__all__ = [
    "CrossCheckpointAnalysis", "CrossCheckpointSettings", "checkpoint_order", "resolve_series",
    "segment_trajectory_figure", "step_summary", "trajectory_figure", "trajectory_table",
]
