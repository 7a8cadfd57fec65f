"""The resolved attribution spec: everything that decides an explanation's numbers, in one frozen value.

``explain`` resolves the spec once (the target and contrast as ids, the objective with all its
parameters, the rule, the explained position as an absolute index, the model's dtype and attention
kernel) and stores it in the :class:`~contrastlens.attribution.explanation.Explanation`. Everything built
from an explanation (graphs, the neuron drill-down, studies) takes the spec from it instead of
re-deriving it, and a conflicting rule or objective passed alongside is an error
(:func:`check_compatible`).

:meth:`AttributionSpec.hash` is stable across processes, machines and Python versions: the sha256 of the
spec's canonical JSON (sorted keys, no whitespace). Result caches key on it together with the model's
weight fingerprint.

Objects that carry their own inputs (a failure case fixes its token ids, target and contrast) implement
the :class:`Explainable` protocol, so that the engine never imports them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.provenance import Provenance

SPEC_VERSION = 1


@dataclass(frozen=True)
class AttributionSpec:
    """What one explanation computes. ``position`` is absolute (0-based) in the explained sequence;
    ``objective_params`` are every parameter of the objective (defaults filled in), as sorted pairs."""

    target_id: int
    contrast_id: int | None
    position: int
    objective: str = "logit_diff"
    objective_params: tuple[tuple[str, Any], ...] = ()
    rule: str = "attnlrp"
    dtype: str = "float32"
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective_params", tuple(sorted((str(k), v) for k, v in self.objective_params)))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.objective_params)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objective_params"] = self.params
        d["spec_version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributionSpec:
        d = dict(d)
        version = d.pop("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise InputError(f"attribution spec version {version} is not supported (this version reads {SPEC_VERSION})")
        params = d.pop("objective_params", {}) or {}
        items = params.items() if isinstance(params, Mapping) else params
        return cls(**d, objective_params=tuple((str(k), v) for k, v in items))

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def hash(self) -> str:
        """A stable 16-hex-digit hash of the spec (equal specs, equal hashes, in any process)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        contrast = "" if self.contrast_id is None else f" vs #{self.contrast_id}"
        params = "".join(f", {k}={v}" for k, v in self.objective_params)
        return (f"{self.objective}{params}: #{self.target_id}{contrast} at position {self.position}, rule {self.rule}, "
                f"{self.dtype}, {self.attn_implementation or '?'} attention")


def check_compatible(spec: AttributionSpec, *, rule: str | None = None, objective: str | None = None,
                     what: str = "the explanation") -> None:
    """A ``rule`` or ``objective`` given together with an explanation must agree with its spec."""
    if rule is not None:
        from contrastlens.rules.context import get_rule

        if get_rule(rule).name != spec.rule:
            raise InputError(f"rule={rule!r} conflicts with {what}, which was made with rule {spec.rule!r}; "
                             "drop rule= (it is taken from the explanation) or explain again with that rule")
    if objective is not None and objective != spec.objective:
        raise InputError(f"objective={objective!r} conflicts with {what}, which was made with objective "
                         f"{spec.objective!r}; drop objective= or explain again")


@dataclass(frozen=True)
class AttributionInputs:
    """What an :class:`Explainable` object fixes: the token ids (used verbatim), the target and contrast ids,
    the token spans of its prompt segments and the provenance of the model it was made with."""

    ids: list[int]
    target_id: int
    contrast_id: int | None
    label: str
    segments: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    provenance: Provenance | None = None


@runtime_checkable
class Explainable(Protocol):
    """An object that carries its own explained inputs (e.g. a :class:`~contrastlens.cases.FailureCase`)."""

    def attribution_inputs(self, lm: LoadedModel) -> AttributionInputs: ...


__all__ = ["SPEC_VERSION", "AttributionInputs", "AttributionSpec", "Explainable", "check_compatible"]
