"""``get_benchmark(name)``: benchmarks by name, imported lazily (each may need optional packages).

Built in: ``ifeval``, ``math500``, ``humaneval`` and ``gaia2`` (GAIA2-style agent traces). Aliases:
``agent`` for ``gaia2``, ``math``/``math-500`` for ``math500``, ``humaneval+``/``humanevalplus`` for
``humaneval``. :func:`register_benchmark` adds more.
"""

from __future__ import annotations

import importlib

from contrastlens.benchmarks.base import Benchmark
from contrastlens.errors import InputError

_BUILTIN: dict[str, tuple[str, str]] = {
    "ifeval": ("contrastlens.benchmarks.ifeval", "IFEval"),
    "math500": ("contrastlens.benchmarks.math500", "Math500"),
    "humaneval": ("contrastlens.benchmarks.humaneval", "HumanEvalPlus"),
    "gaia2": ("contrastlens.benchmarks.agent", "AgentTraces"),
}
_ALIASES = {"math": "math500", "math-500": "math500", "humaneval+": "humaneval", "humanevalplus": "humaneval",
            "agent": "gaia2"}
_EXTRA: dict[str, type[Benchmark] | Benchmark] = {}


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"a benchmark name must be a non-empty string, not {name!r}")
    return name.strip().lower()


def register_benchmark(name: str, bench: type[Benchmark] | Benchmark, *, overwrite: bool = False) -> None:
    """Add a benchmark (a :class:`Benchmark` subclass, instantiated on each :func:`get_benchmark`, or an
    instance, returned as is) under ``name`` (case-insensitive).

    A name that is taken (a built-in benchmark, an alias or an earlier registration) is refused with an
    :class:`InputError` unless ``overwrite=True``; the registration then shadows the built-in or alias."""
    key = _key(name)
    if not (isinstance(bench, Benchmark) or (isinstance(bench, type) and issubclass(bench, Benchmark))):
        raise TypeError(f"register_benchmark({name!r}, ...) needs a Benchmark subclass or instance, "
                        f"not {type(bench).__name__}")
    if not overwrite and (key in _BUILTIN or key in _ALIASES or key in _EXTRA):
        what = ("a built-in benchmark" if key in _BUILTIN else f"an alias of {_ALIASES[key]}" if key in _ALIASES
                else "registered before")
        raise InputError(f"benchmark {key!r} is already registered ({what}); pass overwrite=True to replace it")
    _EXTRA[key] = bench


def unregister_benchmark(name: str) -> None:
    """Remove a benchmark added by :func:`register_benchmark` (built-ins stay); unknown names are an
    :class:`InputError`."""
    key = _key(name)
    if key not in _EXTRA:
        raise InputError(f"no registered benchmark {key!r} (registered: {', '.join(sorted(_EXTRA)) or 'none'})")
    del _EXTRA[key]


def benchmark_names() -> list[str]:
    """The canonical names of all benchmarks, built-in and registered (aliases not included)."""
    return sorted(set(_BUILTIN) | set(_EXTRA))


def benchmark_aliases() -> dict[str, str]:
    """Alias -> canonical name of the built-in benchmarks."""
    return dict(_ALIASES)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (a canonical name or an alias, case-insensitive): registered ones
    first, then the built-ins (their module imported now). An unknown name, or a built-in whose optional
    packages are missing, is an :class:`InputError`."""
    key = _key(name)
    if key not in _EXTRA:
        key = _ALIASES.get(key, key)
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
