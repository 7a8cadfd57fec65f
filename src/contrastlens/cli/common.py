"""Options shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastlens.errors import InputError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SRC",
                   help="catalog alias (smollm2-135m-instruct), random:<arch>, a .gguf file, a HF folder or hub id")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")


def add_prompt_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--prompt", help="the prompt text")
    g.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message with the chat template")


def read_prompt(args) -> str:
    if getattr(args, "prompt_file", None) is not None:
        try:
            return args.prompt_file.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read prompt file {args.prompt_file}: {e.strerror}") from None
    return args.prompt


def parse_token(s: str | None) -> int | str | None:
    """'#123' or an all-digit string with a leading '#' is an id; anything else a token string."""
    if s is None:
        return None
    if s.startswith("#") and s[1:].isdigit():
        return int(s[1:])
    return s


def load(args):
    from contrastlens.models.loading import load_model

    return load_model(args.model, dtype=args.dtype, revision=args.revision, attn_implementation=args.attn)
