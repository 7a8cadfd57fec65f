"""Cross-layer attribution graphs: exact closed-form edges, batch replay, pruning, metrics and views.

``contrastlens.attribution_graph`` (:func:`contrastlens.graph.build.attribution_graph`) builds an
:class:`~contrastlens.graph.graph.AttributionGraph`; submodules are imported on use.
"""
