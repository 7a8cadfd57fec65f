"""Objectives: the scalar S whose modified gradient is explained (a registry, like inseq's)."""

from contrastlens.objectives.registry import (
    OBJECTIVES,
    Objective,
    ObjectiveSpec,
    get_objective,
    register_objective,
)

__all__ = ["OBJECTIVES", "Objective", "ObjectiveSpec", "get_objective", "register_objective"]
