"""``contrastlens <subcommand>``: a thin dispatcher.

Each subcommand lives in its own module under ``contrastlens.cli`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Modules are imported lazily, only for the
subcommand that runs, so one missing optional dependency never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import TextIO

# subcommand name -> module (relative to contrastlens.cli), one line of help
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("explain", "explain a wrong token against a correct one (input and hidden-state relevance)"),
    "logits": ("logits", "show the top next-token logits, to pick a target and a contrast"),
    "graph": ("graph", "build a cross-layer attribution graph"),
    "collect": ("collect", "collect failure cases from a benchmark"),
    "study": ("study", "run a failure study (resumable, optionally on Ray), show its status, render its report"),
    "serve": ("serve", "the explorer: inspect failures, heatmaps and graphs in the browser (a local web server)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contrastlens",
        description="Explain why a language model produced a wrong token instead of a correct one.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        try:
            mod = importlib.import_module(f"contrastlens.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("contrastlens.cli"):
                continue  # subcommand not available in this build
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record arrives (not the stream of the moment it
    was made), so a replaced or captured stderr never leaves it writing to a closed file."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging() -> None:
    """The library logs (``logging.getLogger("contrastlens...")``, nothing printed); the CLI shows its INFO
    lines on stderr unless the application configured logging itself (a handler on the root logger or on
    ``contrastlens``). Other libraries stay at their own levels."""
    log = logging.getLogger("contrastlens")
    if log.handlers or logging.getLogger().handlers:
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
        return
    log.addHandler(_StderrHandler())
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from contrastlens.errors import ContrastLensError

    configure_logging()

    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ContrastLensError as e:
        print(f"contrastlens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
