"""Analyses of explanations. ``faithfulness``: perturbation metrics of input relevance (tokens to flip,
MoRF/LeRF curves and the area between them, deletion/insertion AUC, AOPC, a greedy oracle, bootstrap
aggregation over cases)."""

from __future__ import annotations

from contrastlens.study.analyses.faithfulness import (
    MASKINGS,
    DeltaForward,
    Flip,
    OracleResult,
    aopc,
    aopc_score,
    area_between,
    area_between_curves,
    auc,
    auto_batch_size,
    bootstrap_ci,
    deletion_auc,
    deletion_curve,
    evaluate_masks,
    exhaustive_flip,
    faithfulness,
    flip_point,
    greedy_oracle,
    insertion_auc,
    insertion_curve,
    lerf_order,
    morf_lerf_curves,
    morf_order,
    random_scores,
    summarize,
    summarize_tokens_to_flip,
    tokens_to_flip,
)

__all__ = [
    "MASKINGS", "DeltaForward", "Flip", "OracleResult", "aopc", "aopc_score", "area_between",
    "area_between_curves", "auc", "auto_batch_size", "bootstrap_ci", "deletion_auc", "deletion_curve", "evaluate_masks",
    "exhaustive_flip", "faithfulness", "flip_point", "greedy_oracle", "insertion_auc", "insertion_curve",
    "lerf_order", "morf_lerf_curves", "morf_order", "random_scores", "summarize", "summarize_tokens_to_flip",
    "tokens_to_flip",
]
