"""HumanEval+ (EvalPlus data): generated code run against the base and the plus inputs in a sandbox.

Expected outputs come from the task's canonical solution, run in the same sandboxed process; outputs are
compared exactly, floats with the task's ``atol`` (as EvalPlus does).
"""

from __future__ import annotations

import ast
import json
import re

from contrastlens.benchmarks.base import Benchmark, ItemError, Score, locate
from contrastlens.benchmarks.sandbox import run_python

INSTRUCTION = ("Complete the following Python function. Reply with the complete function in one "
               "```python code block.")

RUNNER = r'''
import copy, json, math, sys, traceback
SPEC = json.loads(sys.stdin.read())
def _eq(a, b, atol):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=max(atol, 1e-6)) or a == b
        except (TypeError, ValueError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_eq(x, y, atol) for x, y in zip(a, b))
    return a == b
ref_ns = {}
exec(compile(SPEC["reference"], "<reference>", "exec"), ref_ns)
ref = ref_ns[SPEC["entry_point"]]
cand_ns = {}
def _where(tb):
    lines = [f.lineno for f in traceback.extract_tb(tb) if f.filename == "<candidate>"]
    return lines[-1] if lines else None
try:
    exec(compile(SPEC["candidate"], "<candidate>", "exec"), cand_ns)
    cand = cand_ns[SPEC["entry_point"]]
except BaseException as e:
    line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else _where(e.__traceback__)
    print(json.dumps({"stage": "load", "error": f"{type(e).__name__}: {e}"[:300], "line": line}))
    sys.exit(0)
res = {"stage": "run"}
for part in ("base", "plus"):
    ok, fail = True, None
    for n, args in enumerate(SPEC[part]):
        try:
            want = ref(*copy.deepcopy(args))
        except BaseException:
            continue  # an input the reference rejects (outside the contract)
        try:
            got = cand(*copy.deepcopy(args))
        except BaseException as e:
            ok, fail = False, {"input": repr(args)[:200], "error": f"{type(e).__name__}: {e}"[:200],
                               "line": _where(e.__traceback__)}
            break
        if not _eq(got, want, SPEC["atol"]):
            ok, fail = False, {"input": repr(args)[:200], "got": repr(got)[:200], "expected": repr(want)[:200]}
            break
    res[part] = ok
    res[part + "_failure"] = fail
    if not ok:
        break
print(json.dumps(res))
'''


_CLOSED_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n.*?```", re.DOTALL)


_BODY_END = re.compile(r"^(?:    |\t)[^\n]*\n+(?=[^\s])", re.MULTILINE)


def extract_code(completion: str) -> tuple[str, int]:
    """The code of a completion (the first fenced block, else the text up to its first unindented line
    after an indented one) and its offset."""
    m = re.search(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", completion, re.DOTALL)
    if m:
        return m.group(1), m.start(1)
    end = _BODY_END.search(completion)  # a plain completion ends at its first unindented line
    return (completion[: end.end()] if end else completion), 0


def build_program(prompt: str, entry_point: str, completion: str) -> tuple[str, int, int]:
    """Candidate program, its number of header lines before the completion's code, and the code's offset
    in the completion."""
    code, off = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        # the prompt with a stub body first, so its imports and helper functions exist; the completion's
        # definition then replaces the stub
        head = prompt.rstrip("\n") + "\n    pass\n\n"
        return head + code, head.count("\n"), off
    return prompt + code, prompt.count("\n"), off


def _number(node: ast.expr, default: float) -> float:
    """A literal number node's value, else ``default``."""
    v = node.value if isinstance(node, ast.Constant) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def inputs_from_test(test: str) -> tuple[list, float]:
    """The test inputs and ``atol`` of the ``test`` code of a hub row (``evalplus/humanevalplus``):
    ``def check(candidate): inputs = [...]`` (base and plus inputs together) and the tolerance given to
    ``assertion(candidate(*inp), exp, ATOL)`` (or ``... <= ATOL`` for ``find_zero``). Raises
    :class:`ValueError` when the code has no literal ``inputs`` list."""
    tree = ast.parse(test)
    inputs = None
    atol = 0.0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "inputs" for t in node.targets):
            inputs = ast.literal_eval(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "assertion"
              and len(node.args) == 3):
            atol = _number(node.args[2], atol)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.LtE):
            atol = _number(node.comparators[0], atol)
    if not isinstance(inputs, list):
        raise ValueError("no literal inputs list in the test code")
    return inputs, atol


class HumanEvalPlus(Benchmark):
    name = "humaneval"
    default_file = "HumanEvalPlus.jsonl.gz"
    hub_id = "evalplus/humanevalplus"
    hub_split = "test"
    default_max_new_tokens = 384

    def __init__(self, timeout: float = 10.0, memory_mb: int = 2048, max_plus: int | None = None):
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_plus = max_plus

    def load(self, path=None, *, data_dir=None):
        return self.load_rows(path, data_dir, label="HumanEval", id_field="task_id",
                              fields=("task_id", "prompt", "entry_point", "canonical_solution", "base_input"))

    def hub_row(self, row):
        """The hub rows hold the inputs inside their ``test`` code (base and plus merged, see
        :func:`inputs_from_test`): all of them become ``base_input`` (``plus_input`` is empty), so the
        verdict is the same and only the base/plus split in ``details`` is lost."""
        if "base_input" in row:
            return row
        try:
            inputs, atol = inputs_from_test(str(row.get("test", "")))
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
            raise ItemError(f"humaneval item {row.get('task_id')}: cannot read the hub row's test inputs ({e})") from None
        keep = ("task_id", "prompt", "entry_point", "canonical_solution")
        return {**{k: row[k] for k in keep if k in row}, "base_input": inputs, "plus_input": [], "atol": atol}

    def messages(self, item):
        return [{"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{item.data['prompt']}```"}]

    def plain_prompt(self, item):
        return item.data["prompt"]  # the model writes the body (the usual HumanEval completion setting)

    def score(self, item, completion):
        d = item.data
        if not completion.strip():
            return Score(False, {"reason": "empty completion"}, 0)
        program, head_lines, code_off = build_program(d["prompt"], d["entry_point"], completion)
        plus = d.get("plus_input") or []
        if self.max_plus is not None:
            plus = plus[: self.max_plus]
        spec = {"reference": d["prompt"] + d["canonical_solution"], "candidate": program,
                "entry_point": d["entry_point"], "base": d["base_input"], "plus": plus,
                "atol": float(d.get("atol") or 0.0)}
        r = run_python(RUNNER, timeout=self.timeout, memory_mb=self.memory_mb, stdin=json.dumps(spec))
        if r.status == "timeout":
            return Score(False, {"reason": f"timed out after {self.timeout:g} s"}, None)
        if r.payload is None:
            tail = (r.stderr.strip().splitlines() or [r.status])[-1][:200]
            return Score(False, {"reason": f"sandbox {r.status}: {tail}"}, None)
        p = r.payload
        if p.get("stage") == "load":
            return Score(False, {"reason": "does not load", "error": p.get("error")},
                         self._offset(completion, code_off, p.get("line"), head_lines))
        base, plus_ok = bool(p.get("base")), bool(p.get("plus", False))
        fail = p.get("base_failure") or p.get("plus_failure")
        details = {"base": base, "plus": plus_ok if base else None, "failure": fail}
        at = self._offset(completion, code_off, (fail or {}).get("line"), head_lines) if fail else None
        return Score(base and plus_ok, details, at, region=self._body(completion, d["entry_point"]))

    @staticmethod
    def _body(completion: str, entry_point: str) -> tuple[int, int]:
        """Span of the code that can change the verdict: the code block from the line after the entry
        point's ``def`` line (the signature is the prompt's), else from the block's start."""
        code, off = extract_code(completion)
        m = re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(.*?\)[^\n]*:[ \t]*\n", code, re.MULTILINE | re.DOTALL)
        start = off + (m.end() if m else 0)
        return start, off + len(code)

    @staticmethod
    def _offset(completion: str, code_off: int, line: int | None, head_lines: int) -> int | None:
        """Character offset in the completion of a line of the candidate program (None if not in it)."""
        if line is None or line <= head_lines:
            return None
        k = line - head_lines - 1
        pos = code_off
        for _ in range(k):
            nxt = completion.find("\n", pos)
            if nxt < 0:
                return None
            pos = nxt + 1
        return pos if pos < len(completion) else None

    def settled(self, text):
        # the checker reads the first fenced block only: once it has closed, nothing later counts; a plain
        # completion of the function (no fence, `--no-chat`) ends at its first unindented line
        if _CLOSED_BLOCK.search(text) is not None:
            return True
        return "```" not in text and _BODY_END.search(text) is not None

    def segments(self, item, prompt):
        i = locate(prompt, INSTRUCTION)
        q = locate(prompt, item.data["prompt"])
        return {"instruction": [i] if i else [], "query": [q] if q else []}
