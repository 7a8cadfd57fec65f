"""Benchmarks: items, prompts, real checkers and prompt segments (``get_benchmark(name)``)."""

from contrastlens.benchmarks.base import Benchmark, Item, ItemError, Score
from contrastlens.benchmarks.registry import benchmark_names, get_benchmark, register_benchmark

__all__ = ["Benchmark", "Item", "ItemError", "Score", "benchmark_names", "get_benchmark", "register_benchmark"]
