#!/usr/bin/env python3
"""Type-check src/contrastlens with mypy against a baseline that may only shrink.

mypy's settings are in pyproject.toml (``[tool.mypy]``). Each error is normalised to
``path: [code] message`` (no line or column numbers, so unrelated edits do not change it) and compared
with scripts/mypy-baseline.txt, a sorted list of the errors accepted for now (an error that occurs
several times in a file is listed that many times).

    python scripts/typecheck.py                         # check (scripts/test.sh runs this)
    python scripts/typecheck.py --update                # shrink the baseline: drop the errors that are fixed
    python scripts/typecheck.py --update --allow-grow   # regenerate it from scratch, new errors included

The check fails (exit status 1) when an error that is not in the baseline appears (they are printed:
fix them), and also when the baseline lists errors that no longer occur (they are printed: run
``--update`` to remove them, so that they cannot come back unnoticed). ``--update`` never adds an
error: with new errors present it still removes the fixed ones, prints the new ones and fails.
``--allow-grow`` is for a deliberate one-off regeneration (e.g. after a large refactor, or when the
configuration changes): it writes every current error into the baseline. Exit status 2: mypy itself
could not run (not installed, a configuration error, a crash).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "scripts" / "mypy-baseline.txt"
TARGET = "src/contrastlens"
HEADER = """\
# mypy errors accepted for now (normalised: path: [code] message). This list may only shrink:
# fix an error, then run `python scripts/typecheck.py --update`. See scripts/typecheck.py.
"""

_LINE = re.compile(
    r"^(?P<path>[^:\n]+?):(?P<line>\d+)(?::\d+)?(?::\d+:\d+)?: (?P<severity>error|note|warning): "
    r"(?P<message>.*?)(?:  \[(?P<code>[a-z0-9_-]+)\])?$"
)


def normalise(path: str, message: str, code: str | None) -> str:
    path = Path(path).as_posix()
    message = re.sub(r"\bline \d+\b", "line N", message.strip())  # "defined on line 12"
    return f"{path}: [{code or 'misc'}] {message}"


def run_mypy() -> tuple[Counter[str], str]:
    """The current errors (normalised, counted) and mypy's raw output."""
    cmd = [sys.executable, "-m", "mypy", "--no-pretty", "--show-error-codes", "--no-error-summary", TARGET]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError as e:
        sys.exit(f"typecheck: could not run mypy: {e}")
    out = proc.stdout + proc.stderr
    if proc.returncode not in (0, 1) or "No module named mypy" in out:
        print(out, file=sys.stderr)
        print(f"typecheck: mypy failed to run (exit status {proc.returncode}); install it with "
              "`pip install -e '.[dev]'` (scripts/setup_env.sh does)", file=sys.stderr)
        sys.exit(2)
    errors: Counter[str] = Counter()
    for line in out.splitlines():
        m = _LINE.match(line)
        if m and m.group("severity") == "error":
            errors[normalise(m.group("path"), m.group("message"), m.group("code"))] += 1
    if proc.returncode == 1 and not errors:
        print(out, file=sys.stderr)
        print("typecheck: mypy reported a failure but no parseable errors", file=sys.stderr)
        sys.exit(2)
    return errors, out


def read_baseline(path: Path = BASELINE) -> Counter[str]:
    if not path.exists():
        return Counter()
    lines = path.read_text(encoding="utf-8").splitlines()
    return Counter(s for s in (ln.strip() for ln in lines) if s and not s.startswith("#"))


def write_baseline(errors: Counter[str], path: Path = BASELINE) -> None:
    body = "".join(f"{e}\n" for e in sorted(errors.elements()))
    path.write_text(HEADER + body, encoding="utf-8")


def _show(title: str, errors: Counter[str]) -> None:
    print(f"{title} ({sum(errors.values())}):")
    for e, n in sorted(errors.items()):
        print(f"  {e}" + (f"   (x{n})" if n > 1 else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help="remove fixed errors from the baseline")
    ap.add_argument("--allow-grow", action="store_true",
                    help="with --update: regenerate the baseline from the current errors, new ones included")
    ap.add_argument("--baseline", type=Path, default=BASELINE, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.allow_grow and not args.update:
        ap.error("--allow-grow only makes sense with --update")

    current, _ = run_mypy()
    baseline = read_baseline(args.baseline)
    new = current - baseline
    fixed = baseline - current
    total = sum(current.values())

    if args.update:
        if args.allow_grow:
            write_baseline(current, args.baseline)
            print(f"typecheck: baseline regenerated: {total} errors "
                  f"(+{sum(new.values())} new, -{sum(fixed.values())} fixed)")
            return 0
        kept = baseline & current
        write_baseline(kept, args.baseline)
        print(f"typecheck: baseline {sum(baseline.values())} -> {sum(kept.values())} errors")
        if new:
            _show("typecheck: new mypy errors, NOT added to the baseline (fix them)", new)
            return 1
        return 0

    status = 0
    if new:
        _show(f"typecheck: new mypy errors (not in {args.baseline.name}); fix them", new)
        status = 1
    if fixed:
        _show("typecheck: errors in the baseline that no longer occur; run `python scripts/typecheck.py "
              "--update` to remove them", fixed)
        status = 1
    if status == 0:
        print(f"typecheck: ok ({total} baseline errors remain)")
    return status


if __name__ == "__main__":
    sys.exit(main())
