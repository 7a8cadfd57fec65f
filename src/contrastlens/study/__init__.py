"""Failure studies: many explanations, analysed, stored and reported (``contrastlens study``).

A study file (:mod:`~contrastlens.study.config`) names case files, models, rules and analyses; the runner
(:mod:`~contrastlens.study.runner`, or Ray: :mod:`~contrastlens.study.ray_runner`) runs every unit
(case, model, analysis, rule) not yet stored and writes it atomically into a results folder
(:mod:`~contrastlens.study.store`: Parquet tables, safetensors tensors, a manifest with provenance), so a
killed run resumes with nothing lost. ``contrastlens.study.analyses`` holds the analyses; each is a set of
functions of explanations (and the model they were made with) that return plain numbers or pandas
DataFrames, adapted to the runner by a class registered with :func:`register_analysis` (see
:mod:`~contrastlens.study.base`). See ``docs/study.md`` and ``docs/faithfulness.md``.

The names below are imported lazily (the runner needs pandas, pyarrow and safetensors, Ray only for
``--ray``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Analysis": "contrastlens.study.base",
    "Figure": "contrastlens.study.base",
    "ModelRef": "contrastlens.study.base",
    "Section": "contrastlens.study.base",
    "StudyInfo": "contrastlens.study.base",
    "Table": "contrastlens.study.base",
    "UnitContext": "contrastlens.study.base",
    "UnitKey": "contrastlens.study.base",
    "UnitResult": "contrastlens.study.base",
    "analysis_names": "contrastlens.study.base",
    "get_analysis": "contrastlens.study.base",
    "register_analysis": "contrastlens.study.base",
    "unregister_analysis": "contrastlens.study.base",
    "Study": "contrastlens.study.config",
    "load_study": "contrastlens.study.config",
    "parse_study": "contrastlens.study.config",
    "Store": "contrastlens.study.store",
    "Summary": "contrastlens.study.runner",
    "run_study": "contrastlens.study.runner",
    "study_status": "contrastlens.study.runner",
    "render_study_report": "contrastlens.study.runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'contrastlens.study' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
