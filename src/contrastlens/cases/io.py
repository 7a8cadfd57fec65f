"""Reading and appending case files (JSONL), ``FILE#ID`` look-up, and crash-safe resume bookkeeping.

A run writes two files: ``cases.jsonl`` (one :class:`FailureCase` per line) and
``cases.jsonl.progress`` (one line per finished benchmark item: passed, case written or skipped, with
the reason).

**Framing.** Both are JSONL written by a :class:`JsonlAppender`: one JSON object per line, each line one
write of the whole record and its newline, flushed and fsynced before the next. A killed writer can
therefore only leave an unterminated last line (a *torn tail*); every complete line is a whole record.
:func:`scan_jsonl` reads a file without changing it and tells a torn tail (a line without its newline that
could be the start of a record) from a file that is not of this kind (a complete line that is not a JSON
object, bytes that are not UTF-8, a directory), which is an :class:`~contrastlens.errors.InputError`
naming the file and line. :func:`check_tail` then moves a torn tail aside into ``FILE.torn`` (appended to,
never overwritten) and cuts it from the file: no byte a user or a run wrote is ever deleted.

**Resume.** :class:`CaseStore` checks both files before it changes either (a file that is not a case or
progress file is refused untouched) and reconciles them: the case file is the truth for cases. A progress
record of status ``case`` whose case is not in the case file (a torn case line) does not make its item done,
so the item is run again; a case without a progress line (killed between the two writes) is done, and its
progress line is written then. The counts of a resumed item come from the case itself.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contrastlens.cases.schema import FailureCase
from contrastlens.errors import InputError

log = logging.getLogger(__name__)

#: where :func:`check_tail` moves a torn last line: ``FILE`` + this suffix (one torn line per line)
TORN_SUFFIX = ".torn"
#: the first key of every case record and of every progress record (what a torn tail must start like)
CASE_FIRST_KEY = "schema_version"
PROGRESS_FIRST_KEY = "item_id"


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "case"
    return f"{loc}: {err.get('msg', 'invalid')}"


# ---------------------------------------------------------------------------------- framing
@dataclass
class JsonlScan:
    """What :func:`scan_jsonl` found in a JSONL file (nothing was changed)."""

    path: Path
    exists: bool = False
    size: int = 0  # bytes in the file when it was read
    end: int = 0  # bytes up to and including the newline of the last complete line
    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (line number, record)
    torn: bytes | None = None  # the unterminated last line, when it is not a whole record (an interrupted write)
    torn_line: int = 0
    missing_newline: bool = False  # the last line is a whole record (or blank) that only lacks its newline

    @property
    def intact(self) -> bool:
        """Every line is complete: nothing for :func:`check_tail` to do."""
        return self.torn is None and not self.missing_newline


def _head(first_key: str | None) -> bytes:
    """How every record starts (``{"first_key":``), as :class:`JsonlAppender` writes it."""
    if first_key is None:
        return b"{"
    return b"{" + json.dumps(first_key, ensure_ascii=False).encode("utf-8") + b":"


def _could_be_torn(tail: bytes, first_key: str | None) -> bool:
    """Whether an unterminated last line can be the start of a record cut by a kill (or a crash that left
    the end of the file zero-filled)."""
    t = tail.rstrip(b"\0")
    head = _head(first_key)
    return head.startswith(t) or t.startswith(head)


def _not_a(what: str, p: Path, n: int | None, why: str) -> InputError:
    where = f"{p}:{n}" if n is not None else str(p)
    return InputError(f"{where}: {why}; not a {what}")


def scan_jsonl(path: str | os.PathLike, *, what: str = "JSONL file", first_key: str | None = None) -> JsonlScan:
    """Read a JSONL file of JSON objects without changing it.

    Every complete (newline-terminated, non-blank) line must be UTF-8 text holding one JSON object, else an
    :class:`~contrastlens.errors.InputError` naming the file and line (``what`` names the kind of file in
    the message). An unterminated last line is a record that only lacks its newline when it parses, a torn
    write (:attr:`JsonlScan.torn`) when it could be the start of a record (``{"first_key":`` when
    ``first_key`` is given, else ``{``), and an error otherwise. A directory, or a file that cannot be read,
    is an error too; a missing file is an empty scan."""
    p = Path(path)
    scan = JsonlScan(p)
    if p.is_dir():
        raise InputError(f"{p} is a directory, not a {what}")
    if not p.exists():
        return scan
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} {p}: {e.strerror or e}") from None
    scan.exists, scan.size = True, len(data)
    lines = data.split(b"\n")
    for n, raw in enumerate(lines[:-1], 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_a(what, p, n, f"not UTF-8 text (byte {e.start} of the line)") from None
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except ValueError as e:
            raise _not_a(what, p, n, f"not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(rec, dict):
            raise _not_a(what, p, n, f"a JSON {type(rec).__name__}, not a JSON object")
        scan.records.append((n, rec))
    scan.end = len(data) - len(lines[-1])
    tail, n = lines[-1], len(lines)
    if not tail:
        return scan
    blank, rec = False, None
    try:
        text = tail.decode("utf-8")
        blank = not text.strip()
        rec = None if blank else json.loads(text)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        pass
    if blank or isinstance(rec, dict):  # a whole record (a prefix of one object never parses as an object)
        scan.missing_newline = True
        if isinstance(rec, dict):
            scan.records.append((n, rec))
    elif _could_be_torn(tail, first_key):
        scan.torn, scan.torn_line = tail, n
    else:
        raise _not_a(what, p, n, "the last line is neither a whole record nor the start of one")
    return scan


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of a folder durable (a file's creation or rename in it); a no-op where folders cannot
    be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` in full, flushed and fsynced; on any failure the file is cut back to its old size."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def fix_tail(scan: JsonlScan) -> bytes | None:
    """Apply what :func:`scan_jsonl` found: a torn last line is appended to ``FILE.torn`` (fsynced) and
    only then cut from the file; a whole last record gets its newline. Returns the torn bytes (None: there
    were none). Refuses (InputError) when the file changed since it was scanned."""
    if scan.intact:
        return None
    p = scan.path
    if p.stat().st_size != scan.size:
        raise InputError(f"{p} changed while it was being checked; is another run writing to it?")
    if scan.missing_newline:
        _append_bytes(p, b"\n")
        return None
    assert scan.torn is not None
    torn_path = Path(str(p) + TORN_SUFFIX)
    try:
        _append_bytes(torn_path, scan.torn + b"\n")  # a kill from here on repeats this step: a copy, never a loss
    except OSError as e:
        raise InputError(f"{p}: cannot move its torn last line to {torn_path}: {e.strerror or e}") from None
    with open(p, "r+b") as f:
        f.truncate(scan.end)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: line %d was torn (an interrupted write, %d bytes); moved it to %s", p, scan.torn_line,
                len(scan.torn), torn_path)
    return scan.torn


def check_tail(path: str | os.PathLike, *, what: str = "JSONL file", first_key: str | None = None) -> bytes | None:
    """:func:`scan_jsonl` then :func:`fix_tail`: a torn last line is moved aside into ``FILE.torn``, a whole
    last record without its newline gets one; a file that is not JSONL is refused untouched. Returns the
    torn bytes, or None."""
    return fix_tail(scan_jsonl(path, what=what, first_key=first_key))


def repair_tail(path: str | os.PathLike) -> bool:
    """Deprecated: :func:`check_tail`. True when a torn last line was moved aside (to ``FILE.torn``)."""
    return check_tail(path) is not None


class JsonlAppender:
    """Crash-safe appends of JSON objects to a JSONL file, one record per line, for any append-only store.

    Each :meth:`append` writes the whole line in one go, fsynced before it returns, and cuts the file back if
    the write fails part-way, so the file only ever ends with a whole record or, after a kill, a torn tail.
    Opening checks the file (:func:`scan_jsonl`, or the ``scan`` given: read its ``records``) and moves a torn
    tail aside (:func:`fix_tail`); ``check=False`` skips that (an append still checks a file that does not end
    with a newline). ``first_key``: the key every record is written with first, which tells a torn tail from
    foreign data."""

    def __init__(self, path: str | os.PathLike, *, what: str = "JSONL file", first_key: str | None = None,
                 scan: JsonlScan | None = None, check: bool = True):
        self.path = Path(path)
        self.what = what
        self.first_key = first_key
        if scan is not None or check:
            fix_tail(scan if scan is not None else scan_jsonl(self.path, what=what, first_key=first_key))

    def encode(self, rec: dict[str, Any]) -> bytes:
        """The line of a record: JSON (``first_key`` first) and its newline."""
        if self.first_key is not None:
            if self.first_key not in rec:
                raise ValueError(f"a record of {self.path} needs the key {self.first_key!r}")
            rec = {self.first_key: rec[self.first_key], **rec}
        return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record (flushed and fsynced). A file that does not end with a newline (torn since it
        was opened, or written to by someone else) is checked first."""
        line = self.encode(rec)
        if not _ends_with_newline(self.path):
            check_tail(self.path, what=self.what, first_key=self.first_key)
        _append_bytes(self.path, line)


def _ends_with_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


def append_record(path: str | os.PathLike, rec: dict[str, Any], *, first_key: str | None = None) -> None:
    """Append one record to a JSONL file, crash-safe (see :class:`JsonlAppender`; the file is checked only
    when it does not end with a newline)."""
    JsonlAppender(path, first_key=first_key, check=False).append(rec)


# ---------------------------------------------------------------------------------- case files
def _validate_cases(scan: JsonlScan) -> list[FailureCase]:
    cases = []
    for n, rec in scan.records:
        try:
            cases.append(FailureCase.model_validate(rec))
        except ValidationError as e:
            raise InputError(f"{scan.path}:{n}: not a valid case ({_first_error(e)})") from None
    return cases


def scan_case_file(path: str | os.PathLike) -> tuple[JsonlScan, list[FailureCase]]:
    """Read and validate a case file without changing it: its scan and its cases. Anything but a case file
    (a directory, bytes that are not UTF-8, a complete line that is not a valid case) is an InputError."""
    scan = scan_jsonl(path, what="case file", first_key=CASE_FIRST_KEY)
    return scan, _validate_cases(scan)


def load_cases(path: str | os.PathLike, *, clean_only: bool = False, localised_only: bool = False
               ) -> list[FailureCase]:
    """Read and validate every case of a JSONL file (a bad line is an error naming its line number; a torn
    last line, left by an interrupted run, is skipped with a warning and left in place)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"case file {p} does not exist")
    scan, cases = scan_case_file(p)
    if scan.torn is not None:
        log.warning("%s: line %d is torn (an interrupted write); skipped (resuming the run moves it aside)", p,
                    scan.torn_line)
    if clean_only:
        cases = [c for c in cases if c.clean]
    if localised_only:
        cases = [c for c in cases if c.status == "localised"]
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


# ---------------------------------------------------------------------------------- resume
def progress_path(path: str | os.PathLike) -> Path:
    """The progress file of a case file: ``FILE.progress``."""
    return Path(str(path) + ".progress")


def case_record(case: FailureCase) -> dict[str, Any]:
    """The progress record of an item whose case is ``case`` (what a resumed run counts it by)."""
    return {"item_id": case.item_id, "status": "case", "case_id": case.id, "clean": case.clean,
            "localised": case.status == "localised", "method": case.method, "n_rollouts": case.n_rollouts}


def scan_progress_file(path: str | os.PathLike) -> JsonlScan:
    """Read a progress file without changing it; a line that is not a progress record (an object with a
    string ``item_id`` and ``status``) is an InputError naming the file and line."""
    p = Path(path)
    scan = scan_jsonl(p, what="progress file", first_key=PROGRESS_FIRST_KEY)
    for n, rec in scan.records:
        if not isinstance(rec.get("item_id"), str | int) or not isinstance(rec.get("status"), str):
            raise InputError(f"{p}:{n}: not a progress record (it needs item_id and status); fix or remove the "
                             f"line, or start over with --fresh")
    return scan


def check_case_output(path: str | os.PathLike, *, resume: bool = True) -> None:
    """Check, without changing anything, that ``path`` can be the output of a run: absent, or a case file
    (and, when resuming, its progress file a progress file). Raises InputError otherwise."""
    scan_case_file(path)
    if resume:
        scan_progress_file(progress_path(path))
    elif progress_path(path).is_dir():
        raise InputError(f"{progress_path(path)} is a directory, not a progress file")


class CaseStore:
    """Append-only case file plus its progress log, for resumable runs (see the module docstring).

    Opening checks both files before changing either (InputError on a file that is neither absent nor a case
    file, or a corrupt progress line), moves torn tails aside and reconciles the two: :attr:`done` maps each
    finished item to its record; an item recorded as a case counts only when its case is in the case file.
    ``resume=False`` starts over (the files are deleted, after the same check)."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = True):
        self.path = Path(path)
        self.progress_path = progress_path(self.path)
        case_scan, cases = scan_case_file(self.path)
        if resume:
            prog_scan = scan_progress_file(self.progress_path)
        else:
            if self.progress_path.is_dir():
                raise InputError(f"{self.progress_path} is a directory, not a progress file")
            # nothing was changed up to here
            for p in (self.path, self.progress_path):
                p.unlink(missing_ok=True)
            case_scan, cases, prog_scan = JsonlScan(self.path), [], JsonlScan(self.progress_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cases = JsonlAppender(self.path, what="case file", first_key=CASE_FIRST_KEY, scan=case_scan)
        self._progress = JsonlAppender(self.progress_path, what="progress file", first_key=PROGRESS_FIRST_KEY,
                                       scan=prog_scan)

        by_item: dict[str, dict[str, Any]] = {}
        for c in cases:
            by_item.setdefault(c.item_id, case_record(c))
        self.case_items: set[str] = set(by_item)
        self.done: dict[str, dict[str, Any]] = {}
        for _, rec in prog_scan.records:  # the last record of an item wins
            rec = {**rec, "item_id": str(rec["item_id"])}
            self.done[rec["item_id"]] = rec
        lost = [i for i, rec in self.done.items() if rec.get("status") == "case" and i not in by_item]
        for i in lost:
            del self.done[i]
        if lost:
            log.warning("%s: %d item(s) recorded as cases have no case in %s (a torn write); they are run again: "
                        "%s", self.progress_path, len(lost), self.path, ", ".join(lost[:5]))
        for i, rec in by_item.items():
            if self.done.get(i, {}).get("status") != "case":
                self._progress.append(rec)  # killed between the case and its progress line
            self.done[i] = rec  # a case counts by the case itself

    def is_done(self, item_id: str) -> bool:
        return str(item_id) in self.done

    def write_case(self, case: FailureCase) -> None:
        """Append a case (once per item), then its progress line."""
        if case.item_id in self.case_items:
            return
        self._cases.append(case.model_dump(mode="json"))
        self.case_items.add(case.item_id)
        rec = case_record(case)
        self._progress.append(rec)
        self.done[case.item_id] = rec

    def mark(self, item_id: str, status: str, **extra: Any) -> None:
        rec = {"item_id": str(item_id), "status": status, **extra}
        self._progress.append(rec)
        self.done[str(item_id)] = rec

    def records(self) -> list[dict[str, Any]]:
        return list(self.done.values())


load_case = get_case
