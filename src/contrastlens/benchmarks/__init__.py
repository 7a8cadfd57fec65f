"""Benchmarks: items, prompts, real checkers and prompt segments (``get_benchmark(name)``), and the item
selection of a run (``select_items``)."""

from contrastlens.benchmarks.base import Benchmark, Item, ItemError, Score, default_data_dir
from contrastlens.benchmarks.registry import (
    benchmark_aliases,
    benchmark_names,
    get_benchmark,
    register_benchmark,
    unregister_benchmark,
)
from contrastlens.benchmarks.select import matches, parse_filter, select_items

__all__ = ["Benchmark", "Item", "ItemError", "Score", "benchmark_aliases", "benchmark_names", "default_data_dir",
           "get_benchmark", "matches", "parse_filter", "register_benchmark", "select_items",
           "unregister_benchmark"]
