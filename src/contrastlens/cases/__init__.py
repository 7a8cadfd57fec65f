"""Failure cases: the versioned ``FailureCase`` schema, JSONL IO and explaining a case."""

from contrastlens.cases.io import CaseStore, get_case, load_case, load_cases
from contrastlens.cases.schema import SCHEMA_VERSION, FailureCase, Rollout

__all__ = ["SCHEMA_VERSION", "CaseStore", "FailureCase", "Rollout", "get_case", "load_case", "load_cases"]
