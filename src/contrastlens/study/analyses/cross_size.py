r"""Cross-size comparison: do larger models of the same tokenizer correct the failure? (paper §4.3, Fig. 4, 5)

The cases found with a base model are explained, with the same input ids, target and contrast ids, under
every model of the comparison (the base included). A case's ids are the truth, so they must *mean* the
same under every model: :func:`check_ids_map` refuses a model whose tokenizer does not map them (see its
docstring for the exact checks) with an :class:`~contrastlens.errors.InputError` naming the case and the
model; the runner lists such units as failed with that message and goes on.

Per unit (case, model): Δℓ = ℓ(target) − ℓ(contrast) under that model (from the explanation) and the
segment sums of :func:`~contrastlens.study.analyses.segments.segment_row` (max-abs normalised input
relevance, Inst+Answer+Query / Instruction / Query / Answer), plus ``role`` (``base`` or ``larger``) and
``case_delta_logit`` (the Δℓ stored in the case when it was collected). Table ``cross_size``.

Report, for the base model B and each larger model M, over the cases finished under both:

- **corrected**: Δℓ_M < 0 (M prefers the contrast); **below y = x**: Δℓ_M < Δℓ_B (M prefers the target
  less than B does); the notebook's region counts with threshold t (default 1): Δℓ_B > t and Δℓ_M < −t;
- a scatter of Δℓ_B (x) against Δℓ_M (y) with the y = x line, the corrected region (y < 0) shaded and the
  ±t lines dashed;
- the segment shifts: mean segment sums per model over all cases (Fig. 5a) and split by whether M
  corrected the case (Fig. 5b: the base and M columns for "corrected" and "not corrected");
- the per-case Δℓ table (one column per model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contrastlens.cases.compat import check_ids_map
from contrastlens.errors import InputError
from contrastlens.study.analyses.segments import (
    SEGMENT_COLUMNS,
    check_norm,
    model_order,
    segment_bar_figure,
    segment_means,
    segment_row,
)
from contrastlens.study.base import Figure, Section, Table, UnitResult, register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.cases.schema import FailureCase
    from contrastlens.study.base import ModelRef, StudyInfo, UnitContext


def resolve_models(study: StudyInfo, base: str | None, models: Sequence[str] | None) -> tuple[str, list[str]]:
    """(base, larger models) of the comparison: ``base`` defaults to the study's first model, ``models`` to
    every other model; unknown names are an :class:`InputError` naming the setting."""
    names = [m.name for m in study.models]
    if not names:
        raise InputError("the study has no models; cross_size needs a base model and at least one other")
    b = names[0] if base is None else base
    if b not in names:
        raise InputError(f"analyses.cross_size.base: no model named {b!r} (models: {', '.join(names)})")
    others = [n for n in names if n != b] if models is None else list(models)
    unknown = [n for n in others if n not in names]
    if unknown:
        raise InputError(f"analyses.cross_size.models: no model named {', '.join(map(repr, unknown))} "
                         f"(models: {', '.join(names)})")
    if b in others:
        raise InputError(f"analyses.cross_size.models lists the base model {b!r}")
    return b, others


def delta_table(table: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """Per-case Δℓ, one column per model (in ``models`` order), index (benchmark, case) when the table has
    a benchmark column, else case."""
    idx = ["benchmark", "case"] if "benchmark" in table.columns else ["case"]
    wide = table.pivot_table(index=idx, columns="model", values="delta_logit", aggfunc="first")
    return wide.reindex(columns=[m for m in models if m in wide.columns])


def correction_counts(base_dl: Any, other_dl: Any, threshold: float = 1.0) -> dict[str, float]:
    """Counts over the cases with both values finite: ``n``; ``corrected`` (other < 0); ``below_diagonal``
    (other < base); ``region`` (base > threshold and other < −threshold); ``kept`` (other > threshold) and
    their shares."""
    b = np.asarray(base_dl, dtype=np.float64)
    o = np.asarray(other_dl, dtype=np.float64)
    ok = np.isfinite(b) & np.isfinite(o)
    b, o = b[ok], o[ok]
    n = int(b.size)
    out: dict[str, float] = {"n": n, "corrected": int((o < 0).sum()), "below_diagonal": int((o < b).sum()),
                             "region": int(((b > threshold) & (o < -threshold)).sum()),
                             "kept": int((o > threshold).sum())}
    for k in ("corrected", "below_diagonal", "region", "kept"):
        out[f"share_{k}"] = out[k] / n if n else float("nan")
    return out


def segment_shifts(table: pd.DataFrame, base: str, other: str, *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> pd.DataFrame:
    """Mean segment sums of ``base`` and ``other`` over the cases finished under both, split by whether
    ``other`` corrected the case (Δℓ_other < 0): columns ``group`` (``corrected`` / ``not corrected``),
    ``model``, ``segment``, ``mean``, ``low``, ``high``, ``n``."""
    import pandas as pd

    dl = delta_table(table, [base, other])
    if base not in dl.columns or other not in dl.columns:
        return pd.DataFrame(columns=["group", "model", "segment", "mean", "low", "high", "n"])
    dl = dl.dropna(subset=[base, other])
    idx = list(dl.index.names)
    status = (dl[other] < 0).map({True: "corrected", False: "not corrected"}).rename("group").reset_index()
    sub = table[table["model"].isin([base, other])].merge(status, on=idx, how="inner")
    if sub.empty:
        return pd.DataFrame(columns=["group", "model", "segment", "mean", "low", "high", "n"])
    out = segment_means(sub, ["group", "model"], columns=SEGMENT_COLUMNS, n_boot=n_boot, level=level, seed=seed)
    out["group"] = pd.Categorical(out["group"], ["not corrected", "corrected"])
    out["model"] = pd.Categorical(out["model"], [base, other])
    return out.sort_values(["group", "model"], kind="stable").astype({"group": str, "model": str}).reset_index(drop=True)


def scatter_figure(dl: pd.DataFrame, base: str, others: Sequence[str], threshold: float = 1.0) -> Any:
    """Δℓ of the base (x) against each other model (y), one panel per model: y = x, the corrected region
    (y < 0) shaded, the ±threshold lines dashed."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(3.6 * max(1, len(others)), 3.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(others)), squeeze=False)[0]
    for ax, m in zip(axes, others, strict=False):
        pair = dl[[base, m]].dropna()
        x, y = pair[base].to_numpy(float), pair[m].to_numpy(float)
        c = correction_counts(x, y, threshold)
        vals = np.concatenate([x, y, [0.0, threshold, -threshold]])
        lo, hi = float(vals.min()), float(vals.max())
        pad = 0.08 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        ax.axhspan(lo, 0, color="tab:green", alpha=0.12, label="corrected (Δℓ < 0)")
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="y = x")
        for t in (threshold, -threshold):
            ax.axhline(t, color="grey", lw=0.6, ls="--")
            ax.axvline(t, color="grey", lw=0.6, ls="--")
        ax.scatter(x, y, s=14, c=np.where(y < 0, "tab:green", "tab:red"), zorder=3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"Δℓ {base}")
        ax.set_ylabel(f"Δℓ {m}")
        ax.set_title(f"{m}: corrected {c['corrected']}/{c['n']}, below y=x {c['below_diagonal']}/{c['n']}", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    return fig


@dataclass
class CrossSizeSettings:
    """``base``: the model the cases were found with (None: the study's first model); ``models``: the larger
    models (None: every other model); ``norm``: the segment normalisation; ``threshold``: the notebook's
    region lines ±t; ``n_boot``, ``level``, ``seed``: bootstrap CIs of the segment means."""

    base: str | None = None
    models: list[str] | None = None
    norm: str = "max_abs"
    threshold: float = 1.0
    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0


@register_analysis
class CrossSizeAnalysis:
    """Δℓ and segment sums of the same cases under larger models of the same tokenizer."""

    name: ClassVar[str] = "cross_size"
    Settings: ClassVar[type] = CrossSizeSettings
    version: ClassVar[int] = 1

    def skip(self, case: FailureCase, model: ModelRef, study: StudyInfo, settings: Any) -> str | None:
        base, others = resolve_models(study, settings.base, settings.models)
        if model.name != base and model.name not in others:
            return f"model {model.name} is not in the cross-size comparison (base {base}; {', '.join(others)})"
        if case.status != "localised":
            return "the case is not localised"
        return None

    def run(self, ctx: UnitContext) -> UnitResult:
        import pandas as pd

        check_norm(ctx.settings.norm)
        check_ids_map(ctx.lm, ctx.case, what=f"model {ctx.model.name} ({ctx.lm.source})")
        base, _ = resolve_models(ctx.study, ctx.settings.base, ctx.settings.models)
        ex = ctx.explain()
        if ctx.case.segments:
            row = segment_row(ex, ctx.settings.norm)
        else:
            row = {"delta_logit": float(ex.logit_diff), **dict.fromkeys(SEGMENT_COLUMNS, float("nan"))}
        row["role"] = "base" if ctx.model.name == base else "larger"
        row["case_delta_logit"] = float("nan") if ctx.case.delta_logit is None else float(ctx.case.delta_logit)
        return UnitResult(tables={"cross_size": pd.DataFrame([row])}, meta={"method": ex.method})

    def report(self, tables: Mapping[str, pd.DataFrame], study: StudyInfo, settings: Any) -> Section:
        import pandas as pd

        title = "Cross-size comparison"
        table = tables.get("cross_size")
        if table is None or table.empty:
            return Section(title, "No finished cross-size units.")
        s = settings
        base, others = resolve_models(study, s.base, s.models)
        rules = list(dict.fromkeys(table["rule"])) if "rule" in table.columns else [None]
        section = Section(title)
        lines = [f"Base model **{base}**; compared with {', '.join(others) or 'no other model'}. Same cases, same "
                 "target and contrast ids. Corrected: Δℓ < 0 under the larger model; below y = x: Δℓ lower than "
                 f"the base's; region: base Δℓ > {s.threshold:g} and larger Δℓ < −{s.threshold:g}."]
        for rule in rules:
            t = table if rule is None else table[table["rule"] == rule]
            tag = f" (rule {rule})" if len(rules) > 1 else ""
            present = [m for m in others if m in set(t["model"])]
            dl = delta_table(t, [base, *present])
            if base not in dl.columns:
                lines.append(f"No finished units of the base model{tag}.")
                continue
            counts = pd.DataFrame([{"model": m, **correction_counts(dl[base], dl[m], s.threshold)} for m in present])
            for _, c in counts.iterrows():
                lines.append(f"- {c['model']}{tag}: corrected {int(c['corrected'])} of {int(c['n'])}, below y = x "
                             f"{int(c['below_diagonal'])} of {int(c['n'])}, region {int(c['region'])}.")
            models = model_order([base, *present], study)
            everyone = segment_means(t[t["model"].isin(models)], ["model"], n_boot=s.n_boot, level=s.level,
                                     seed=s.seed)
            section.tables += [Table(f"Corrections per larger model{tag}.", counts),
                               Table(f"Per-case Δℓ{tag}.", dl.reset_index())]
            section.tables.append(Table(f"Mean segment sums per model, all cases{tag}.", everyone))
            if present:
                section.figures.append(Figure(f"Δℓ of {base} against each larger model{tag}: y = x line, corrected "
                                              f"region (Δℓ < 0) shaded, ±{s.threshold:g} dashed.",
                                              scatter_figure(dl, base, present, s.threshold)))
            section.figures.append(Figure(f"Mean segment sums per model, all cases{tag}.",
                                          segment_bar_figure(everyone, models, title="all cases")))
            for m in present:
                shifts = segment_shifts(t, base, m, n_boot=s.n_boot, level=s.level, seed=s.seed)
                if shifts.empty:
                    continue
                section.tables.append(Table(f"Segment shifts {base} → {m}, split by correction under {m}{tag}.",
                                            shifts))
                section.figures.append(Figure(
                    f"Segment sums of {base} and {m} for the cases {m} corrected and did not{tag}.",
                    segment_bar_figure(shifts, [base, m], panel="group")))
        section.text = "\n".join(lines)
        return section


__all__ = [
    "CrossSizeAnalysis", "CrossSizeSettings", "check_ids_map", "correction_counts", "delta_table", "resolve_models",
    "scatter_figure", "segment_shifts",
]
