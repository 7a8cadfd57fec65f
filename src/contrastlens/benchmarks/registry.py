"""``get_benchmark(name)``: benchmarks by name, imported lazily (each may need optional packages)."""

from __future__ import annotations

import importlib

from contrastlens.benchmarks.base import Benchmark
from contrastlens.errors import InputError

_BUILTIN: dict[str, tuple[str, str]] = {
    "ifeval": ("contrastlens.benchmarks.ifeval", "IFEval"),
    "math500": ("contrastlens.benchmarks.math500", "Math500"),
    "humaneval": ("contrastlens.benchmarks.humaneval", "HumanEvalPlus"),
    "agent": ("contrastlens.benchmarks.agent", "AgentTraces"),
}
_ALIASES = {"math": "math500", "math-500": "math500", "humaneval+": "humaneval", "humanevalplus": "humaneval",
            "gaia2": "agent"}
_EXTRA: dict[str, type[Benchmark] | Benchmark] = {}


def register_benchmark(name: str, bench: type[Benchmark] | Benchmark) -> None:
    """Add a benchmark (a class or an instance) under ``name``."""
    _EXTRA[name.lower()] = bench


def benchmark_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_EXTRA))


def get_benchmark(name: str) -> Benchmark:
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _EXTRA:
        b = _EXTRA[key]
        return b() if isinstance(b, type) else b
    if key not in _BUILTIN:
        raise InputError(f"unknown benchmark {name!r}; choose one of: {', '.join(benchmark_names())}")
    mod, cls = _BUILTIN[key]
    try:
        m = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise InputError(
            f"benchmark {key} needs the package {e.name!r}; install it with pip install 'contrastlens[bench]'"
        ) from None
    return getattr(m, cls)()
