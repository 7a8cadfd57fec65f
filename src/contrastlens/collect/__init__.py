"""The failure-case collection pipeline: generation, rollout localisation, the resumable run.

Public API (imported lazily)::

    from contrastlens.collect import CollectSettings, CollectResources, collect, collect_item

* :class:`CollectSettings`: every setting of a run (plain data: dict/JSON, picklable, validated);
* :class:`CollectResources`: the model, an optional sibling model and an optional LLM judge;
* :func:`collect_item`: one item -> :class:`~contrastlens.cases.schema.FailureCase`, :class:`Passed` or
  :class:`Skip`;
* :func:`collect`: the resumable, batched run over a benchmark, writing to a case file or a
  :class:`CaseSink`; returns a :class:`Summary`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "CollectSettings": "contrastlens.collect.settings",
    "CollectResources": "contrastlens.collect.settings",
    "CollectConfig": "contrastlens.collect.settings",
    "setting": "contrastlens.collect.settings",
    "collect": "contrastlens.collect.pipeline",
    "collect_item": "contrastlens.collect.pipeline",
    "load_items": "contrastlens.collect.pipeline",
    "write_outcome": "contrastlens.collect.pipeline",
    "CaseSink": "contrastlens.collect.pipeline",
    "Passed": "contrastlens.collect.pipeline",
    "Skip": "contrastlens.collect.pipeline",
    "Outcome": "contrastlens.collect.pipeline",
    "Summary": "contrastlens.collect.pipeline",
    "Completion": "contrastlens.collect.generate",
    "generate_greedy": "contrastlens.collect.generate",
    "http_judge": "contrastlens.collect.localise",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.collect.generate import Completion, generate_greedy  # noqa: F401
    from contrastlens.collect.localise import http_judge  # noqa: F401
    from contrastlens.collect.pipeline import (  # noqa: F401
        CaseSink,
        Outcome,
        Passed,
        Skip,
        Summary,
        collect,
        collect_item,
        load_items,
        write_outcome,
    )
    from contrastlens.collect.settings import CollectConfig, CollectResources, CollectSettings, setting  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'contrastlens.collect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
