r"""Token weights for training: the per-token relevance of failure cases as a Parquet table.

The paper suggests token-level importance as an alignment signal: a token-weighted preference or
fine-tuning run up-weights the tokens that drove a wrong prediction. This module exports, per explained
case, one row per token of the explained input ``prompt_ids + completion_ids[:failure_index]`` (the
positions 0 … n−1; the failure token itself is the *next* token after position n−1), with its ids,
position, segment, raw relevance, normalised weights and the provenance of the numbers.

Weights (per case; r the input relevance, S the special tokens, Z = max_{j ∉ S} |r_j|, computed in
float64):

- ``weight`` = r_i / Z for i ∉ S, 0 for special tokens: signed, in [−1, 1], max |weight| = 1 over the
  non-special tokens (0 everywhere when Z = 0). This is the heatmap's ``max_abs`` normalisation
  (``Explanation.normalized("max_abs")``) with special tokens set to 0.
- ``weight_pos`` = max(weight, 0): how much a token pushed toward the wrong target.
- ``weight_neg`` = max(−weight, 0): how much it pushed toward the right contrast.

Positive relevance supports the target (the wrong token), negative the contrast (the right one).
``is_failure_position`` marks the explained position (the last input token, whose next-token prediction
was the failure; ``target_id`` / ``contrast_id`` are the wrong and the right next token there).

:func:`token_weight_table` builds the table of one explanation; the ``token_weights`` study analysis
stores it per unit (table ``tokens``), and :func:`export_token_weights` writes the rows of a study (its
results folder: the current units only; other Parquet files or tables) to one Parquet file. ``docs/token-weights.md`` documents every
column and shows a weighted SFT and a token-level DPO loss reading it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from contrastlens.errors import InputError
from contrastlens.study.base import register_analysis

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from contrastlens.attribution.explanation import Explanation
    from contrastlens.cases.schema import FailureCase
    from contrastlens.study.base import UnitContext, UnitResult

log = logging.getLogger(__name__)

#: the columns of the tokens table, in order
COLUMNS = (
    "case_id", "benchmark", "item_id", "model", "position", "token_id", "token", "segment", "relevance", "weight",
    "weight_pos", "weight_neg", "is_special", "is_failure_position", "target_id", "contrast_id", "delta_logit",
    "spec_hash", "model_fingerprint", "method",
)
#: the columns that identify a row (one token of one explanation)
KEY = ("model", "case_id", "method", "spec_hash", "position")


@dataclass
class TokenWeightsSettings:
    """Settings of the ``token_weights`` study analysis (``[analyses.token_weights]``): ``method`` (None:
    the unit's rule) and its ``method_options``."""

    method: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)


def max_abs_weights(relevance: Any, special_mask: Any) -> np.ndarray:
    """``weight`` (see the module docstring): r / max |r| over the non-special tokens, 0 at special
    tokens (float64)."""
    r = np.asarray(relevance, dtype=np.float64).reshape(-1)
    sp = np.asarray(special_mask, dtype=bool).reshape(-1)
    if sp.size != r.size:
        raise InputError(f"special_mask has {sp.size} entries for {r.size} relevance values")
    z = float(np.abs(r[~sp]).max(initial=0.0))
    w = r / z if z > 0 else np.zeros_like(r)
    w[sp] = 0.0
    return w


def _segments(ex: Explanation) -> list[str | None]:
    if not ex.segments:
        return [None] * ex.n_tokens
    seg: list[str | None] = [None] * ex.n_tokens
    for name, mask in ex.segment_masks().items():
        for i in np.flatnonzero(mask):
            seg[int(i)] = name
    return seg


def token_weight_table(ex: Explanation, case: FailureCase | None = None, *, model: str | None = None,
                       case_id: str | None = None, benchmark: str | None = None, item_id: str | None = None
                       ) -> pd.DataFrame:
    """One row per token of the explained input (the columns of :data:`COLUMNS`, documented in
    ``docs/token-weights.md``). ``case`` fills ``case_id``, ``benchmark``, ``item_id`` (or give them);
    ``model``: the study's model label (default: the explanation's model source). Segments come from the
    explanation (``ex.segments``, set when a case was explained); without them ``segment`` is None."""
    import pandas as pd

    n = ex.n_tokens
    r = np.asarray(ex.input_relevance, dtype=np.float64).reshape(-1)
    special = np.asarray(ex.special_mask, dtype=bool)
    w = max_abs_weights(r, special)
    prov = ex.provenance
    fp = getattr(prov, "model_fingerprint", None) if prov is not None else None
    out = pd.DataFrame({
        "case_id": case_id or (case.id if case is not None else ex.meta.get("case_id")),
        "benchmark": benchmark or (case.benchmark if case is not None else None),
        "item_id": item_id or (case.item_id if case is not None else None),
        "model": model or ex.source,
        "position": np.arange(n, dtype=np.int64),
        "token_id": np.asarray(ex.input_ids, dtype=np.int64),
        "token": list(ex.tokens),
        "segment": _segments(ex),
        "relevance": r,
        "weight": w,
        "weight_pos": np.clip(w, 0.0, None),
        "weight_neg": np.clip(-w, 0.0, None),
        "is_special": special,
        "is_failure_position": np.arange(n) == ex.position,
        "target_id": int(ex.target_id),
        "contrast_id": pd.array([ex.contrast_id] * n, dtype="Int64"),
        "delta_logit": float(ex.logit_diff),
        "spec_hash": ex.spec.hash(),
        "model_fingerprint": fp,
        "method": ex.method,
    })
    for c in ("case_id", "benchmark", "item_id", "segment", "model_fingerprint"):
        out[c] = out[c].astype("string")
    return out[list(COLUMNS)]


# ------------------------------------------------------------------------------------ export
def _read_parquet_rows(path: Path) -> list[pd.DataFrame]:
    import pandas as pd

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if p.is_file())
    out = []
    for f in files:
        try:
            df = pd.read_parquet(f, engine="pyarrow")
        except Exception as e:  # a file that is not Parquet (or half-written by someone else): say which
            raise InputError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        if set(COLUMNS) <= set(df.columns):
            out.append(df)
    return out


def _store_rows(path: Path, analysis: str) -> list[pd.DataFrame] | None:
    """The ``tokens`` tables of the current units of ``analysis`` when ``path`` is a study results folder
    (None when it is not one)."""
    from contrastlens.study.store import STUDY_FILE, Store

    if not (path / STUDY_FILE).is_file():
        return None
    t = Store.open(path).tables(analysis).get("tokens")
    return [t] if t is not None else []


def collect_token_weights(source: Any, *, analysis: str = "token_weights") -> pd.DataFrame:
    """The token-weight rows of ``source``: a DataFrame, a mapping of tables (its ``tokens`` table: e.g.
    what a study's ``report`` receives), a study results folder (the ``tokens`` tables of the current units
    of ``analysis``; units of changed settings are left out), a Parquet file, or another folder searched
    recursively for Parquet files that hold every column of :data:`COLUMNS`. Rows are deduplicated by
    :data:`KEY` (the same explanation stored twice, e.g. under two rules) and sorted by model, case,
    method and position."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        frames = [source]
    elif isinstance(source, Mapping):
        if "tokens" not in source:
            raise InputError(f"no 'tokens' table among {', '.join(map(str, source)) or 'no tables'}")
        frames = [source["tokens"]]
    elif isinstance(source, str | os.PathLike):
        p = Path(source).expanduser()
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        stored = _store_rows(p, analysis) if p.is_dir() else None
        frames = stored if stored is not None else _read_parquet_rows(p)
        if not frames:
            what = f"no finished {analysis} unit" if stored is not None else "no Parquet file with token weights"
            raise InputError(f"{p}: {what} (columns {', '.join(COLUMNS)})")
    else:
        raise InputError(f"token weights come from a DataFrame, a mapping of tables or a path, "
                         f"not {type(source).__name__}")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"the token table lacks the column(s) {', '.join(missing)}")
    df = df.drop_duplicates(list(KEY), keep="first")
    df = df.sort_values(["model", "case_id", "method", "spec_hash", "position"], kind="stable")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + extra].reset_index(drop=True)


def export_token_weights(source: Any, path: str | os.PathLike, *, analysis: str = "token_weights") -> Path:
    """Write the token weights of ``source`` (see :func:`collect_token_weights`) to one Parquet file at
    ``path`` (pandas' pyarrow engine; written to a temporary name, then renamed). Columns: :data:`COLUMNS`
    first, then any the store added (e.g. ``case``, ``rule``). Returns the path."""
    df = collect_token_weights(source, analysis=analysis)
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        df.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote %d token weights of %d cases to %s", len(df), df["case_id"].nunique(), out)
    return out


# ------------------------------------------------------------------------------------ the report
def segment_shares(table: pd.DataFrame) -> pd.DataFrame:
    """Per scope (``benchmark``; ``all``): ``cases``, ``tokens`` and, for each segment, the mean over cases
    of that segment's share of the case's positive weight mass (Σ weight_pos over the segment / Σ
    weight_pos over the case; NaN columns when no case has segments)."""
    import pandas as pd

    df = collect_token_weights(table)
    key = df["model"].astype(str) + "/" + df["case_id"].astype(str) + "/" + df["spec_hash"].astype(str)
    df = df.assign(_case=key, _seg=df["segment"].fillna("none").astype(str))
    per = df.pivot_table(index="_case", columns="_seg", values="weight_pos", aggfunc="sum", fill_value=0.0)
    total = per.sum(axis=1).replace(0.0, math.nan)
    share = per.div(total, axis=0)
    bench = df.groupby("_case")["benchmark"].first()
    scopes = [("all", share.index)]
    if bench.nunique() > 1:
        scopes += [(str(b), bench.index[bench == b]) for b in sorted(bench.dropna().unique())]
    rows = []
    for scope, idx in scopes:
        row: dict[str, Any] = {"benchmark": scope, "cases": int(len(idx)),
                               "tokens": int(df["_case"].isin(idx).sum())}
        for seg in ("instruction", "query", "answer"):
            row[f"{seg}_share"] = float(share.loc[idx, seg].mean()) if seg in share else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def token_weights_section(tables: Mapping[str, pd.DataFrame], settings: Any = None) -> Any:
    """The report section: how many cases and tokens the export holds, the positive weight mass per
    segment, and how to write the Parquet file."""
    from contrastlens.study.base import Section, Table

    title = "Token weights for training"
    t = tables.get("tokens")
    if t is None or len(t) == 0:
        return Section(title, text="No token-weights unit has finished yet.")
    shares = segment_shares(t)
    a = shares.iloc[0]
    methods = ", ".join(sorted(set(t["method"].astype(str))))
    text = (f"Per-token relevance of {int(a['cases'])} explained cases ({int(a['tokens'])} tokens; method: "
            f"{methods}) as weights a token-weighted fine-tuning or preference run can read: `weight` = "
            "relevance / max |relevance| over the case's non-special tokens (signed, special tokens 0), "
            "`weight_pos` / `weight_neg` its positive and negative parts. Write one Parquet file with "
            "`contrastlens.study.analyses.token_weights.export_token_weights(RESULTS_DIR, "
            "'token_weights.parquet')`; the columns are documented in docs/token-weights.md. "
            "The table below gives the mean share of the positive weight (the push toward the wrong token) "
            "per prompt segment.")
    return Section(title, text=text, tables=[Table("Token weights: cases, tokens and the positive weight mass "
                                                   "per segment", shares, "{:.3g}")])


class TokenWeightsAnalysis:
    """The ``token_weights`` study analysis: per unit :func:`token_weight_table` of the unit's explanation
    (table ``tokens``), per study :func:`token_weights_section`."""

    name: ClassVar[str] = "token_weights"
    Settings: ClassVar[type] = TokenWeightsSettings
    version: ClassVar[int] = 1

    def skip(self, case: Any, model: Any, study: Any, settings: Any) -> str | None:
        return None  # every localised case applies (the runner skips unlocalised ones before asking)

    def run(self, ctx: UnitContext) -> UnitResult:
        from contrastlens.study.base import UnitResult

        s: TokenWeightsSettings = ctx.settings
        if not isinstance(s.method_options, Mapping):
            raise InputError(f"method_options must be a table of options, got {s.method_options!r}")
        ex = ctx.explain(method=s.method, **dict(s.method_options))
        table = token_weight_table(ex, ctx.case, model=ctx.model.name)
        if table["model_fingerprint"].isna().all():
            table["model_fingerprint"] = ctx.lm.fingerprint
        return UnitResult(tables={"tokens": table}, meta={"spec_hash": ex.spec.hash(), "n_tokens": ex.n_tokens})

    def report(self, tables: Mapping[str, pd.DataFrame], study: Any, settings: Any) -> Any:
        return token_weights_section(tables, settings)


register_analysis(TokenWeightsAnalysis)


__all__ = [
    "COLUMNS", "KEY", "TokenWeightsSettings", "TokenWeightsAnalysis", "collect_token_weights", "export_token_weights",
    "max_abs_weights", "segment_shares", "token_weight_table", "token_weights_section",
]
