"""Analyses of explanations, each a module of plain functions plus a study analysis registered under its
name (``contrastlens.study.base.register_analysis``):

- ``faithfulness``: perturbation metrics of input relevance (tokens to flip, MoRF/LeRF curves and the area
  between them, deletion/insertion AUC, AOPC, a greedy oracle, bootstrap aggregation over cases);
- ``prompt_debug``: the closed loop of prompt debugging (delete or mask a method's top-k tokens, regenerate,
  re-score with the benchmark's checker);
- ``token_weights``: per-token relevance as a Parquet table for token-weighted training;
- ``segments``: per-segment sums of normalised input relevance (instruction, query, answer);
- ``cross_size``: the same cases under larger models of the same tokenizer;
- ``cross_checkpoint``: the same cases along an ordered checkpoint series;
- ``taxonomy``: failure pre-labels (M-IA / NC-IA+M-AG / NC-IA+AG; URT / OIT / URT+OIT / bias-dominated)
  beside manual labels.
"""

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

# the study analyses register themselves on import
from contrastlens.study.analyses import (  # noqa: E402, F401
    cross_checkpoint,
    cross_size,
    prompt_debug,
    segments,
    taxonomy,
    token_weights,
)
