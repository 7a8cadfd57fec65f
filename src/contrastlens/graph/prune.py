"""Edge pruning per transition (pure functions), dense and streaming.

Two modes, applied independently to each transition on |A|:

- ``threshold``: keep |A[j, i]| >= tau (raw relevance units).
- ``cum_mass``: sort all |A| descending (a_1 >= a_2 >= ...), take the first index k* whose cumulative
  sum reaches p * sum(a), set tau = a_{k*} (floored at ``floor``) and keep |A| >= tau, ties included.
  The paper uses p = 0.85.

:class:`StreamingCumMass` reaches the same tau without ever holding the matrix: pass 1 accumulates a
histogram of |A| keyed by the top bits of the float32 pattern (monotone in the value) with the mass per
bin; pass 2 keeps every entry above the bin that contains tau and resolves that one bin exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_FLOOR = 1e-9


@dataclass(frozen=True)
class PruneSpec:
    mode: str  # "cum_mass" | "threshold"
    value: float  # p for cum_mass, tau for threshold

    @classmethod
    def parse(cls, spec: str | PruneSpec | dict | None) -> PruneSpec | None:
        """``None``, ``"cum_mass:0.85"``, ``"threshold:0.01"``, a dict or a PruneSpec."""
        if spec is None or isinstance(spec, PruneSpec):
            return spec
        if isinstance(spec, dict):
            mode = spec.get("mode", "cum_mass")
            value = spec.get("p", spec.get("tau", spec.get("value")))
            return cls.make(mode, value)
        mode, _, value = str(spec).partition(":")
        return cls.make(mode, float(value) if value else None)

    @classmethod
    def make(cls, mode: str, value: float | None) -> PruneSpec:
        from contrastlens.errors import InputError

        mode = mode.strip().lower().replace("-", "_")
        if mode in ("cum_mass", "cummass", "mass"):
            p = 0.85 if value is None else float(value)
            if not 0.0 < p <= 1.0:
                raise InputError(f"cum_mass p must be in (0, 1], got {p}")
            return cls("cum_mass", p)
        if mode in ("threshold", "tau", "abs"):
            if value is None or float(value) < 0:
                raise InputError("threshold pruning needs a non-negative tau, e.g. threshold:0.01")
            return cls("threshold", float(value))
        raise InputError(f"unknown prune mode {mode!r}; use cum_mass:P or threshold:TAU")


def cum_mass_threshold(abs_values: np.ndarray, p: float, floor: float = DEFAULT_FLOOR) -> float:
    """The cum-mass tau of a set of |A| values (any shape)."""
    a = np.sort(np.asarray(abs_values, dtype=np.float64).ravel())[::-1]
    if a.size == 0:
        return float("inf")
    total = a.sum()
    if total <= 0:
        return float("inf")
    cs = np.cumsum(a)
    k = int(np.searchsorted(cs, p * total, side="left"))
    k = min(k, a.size - 1)
    return max(float(a[k]), floor)


def prune_cum_mass(A: np.ndarray, p: float = 0.85, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """Boolean mask of the entries kept by cumulative-mass pruning of a dense matrix."""
    absA = np.abs(A)
    return absA >= cum_mass_threshold(absA, p, floor)


def prune_threshold(A: np.ndarray, tau: float) -> np.ndarray:
    """Boolean mask of the entries with |A| >= tau (and non-zero)."""
    absA = np.abs(A)
    return (absA >= tau) & (absA > 0)


def prune_coo(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, spec: PruneSpec,
              floor: float = DEFAULT_FLOOR) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Prune stored edges (a COO triple); returns the kept triple and the threshold used."""
    absv = np.abs(vals)
    tau = cum_mass_threshold(absv, spec.value, floor) if spec.mode == "cum_mass" else spec.value
    keep = (absv >= tau) & (absv > 0)
    return rows[keep], cols[keep], vals[keep], float(tau)


# ------------------------------------------------------------------------------------ streaming
_SHIFT = 16  # keep the top 15 value bits of a positive float32: ~1/128 relative bin width
_NBINS = 1 << (31 - _SHIFT)


def _keys(absv: torch.Tensor) -> torch.Tensor:
    return (absv.float().contiguous().view(torch.int32) >> _SHIFT).long()


class StreamingCumMass:
    """Exact cum-mass threshold over values produced in two identical passes, without the matrix.

    Pass 1: :meth:`observe` every block of |A|, then :meth:`end_pass1` finds the histogram bin that holds
    tau. Pass 2: keep the entries that :meth:`candidates` marks (every value in that bin or above, a
    superset of the kept set); :meth:`threshold` on their values gives the exact tau.
    """

    def __init__(self, p: float, floor: float = DEFAULT_FLOOR, device=None) -> None:
        self.p, self.floor = float(p), float(floor)
        self.mass = torch.zeros(_NBINS, dtype=torch.float64, device=device)
        self.boundary_key: int | None = None
        self.edge = 0.0
        self.total = 0.0

    def observe(self, absv: torch.Tensor) -> None:
        """Add a block of |A| values (zeros add no mass). Bin masses are summed in float32 per block
        (the boundary gets a one-bin margin for that); the total is summed exactly in float64."""
        v = absv.reshape(-1).float().contiguous()
        if v.numel():
            self.mass += torch.bincount(v.view(torch.int32) >> _SHIFT, weights=v, minlength=_NBINS).double()
            self.total += float(v.sum(dtype=torch.float64))

    def end_pass1(self) -> None:
        if self.total <= 0:
            self.boundary_key = _NBINS  # nothing to keep
            self.edge = float("inf")
            return
        from_top = torch.flip(self.mass, [0]).cumsum(0)
        target = torch.tensor([self.p * float(from_top[-1])], dtype=torch.float64, device=from_top.device)
        idx = min(int(torch.searchsorted(from_top, target).item()), _NBINS - 1)
        self.boundary_key = max(0, _NBINS - 1 - idx - 1)  # one bin of margin below
        self.edge = float(torch.tensor([self.boundary_key << _SHIFT], dtype=torch.int32).view(torch.float32))

    def candidates(self, absv: torch.Tensor) -> torch.Tensor:
        """Mask of the values in the boundary bin or above (and non-zero)."""
        return (absv >= self.edge) & (absv > 0) if self.edge <= 0 else absv >= self.edge

    def threshold(self, candidate_abs: np.ndarray | torch.Tensor) -> float:
        """tau from the candidate values of pass 2 (all values >= the boundary bin's lower edge)."""
        c = torch.as_tensor(candidate_abs).double().reshape(-1).cpu()
        if c.numel() == 0 or self.total <= 0:
            return float("inf")
        c = torch.sort(c, descending=True).values
        cs = c.cumsum(0)
        k = int(torch.searchsorted(cs, torch.tensor([self.p * self.total], dtype=torch.float64)).item())
        return max(float(c[min(k, c.numel() - 1)]), self.floor)
