"""Coloured terminal heatmap (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contrastlens.viz.normalize import normalize, visible

if TYPE_CHECKING:
    from rich.console import Console

    from contrastlens.attribution.explanation import Explanation


def _style(v: float) -> str:
    a = min(abs(v), 1.0)
    if v >= 0:
        r, g, b = 255, int(255 - 200 * a), int(255 - 200 * a)
    else:
        r, g, b = int(255 - 200 * a), int(255 - 120 * a), 255
    return f"black on rgb({r},{g},{b})"


def print_explanation(ex: Explanation, *, norm: str = "max_abs", top: int = 5, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    vals = normalize(ex.input_relevance, ex.special_mask, norm)
    text = Text()
    for tok, v, special in zip(ex.tokens, vals, ex.special_mask, strict=True):
        shown = tok if tok.strip() or "\n" in tok else visible(tok)
        text.append(shown, style="dim" if special else _style(v))
    contrast = "" if ex.contrast_str is None else f" vs contrast {ex.contrast_str!r} (id {ex.contrast_id})"
    how = f"rule {ex.rule}" if ex.spec.rule_based else f"method {ex.spec.method_label}"
    console.print(f"[bold]{ex.objective_description}[/]: target {ex.target_str!r} (id {ex.target_id}){contrast}")
    console.print(f"[bold]Δℓ = {ex.logit_diff:.4f}[/]   model {ex.source} · {how} · {ex.n_tokens} tokens · norm {norm}")
    console.print(text)
    table = Table(title="strongest tokens", show_lines=False)
    table.add_column("supports")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("relevance", justify="right")
    for sign, label in ((1, "[red]target[/]"), (-1, "[blue]contrast[/]")):
        for i, t, r in ex.top_tokens(top, sign):
            table.add_row(label, str(i), repr(t), f"{r:+.4f}")
    console.print(table)
