"""Crash safety of case and progress files: torn tails are moved aside (never deleted), the progress file
agrees with the case file on resume, and an ``--out`` that is not a case file is refused byte-for-byte
untouched with a one-line error (exit status 2), never a traceback."""

import json
import shutil
from pathlib import Path

import pytest

from contrastlens.benchmarks import get_benchmark
from contrastlens.cases.io import CaseStore, get_case, load_cases
from contrastlens.cli.main import main
from contrastlens.collect import CollectResources, CollectSettings, collect
from contrastlens.errors import InputError

from .test_cases_schema_io import make_case

MANUAL = CollectSettings(failure_index=1, contrast=5, top_k=2, max_new_tokens=8, progress=False)


def write_traces(folder: Path, n: int = 5, passing: tuple[int, ...] = (2,)) -> Path:
    """``n`` tiny agent traces; each fails (wrong event id) except those in ``passing``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        wrong = i if i in passing else i + 1
        (folder / f"t{i:02d}.json").write_text(json.dumps({
            "messages": [{"role": "user", "content": f"Delete event {i}."},
                         {"role": "assistant", "content": "Action: Calendar__delete_event\n"
                                                          f'Action Input: {{"event_id": "evt-{wrong}"}}'}],
            "expected": {"tool": "Calendar__delete_event", "args": {"event_id": f"evt-{i}"}}}))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _cli(tmp_path, out, *extra):
    traces = write_traces(tmp_path / "traces", 2)
    return main(["collect", "-b", "gaia2", "-m", "random:llama", "--data", str(traces), "-o", str(out),
                 "--no-progress", "--failure-index", "1", "--contrast", "#5", "--top-k", "1", *extra])


GOOD = json.dumps(make_case().model_dump(mode="json"))
NOT_CASE_FILES = {
    "one line, no newline": b"my notes: do not lose this",
    "text lines": b"first line\nsecond line\nlast line",
    "a JSON object that is not a case": b'{"a": 1}\n',
    "a case, then a last line that is not one": (GOOD + "\n" + "notes").encode(),
    "a case, then a complete non-case line": (GOOD + '\n{"a": 1}\n').encode(),
    "not UTF-8": b"\xff\xfe\x00 binary \x80\n\x81",
    "a JSON list": b"[1, 2, 3]\n",
}


@pytest.mark.parametrize("fresh", [False, True], ids=["resume", "fresh"])
@pytest.mark.parametrize("content", list(NOT_CASE_FILES.values()), ids=list(NOT_CASE_FILES))
def test_out_that_is_not_a_case_file_is_refused_untouched(tmp_path, capsys, content, fresh):
    out = tmp_path / "out" / "notes.txt"
    out.parent.mkdir()
    out.write_bytes(content)
    before = _snapshot(out.parent)
    assert _cli(tmp_path, out, *(["--fresh"] if fresh else [])) == 2
    err = _one_line_error(capsys)
    assert str(out) in err and ("not a case file" in err or "not a valid case" in err)
    assert _snapshot(out.parent) == before  # no byte changed, no .torn, no .progress, no summary


def test_out_or_case_that_is_a_directory_is_a_one_line_error(tmp_path, capsys):
    d = tmp_path / "cases.jsonl"
    d.mkdir()
    assert _cli(tmp_path, d) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert list(d.iterdir()) == [] and not (tmp_path / "cases.jsonl.progress").exists()
    with pytest.raises(InputError, match="is a directory"):
        load_cases(d)
    with pytest.raises(InputError, match="is a directory"):
        get_case(f"{d}#x")
    with pytest.raises(InputError, match="is a directory"):
        CaseStore(d)
    assert main(["explain", "--case", f"{d}#x"]) == 2
    assert "is a directory" in _one_line_error(capsys)


def test_non_utf8_case_file_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "c.jsonl"
    f.write_bytes(GOOD.encode() + b"\n" + GOOD.encode().replace(b"abc", b"a\xffc") + b"\n")
    with pytest.raises(InputError, match=r"c.jsonl:2: not UTF-8"):
        load_cases(f)
    assert main(["explain", "--case", f"{f}#t-1"]) == 2
    assert "c.jsonl:2: not UTF-8" in _one_line_error(capsys)


@pytest.mark.parametrize("bad", [b"\xff\xfe not utf-8", b"{not json", b'{"status": "passed"}'],
                         ids=["not utf-8", "not json", "no item_id"])
def test_corrupt_middle_line_of_progress_is_a_one_line_error_naming_the_line(tmp_path, capsys, bad):
    out = tmp_path / "c.jsonl"
    out.write_text(GOOD + "\n")
    prog = tmp_path / "c.jsonl.progress"
    prog.write_bytes(b'{"item_id": "1", "status": "case"}\n' + bad + b'\n{"item_id": "9", "status": "passed"}\n')
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=r"c.jsonl.progress:2: "):
        CaseStore(out)
    assert _cli(tmp_path, out) == 2
    assert "c.jsonl.progress:2:" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


def test_torn_case_whose_progress_line_was_written_is_redone(random_lm, tmp_path):
    """The issue's case: the last case line is torn while ``.progress`` already says it was written. The
    torn bytes go to ``FILE.torn``, the item is run again, and file and summary equal an uninterrupted run."""
    traces = write_traces(tmp_path / "traces", 5, passing=(2,))
    res, bench = CollectResources(random_lm("llama")), get_benchmark("gaia2")
    ref_file = tmp_path / "ref.jsonl"
    ref = collect(MANUAL, res, bench, str(ref_file), data=traces)
    ref_lines = ref_file.read_bytes().splitlines(keepends=True)
    ref_prog = Path(str(ref_file) + ".progress").read_bytes().splitlines(keepends=True)
    assert (ref.failed, ref.passed, len(ref_lines), len(ref_prog)) == (4, 1, 4, 5)

    f = tmp_path / "c.jsonl"
    torn = ref_lines[2][: len(ref_lines[2]) // 2]
    f.write_bytes(b"".join(ref_lines[:2]) + torn)  # items 0, 1 whole; item 3's case torn
    Path(str(f) + ".progress").write_bytes(b"".join(ref_prog[:4]))  # 0, 1, 2 (passed) and 3 "written"
    summ = collect(MANUAL, res, bench, str(f), data=traces)
    assert f.read_bytes() == ref_file.read_bytes()  # item 3 redone, nothing duplicated
    assert summ.resumed == 3 and summ.items == ref.items
    for k in ("passed", "failed", "localised", "clean", "skipped", "methods", "rollouts_total",
              "rollouts_per_localised_case"):
        assert summ.as_dict()[k] == ref.as_dict()[k], k
    assert Path(str(f) + ".torn").read_bytes() == torn + b"\n"  # moved aside, not deleted
    last = {}
    for line in Path(str(f) + ".progress").read_text().splitlines():
        rec = json.loads(line)
        last[rec["item_id"]] = rec
    cases = {c.item_id for c in load_cases(f)}
    assert {i for i, r in last.items() if r["status"] == "case"} == cases == {"t00", "t01", "t03", "t04"}


def test_case_without_progress_line_is_done_and_counted_by_the_case(random_lm, tmp_path):
    """Killed between a case and its progress line: the case is done, counted as localised (and clean) as
    in an uninterrupted run, and its progress line is written on opening."""
    traces = write_traces(tmp_path / "traces", 3, passing=())
    res, bench = CollectResources(random_lm("llama")), get_benchmark("gaia2")
    ref_file = tmp_path / "ref.jsonl"
    ref = collect(MANUAL, res, bench, str(ref_file), data=traces)
    f = tmp_path / "c.jsonl"
    shutil.copy(ref_file, f)
    prog = Path(str(ref_file) + ".progress").read_bytes().splitlines(keepends=True)
    Path(str(f) + ".progress").write_bytes(b"".join(prog[:2]))  # the last case has no progress line
    summ = collect(MANUAL, res, bench, str(f), data=traces)
    assert summ.resumed == 3 and summ.generated == 0
    assert (summ.failed, summ.localised, summ.clean, summ.rollouts) == (ref.failed, ref.localised, ref.clean,
                                                                         ref.rollouts)
    assert summ.methods == ref.methods
    assert Path(str(f) + ".progress").read_bytes() == b"".join(prog)  # the missing line, derived from the case


def test_torn_progress_tail_is_moved_aside_and_its_case_still_counts(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(GOOD + "\n")
    prog = Path(str(f) + ".progress")
    torn = b'{"item_id": "1", "status": "ca'
    prog.write_bytes(b'{"item_id": "0", "status": "passed"}\n' + torn)
    store = CaseStore(f)
    assert store.is_done("0") and store.is_done("1") and store.done["1"]["localised"] is True
    assert Path(str(prog) + ".torn").read_bytes() == torn + b"\n"
    lines = [json.loads(x) for x in prog.read_text().splitlines()]
    assert [r["item_id"] for r in lines] == ["0", "1"] and lines[1]["status"] == "case"
    assert f.read_text() == GOOD + "\n"


def test_torn_file_is_appended_to_never_overwritten(tmp_path):
    f = tmp_path / "c.jsonl"
    Path(str(f) + ".torn").write_bytes(b"older torn bytes\n")
    f.write_bytes(GOOD.encode() + b"\n" + GOOD.encode()[:30])
    CaseStore(f)
    f.write_bytes(f.read_bytes() + GOOD.encode()[:10])
    CaseStore(f)
    assert Path(str(f) + ".torn").read_bytes() == (b"older torn bytes\n" + GOOD.encode()[:30] + b"\n"
                                                  + GOOD.encode()[:10] + b"\n")
    assert f.read_bytes() == GOOD.encode() + b"\n"


def test_fresh_deletes_only_after_the_check(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(GOOD + "\n")
    Path(str(f) + ".progress").write_text("garbage that --fresh may drop\n")
    store = CaseStore(f, resume=False)
    assert not store.is_done("1") and not f.exists() and not Path(str(f) + ".progress").exists()


# ---------------------------------------------------------------------------------- the generic appender
def test_jsonl_appender_frames_records_and_checks_the_tail(tmp_path):
    from contrastlens.cases.io import JsonlAppender, append_record, check_tail, scan_jsonl

    f = tmp_path / "r.jsonl"
    app = JsonlAppender(f, what="results file", first_key="key")
    app.append({"v": "a\nb\u2028c", "key": 1})  # first_key first; newlines inside strings are escaped
    app.append({"key": 2})
    assert f.read_bytes().count(b"\n") == 2 and f.read_text().startswith('{"key": 1, "v": ')
    assert [r for _, r in scan_jsonl(f).records] == [{"key": 1, "v": "a\nb\u2028c"}, {"key": 2}]
    with pytest.raises(ValueError, match="needs the key"):
        app.append({"v": 3})
    # torn since it was opened: the next append moves the torn bytes aside first
    with open(f, "ab") as fh:
        fh.write(b'{"key": 3, "v": "h\xc3')  # cut inside a UTF-8 character: still a torn tail, not an error
    append_record(f, {"key": 4}, first_key="key")
    assert [r["key"] for _, r in scan_jsonl(f).records] == [1, 2, 4]
    assert Path(str(f) + ".torn").read_bytes() == b'{"key": 3, "v": "h\xc3\n'
    # a whole record without its newline is kept and completed; zero-filled tails are torn
    with open(f, "ab") as fh:
        fh.write(b'{"key": 5}')
    assert check_tail(f, first_key="key") is None and f.read_bytes().endswith(b'{"key": 5}\n')
    with open(f, "ab") as fh:
        fh.write(b"\0" * 8)
    assert check_tail(f, first_key="key") == b"\0" * 8
    # foreign data is refused, untouched
    g = tmp_path / "g.txt"
    g.write_bytes(b'{"key": 1}\nhello')
    with pytest.raises(InputError, match=r"g.txt:2: the last line is neither"):
        check_tail(g, what="results file", first_key="key")
    assert g.read_bytes() == b'{"key": 1}\nhello'


def test_a_failed_write_is_cut_back(tmp_path, monkeypatch):
    import os

    from contrastlens.cases import io

    f = tmp_path / "r.jsonl"
    app = io.JsonlAppender(f)
    app.append({"a": 1})
    before = f.read_bytes()
    real = os.write

    def half_then_fail(fd, data):
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "write", half_then_fail)
    with pytest.raises(OSError):
        app.append({"a": 2, "b": "x" * 100})
    monkeypatch.undo()
    assert f.read_bytes() == before
