"""HumanEval+ (EvalPlus data): generated code run against the base and the plus inputs in a sandbox.

The verdict is made outside the sandbox. The sandboxed process (:func:`~contrastlens.benchmarks.sandbox.
run_python`, bubblewrap) only loads the code, calls the entry point on each input and writes what it
returned (or raised) as data: one JSON line per input on its data channel, values in a tagged encoding
that keeps tuples, sets, dicts with any keys, bytes, complex numbers, big integers and non-finite floats
exact (:func:`encode_value`). This process decodes those lines into plain built-in values
(:func:`decode_value`) and compares them with the expected outputs (:func:`outputs_match`, EvalPlus's
rules: an exact match, else with the task's ``atol`` (at least 1e-6 once a float output is expected) and
``rtol`` 1e-7 for numbers of the same type; ``find_zero`` by EvalPlus's oracle ``|poly(xs, x)| <= atol``).
Expected outputs come from the task's canonical solution, run the same way in its own sandbox and cached
per item; the candidate never sees them. Nothing the candidate prints, no exit status it chooses and no
function it replaces can make it pass: it passes only when every input's output, as written, matches.

Time: each input has EvalPlus's limit (``max(1 s, 4 x`` the canonical solution's time on it), enforced
inside the sandbox) and the whole run the benchmark's ``timeout`` (enforced by killing the sandbox); the
run is stopped as soon as the verdict is known (the first wrong output).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from contrastlens.benchmarks.base import Benchmark, ItemError, Score, locate
from contrastlens.benchmarks.sandbox import run_python

INSTRUCTION = ("Complete the following Python function. Reply with the complete function in one "
               "```python code block.")

#: EvalPlus's per-input time limit: max(MIN_INPUT_SECONDS, INPUT_TIME_FACTOR x the reference's time)
MIN_INPUT_SECONDS = 1.0
INPUT_TIME_FACTOR = 4.0

# The encoding of values as JSON, run inside the sandbox (and here by :func:`encode_value`): plain JSON for
# None, bools, strings, lists, finite floats and 64-bit ints; a one-key object ``{"$tag": ...}`` for
# everything else. Subclasses of built-ins are written as their base type, other objects as opaque text.
# An output whose JSON is longer than DIGEST_BYTES and that holds only None, bools, ints, integral floats,
# strings, bytes, lists and tuples is written as a SHA-256 digest of a canonical form instead
# (``_canon``: equal digests exactly when the values are == in Python), so that a 7 MB string or a list of
# a million numbers is not shipped as text; such values are compared exactly (no tolerance).
DIGEST_BYTES = 64 * 1024
_ENCODER = r"""
import hashlib, json, math
class _NoDigest(Exception):
    pass
def _canon(x, h):
    t = type(x)
    if x is None:
        h.update(b"N")
    elif t is bool or t is int:
        h.update(b"I%x;" % x)
    elif t is float:
        if not x.is_integer():
            raise _NoDigest()
        h.update(b"I%x;" % int(x))
    elif t is str:
        b = x.encode("utf-8", "surrogatepass")
        h.update(b"S%d;" % len(b))
        h.update(b)
    elif t is bytes or t is bytearray:
        h.update(b"B%d;" % len(x))
        h.update(x)
    elif t is list or t is tuple:
        h.update((b"L%d;" if t is list else b"T%d;") % len(x))
        for v in x:
            _canon(v, h)
    else:
        raise _NoDigest()
def _digest(x):
    h = hashlib.sha256()
    _canon(x, h)
    return h.hexdigest()
_SIMPLE = {
    bool: lambda x, e: x, str: lambda x, e: x,
    int: lambda x, e: x if -2 ** 63 < x < 2 ** 63 else {"$int": hex(x)},
    float: lambda x, e: x if math.isfinite(x) else {"$float": repr(x)},
    list: lambda x, e: [e(v) for v in x],
    tuple: lambda x, e: {"$tuple": [e(v) for v in x]},
    dict: lambda x, e: {"$dict": [[e(k), e(v)] for k, v in x.items()]},
    set: lambda x, e: {"$set": [e(v) for v in x]},
    frozenset: lambda x, e: {"$frozenset": [e(v) for v in x]},
    bytes: lambda x, e: {"$bytes": x.hex()},
    bytearray: lambda x, e: {"$bytearray": bytes(x).hex()},
    complex: lambda x, e: {"$complex": [e(x.real), e(x.imag)]},
}
def _enc(x):
    if x is None:
        return None
    f = _SIMPLE.get(type(x))
    if f is not None:
        return f(x, _enc)
    for base in (int, float, complex, str, bytes, tuple, list, dict, frozenset, set):
        if isinstance(x, base):
            return _SIMPLE[base](base(x), _enc)
    try:
        text = repr(x)[:200]
    except BaseException:
        text = "?"
    return {"$opaque": type(x).__name__ + ": " + text}
def _encode(x, limit=0):
    try:
        v = _enc(x)
        floats = type(x) in (list, tuple) and x and all(type(i) is float for i in x)  # EvalPlus compares with atol
        if limit and not floats and len(json.dumps(v, allow_nan=False)) > limit:
            try:
                size = ("with %d bits" % x.bit_length()) if type(x) in (int, bool, float) else ("of length %d" % len(x))
                return {"$digest": [_digest(x), type(x).__name__ + " " + size]}
            except _NoDigest:
                pass
        return v
    except BaseException as e:
        return {"$opaque": "unencodable output (" + type(e).__name__ + ")"}
"""

# The program run in the sandbox. It reads the spec (code, entry point, inputs, inputs to skip, per-input
# limits) from stdin and writes one JSON array per line to its data channel:
#   ["load", error, line]                      the code did not load
#   ["out", part, n, seconds, encoded value]   the entry point returned on input n of part
#   ["exc", part, n, seconds, error, line]     it raised
#   ["timeout", part, n, seconds, limit]       it ran past the input's limit
#   ["end"]
# The candidate runs in this same process, so it can write there too: it can only claim outputs of its
# own, which are then compared, outside, with outputs it never sees.
RUNNER = _ENCODER + r"""
import copy, io, json, os, signal, sys, time, traceback
SPEC = json.loads(sys.stdin.read())
_chan = os.fdopen(int(os.environ["CL_SANDBOX_DATA_FD"]), "w", encoding="ascii")
def _send(rec):
    _chan.write(json.dumps(rec, allow_nan=False) + "\n")
    _chan.flush()
def _where(tb):
    lines = [f.lineno for f in traceback.extract_tb(tb) if f.filename == "<candidate>"]
    return lines[-1] if lines else None
def _text(e):
    try:
        return (type(e).__name__ + ": " + str(e))[:300]
    except BaseException:
        return type(e).__name__
class _Timeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _Timeout()
signal.signal(signal.SIGALRM, _alarm)
class _Sink(io.TextIOBase):
    def write(self, s):
        return len(s)
sys.stdout = sys.stderr = _Sink()
sys.stdin = io.StringIO("")
ns = {}
try:
    exec(compile(SPEC["code"], "<candidate>", "exec"), ns)
    fn = ns[SPEC["entry_point"]]
except BaseException as e:
    line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else _where(e.__traceback__)
    _send(["load", _text(e), line])
    sys.exit(0)
stop = SPEC["stop_on_error"]
for part in ("base", "plus"):
    skip = set(SPEC["skip"].get(part, ()))
    limits = SPEC["limits"].get(part)
    for n, args in enumerate(SPEC["inputs"][part]):
        if n in skip:
            continue
        lim = limits[n] if limits else 0
        a = copy.deepcopy(args)
        t = time.perf_counter()
        try:
            try:
                if lim:
                    signal.setitimer(signal.ITIMER_REAL, lim)
                got = fn(*a)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            _send(["timeout", part, n, time.perf_counter() - t, lim])
            if stop:
                sys.exit(0)
        except BaseException as e:
            _send(["exc", part, n, time.perf_counter() - t, _text(e), _where(e.__traceback__)])
            if stop:
                sys.exit(0)
        else:
            dt = time.perf_counter() - t
            _send(["out", part, n, dt, _encode(got, SPEC["digest_bytes"])])
_send(["end"])
"""


# ------------------------------------------------------------------------------- values as data
class Opaque:
    """An output that is no plain built-in value (a generator, an instance of a class of its own, ...),
    known by its type and repr only: it equals nothing, not even another Opaque."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = str(text)

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<{self.text}>"


class Digest:
    """A large output known by the SHA-256 digest of its canonical form (see ``DIGEST_BYTES``)."""

    __slots__ = ("hex", "what")

    def __init__(self, hex: str, what: str):
        self.hex, self.what = hex, what

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and other.hex == self.hex

    def __hash__(self) -> int:
        return hash(self.hex)

    def __repr__(self) -> str:
        return f"<{self.what}, sha256 {self.hex[:12]}>"


def _as_list(v: Any) -> list:
    if not isinstance(v, list):
        raise ValueError("a tagged container must hold a list")
    return v


def _hook(d: dict) -> Any:
    """A tagged value (a one-key JSON object) as a Python value; anything else is malformed."""
    if len(d) != 1:
        raise ValueError("not a tagged value")
    (tag, v), = d.items()
    if tag == "$tuple":
        return tuple(_as_list(v))
    if tag == "$set":
        return set(_as_list(v))
    if tag == "$frozenset":
        return frozenset(_as_list(v))
    if tag == "$dict":
        pairs = _as_list(v)
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError("a dict is a list of pairs")
        return {k: x for k, x in pairs}
    if tag == "$int" and isinstance(v, str):
        return int(v, 16)
    if tag == "$float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag in ("$bytes", "$bytearray") and isinstance(v, str):
        b = bytes.fromhex(v)
        return b if tag == "$bytes" else bytearray(b)
    if tag == "$complex":
        re_im = _as_list(v)
        if len(re_im) != 2 or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in re_im):
            raise ValueError("a complex number is [re, im]")
        return complex(re_im[0], re_im[1])
    if tag == "$opaque" and isinstance(v, str):
        return Opaque(v)
    if tag == "$digest" and isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
        return Digest(v[0], v[1])
    raise ValueError(f"unknown tag {tag!r}")


def decode_value(text: str) -> Any:
    """A value written by the sandboxed runner (JSON with tagged values) as plain built-in values (and
    :class:`Opaque`). Raises :class:`ValueError` (or ``TypeError``/``RecursionError``) when malformed."""
    return json.loads(text, object_hook=_hook)


@functools.cache
def _encoder() -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec(compile(_ENCODER, "<encoder>", "exec"), ns)
    return ns


def encode_value(x: Any, digest_bytes: int = 0) -> Any:
    """The JSON-ready encoding of ``x`` that the sandboxed runner writes (the same code); with
    ``digest_bytes``, a digest for a longer output that can have one."""
    return _encoder()["_encode"](x, digest_bytes)


def _digest_of(x: Any) -> str | None:
    """The digest of a (decoded) value, None when it has none (a dict, a fractional float, ...)."""
    if isinstance(x, Digest):
        return x.hex
    ns = _encoder()
    try:
        return ns["_digest"](x)
    except ns["_NoDigest"]:
        return None


# ------------------------------------------------------------------------------- comparison
def _same(a: Any, b: Any) -> bool:
    """``a == b`` as Python has it, except that a NaN equals a NaN in the same place (so a reference that
    returns NaN can be matched) and Opaque values equal nothing."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    ta, tb = type(a), type(b)
    if ta is tb is complex:
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if ta is tb and ta in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if ta is tb is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def is_floats(x: Any) -> bool:
    """EvalPlus's test for a float output: a float, or a non-empty list or tuple of floats only."""
    if isinstance(x, float):
        return True
    if isinstance(x, list | tuple) and x:
        return all(isinstance(i, float) for i in x)
    return False


_NUM = (int, float, complex)


def _close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    """``numpy.allclose(a, b, rtol, atol)`` for numbers and (nested) equal-length lists/tuples of them;
    NaN is close to NaN only (see :func:`_same`), infinities to equal infinities."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y, atol, rtol) for x, y in zip(a, b, strict=True))
    if not (isinstance(a, _NUM) and isinstance(b, _NUM)):
        return False
    try:
        if a == b:
            return True
        fa, fb = complex(a), complex(b)
        if any(math.isnan(v) for v in (fa.real, fa.imag, fb.real, fb.imag)):
            return all(math.isnan(v) == math.isnan(w) for v, w in ((fa.real, fb.real), (fa.imag, fb.imag))) \
                and all(v == w for v, w in ((fa.real, fb.real), (fa.imag, fb.imag)) if not math.isnan(v))
        if any(math.isinf(v) for v in (fa.real, fa.imag, fb.real, fb.imag)):
            return False
        return abs(fa - fb) <= atol + rtol * abs(fb)
    except (OverflowError, TypeError, ValueError):
        return False


def _poly(xs: Any, x: Any) -> float:
    """EvalPlus's oracle polynomial for ``find_zero``: ``sum(c * x**i)``."""
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def outputs_match(got: Any, expected: Any, atol: float, *, entry_point: str = "", args: Any = None) -> bool:
    """Whether an output passes, by EvalPlus's rules: ``find_zero`` by ``|poly(xs, got)| <= atol``; else
    an exact match, or, with a non-zero ``atol`` (see :func:`humaneval_atol`), the same type (and length)
    and every number within ``atol + 1e-7 * |expected|``."""
    try:
        if entry_point == "find_zero" and isinstance(args, list | tuple) and len(args) == 1:
            return isinstance(got, int | float) and abs(_poly(args[0], got)) <= atol
        if isinstance(got, Digest) or isinstance(expected, Digest):  # a large output: exactly, by digest
            a, b = _digest_of(got), _digest_of(expected)
            return a is not None and a == b
        if _same(got, expected):
            return True
        if atol == 0:
            return False
        if type(got) is not type(expected):
            return False
        return _close(got, expected, atol, 1e-7)
    except (RecursionError, OverflowError, TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------- the runs
class _Expected:
    """The canonical solution's outputs: per part, per input ``(ok, value, seconds)`` (``ok`` False: it
    raised, the input is outside the contract and skipped)."""

    def __init__(self, parts: dict[str, list[tuple[bool, Any, float]]]):
        self.parts = parts

    def skip(self) -> dict[str, list[int]]:
        return {p: [i for i, r in enumerate(rs) if not r[0]] for p, rs in self.parts.items()}

    def limits(self, cap: float) -> dict[str, list[float]]:
        return {p: [min(cap, max(MIN_INPUT_SECONDS, INPUT_TIME_FACTOR * r[2])) for r in rs]
                for p, rs in self.parts.items()}


def _records(lines: list[str]) -> list[list]:
    out = []
    for line in lines:
        try:
            rec = decode_value(line)
        except (ValueError, TypeError, RecursionError, OverflowError, MemoryError):
            continue  # not a record of the runner: ignored (a record that is missing decides the verdict)
        if isinstance(rec, list) and rec and isinstance(rec[0], str):
            out.append(rec)
    return out


class _Judge:
    """Compares the candidate's records, as they arrive, with the expected outputs; ``feed`` returns True
    once the verdict is known (the run can stop). It passes only with every expected output matched, in
    order, and the runner's end record after them."""

    def __init__(self, inputs: dict[str, list], expected: _Expected, atol: float, entry_point: str):
        self.inputs, self.expected, self.entry_point = inputs, expected, entry_point
        self.order = [(p, i) for p in ("base", "plus") for i, r in enumerate(expected.parts[p]) if r[0]]
        self.pos = 0
        self.atol = {"base": atol, "plus": atol}  # EvalPlus raises a zero atol to 1e-6 once a float is seen
        self.failure: dict[str, Any] | None = None
        self.failed_part: str | None = None
        self.load: dict[str, Any] | None = None
        self.timed_out: float | None = None
        self.ended = False

    @property
    def decided(self) -> bool:
        return self.load is not None or self.failure is not None or self.ended

    def feed(self, lines: list[str]) -> bool:
        for rec in _records(lines):
            if self.decided:
                break
            kind = rec[0]
            if kind == "load" and self.pos == 0 and len(rec) == 3:
                line = rec[2] if type(rec[2]) is int else None
                self.load = {"error": str(rec[1])[:300], "line": line}
            elif kind == "end":
                self.ended = self.pos >= len(self.order)  # an end before the outputs is no end
            elif kind in ("out", "exc", "timeout") and len(rec) >= 5 and self.pos < len(self.order):
                part, n = self.order[self.pos]
                if rec[1] == part and rec[2] == n:  # else: not the input expected next, ignored
                    self.pos += 1
                    self._check(kind, rec, part, n)
        return self.decided

    def _check(self, kind: str, rec: list, part: str, n: int) -> None:
        args = self.inputs[part][n]
        where = repr(args)[:200]
        if kind == "timeout":
            lim = float(rec[4]) if type(rec[4]) in (int, float) else 0.0
            self.timed_out = lim
            self._fail(part, {"input": where, "error": f"timed out after {lim:g} s on this input", "line": None})
        elif kind == "exc":
            line = rec[5] if len(rec) > 5 and type(rec[5]) is int else None
            self._fail(part, {"input": where, "error": str(rec[4])[:200], "line": line})
        else:
            want = self.expected.parts[part][n][1]
            if self.atol[part] == 0 and is_floats(want):
                self.atol[part] = 1e-6
            got = rec[4]
            if not outputs_match(got, want, self.atol[part], entry_point=self.entry_point, args=args):
                self._fail(part, {"input": where, "got": _short(got), "expected": _short(want)})

    def _fail(self, part: str, failure: dict[str, Any]) -> None:
        self.failure, self.failed_part = failure, part


def _short(v: Any) -> str:
    try:
        return repr(v)[:200]
    except (RecursionError, ValueError):
        return "?"


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

    #: how many items' expected outputs are kept (the canonical solution runs once per item)
    cache_items = 256
    #: seconds the canonical solution may take on all inputs together (at least ``timeout``); a few of
    #: them take several seconds (HumanEval/130 about 7 s here)
    reference_timeout = 60.0

    def __init__(self, timeout: float = 10.0, memory_mb: int = 2048, max_plus: int | None = None,
                 unsafe_exec: bool = False):
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.max_plus = max_plus
        self.unsafe_exec = unsafe_exec
        self._expected: dict[tuple, _Expected] = {}

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

    def _run(self, code: str, entry_point: str, inputs: dict[str, list], *, timeout: float,
             on_data: Callable[[list[str]], bool], **spec: Any):
        full = {"code": code, "entry_point": entry_point, "inputs": inputs, "skip": {}, "limits": {},
                "stop_on_error": False, "digest_bytes": DIGEST_BYTES, **spec}
        return run_python(RUNNER, timeout=timeout, memory_mb=self.memory_mb, stdin=json.dumps(full),
                          unsafe=self.unsafe_exec, on_data=on_data)

    @staticmethod
    def _digest_bytes(d: dict) -> int:
        """Outputs longer than this are sent as digests (compared exactly): none where the task has a
        tolerance."""
        return 0 if float(d.get("atol") or 0.0) else DIGEST_BYTES

    def expected(self, item, inputs: dict[str, list]) -> _Expected:
        """The canonical solution's outputs on ``inputs``, run in the sandbox once per item (cached).
        Raises :class:`ItemError` when it does not run through (the item is broken)."""
        d = item.data
        reference = d["prompt"] + d["canonical_solution"]
        key = (item.id, d["entry_point"], hashlib.sha256(reference.encode()).hexdigest(), len(inputs["base"]),
               len(inputs["plus"]), self.unsafe_exec)
        if key in self._expected:
            return self._expected[key]
        recs: list[list] = []

        def keep(lines: list[str]) -> bool:
            recs.extend(_records(lines))
            return False

        r = self._run(reference, d["entry_point"], inputs, timeout=max(self.timeout, self.reference_timeout),
                      on_data=keep, digest_bytes=self._digest_bytes(d))
        got: dict[tuple[str, int], tuple[bool, Any, float]] = {}
        for rec in recs:
            if (rec[0] in ("out", "exc") and len(rec) >= 5 and type(rec[1]) is str and type(rec[2]) is int
                    and type(rec[3]) in (int, float)):
                got.setdefault((rec[1], rec[2]), (rec[0] == "out", rec[4] if rec[0] == "out" else None,
                                                  float(rec[3])))
        parts = {p: [got.get((p, i)) for i in range(len(inputs[p]))] for p in ("base", "plus")}
        missing = sum(x is None for xs in parts.values() for x in xs)
        if missing or not any(rec[0] == "end" for rec in recs):
            load = next((rec for rec in recs if rec[0] == "load"), None)
            why = (f"it does not load: {load[1]}" if load else
                   f"timed out after {max(self.timeout, self.reference_timeout):g} s" if r.status == "timeout" else
                   f"{missing} of {sum(map(len, inputs.values()))} outputs missing, sandbox {r.status}: "
                   + ((r.stderr.strip().splitlines() or ["no message"])[-1][:160]))
            raise ItemError(f"humaneval item {item.id}: the canonical solution does not run ({why})")
        exp = _Expected({p: [x for x in xs if x is not None] for p, xs in parts.items()})
        if len(self._expected) >= self.cache_items:
            self._expected.pop(next(iter(self._expected)))
        self._expected[key] = exp
        return exp

    def score(self, item, completion):
        d = item.data
        if not completion.strip():
            return Score(False, {"reason": "empty completion"}, 0)
        program, head_lines, code_off = build_program(d["prompt"], d["entry_point"], completion)
        plus = d.get("plus_input") or []
        if self.max_plus is not None:
            plus = plus[: self.max_plus]
        inputs = {"base": d["base_input"], "plus": plus}
        exp = self.expected(item, inputs)
        judge = _Judge(inputs, exp, float(d.get("atol") or 0.0), d["entry_point"])
        r = self._run(program, d["entry_point"], inputs, timeout=self.timeout, on_data=judge.feed,
                      skip=exp.skip(), limits=exp.limits(self.timeout), stop_on_error=True,
                      digest_bytes=self._digest_bytes(d))
        if judge.load is not None:
            return Score(False, {"reason": "does not load", "error": judge.load["error"]},
                         self._offset(completion, code_off, judge.load["line"], head_lines))
        region = self._body(completion, d["entry_point"])
        if judge.failure is not None:
            fail = judge.failure
            base = judge.failed_part != "base"
            details = {"base": base, "plus": False if base else None, "failure": fail}
            if judge.timed_out is not None:
                return Score(False, {"reason": f"timed out after {judge.timed_out:g} s on one input", **details},
                             None, region=region)
            at = self._offset(completion, code_off, fail.get("line"), head_lines)
            return Score(False, details, at, region=region)
        if judge.ended:  # every output was written and matches
            return Score(True, {"base": True, "plus": True, "failure": None}, None, region=region)
        if r.status == "timeout":
            return Score(False, {"reason": f"timed out after {self.timeout:g} s"}, None)
        tail = (r.stderr.strip().splitlines() or [""])[-1][:160]
        why = f"the program stopped after {judge.pos} of {len(judge.order)} outputs" + (f" ({tail})" if tail else "")
        return Score(False, {"reason": f"sandbox {r.status}: {why}"}, None)

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
