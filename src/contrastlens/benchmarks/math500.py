"""MATH-500: final-answer extraction (``\\boxed{}`` and plain) and equivalence by ``math-verify``."""

from __future__ import annotations

import re

from contrastlens.benchmarks.base import Benchmark, Score, locate
from contrastlens.errors import InputError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _closed_boxes(text: str):
    """``(content_start, content_end)`` of each ``\\boxed{...}`` / ``\\fbox{...}`` whose braces close."""
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            yield m.end(), i - 1


def last_boxed(text: str) -> tuple[str, int] | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, and the content's
    offset."""
    best = None
    for start, end in _closed_boxes(text):
        best = (text[start:end], start)
    if best is None:
        plain = list(re.finditer(r"\\boxed (\S+)", text))
        if plain:
            best = (plain[-1].group(1), plain[-1].start(1))
    return best


def closed_boxed(text: str) -> bool:
    """True once the text holds a ``\\boxed{...}`` whose braces have closed."""
    return next(_closed_boxes(text), None) is not None


_PLAIN = [
    r"final answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)",
    r"answer is[:\s]*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)",
    r"answer:\s*\$?([^\n$]+?)\$?(?:\.\s|\.?$|\n)",
]


def extract_answer(text: str) -> tuple[str, int] | None:
    """The final answer of a solution: the last ``\\boxed{}``, else an "answer is X" phrase, else the
    last number. Returns the answer and its character offset, or None."""
    found = find_answer(text)
    return None if found is None else found[:2]


def find_answer(text: str) -> tuple[str, int, str] | None:
    """:func:`extract_answer` plus how the answer was found: ``boxed``, ``phrase`` ("the answer is X")
    or ``last number`` (a guess from text that states no answer)."""
    b = last_boxed(text)
    if b is not None:
        return (*b, "boxed")
    for pat in _PLAIN:
        ms = list(re.finditer(pat, text, re.IGNORECASE | re.MULTILINE))
        if ms:
            m = ms[-1]
            return m.group(1).strip(), m.start(1), "phrase"
    ms = list(re.finditer(r"-?\d+(?:\.\d+)?(?:/\d+)?", text))
    if ms:
        return ms[-1].group(0), ms[-1].start(), "last number"
    return None


def equivalent(gold: str, pred: str) -> bool:
    """Mathematical equivalence of two answers with math-verify (``\\frac{1}{2}`` equals ``0.5``)."""
    try:
        from math_verify import parse, verify
    except ModuleNotFoundError:
        raise InputError("MATH-500 needs math-verify; pip install 'math-verify[antlr4_13_2]'") from None

    def _p(s: str):
        s = s.strip()
        out = parse(f"${s}$") if s and "$" not in s else parse(s)
        return out or parse(s)

    try:
        g, p = _p(gold), _p(pred)
        if not g or not p:
            return gold.strip() == pred.strip()
        return bool(verify(g, p))
    except Exception:
        return gold.strip() == pred.strip()


class Math500(Benchmark):
    name = "math500"
    default_file = "math500_test.jsonl"
    hub_id = "HuggingFaceH4/MATH-500"
    default_max_new_tokens = 256

    def load(self, path=None, *, data_dir=None):
        return self.load_rows(path, data_dir, label="MATH", id_field="unique_id", fields=("problem", "answer"))

    def messages(self, item):
        return [{"role": "user", "content": f"{item.data['problem']}\n\n{INSTRUCTION}"}]

    def score(self, item, completion):
        gold = str(item.data["answer"])
        found = find_answer(completion)
        if found is None:
            return Score(False, {"gold": gold, "extracted": None, "reason": "no final answer"}, None)
        pred, at, how = found
        ok = equivalent(gold, pred)
        details = {"gold": gold, "extracted": pred, "found_by": how, "boxed": how == "boxed"}
        # a stated final answer (boxed, or "the answer is X") is a commitment: its tokens are where the
        # checker sees the break (each is a hint: a wrong second digit is fixed at the second digit); a
        # number picked from text that states no answer says nothing about where the solution went wrong
        if ok or how == "last number":
            return Score(ok, details, None)
        return Score(False, details, at, hints=[at + i for i in range(min(len(pred), 16))])

    def settled(self, text):
        return closed_boxed(text)

    def segments(self, item, prompt):
        q = locate(prompt, item.data["problem"])
        i = locate(prompt, INSTRUCTION, q[1] if q else 0)
        return {"query": [q] if q else [], "instruction": [i] if i else []}
