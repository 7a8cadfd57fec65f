"""Attribution methods, one per module (captum style), in a registry shared by ``explain(method=...)``.

=================  ==========================================================================  =============
method             what it computes                                                           hidden states
=================  ==========================================================================  =============
``attnlrp``        AttnLRP: Gradient × Input with the modified gradient (the default)         yes
``cp-lrp``         CP-LRP: no relevance through query, key and gate                           yes
``ixg``            plain Input × Gradient of S                                                 no
``ig``             Integrated Gradients on the embeddings (``steps``, ``baseline``)           no
``occlusion``      leave-one-out: S(x) − S(x without token i) (``baseline``)                  no
``random``         seeded random scores, a faithfulness baseline (``seed``)                   no
``lrp-occlusion``  AttnLRP shortlists ``k`` tokens, occlusion verifies them                   no
=================  ==========================================================================  =============

Every method explains the same objective S (linear in the explained position's logits,
S = h_pos · u + const) of the same inputs and returns the same :class:`Explanation`. New methods register
with :func:`register_method` (see :mod:`contrastlens.attribution.methods.registry`).
"""

from __future__ import annotations

from contrastlens.attribution.methods import flashtrace, ig, ixg, lrp, lrp_occlusion, occlusion, random_scores  # noqa: F401
from contrastlens.attribution.methods.registry import (
    METHODS,
    AttributionMethod,
    MethodContext,
    MethodResult,
    get_method,
    register_method,
    resolve_method,
)

__all__ = ["METHODS", "AttributionMethod", "MethodContext", "MethodResult", "get_method", "register_method",
           "resolve_method"]
