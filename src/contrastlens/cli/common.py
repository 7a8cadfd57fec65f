"""Options shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from contrastlens.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.cases.schema import FailureCase
    from contrastlens.models.loaded import LoadedModel


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    extra = "" if required else " (default with --case: the model the case was collected with)"
    p.add_argument("--model", required=required, metavar="SRC",
                   help="catalog alias (smollm2-135m-instruct), random:<arch>, a .gguf file, a HF folder or hub id"
                   + extra)
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")


def add_prompt_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--prompt", help="the prompt text")
    g.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message with the chat template")


def read_prompt(args: argparse.Namespace) -> str:
    if getattr(args, "prompt_file", None) is not None:
        try:
            return args.prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"prompt file {args.prompt_file} is not UTF-8 text (byte {e.start}); "
                             "save it as UTF-8") from None
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


def add_case_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", metavar="FILE#ID",
                   help="a failure case from a cases JSONL file (it fixes the prompt, target and contrast)")


def load(args: argparse.Namespace, source: str | None = None, revision: str | None = None) -> LoadedModel:
    from contrastlens.models.loading import load_model

    return load_model(source or args.model, dtype=args.dtype, revision=revision or args.revision,
                      attn_implementation=args.attn)


def case_and_model(args: argparse.Namespace) -> tuple[FailureCase | None, LoadedModel]:
    """The case of ``--case`` (None without it) and the model: ``--model``, else the case's own model. With
    ``--case``, ``--prompt``/``--prompt-file``/``--target``/``--contrast``/``--chat`` are an error (the case
    fixes them); without it, a prompt is required."""
    if args.case is None:
        if args.model is None:
            raise InputError("give --model (or --case, whose model is used)")
        if getattr(args, "prompt", None) is None and getattr(args, "prompt_file", None) is None:
            raise InputError("give --prompt, --prompt-file or --case")
        return None, load(args)
    given = [flag for flag, v in (("--prompt", getattr(args, "prompt", None)),
                                  ("--prompt-file", getattr(args, "prompt_file", None)),
                                  ("--target", getattr(args, "target", None)),
                                  ("--contrast", getattr(args, "contrast", None)))
             if v is not None]
    if getattr(args, "chat", False):
        given.append("--chat")
    if given:
        raise InputError(f"--case fixes the prompt, target and contrast; drop {', '.join(given)}")
    from contrastlens.cases.io import load_case

    case = load_case(args.case)
    if args.model is None:
        return case, load(args, case.model_source, case.model_revision)
    return case, load(args)
