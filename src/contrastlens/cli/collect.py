"""``contrastlens collect``: failure cases from a benchmark (generate, score, localise, write JSONL)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", "-b", required=True, help="ifeval, math500, humaneval or agent")
    p.add_argument("--model", "-m", required=True, help="model source (catalog alias, .gguf, folder, random:ARCH)")
    p.add_argument("--data", default=None,
                   help="data file or folder (default: $CONTRASTLENS_DATA, else ../shared/data)")
    p.add_argument("--out", "-o", required=True, help="case file to append to (JSONL)")
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--offset", type=int, default=0, help="skip the first N items")
    p.add_argument("--items", default=None, help="comma-separated item ids to run")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=V1,V2",
                   help="keep items whose data field (or one element of a list field) equals one of the values, e.g. "
                        "level=1,2 or instruction_id_list=punctuation:no_comma; repeatable")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default per benchmark)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=4, help="alternatives rolled out per probed position")
    p.add_argument("--max-probes", type=int, default=12,
                   help="positions probed per case by the checker-guided probes and the binary search "
                        "(0: checker-guided probes and the scan only)")
    p.add_argument("--scan-probes", type=int, default=None,
                   help="positions probed by the uncertainty scan when the binary search finds nothing "
                        "(default: --max-probes; 0 turns the scan off)")
    p.add_argument("--rollout-slack", type=int, default=64,
                   help="a rollout stops this many tokens past the failed completion's length "
                        "(-1: only --max-new-tokens)")
    p.add_argument("--rollout-batch", type=int, default=32,
                   help="rollouts per batch when the scan or the checker probes several positions at once "
                        "(on a CPU a decoding step for 32 rows costs about twice one for 8)")
    p.add_argument("--chat", dest="chat", action="store_true", default=True,
                   help="render prompts with the chat template (default)")
    p.add_argument("--no-chat", dest="chat", action="store_false", help="plain prompts, no chat template")
    p.add_argument("--regenerate", action="store_true", help="agent traces: generate the last turn anew")
    p.add_argument("--sibling", default=None, help="fallback model (same tokenizer) whose top-10 are tried")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint of an LLM judge (off by default)")
    p.add_argument("--judge-model", default=None, help="the judge's model name")
    p.add_argument("--failure-index", type=int, default=None, help="manual: failure token index in the completion")
    p.add_argument("--contrast", default=None, help="manual: contrast token (string or #id)")
    p.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming an existing --out")
    p.add_argument("--no-progress", action="store_true")


def _matches(value: object, allowed: set[str]) -> bool:
    """A data field matches when it (or, for a list field, one of its elements) is an allowed value."""
    if isinstance(value, list | tuple):
        return any(str(v) in allowed for v in value)
    return str(value) in allowed


def run(args: argparse.Namespace) -> int:
    from contrastlens.benchmarks import get_benchmark
    from contrastlens.collect.localise import http_judge
    from contrastlens.collect.pipeline import CollectConfig, collect
    from contrastlens.errors import InputError
    from contrastlens.models.loading import load_model

    if (args.failure_index is None) != (args.contrast is None) and args.contrast is not None:
        raise InputError("--contrast needs --failure-index")
    if args.judge_url and not args.judge_model:
        raise InputError("--judge-url needs --judge-model")
    bench = get_benchmark(args.benchmark)
    data = args.data
    items, bad = bench.load(data, data_dir=None) if data else bench.load()
    if args.items:
        want = {s.strip() for s in args.items.split(",") if s.strip()}
        items = [it for it in items if it.id in want]
        bad = [b for b in bad if b[0] in want]
        if not items:
            raise InputError(f"none of the items {sorted(want)} is in the data")
    for flt in args.filter:
        if "=" not in flt:
            raise InputError(f"--filter {flt!r} must be FIELD=VALUE[,VALUE...]")
        key, vals = flt.split("=", 1)
        allowed = {v.strip() for v in vals.split(",")}
        items = [it for it in items if _matches(it.data.get(key), allowed)]
    items = items[args.offset :]
    if args.limit is not None:
        items = items[: args.limit]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    if args.chat and not getattr(lm.tokenizer, "chat_template", None):
        print(f"warning: the tokenizer of {args.model} has no chat template; every item will be skipped "
              "(run with --no-chat)", file=sys.stderr)
    sibling = None
    if args.sibling:
        sibling = load_model(args.sibling, dtype=args.dtype)
        if sibling.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
            raise InputError(f"--sibling {args.sibling} does not share the tokenizer of {args.model}")
    judge = None
    if args.judge_url:
        judge = http_judge(args.judge_url, args.judge_model, os.environ.get("CONTRASTLENS_JUDGE_API_KEY"))
    contrast: int | str | None = args.contrast
    if isinstance(contrast, str) and contrast.startswith("#") and contrast[1:].isdigit():
        contrast = int(contrast[1:])
    cfg = CollectConfig(
        max_new_tokens=args.max_new_tokens or bench.default_max_new_tokens, batch_size=args.batch_size,
        k=args.top_k, max_probes=args.max_probes, scan_probes=args.scan_probes,
        rollout_slack=None if args.rollout_slack < 0 else args.rollout_slack, batch_rows=args.rollout_batch,
        chat=args.chat,
        regenerate=args.regenerate, sibling=sibling,
        judge=judge, failure_index=args.failure_index, contrast=contrast, progress=not args.no_progress,
    )
    summ = collect(lm, bench, items, args.out, cfg, bad_rows=bad, resume=not args.fresh)
    print(summ.table())
    with open(args.out + ".summary.json", "w", encoding="utf-8") as f:
        json.dump(summ.as_dict(), f, indent=1)
    sys.stdout.flush()
    return 0
