"""``contrastlens explain``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from contrastlens.cli.common import (
    add_case_arg,
    add_model_args,
    add_prompt_args,
    case_and_model,
    parse_token,
    read_prompt,
)


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p, required=False)
    add_prompt_args(p, required=False)
    add_case_arg(p)
    p.add_argument("--target", help="the (wrong) token explained: a single-token string or #ID")
    p.add_argument("--contrast", help="the (correct) alternative: a single-token string or #ID")
    p.add_argument("--objective", default="logit_diff",
                   help="logit_diff (default), max_logit, demean, topk_avg, contrast_rank")
    p.add_argument("--k", type=int, default=None, help="k for topk_avg (default 10)")
    p.add_argument("--rank", type=int, default=None, help="rank for contrast_rank (default 2)")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="attribution method: attnlrp (default), cp-lrp, ixg, ig, occlusion, random, lrp-occlusion")
    p.add_argument("--method-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the method, e.g. steps=64 or baseline=mean for ig, seed=3 for random, "
                   "k=8 for lrp-occlusion (repeatable)")
    p.add_argument("--rule", default=None, choices=["attnlrp", "cp-lrp"],
                   help="the LRP rule (default attnlrp); the same as --method for attnlrp and cp-lrp")
    p.add_argument("--position", type=int, default=None, help="token position explained (default: last)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (less memory)")
    p.add_argument("--norm", default="max_abs", choices=["max_abs", "sum_abs", "abs_sum"], help="heatmap normalisation")
    p.add_argument("--top", type=int, default=5, help="strongest tokens listed per sign")
    p.add_argument("--html", help="write a self-contained HTML heatmap")
    p.add_argument("--json", help="write the explanation as JSON")
    p.add_argument("--save", help="write the explanation as a .ctl file")
    p.add_argument("--latex", help="write a LaTeX heatmap")
    p.add_argument("--png", help="write a PNG heatmap")
    p.add_argument("--quiet", action="store_true", help="no terminal heatmap")


def parse_method_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value that reads as an integer or a number is one, anything else a string."""
    from contrastlens.errors import InputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--method-opt takes KEY=VALUE, not {item!r}")
        parsed: Any = value
        for convert in (int, float):
            try:
                parsed = convert(value)
                break
            except ValueError:
                continue
        out[key.strip()] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    from contrastlens.attribution.explain import explain
    from contrastlens.errors import InputError

    options = parse_method_options(args.method_opt)
    case, lm = case_and_model(args)
    common = dict(objective=args.objective, rule=args.rule, method=args.method, method_params=options,
                  checkpointing=args.checkpointing, k=args.k, rank=args.rank)
    if case is not None:
        if args.position is not None:
            raise InputError("--case fixes the explained position; drop --position")
        ex = explain(lm, case, **common)
    else:
        target, contrast = parse_token(args.target), parse_token(args.contrast)
        if args.objective in ("logit_diff",) and target is None:
            raise InputError("--target is required with the logit_diff objective")
        ex = explain(lm, read_prompt(args), target, contrast, chat=args.chat, position=args.position, **common)
    if not args.quiet:
        ex.print(norm=args.norm, top=args.top)
    for path, write in ((args.html, lambda p: ex.to_html(p, norm=args.norm)), (args.json, ex.to_json),
                        (args.save, ex.save), (args.latex, lambda p: ex.to_latex(p, norm=args.norm)),
                        (args.png, lambda p: ex.to_png(p, norm=args.norm))):
        if path:
            write(path)
            print(f"wrote {path}", file=sys.stderr)
    return 0
