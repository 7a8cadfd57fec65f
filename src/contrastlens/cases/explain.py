"""Explain a :class:`FailureCase` with the attribution engine.

A case is :class:`~contrastlens.attribution.spec.Explainable`: ``explain(lm, case)`` takes its ids (the
rendered prompt ids followed by the completion ids before the failure token, verbatim: the prompt already
carries its chat template), its target and contrast ids, and its segments as token ranges.
"""

from __future__ import annotations

from typing import Any

from contrastlens.attribution.explain import explain
from contrastlens.attribution.explanation import Explanation
from contrastlens.cases.schema import FailureCase
from contrastlens.models.loaded import LoadedModel


def case_inputs(case: FailureCase) -> tuple[list[int], int, int]:
    """(input ids, target id, contrast id) of a localised case."""
    return case.explained_inputs()


def explain_case(lm: LoadedModel, case: FailureCase, **kw: Any) -> Explanation:
    """``explain(lm, case, **kw)``."""
    return explain(lm, case, **kw)
