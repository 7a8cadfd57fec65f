"""AttnLRP and CP-LRP rules, applied to one model instance at a time (see :func:`apply_rules`)."""

from contrastlens.rules.context import RULES, RuleSet, apply_rules, rules_active
from contrastlens.rules.coverage import check_coverage

__all__ = ["RULES", "RuleSet", "apply_rules", "check_coverage", "rules_active"]
