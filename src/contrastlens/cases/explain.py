"""Explain a :class:`FailureCase` with the attribution engine: the input is the rendered prompt ids
followed by the completion ids before the failure token, the target and contrast are the case's ids."""

from __future__ import annotations

from typing import Any

from contrastlens.cases.schema import FailureCase
from contrastlens.errors import InputError


def case_inputs(case: FailureCase) -> tuple[list[int], int, int]:
    """(input ids, target id, contrast id) of a localised case."""
    if case.status != "localised" or case.target_id is None or case.contrast_id is None:
        raise InputError(f"case {case.id} is not localised (no failure token / contrast); nothing to explain")
    return case.ids_before_err, int(case.target_id), int(case.contrast_id)


def explain_case(lm: Any, case: FailureCase, **kw: Any) -> Any:
    """``explain(lm, ids_before_err, target_id, contrast_id, **kw)``; ids are taken verbatim (the case's
    prompt already carries its chat template)."""
    from contrastlens.attribution.explain import explain

    if lm.vocab_size and max(case.prompt_ids + case.completion_ids, default=0) >= lm.vocab_size:
        raise InputError(f"case {case.id} was made with a different tokenizer than {lm.source}")
    ids, target, contrast = case_inputs(case)
    kw.setdefault("chat", False)
    return explain(lm, ids, target, contrast, **kw)
