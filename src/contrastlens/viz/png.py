"""PNG heatmap (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contrastlens.viz.normalize import colour, normalize, visible

if TYPE_CHECKING:
    from contrastlens.attribution.explanation import Explanation


def explanation_png(ex: Explanation, path: str | Path, *, norm: str = "max_abs", width: float = 10.0) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from contrastlens.errors import ContrastLensError

        raise ContrastLensError("PNG output needs matplotlib: pip install matplotlib") from None
    vals = normalize(ex.input_relevance, ex.special_mask, norm)
    fontsize = 8
    columns = int(width * 72 / (0.6 * fontsize))  # monospace glyphs are ~0.6 em wide: 1 x-unit = 1 char
    chars_per_line = columns - 4
    lines: list[list[tuple[str, float, bool]]] = [[]]
    used = 0
    for tok, v, sp in zip(ex.tokens, vals, ex.special_mask, strict=True):
        for k, piece in enumerate(tok.split("\n")):
            if k > 0 or used + len(piece) > chars_per_line:
                lines.append([])
                used = 0
            shown = piece if piece.strip() else visible(piece) if piece else ""
            if shown:
                lines[-1].append((shown, float(v), sp))
                used += len(shown)
    height = 0.9 + 0.28 * len(lines)
    fig = plt.figure(figsize=(width, height), dpi=120)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0, columns)
    ax.set_ylim(-len(lines) - 2, 1)
    title = f"{ex.objective_description}   logit diff = {ex.logit_diff:.3f}   ({ex.source})"
    ax.text(1, 0, title, fontsize=9, fontweight="bold", va="center", family="monospace")
    for row, line in enumerate(lines):
        x = 1.0
        for shown, v, sp in line:
            r, g, b, a = colour(v)
            face = (0.9, 0.9, 0.9, 1.0) if sp else (r / 255, g / 255, b / 255, a)
            ax.text(x, -row - 1.5, shown, fontsize=fontsize, family="monospace", va="center",
                    bbox=dict(boxstyle="square,pad=0.1", fc=face, ec="none"))
            x += len(shown) * 1.0
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
