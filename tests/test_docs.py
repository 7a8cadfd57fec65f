"""The documentation's Python examples run.

Every ```python fenced block of README.md and docs/**/*.md (found by glob when the tests are collected,
so a new page is covered without touching this file) is one test, with the id ``FILE:LINE`` (the line
of the opening fence). The blocks of one file run in document order in one shared namespace (a later
block may use the names an earlier one defined) and in one fresh temporary working directory (a block
may read the files an earlier one wrote). ``CONTRASTLENS_DATA`` points at ``../shared/data`` relative
to the repository root. A block that raises fails its test; tracebacks name the Markdown file and its
line numbers.

Directives
----------
An HTML comment (invisible in rendered Markdown) on the line directly above the opening fence; several
may be stacked on consecutive lines, and one comment may hold several items separated by spaces::

    <!-- doctest: model=random:llama -->
    <!-- doctest: setup=ifeval_cases slow -->
    <!-- doctest: fresh -->
    <!-- doctest: skip needs a GPU and a 7B model -->

- ``model=SOURCE``: inside this block every ``load_model(...)`` call (``cl.load_model``,
  ``contrastlens.load_model``, ``contrastlens.models.loading.load_model``, imported either way) loads
  ``SOURCE`` instead of the model the example names; keyword arguments are kept.
- ``setup=NAME[,NAME...]``: before the block, call the setup function registered here under ``NAME``
  (see ``SETUPS`` below) with the working directory, e.g. to write a small case file the example reads.
- ``slow``: mark the test ``slow`` (deselected by ``-m "not slow"``), for a block that really loads a
  pretrained model. The file's later blocks are marked slow too (they may use its names), up to the
  next ``fresh`` block.
- ``fresh``: the block does not use the names of the blocks above it: it starts with an empty namespace
  (the working directory stays), earlier blocks do not have to run before it, and an earlier ``slow``
  block does not make it slow.
- ``skip REASON``: do not run the block; the test is reported as skipped with ``REASON`` (required; it is
  the rest of the comment, so ``skip`` comes last).

A file-wide default goes anywhere in the file as ``<!-- doctest-file: ITEMS -->`` (``model=``, ``setup=``,
``slow``); a block's own ``model=`` overrides the file's, its ``setup=`` names are added to the file's.
A malformed directive, an unknown item or setup name, or a ``doctest:`` comment that is not directly
above a ```python fence fails the test of the block it belongs to (or the file's first block).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown file under docs/, in a stable order."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").rglob("*.md"))


# ------------------------------------------------------------------------------------------ setups
SETUPS: dict[str, Callable[[Path], None]] = {}


def doc_setup(name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Register ``fn(workdir)`` as the setup ``name`` for ``<!-- doctest: setup=name -->``."""

    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        SETUPS[name] = fn
        return fn

    return register


@doc_setup("ifeval_cases")
def _setup_ifeval_cases(workdir: Path) -> None:
    """cases/ifeval.jsonl: the committed SmolLM2 IFEval example cases."""
    (workdir / "cases").mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "examples" / "cases" / "ifeval.jsonl", workdir / "cases" / "ifeval.jsonl")


@doc_setup("examples")
def _setup_examples(workdir: Path) -> None:
    """examples/: a copy of the repository's examples folder (case files, HTML explanations)."""
    shutil.copytree(ROOT / "examples", workdir / "examples", dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------ parsing
_DIRECTIVE = re.compile(r"^\s*<!--\s*doctest(-file)?\s*:(.*?)-->\s*$")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str  # dedented source
    model: str | None = None
    setups: tuple[str, ...] = ()
    slow: bool = False
    fresh: bool = False
    skip: str | None = None
    errors: tuple[str, ...] = ()  # directive problems: the block's test fails with these

    def __repr__(self) -> str:
        return f"Block({self.id})"

    @property
    def id(self) -> str:
        try:
            rel = self.path.relative_to(ROOT)
        except ValueError:
            rel = Path(self.path.name)
        return f"{rel.as_posix()}:{self.line}"


@dataclasses.dataclass
class _Items:
    model: str | None = None
    setups: tuple[str, ...] = ()
    slow: bool = False
    fresh: bool = False
    skip: str | None = None


def _parse_items(text: str, *, file_level: bool) -> tuple[_Items, list[str]]:
    items, errors = _Items(), []
    words = text.split()
    if not words:
        errors.append("empty doctest directive")
    for k, w in enumerate(words):
        if w == "skip":
            reason = " ".join(words[k + 1:])
            if file_level:
                errors.append("'skip' is a per-block directive, not a doctest-file one")
            elif not reason:
                errors.append("'skip' needs a reason: <!-- doctest: skip WHY -->")
            items.skip = reason or "(no reason given)"
            break
        if w == "slow":
            items.slow = True
        elif w == "fresh":
            items.fresh = True
            if file_level:
                errors.append("'fresh' is a per-block directive, not a doctest-file one")
        elif w.startswith("model="):
            items.model = w[len("model="):]
            if not items.model:
                errors.append("'model=' needs a model source, e.g. model=random:llama")
        elif w.startswith("setup="):
            names = tuple(n for n in w[len("setup="):].split(",") if n)
            if not names:
                errors.append("'setup=' needs a setup name")
            errors += [f"unknown setup {n!r} (known: {', '.join(sorted(SETUPS))})" for n in names if n not in SETUPS]
            items.setups += names
        else:
            errors.append(f"unknown doctest item {w!r} (known: model=SOURCE, setup=NAME, slow, fresh, skip REASON)")
    return items, errors


def parse_markdown(path: Path, text: str | None = None) -> list[Block]:
    """The ```python blocks of one Markdown file, with their directives."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    file_items, file_errors = _Items(), []
    pending: list[tuple[int, _Items, list[str]]] = []  # block directives on the lines just above
    orphans: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _DIRECTIVE.match(line)
        if m:
            items, errs = _parse_items(m.group(2), file_level=bool(m.group(1)))
            if m.group(1):
                file_items.model = items.model or file_items.model
                file_items.setups += items.setups
                file_items.slow |= items.slow
                file_errors += [f"{path.name}:{i + 1}: {e}" for e in errs]
            else:
                pending.append((i + 1, items, errs))
            i += 1
            continue
        f = _FENCE.match(line)
        if f:
            indent, fence, lang = f.groups()
            start = i
            i += 1
            body = []
            while i < len(lines) and not (
                lines[i].strip().startswith(fence[0] * len(fence)) and not lines[i].strip().strip(fence[0])
            ):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence
            if lang.lower() == "python":
                errs = [f"{path.name}:{n}: {e}" for n, _, es in pending for e in es]
                blk = Block(path, start + 1, textwrap.dedent("\n".join(body)) + "\n", errors=tuple(errs))
                for _, items, _ in pending:
                    blk.model = items.model or blk.model
                    blk.setups += items.setups
                    blk.slow |= items.slow
                    blk.fresh |= items.fresh
                    blk.skip = items.skip if items.skip is not None else blk.skip
                blocks.append(blk)
            elif pending:
                orphans += [f"{path.name}:{n}: doctest directive above a ```{lang or '(no language)'} block" for n, _, _ in pending]
            pending = []
            continue
        if pending:
            orphans += [f"{path.name}:{n}: doctest directive not directly above a ```python block" for n, _, _ in pending]
            pending = []
        i += 1
    orphans += [f"{path.name}:{n}: doctest directive at the end of the file" for n, _, _ in pending]
    slow = file_items.slow
    for blk in blocks:  # file-wide defaults under the block's own directives
        blk.model = blk.model or file_items.model
        blk.setups = file_items.setups + tuple(s for s in blk.setups if s not in file_items.setups)
        # a slow block makes the file's later blocks slow too (up to a fresh one): they may use its names,
        # and running one of them alone runs it first
        if blk.fresh:
            slow = file_items.slow
        slow = blk.slow = slow or (blk.slow and blk.skip is None)
    if blocks and (file_errors or orphans):
        blocks[0].errors = tuple(file_errors + orphans) + blocks[0].errors
    return blocks


def collect_blocks(files: list[Path]) -> list[Block]:
    return [b for f in files for b in parse_markdown(f)]


# ------------------------------------------------------------------------------------------ running
@dataclasses.dataclass
class FileState:
    """What the blocks of one file share: the namespace, the working directory, how far they ran."""

    workdir: Path
    namespace: dict[str, Any]
    done: int = 0  # blocks [0, done) have run (or were skipped)
    failed: list[str] = dataclasses.field(default_factory=list)


def _substitute_models(monkeypatch: pytest.MonkeyPatch, source: str) -> list[str]:
    """Make every load_model(...) load ``source``; returns the list of the sources asked for."""
    import contrastlens
    import contrastlens.models.loading as loading

    real = loading.load_model
    asked: list[str] = []

    def load_model(requested: Any = None, *args: Any, **kwargs: Any) -> Any:
        asked.append(str(requested))
        return real(source, **kwargs)

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(contrastlens, "load_model", load_model, raising=False)
    return asked


def run_block(block: Block, state: FileState) -> None:
    """Run one block in the file's namespace and working directory, with its directives applied (and
    undone afterwards: working directory, environment, model substitution)."""
    __tracebackhide__ = True
    if block.errors:
        pytest.fail("bad doctest directives:\n  " + "\n  ".join(block.errors), pytrace=False)
    if block.fresh:
        name = state.namespace.get("__name__")
        state.namespace.clear()
        state.namespace["__name__"] = name
        state.failed.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(state.workdir)
        mp.setenv("CONTRASTLENS_DATA", str(SHARED_DATA))
        for name in block.setups:
            SETUPS[name](state.workdir)
        if block.model:
            _substitute_models(mp, block.model)
        exec(_compile(block), state.namespace)


def _compile(block: Block) -> CodeType:
    """The block's code, with the line numbers of the Markdown file (tracebacks show the block's lines)."""

    def shift(code: CodeType) -> CodeType:
        consts = tuple(shift(c) if isinstance(c, CodeType) else c for c in code.co_consts)
        return code.replace(co_firstlineno=code.co_firstlineno + block.line, co_consts=consts)

    return shift(compile(block.code, str(block.path), "exec"))


def run_in_order(blocks: list[Block], k: int, state: FileState) -> None:
    """Run block ``k`` of a file, first catching up on the file's earlier blocks if they did not run
    in this session (a test selected alone with ``-k``)."""
    __tracebackhide__ = True
    chain = max((j for j in range(k + 1) if blocks[j].fresh), default=0)  # k needs blocks [chain, k)
    state.done = max(state.done, chain)
    for j in range(state.done, k):
        earlier = blocks[j]
        if earlier.skip is None:
            try:
                run_block(earlier, state)
            except BaseException as e:  # pytest's skip and fail are BaseExceptions too
                state.failed.append(earlier.id)
                state.done = j + 1
                pytest.fail(f"earlier block {earlier.id}, run first, failed: {type(e).__name__}: {e}")
        state.done = j + 1
    block = blocks[k]
    state.done = max(state.done, k + 1)
    if block.skip is not None and not block.errors:
        pytest.skip(block.skip)
    try:
        run_block(block, state)
    except BaseException as e:
        state.failed.append(block.id)
        if state.failed[:-1] and isinstance(e, Exception):
            e.add_note(f"earlier blocks of this file failed: {', '.join(state.failed[:-1])}")
        raise


# ------------------------------------------------------------------------------------------ the tests
BLOCKS = collect_blocks(doc_files())
_BY_FILE: dict[Path, list[Block]] = {}
for _b in BLOCKS:
    _BY_FILE.setdefault(_b.path, []).append(_b)


@pytest.fixture(scope="session")
def doc_states(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], FileState]:
    states: dict[Path, FileState] = {}

    def get(path: Path) -> FileState:
        if path not in states:
            stem = re.sub(r"\W+", "_", path.stem)
            states[path] = FileState(tmp_path_factory.mktemp(f"doc_{stem}"), {"__name__": f"doc_{stem}"})
        return states[path]

    return get


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else []) for b in BLOCKS],
)
def test_doc_block(block: Block, doc_states: Callable[[Path], FileState]) -> None:
    blocks = _BY_FILE[block.path]
    run_in_order(blocks, blocks.index(block), doc_states(block.path))


def test_docs_have_python_examples() -> None:
    assert BLOCKS, "no ```python blocks found in README.md and docs/*.md"


# ------------------------------------------------------------------------------------------ the harness
_SYNTHETIC = '''# A page

<!-- doctest-file: setup=marker -->

```python
x = 41
open("made.txt", "w").write("hi")
```

Some text.

```bash
echo not python
```

```python
x += 1
assert open("made.txt").read() == "hi"
assert open("marker.txt").read() == "set up"
```

<!-- doctest: skip this one cannot run here -->
```python
raise RuntimeError("must not run")
```

<!-- doctest: model=random:llama -->
```python
import contrastlens as cl
from contrastlens.models.loading import load_model

lm = cl.load_model("no-such-model-anywhere", dtype="float32")
lm2 = load_model("another-missing-one")
assert lm.source == lm2.source == "random:llama", (lm.source, lm2.source)
```

```python
import os

def broken():
    raise ValueError("documented example broke")
assert os.environ["CONTRASTLENS_DATA"].endswith(os.path.join("shared", "data"))
broken()
```
'''


def _harness(tmp_path: Path, text: str) -> tuple[list[Block], FileState]:
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    (tmp_path / "work").mkdir()
    return parse_markdown(page), FileState(tmp_path / "work", {"__name__": "doc_page"})


@doc_setup("marker")
def _setup_marker(workdir: Path) -> None:
    (workdir / "marker.txt").write_text("set up")


def test_harness_parses_blocks_and_directives(tmp_path: Path) -> None:
    blocks, _ = _harness(tmp_path, _SYNTHETIC)
    assert [b.line for b in blocks] == [5, 16, 23, 28, 37]
    assert all(b.setups == ("marker",) and not b.errors for b in blocks)
    assert blocks[2].skip == "this one cannot run here"
    assert blocks[3].model == "random:llama" and blocks[0].model is None
    assert blocks[0].id.endswith("page.md:5") and blocks[0].code.startswith("x = 41\n")


def test_harness_runs_in_order_skips_substitutes_and_fails(tmp_path: Path) -> None:
    import contrastlens.models.loading as loading

    real_load = loading.load_model
    blocks, state = _harness(tmp_path, _SYNTHETIC)
    run_in_order(blocks, 0, state)
    run_in_order(blocks, 1, state)  # shares the namespace and the working directory
    assert state.namespace["x"] == 42
    with pytest.raises(pytest.skip.Exception, match="this one cannot run here"):
        run_in_order(blocks, 2, state)
    run_in_order(blocks, 3, state)  # would raise ModelLoadError without model=
    assert loading.load_model is real_load  # the substitution is undone after the block
    with pytest.raises(ValueError, match="documented example broke") as info:
        run_in_order(blocks, 4, state)
    assert state.failed == [blocks[4].id]
    # the traceback points at the Markdown file's own line
    frames = [(f.filename, f.lineno) for f in __import__("traceback").extract_tb(info.value.__traceback__)]
    assert (str(tmp_path / "page.md"), 43) in frames and (str(tmp_path / "page.md"), 41) in frames


def test_harness_catches_up_on_earlier_blocks(tmp_path: Path) -> None:
    blocks, state = _harness(tmp_path, _SYNTHETIC)
    run_in_order(blocks, 1, state)  # block 0 runs first, as when selected with -k
    assert state.namespace["x"] == 42 and state.done == 2


def test_harness_without_substitution_a_missing_model_fails(tmp_path: Path) -> None:
    from contrastlens.errors import ContrastLensError

    blocks, state = _harness(tmp_path, '```python\nimport contrastlens as cl\ncl.load_model("./no/such/model")\n```\n')
    with pytest.raises(ContrastLensError):
        run_in_order(blocks, 0, state)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- doctest: skip -->\n```python\npass\n```\n", "needs a reason"),
        ("<!-- doctest: setup=nope -->\n```python\npass\n```\n", "unknown setup 'nope'"),
        ("<!-- doctest: modle=random:llama -->\n```python\npass\n```\n", "unknown doctest item 'modle=random:llama'"),
        ("<!-- doctest: slow -->\n\n```python\npass\n```\n", "not directly above"),
        ("```python\npass\n```\n<!-- doctest: slow -->\n```bash\nls\n```\n", "above a ```bash block"),
    ],
)
def test_harness_rejects_bad_directives(tmp_path: Path, text: str, message: str) -> None:
    blocks, state = _harness(tmp_path, text)
    assert any(message in e for e in blocks[0].errors), blocks[0].errors
    with pytest.raises(pytest.fail.Exception, match="bad doctest directives"):
        run_in_order(blocks, 0, state)


def test_harness_slow_directive_marks_the_test_and_later_ones() -> None:
    one = "```python\npass\n```\n"
    text = one + "<!-- doctest: slow model=random:gpt2 -->\n" + one + one + "<!-- doctest: fresh -->\n" + one + one
    blocks = parse_markdown(Path("page.md"), text)
    assert [b.slow for b in blocks] == [False, True, True, False, False]
    assert blocks[1].model == "random:gpt2" and blocks[2].model is None and not blocks[1].errors


def test_harness_fresh_block_starts_a_new_namespace_without_catching_up(tmp_path: Path) -> None:
    text = "```python\nraise RuntimeError('slow and broken')\n```\n\n<!-- doctest: fresh -->\n```python\n" \
           "assert 'a' not in globals()\na = 1\n```\n\n```python\nassert a == 1\n```\n"
    blocks, state = _harness(tmp_path, text)
    state.namespace["a"] = 0
    run_in_order(blocks, 2, state)  # runs block 1 first, never block 0
    assert state.namespace["a"] == 1 and state.failed == []
