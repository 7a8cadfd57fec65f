"""The package's shape: imports point downward only and form no cycle; library code logs instead of
printing; registries refuse to overwrite; declared dependencies are the ones used; plain ``pytest`` works."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "contrastlens"

# Layers, lowest first: a sub-package may import only from its own or a strictly lower layer
# (adapters -> rules/models -> attribution -> graph, cases -> collect -> study -> server -> cli).
LAYERS: dict[str, int] = {
    "errors": 0,
    "nodes": 1, "provenance": 1, "data": 1,
    "adapters": 2, "objectives": 2, "viz": 2,
    "rules": 3, "models": 3,
    "attribution": 4,
    "graph": 5, "cases": 5, "benchmarks": 5,
    "collect": 6,
    "study": 7,
    "server": 8,
    "cli": 9,
    "__main__": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported contrastlens module, at module level?, line) for every import in the file that runs:
    type-only imports (under ``if TYPE_CHECKING:``) create no dependency and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(c) for n in ast.walk(tree) if _is_type_checking(n) for c in ast.walk(n)}
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # statements directly inside a top-level try/if still run at import time
        if isinstance(n, ast.Try | ast.If) and not _is_type_checking(n):
            top_level.update(id(c) for c in ast.walk(n))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        for name in names:
            if name == "contrastlens" or name.startswith("contrastlens."):
                found.append((name, id(node) in top_level, node.lineno))
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    missing = {_layer(m) for m in _modules()} - set(LAYERS) - {None}
    assert not missing, f"add these sub-packages to LAYERS: {sorted(missing)}"


def test_imports_point_downward_only():
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        src = _layer(mod)
        if src is None:  # the package facade (lazy public API) may name anything
            continue
        for name, _top, line in _imports(mod, path):
            dst = _layer(name)
            if dst is None or dst == src or dst not in LAYERS:
                continue
            if LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {name} ({dst} is not below {src})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_module_level_imports_have_no_cycle():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name, top, _ in _imports(mod, path):
            if not top:
                continue
            while name and name not in mods:  # "pkg.mod.func" -> "pkg.mod"
                name = name.rpartition(".")[0]
            if name and name != mod:
                graph[mod].add(name)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_architecture_check_catches_an_upward_import(tmp_path):
    """The walker itself: an import of cases from attribution is reported."""
    f = tmp_path / "explain.py"
    f.write_text("def f():\n    from contrastlens.cases.schema import FailureCase\n")
    found = _imports("contrastlens.attribution.explain", f)
    assert ("contrastlens.cases.schema", False, 2) in found
    assert LAYERS[_layer("contrastlens.cases.schema")] >= LAYERS["attribution"]


def test_library_code_logs_instead_of_printing():
    """No builtin print() outside the CLI (and outside ``if __name__ == "__main__"`` blocks)."""
    bad = []
    for mod, path in _modules().items():
        if _layer(mod) in ("cli", "__main__"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        inside_main = {id(c) for b in main_blocks for c in ast.walk(b)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
                    and id(node) not in inside_main):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and ast.unparse(node) in ("sys.stderr", "sys.stdout") \
                    and id(node) not in inside_main:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} ({ast.unparse(node)})")
    assert not bad, "library code prints (use logging): " + ", ".join(bad)


def test_registries_refuse_to_overwrite():
    import contrastlens as cl
    from contrastlens.adapters.registry import register_adapter
    from contrastlens.errors import ContrastLensError
    from contrastlens.objectives.registry import OBJECTIVES, register_objective

    with pytest.raises(ContrastLensError, match="already registered"):
        register_objective("logit_diff")(lambda *a, **k: None)
    assert OBJECTIVES["logit_diff"].__name__ == "logit_diff"
    with pytest.raises(ContrastLensError, match="already registered"):
        register_adapter(cl.get_adapter("llama"))
    # asked for explicitly, replacing works (and is undone here)
    orig = OBJECTIVES["max_logit"]
    try:
        register_objective("max_logit", overwrite=True)(orig)
    finally:
        OBJECTIVES["max_logit"] = orig


# distribution name -> the module it is imported as
_IMPORT_NAME = {"pyyaml": "yaml", "scikit-learn": "sklearn"}


def _used_modules() -> set[str]:
    used = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                used.add(node.module.split(".")[0])
    return used


def _dist(req: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()


def test_core_dependencies_are_used_and_top_level_names_need_no_extra():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {_dist(r) for r in meta["project"]["dependencies"]}
    used = _used_modules()
    unused = [d for d in core if _IMPORT_NAME.get(d, d.replace("-", "_")) not in used]
    assert not unused, f"declared but never imported: {unused}"
    # cl.FailureCase is top-level API: what it needs is a core dependency
    assert "pydantic" in core
    data = meta["tool"]["setuptools"].get("package-data", {}).get("contrastlens", [])
    for pattern in data:
        assert list(SRC.glob(pattern)), f"package-data names {pattern!r}, which matches no file"


def test_plain_pytest_collects_every_test_file():
    """IDEs run `pytest`, not `python -m pytest`: the test modules must import without the repo on sys.path."""
    exe = Path(sys.executable).with_name("pytest")
    if not exe.exists():
        pytest.skip("no pytest script next to the interpreter")
    r = subprocess.run([str(exe), "--collect-only", "-q", "-p", "no:cacheprovider", "tests"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "error" not in r.stdout.lower().split("\n")[-2], r.stdout[-500:]
