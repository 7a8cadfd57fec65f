"""Provenance: what produced a result, recorded with every explanation, graph and failure case.

A :class:`Provenance` holds the package versions (contrastlens, torch, transformers), the model's source
and revision, and the model's weight fingerprint (see :mod:`contrastlens.models.fingerprint`). Result
caches key on the fingerprint and the attribution spec's hash; :meth:`Provenance.same_model` tells
whether two results come from the same weights.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, field
from typing import Any


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers: contrastlens, torch, transformers, Python."""
    from importlib.metadata import PackageNotFoundError, version

    from contrastlens import __version__

    out = {"contrastlens": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - both are dependencies
            out[pkg] = "unknown"
    return out


@dataclass(frozen=True)
class Provenance:
    """Where a result came from. ``model_fingerprint`` identifies the weights (None: unknown)."""

    model_source: str | None = None
    model_revision: str | None = None
    model_fingerprint: str | None = None
    versions: dict[str, str] = field(default_factory=lambda: dict(versions()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Provenance | None:
        if not d:
            return None
        known = {k: d[k] for k in ("model_source", "model_revision", "model_fingerprint") if k in d}
        return cls(**known, versions=dict(d.get("versions") or {}))

    def same_model(self, other: Provenance | None) -> bool | None:
        """True / False when both fingerprints are known, None when either is not."""
        if other is None or self.model_fingerprint is None or other.model_fingerprint is None:
            return None
        return self.model_fingerprint == other.model_fingerprint


class ModelMismatchWarning(UserWarning):
    """A saved result (a case, an explanation) is used with a model whose weight fingerprint differs."""


__all__ = ["ModelMismatchWarning", "Provenance", "versions"]
