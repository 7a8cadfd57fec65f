"""``contrastlens graph``: build a cross-layer attribution graph."""

from __future__ import annotations

import argparse
import sys

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
    p.add_argument("--target", help="the (wrong) token explained: a single-token string or #ID (not with --case)")
    p.add_argument("--contrast", help="the (correct) alternative: a single-token string or #ID (not with --case)")
    p.add_argument("--rule", default="attnlrp", choices=["attnlrp", "cp-lrp"])
    p.add_argument("--method", default="exact", choices=["exact", "replay"],
                   help="exact closed form for adjacent layers (default) or batch replay everywhere")
    p.add_argument("--layers", help="comma-separated node layers, e.g. emb,0,5,11 or emb,0.mid,0 (default: all)")
    p.add_argument("--no-mid", action="store_true", help="without the l.mid nodes (default layers only)")
    p.add_argument("--node-threshold", type=float, default=0.0,
                   help="skip target nodes with |R| <= this (the paper uses 0.01)")
    p.add_argument("--prune", help="per-transition pruning: cum_mass:P (the paper: cum_mass:0.85) or threshold:TAU")
    p.add_argument("--subgraph", action="store_true", help="keep only the ancestors of the final prediction node")
    p.add_argument("--batch-size", type=int, help="replay batch size (default: from n, width and free memory)")
    p.add_argument("--out", help="write the graph: .json (node-link) or .npz (reloadable)")
    p.add_argument("--html", help="write a static layered HTML view")
    p.add_argument("--metrics", help="write per-layer metrics as CSV")
    p.add_argument("--quiet", action="store_true", help="no summary on the terminal")


def run(args: argparse.Namespace) -> int:
    from contrastlens.errors import InputError
    from contrastlens.graph.build import attribution_graph
    from contrastlens.graph.prune import PruneSpec

    spec = PruneSpec.parse(args.prune) if args.prune else None
    if args.out and not args.out.endswith((".json", ".npz")):
        raise InputError("--out must end in .json (node-link) or .npz (reloadable)")
    case, lm = case_and_model(args)
    if case is None and (args.target is None or args.contrast is None):
        raise InputError("give --target and --contrast (or --case)")
    progress = None
    if not args.quiet:
        def progress(stage, done, total):
            print(f"  {stage} ({done}/{total})", file=sys.stderr)

    opts = dict(method=args.method, mid=not args.no_mid, layers=args.layers, node_threshold=args.node_threshold,
                prune=spec, rule=args.rule, batch_size=args.batch_size, progress=progress)
    if case is not None:
        g = attribution_graph(lm, case, **opts)
    else:
        g = attribution_graph(lm, read_prompt(args), parse_token(args.target), parse_token(args.contrast),
                              chat=args.chat, **opts)
    if args.subgraph:
        g = g.subgraph_to()
    if not args.quiet:
        print(g.summary())
    if args.out:
        (g.save if args.out.endswith(".npz") else g.to_json)(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.html:
        g.to_html(args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.metrics:
        g.metrics().to_csv(args.metrics)
        print(f"wrote {args.metrics}", file=sys.stderr)
    return 0
