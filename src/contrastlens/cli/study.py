"""``contrastlens study``: run a failure study, show its status, render its report, label its cases.

    contrastlens study run STUDY.toml --out DIR [--ray [ADDRESS]] [--only ANALYSIS ...] [--no-progress]
    contrastlens study status DIR
    contrastlens study report DIR [--format html|md] [--out FILE]
    contrastlens study label DIR --case ID --model NAME --outcome OUTCOME --pattern PATTERN [--note TEXT]

``run`` prints the summary (done, already current, skipped and failed units with reasons) and exits 0
even when units failed (the summary says which; ``summary.json`` keeps them); bad input (the study file, the
results folder) is one line on stderr and exit status 2. ``report`` writes ``DIR/report.html`` (or
``report.md``) or ``--out FILE``, and never replaces a file it did not write itself (a report carries a
marker comment at its top, see :mod:`contrastlens.study.report`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    sub.required = True

    run = sub.add_parser("run", help="run (or resume) a study into a results folder",
                         description="Run every unit of a study that is not stored yet; a killed run resumes.")
    run.add_argument("study", metavar="STUDY.toml", help="the study file")
    run.add_argument("--out", "-o", required=True, metavar="DIR", help="results folder (created when absent)")
    run.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run units as Ray tasks: without ADDRESS on a local Ray started here, else on the "
                          "cluster at ADDRESS ('auto': the one on this machine)")
    run.add_argument("--only", nargs="+", metavar="ANALYSIS", default=None,
                     help="run only these analyses (the others' units stay as they are)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(_study=_run)

    st = sub.add_parser("status", help="units done / pending / stale / failed per analysis",
                        description="What a results folder holds, per analysis, with the reasons of failures.")
    st.add_argument("dir", metavar="DIR", help="results folder")
    st.set_defaults(_study=_status)

    rep = sub.add_parser("report", help="render the study report (HTML or Markdown)",
                         description="One self-contained HTML file (or Markdown) with every analysis' section.")
    rep.add_argument("dir", metavar="DIR", help="results folder")
    rep.add_argument("--format", choices=["html", "md"], default="html", help="html (default) or md")
    rep.add_argument("--out", "-o", default=None, metavar="FILE",
                     help="where to write it (default: DIR/report.html or DIR/report.md)")
    rep.set_defaults(_study=_report)

    lab = sub.add_parser("label", help="store a manual taxonomy label of a case (preferred in reports)",
                         description="A manual outcome / pattern label of one case under one model.")
    lab.add_argument("dir", metavar="DIR", help="results folder")
    lab.add_argument("--case", required=True, metavar="ID", help="the case id")
    lab.add_argument("--model", required=True, metavar="NAME", help="the study's model name")
    lab.add_argument("--outcome", required=True, help="e.g. M-IA, NC-IA+M-AG, NC-IA+AG")
    lab.add_argument("--pattern", required=True, help="e.g. URT, OIT, URT+OIT, bias-dominated")
    lab.add_argument("--note", default="", help="free text")
    lab.set_defaults(_study=_label)


def run(args: argparse.Namespace) -> int:
    return int(args._study(args) or 0)


def _run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from contrastlens.study.runner import run_study

    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("contrastlens")]):
            summary = run_study(args.study, args.out, ray=args.ray, progress=not args.no_progress, only=args.only)
    except KeyboardInterrupt:
        print("study run interrupted: every finished unit is stored; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(summary.table())
    sys.stdout.flush()
    return 0


def _status(args: argparse.Namespace) -> int:
    from contrastlens.study.runner import format_status, study_status

    print(format_status(study_status(args.dir)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from contrastlens.errors import InputError
    from contrastlens.study.report import is_report, write_report
    from contrastlens.study.runner import render_study_report

    out = Path(args.out) if args.out else Path(args.dir) / f"report.{args.format}"
    if out.is_file() and not is_report(out):  # checked before the work; write_report checks again
        raise InputError(f"{out} exists and is not a contrastlens study report; refusing to overwrite it "
                         "(move it away or give another --out)")
    text = render_study_report(args.dir, fmt=args.format)
    try:
        path = write_report(text, out)  # refuses to replace a file that is not a previous report
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}") from None
    print(path)
    return 0


def _label(args: argparse.Namespace) -> int:
    from contrastlens.study.analyses.taxonomy import write_label
    from contrastlens.study.store import Store

    Store.open(args.dir)  # a results folder, else a clear error
    write_label(args.dir, args.case, args.model, args.outcome, args.pattern, note=args.note)
    print(f"labelled case {args.case} under {args.model}: {args.outcome} / {args.pattern}")
    return 0
