"""``check_coverage``: explain once under the rules and walk the objective's autograd graph.

The walk itself (:func:`contrastlens.rules.coverage.walk`) belongs to the rules; this module only builds
the objective of one explanation for it, so that the rules never import the attribution engine.
"""

from __future__ import annotations

from typing import Any

from contrastlens.errors import CoverageError
from contrastlens.models.loaded import LoadedModel
from contrastlens.rules.coverage import CoverageReport, walk


def check_coverage(lm: LoadedModel, prompt: str | list[int], target: int | str | None = None,
                   contrast: int | str | None = None, *, rule: str = "attnlrp", objective: str = "logit_diff",
                   raise_on_error: bool = True, **kw: Any) -> CoverageReport:
    """Build one explanation's objective under the rules and walk its autograd graph.

    Raises :class:`CoverageError` naming the uncovered operations (unless ``raise_on_error=False``).
    """
    from contrastlens.attribution.explain import build_objective

    with build_objective(lm, prompt, target, contrast, rule=rule, objective=objective, **kw) as (score, _emb):
        rep = walk(score)
    if raise_on_error and not rep.ok:
        raise CoverageError(f"non-linear operations without an LRP rule on the attribution path: {rep}")
    return rep
