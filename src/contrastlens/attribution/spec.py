"""The resolved attribution spec: everything that decides an explanation's numbers, in one frozen value.

``explain`` resolves the spec once (the target and contrast as ids, the objective with all its
parameters, the attribution method with its options, the LRP rule, the explained position as an
absolute index, the model's dtype and attention kernel) and stores it in the :class:`~contrastlens.attribution.explanation.Explanation`. Everything built
from an explanation (graphs, the neuron drill-down, studies) takes the spec from it instead of
re-deriving it, and a conflicting rule or objective passed alongside is an error
(:func:`check_compatible`).

:meth:`AttributionSpec.hash` is stable across processes, machines and Python versions: the sha256 of the
spec's canonical JSON (sorted keys, no whitespace). Result caches key on it together with the model's
weight fingerprint. A spec whose method is its rule (``attnlrp``, ``cp-lrp``: every spec written before
methods existed) leaves ``method`` and ``method_params`` out of its JSON, so its hash is unchanged and
old files read back to equal specs; any other method writes them (with ``spec_version`` 2).

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

SPEC_VERSION = 2  # 2: method and method_params (written only when the method is not the rule itself)
_READS = (1, 2)


@dataclass(frozen=True)
class AttributionSpec:
    """What one explanation computes. ``position`` is absolute (0-based) in the explained sequence;
    ``objective_params`` are every parameter of the objective (defaults filled in), as sorted pairs.

    ``method``: the attribution method (see ``contrastlens.attribution.methods``); it defaults to ``rule``
    (the LRP methods ``attnlrp`` and ``cp-lrp`` are their rule). ``method_params``: every option of the
    method that decides the numbers (defaults filled in), as sorted pairs. ``rule``: the LRP rule the method
    uses (``lrp-occlusion`` shortlists with one), None for a method without rules (``ixg``, ``ig``, ...)."""

    target_id: int
    contrast_id: int | None
    position: int
    objective: str = "logit_diff"
    objective_params: tuple[tuple[str, Any], ...] = ()
    rule: str | None = "attnlrp"
    dtype: str = "float32"
    attn_implementation: str | None = None
    method: str | None = None  # None: the rule
    method_params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective_params", tuple(sorted((str(k), v) for k, v in self.objective_params)))
        object.__setattr__(self, "method_params", tuple(sorted((str(k), v) for k, v in self.method_params)))
        if self.method is None:
            if self.rule is None:
                raise InputError("an attribution spec needs a method or a rule")
            object.__setattr__(self, "method", self.rule)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.objective_params)

    @property
    def options(self) -> dict[str, Any]:
        """The method's options (``method_params`` as a dict)."""
        return dict(self.method_params)

    @property
    def rule_based(self) -> bool:
        """Whether the method is an LRP rule itself (``attnlrp``, ``cp-lrp``): only these give hidden-state
        relevance (``layer_relevance``, ``mid_relevance``, states), which graphs and drill-downs need."""
        return self.rule is not None and self.method == self.rule and not self.method_params

    @property
    def method_label(self) -> str:
        """``attnlrp``; ``ig (steps=32, baseline=zero)``; ``lrp-occlusion (rule attnlrp, k=16, ...)``."""
        if self.rule_based:
            return str(self.method)
        parts = ([f"rule {self.rule}"] if self.rule is not None else []) + [f"{k}={v}" for k, v in self.method_params]
        return f"{self.method} ({', '.join(parts)})" if parts else str(self.method)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objective_params"] = self.params
        if self.rule_based:  # the form (and hash) of every spec from before methods existed
            del d["method"], d["method_params"]
            d["spec_version"] = 1
        else:
            d["method_params"] = self.options
            d["spec_version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributionSpec:
        d = dict(d)
        version = d.pop("spec_version", 1)
        if version not in _READS:
            raise InputError(f"attribution spec version {version} is not supported (this version reads "
                             f"{', '.join(map(str, _READS))})")
        params = d.pop("objective_params", {}) or {}
        items = params.items() if isinstance(params, Mapping) else params
        options = d.pop("method_params", {}) or {}
        opt_items = options.items() if isinstance(options, Mapping) else options
        return cls(**d, objective_params=tuple((str(k), v) for k, v in items),
                   method_params=tuple((str(k), v) for k, v in opt_items))

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def hash(self) -> str:
        """A stable 16-hex-digit hash of the spec (equal specs, equal hashes, in any process)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        contrast = "" if self.contrast_id is None else f" vs #{self.contrast_id}"
        params = "".join(f", {k}={v}" for k, v in self.objective_params)
        how = f"rule {self.rule}" if self.rule_based else f"method {self.method_label}"
        return (f"{self.objective}{params}: #{self.target_id}{contrast} at position {self.position}, {how}, "
                f"{self.dtype}, {self.attn_implementation or '?'} attention")


def check_compatible(spec: AttributionSpec, *, rule: str | None = None, objective: str | None = None,
                     what: str = "the explanation", needs_hidden: bool = True) -> None:
    """A ``rule`` or ``objective`` given together with an explanation must agree with its spec. With
    ``needs_hidden`` (graphs, drill-downs), an explanation of a method without hidden-state relevance (any
    method but ``attnlrp`` and ``cp-lrp``) is an error too."""
    if needs_hidden and not spec.rule_based:
        raise InputError(f"{what} was made with method {spec.method_label}, which gives input relevance only (no "
                         "hidden-state relevance); graphs and neuron drill-downs need an explanation made with "
                         "method attnlrp or cp-lrp (keep_states=True)")
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
