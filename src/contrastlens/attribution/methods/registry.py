"""The registry of attribution methods.

A method turns one resolved input (token ids, explained position, target and contrast) and one objective
S (linear in the explained position's logits: S = h_pos · u + const) into input relevance. Every method
shares the objective, the inputs and the :class:`~contrastlens.attribution.explanation.Explanation` it
returns; only the LRP methods (``attnlrp``, ``cp-lrp``) also give hidden-state relevance.

A method is ``fn(ctx, **options) -> MethodResult``, registered with :func:`register_method`::

    @register_method("my-method", params={"alpha": 1.0})
    def my_method(ctx: MethodContext, *, alpha: float) -> MethodResult: ...

``params`` are the options that decide the numbers (part of the explanation's
:class:`~contrastlens.attribution.spec.AttributionSpec`), ``runtime`` those that do not (batch sizes: only
in ``ex.meta``). An option a method does not take is an error, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from contrastlens.errors import ContrastLensError, InputError
from contrastlens.objectives.registry import ObjectiveSpec
from contrastlens.rules.context import get_rule

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.attribution.explain import PreparedInputs
    from contrastlens.models.loaded import LoadedModel


@dataclass
class MethodContext:
    """What a method gets: the model, the prepared inputs, the objective (name and full parameters), the
    LRP rule (None for a method without rules) and the engine options."""

    lm: LoadedModel
    prep: PreparedInputs
    objective: str
    objective_params: dict[str, Any]
    rule: str | None
    checkpointing: bool = False
    keep_states: bool = False

    @property
    def ids(self) -> list[int]:
        return self.prep.ids

    @property
    def n(self) -> int:
        return len(self.prep.ids)

    @property
    def position(self) -> int:
        return self.prep.position


@dataclass
class MethodResult:
    """What a method returns. ``input_relevance`` [n] (float); ``objective``, ``u``, ``const``, ``logits``:
    the objective resolved at the input (S = h·u + const, the explained position's fp32 logits); ``score``:
    h·u at the input (S without ``const``). ``layer_relevance`` [L+1, n], ``mid_relevance`` [L, n] and
    ``states``: hidden-state relevance, None for methods that give none (the explanation then holds zeros and
    ``meta["hidden_relevance"] = False``). ``meta``: JSON-serialisable extras for ``ex.meta``."""

    input_relevance: torch.Tensor
    objective: ObjectiveSpec
    u: torch.Tensor
    const: float
    score: float
    logits: torch.Tensor
    layer_relevance: torch.Tensor | None = None
    mid_relevance: torch.Tensor | None = None
    states: dict | None = None
    meta: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]


@dataclass(frozen=True)
class AttributionMethod:
    """A registered method. ``rule``: the LRP rule it uses by default (None: none); ``is_rule``: the method
    is that rule (``attnlrp``, ``cp-lrp``), so ``rule=`` may only repeat it; ``hidden_relevance``: it fills
    the hidden-state arrays; ``backward``: it runs a backward pass (``checkpointing=`` applies)."""

    name: str
    fn: MethodFn
    params: Mapping[str, Any]
    runtime: Mapping[str, Any]
    rule: str | None
    is_rule: bool
    hidden_relevance: bool
    backward: bool
    description: str

    def resolve_params(self, given: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(options that decide the numbers, runtime options), defaults updated by ``given``; an option the
        method does not take is an :class:`InputError`."""
        spec, runtime = dict(self.params), dict(self.runtime)
        for key, value in (given or {}).items():
            if key in spec:
                spec[key] = value
            elif key in runtime:
                runtime[key] = value
            else:
                takes = [*self.params, *self.runtime]
                hint = f"it takes {', '.join(takes)}" if takes else "it takes no options"
                raise InputError(f"method {self.name} has no option {key!r} ({hint})")
        return spec, runtime


METHODS: dict[str, AttributionMethod] = {}


def _key(name: str) -> str:
    return str(name).lower().replace("_", "-")


def register_method(name: str, *, params: Mapping[str, Any] | None = None, runtime: Mapping[str, Any] | None = None,
                    rule: str | None = None, is_rule: bool = False, hidden_relevance: bool = False,
                    backward: bool = True, description: str = "", overwrite: bool = False
                    ) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(ctx, **options) -> MethodResult`` under ``name`` (lower case; ``_`` and ``-`` are the same
    when looked up). An existing name is an error unless ``overwrite=True``."""
    key = _key(name)

    def deco(fn: MethodFn) -> MethodFn:
        if key in METHODS and not overwrite:
            raise ContrastLensError(f"attribution method {key!r} is already registered; pass overwrite=True to "
                                    "replace it")
        METHODS[key] = AttributionMethod(key, fn, dict(params or {}), dict(runtime or {}), rule, is_rule,
                                         hidden_relevance, backward, description or (fn.__doc__ or "").strip())
        return fn

    return deco


def get_method(name: str) -> AttributionMethod:
    try:
        return METHODS[_key(name)]
    except KeyError:
        names = sorted(METHODS, key=lambda k: (not METHODS[k].is_rule, k))  # the LRP methods first
        raise ContrastLensError(f"unknown attribution method {name!r}; choose one of: {', '.join(names)}") from None


def resolve_method(method: str | None, rule: str | None) -> tuple[AttributionMethod, str | None]:
    """The method and the LRP rule it runs with, from ``explain``'s ``method=`` and ``rule=``: ``rule=`` alone
    names an LRP method (the synonym of earlier versions), neither gives ``attnlrp``; ``rule=`` with a method
    that is a rule must be that rule, with a method without rules it is an error."""
    if method is None:
        rs = get_rule(rule if rule is not None else "attnlrp")
        return get_method(rs.name), rs.name
    m = get_method(method)
    if rule is None:
        return m, m.rule
    r = get_rule(rule).name
    if m.rule is None:
        raise InputError(f"method {m.name} uses no LRP rule; drop rule={rule!r}")
    if m.is_rule and r != m.rule:
        raise InputError(f"rule={rule!r} conflicts with method={method!r}; give one of them")
    return m, r


__all__ = ["METHODS", "AttributionMethod", "MethodContext", "MethodResult", "get_method", "register_method",
           "resolve_method"]
