"""contrastlens: explain why a language model produced a wrong token instead of a correct one.

Public API (imported lazily, so an optional dependency never breaks ``import contrastlens``)::

    import contrastlens as cl
    lm = cl.load_model("smollm2-135m-instruct")
    ex = cl.explain(lm, prompt, target=" ,", contrast=" and")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_model": "contrastlens.models.loading",
    "LoadedModel": "contrastlens.models.loaded",
    "explain": "contrastlens.attribution.explain",
    "Explanation": "contrastlens.attribution.explanation",
    "apply_rules": "contrastlens.rules.context",
    "check_coverage": "contrastlens.attribution.coverage",
    "OBJECTIVES": "contrastlens.objectives.registry",
    "register_objective": "contrastlens.objectives.registry",
    "register_method": "contrastlens.attribution.methods",
    "METHODS": "contrastlens.attribution.methods",
    "get_adapter": "contrastlens.adapters.registry",
    "supported_architectures": "contrastlens.adapters.registry",
    "ContrastLensError": "contrastlens.errors",
    "attribution_graph": "contrastlens.graph.build",
    "AttributionGraph": "contrastlens.graph.graph",
    "FailureCase": "contrastlens.cases.schema",
    "AttributionSpec": "contrastlens.attribution.spec",
    "Provenance": "contrastlens.provenance",
    "ModelMismatchWarning": "contrastlens.provenance",
    "load_cases": "contrastlens.cases.io",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.attribution.explain import explain  # noqa: F401
    from contrastlens.attribution.explanation import Explanation  # noqa: F401
    from contrastlens.models.loading import load_model  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return getattr(mod, name)
    raise AttributeError(f"module 'contrastlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
