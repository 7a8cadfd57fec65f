"""Normalising relevance for display."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from contrastlens.errors import ContrastLensError

NORMS = ("max_abs", "sum_abs", "abs_sum")


def normalize(relevance: npt.ArrayLike, special_mask: npt.ArrayLike | None = None, mode: str = "max_abs") -> np.ndarray:
    """Scale relevance for display; special tokens are excluded from the scale (not from the output).

    max_abs: divide by max |R| (values in [-1, 1]); sum_abs: by Σ|R|; abs_sum: by |ΣR|.
    """
    r = np.asarray(relevance, dtype=np.float64)
    keep = np.ones(len(r), bool) if special_mask is None else ~np.asarray(special_mask, bool)
    if not keep.any():
        keep = np.ones(len(r), bool)
    ref = r[keep]
    if mode == "max_abs":
        z = np.abs(ref).max(initial=0.0)
    elif mode == "sum_abs":
        z = np.abs(ref).sum()
    elif mode == "abs_sum":
        z = abs(ref.sum())
    else:
        raise ContrastLensError(f"unknown normalisation {mode!r}; choose one of: {', '.join(NORMS)}")
    return r / z if z > 0 else np.zeros_like(r)


def colour(value: float, max_alpha: float = 0.85) -> tuple[int, int, int, float]:
    """(r, g, b, alpha) for a normalised value: red for positive, blue for negative."""
    a = float(min(abs(value), 1.0)) * max_alpha
    return (214, 39, 40, a) if value >= 0 else (31, 119, 180, a)


def visible(token: str) -> str:
    """A display form of a token: whitespace made visible."""
    return token.replace("\n", "↵").replace("\t", "⇥") if token.strip() else token.replace(" ", "␣").replace("\n", "↵") or "∅"
