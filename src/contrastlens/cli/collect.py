"""``contrastlens collect``: failure cases from a benchmark (generate, score, localise, write JSONL).

The options of the run's settings are generated from the fields of
:class:`~contrastlens.collect.settings.CollectSettings` (flag, help text and default come from there);
only the options that are not settings (what to run, where to write, which models) are written out here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from typing import Any

_GROUPS = {"generation": "generation", "localisation": "localisation", "items": "item selection",
           "model": "model", "output": "output"}


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` -> tuple; ``int | str | None`` -> str (parsed later)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in args):
        return tuple
    if str in args:
        return str
    return args[0]


def _default_text(f: dataclasses.Field) -> str:
    shown = f.metadata.get("default_help")
    if shown is None:
        shown = "off" if f.default is None else f.default
    return f" (default: {shown})"


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """One option per :class:`CollectSettings` field (``dest`` = the field name, default left unset so
    the dataclass default applies): ints and strings take a value, a tuple field is repeatable or
    comma-separated, a boolean gets ``--NAME`` and, when it defaults to True, ``--no-NAME``."""
    from contrastlens.collect.settings import CollectSettings

    hints = typing.get_type_hints(CollectSettings)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(CollectSettings):
        m = f.metadata
        g = m.get("group", "run")
        if g not in groups:
            groups[g] = p.add_argument_group(_GROUPS.get(g, g))
        grp = groups[g]
        flag = m.get("flag") or "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            on_help = m["help"] + (" (default)" if f.default else "")
            grp.add_argument(flag, action="store_true", help=on_help, **common)
            if f.default:
                grp.add_argument("--no-" + flag[2:], action="store_false", help=m.get("no_help") or f"not {flag}",
                                 **common)
            continue
        typ = int if kind is int else str
        metavar = m.get("metavar")
        if m.get("repeatable"):
            grp.add_argument(flag, action="append", type=typ, metavar=metavar, help=m["help"] + _default_text(f),
                             **common)
        else:
            grp.add_argument(flag, type=typ, metavar=metavar, help=m["help"] + _default_text(f), **common)


def settings_from_args(args: argparse.Namespace):
    """The :class:`CollectSettings` of parsed options (options not given keep the dataclass defaults);
    invalid values raise :class:`~contrastlens.errors.InputError`."""
    from contrastlens.collect.settings import CollectSettings

    given: dict[str, Any] = {}
    for f in dataclasses.fields(CollectSettings):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            conv = f.metadata.get("from_cli")
            given[f.name] = conv(v) if conv is not None and v is not None else v
    return CollectSettings(**given)


def add_parser(p: argparse.ArgumentParser) -> None:
    from contrastlens.benchmarks.registry import benchmark_aliases, benchmark_names

    aliases = ", ".join(f"{a} = {c}" for a, c in sorted(benchmark_aliases().items()))
    run = p.add_argument_group("what to run")
    run.add_argument("--benchmark", "-b", required=True,
                     help=f"one of: {', '.join(benchmark_names())} (aliases: {aliases})")
    run.add_argument("--model", "-m", required=True, help="model source (catalog alias, .gguf, folder, random:ARCH)")
    run.add_argument("--data", default=None,
                     help="data file or the folder holding it (default: $CONTRASTLENS_DATA, else the benchmark's "
                          "hub dataset when the datasets package is installed; gaia2: the shipped trace)")
    run.add_argument("--out", "-o", required=True, help="case file to append to (JSONL)")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming an existing --out")
    add_settings_arguments(p)
    fb = p.add_argument_group("fallbacks")
    fb.add_argument("--sibling", default=None, help="fallback model (same tokenizer) whose top-10 are tried")
    fb.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint of an LLM judge (off by default); "
                                                      "the key is read from $CONTRASTLENS_JUDGE_API_KEY")
    fb.add_argument("--judge-model", default=None, help="the judge's model name")


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from contrastlens.benchmarks import get_benchmark
    from contrastlens.cases.io import check_case_output
    from contrastlens.collect.pipeline import collect, load_items
    from contrastlens.collect.settings import CollectResources
    from contrastlens.errors import InputError

    settings = settings_from_args(args)  # bad values: a one-line error before anything is loaded
    if args.judge_url and not args.judge_model:
        raise InputError("--judge-url needs --judge-model")
    # --out must be absent or a case file (with a sound progress file): checked read-only, before anything runs
    check_case_output(args.out, resume=not args.fresh)
    bench = get_benchmark(args.benchmark)
    items, bad = load_items(settings, bench, args.data)
    resources = CollectResources.load(settings, args.model, sibling=args.sibling, judge_url=args.judge_url,
                                      judge_model=args.judge_model,
                                      judge_api_key=os.environ.get("CONTRASTLENS_JUDGE_API_KEY"))
    with logging_redirect_tqdm(loggers=[logging.getLogger("contrastlens")]):
        summ = collect(settings, resources, bench, args.out, items=items, bad_rows=bad, resume=not args.fresh)
    print(summ.table())
    summary_path = args.out + ".summary.json"
    with open(summary_path + ".tmp", "w", encoding="utf-8") as f:  # replaced whole: never a torn summary
        json.dump({**summ.as_dict(), "settings": settings.to_dict()}, f, indent=1)
    os.replace(summary_path + ".tmp", summary_path)
    sys.stdout.flush()
    return 0
