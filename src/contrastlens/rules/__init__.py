"""AttnLRP and CP-LRP rules, applied to one model instance at a time (see :func:`apply_rules`)."""

from contrastlens.rules.context import RULES, RuleSet, active_rule, apply_rules, get_rule, rules_active
from contrastlens.rules.coverage import CoverageReport, walk

__all__ = ["RULES", "CoverageReport", "RuleSet", "active_rule", "apply_rules", "get_rule", "rules_active", "walk"]
