"""LaTeX heatmap (uses the xcolor package: \\usepackage[dvipsnames]{xcolor})."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contrastlens.viz.normalize import normalize, visible

if TYPE_CHECKING:
    from contrastlens.attribution.explanation import Explanation

_ESC = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "%": r"\%",
        "_": r"\_", "^": r"\^{}", "~": r"\~{}"}


def _escape(s: str) -> str:
    return "".join(_ESC.get(c, c) for c in s)


def explanation_latex(ex: Explanation, *, norm: str = "max_abs") -> str:
    vals = normalize(ex.input_relevance, ex.special_mask, norm)
    parts = []
    for tok, v, special in zip(ex.tokens, vals, ex.special_mask, strict=True):
        t = _escape(visible(tok) if not tok.strip() else tok).replace("\n", r"\\")
        if special:
            parts.append(r"\colorbox{gray!15}{\strut " + t + "}")
            continue
        pct = int(round(min(abs(v), 1.0) * 60))
        col = "red" if v >= 0 else "blue"
        parts.append(rf"\colorbox{{{col}!{pct}}}{{\strut {t}}}")
    header = f"% contrastlens: {_escape(ex.objective_description)}, logit diff {ex.logit_diff:.4f}, model {_escape(ex.source)}\n"
    return header + r"{\setlength{\fboxsep}{1pt}\ttfamily " + "\\allowbreak{}".join(parts) + "}\n"
