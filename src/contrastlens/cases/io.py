"""Reading and appending case files (JSONL), ``FILE#ID`` look-up, and resume bookkeeping.

A run writes two files: ``cases.jsonl`` (one :class:`FailureCase` per line) and
``cases.jsonl.progress`` (one line per finished benchmark item: passed, case written or skipped, with
the reason). Both are appended line by line and flushed, so a killed run loses at most the item in
flight; on resume a torn last line is dropped and every item already recorded in either file is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contrastlens.cases.schema import FailureCase
from contrastlens.errors import InputError


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "case"
    return f"{loc}: {err.get('msg', 'invalid')}"


def _read_lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            out.append((n, line))
    return out


def repair_tail(path: str | os.PathLike) -> bool:
    """Drop a torn (unterminated, unparsable) last line left by a killed writer. Returns True if cut."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return False
    data = p.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    last = data[cut:]
    try:
        json.loads(last.decode("utf-8"))
        with open(p, "ab") as f:  # a complete record that only lacks its newline
            f.write(b"\n")
        return False
    except (ValueError, UnicodeDecodeError):
        with open(p, "r+b") as f:
            f.truncate(cut)
        return True


def load_cases(path: str | os.PathLike, *, clean_only: bool = False, localised_only: bool = False
               ) -> list[FailureCase]:
    """Read and validate every case of a JSONL file (a bad line is an error naming its line number)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"case file {p} does not exist")
    cases = []
    for n, line in _read_lines(p):
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        try:
            case = FailureCase.model_validate(rec)
        except ValidationError as e:
            raise InputError(f"{p}:{n}: not a valid case ({_first_error(e)})") from None
        if clean_only and not case.clean:
            continue
        if localised_only and case.status != "localised":
            continue
        cases.append(case)
    return cases


def get_case(ref: str) -> FailureCase:
    """Look up ``FILE#ID`` (a case id, or a 0-based index among the file's cases)."""
    if "#" not in ref:
        raise InputError(f"case reference {ref!r} must be FILE#ID (e.g. cases.jsonl#ifeval-1000)")
    file, key = ref.rsplit("#", 1)
    cases = load_cases(file)
    for c in cases:
        if c.id == key:
            return c
    if key.isdigit() and int(key) < len(cases):
        return cases[int(key)]
    ids = ", ".join(c.id for c in cases[:5])
    raise InputError(f"no case {key!r} in {file} ({len(cases)} cases; e.g. {ids})")


class CaseStore:
    """Append-only case file plus its progress log, for resumable runs."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = True):
        self.path = Path(path)
        self.progress_path = Path(str(self.path) + ".progress")
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for p in (self.path, self.progress_path):
                if p.exists():
                    p.unlink()
        repair_tail(self.path)
        repair_tail(self.progress_path)
        self.done: dict[str, dict[str, Any]] = {}
        if self.progress_path.exists():
            for _, line in _read_lines(self.progress_path):
                rec = json.loads(line)
                self.done[str(rec["item_id"])] = rec
        self.case_items: set[str] = set()
        if self.path.exists():
            for c in load_cases(self.path):
                self.case_items.add(c.item_id)
                # a case written just before a kill, whose progress line was not: still done
                self.done.setdefault(c.item_id, {"item_id": c.item_id, "status": "case", "case_id": c.id})

    def is_done(self, item_id: str) -> bool:
        return str(item_id) in self.done

    @staticmethod
    def _append(path: Path, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_case(self, case: FailureCase) -> None:
        """Append a case (once per item), then its progress line."""
        if case.item_id in self.case_items:
            return
        self._append(self.path, case.model_dump(mode="json"))
        self.case_items.add(case.item_id)
        self.mark(case.item_id, "case", case_id=case.id, clean=case.clean, localised=case.status == "localised",
                  method=case.method, n_rollouts=case.n_rollouts)

    def mark(self, item_id: str, status: str, **extra: Any) -> None:
        rec = {"item_id": str(item_id), "status": status, **extra}
        self._append(self.progress_path, rec)
        self.done[str(item_id)] = rec

    def records(self) -> list[dict[str, Any]]:
        return list(self.done.values())


load_case = get_case
