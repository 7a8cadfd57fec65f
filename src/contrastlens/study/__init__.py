"""Studies over many explanations: how faithful the relevance is, and how failures differ across cases.

``contrastlens.study.analyses`` holds the analyses; each is a set of functions of explanations (and the
model they were made with) that return plain numbers or pandas DataFrames. See ``docs/faithfulness.md``.
"""

from __future__ import annotations
