"""``contrastlens logits``: the top next-token logits at the last position."""

from __future__ import annotations

import argparse

from contrastlens.cli.common import add_model_args, add_prompt_args, load, read_prompt


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_prompt_args(p)
    p.add_argument("--top", type=int, default=10, help="how many tokens to list")
    p.add_argument("--position", type=int, default=-1, help="token position (default: last)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from contrastlens.attribution.logits import top_logits
    from contrastlens.errors import InputError

    if args.top < 1:
        raise InputError(f"--top must be a positive integer, got {args.top}")
    lm = load(args)
    rows = top_logits(lm, read_prompt(args), k=args.top, chat=args.chat, position=args.position)
    table = Table(title=f"top {args.top} next tokens ({lm.source})")
    for col in ("rank", "id", "token", "logit"):
        table.add_column(col, justify="right" if col != "token" else "left")
    for r in rows:
        table.add_row(str(r["rank"]), str(r["id"]), repr(r["token"]), f"{r['logit']:.4f}")
    Console().print(table)
    return 0
