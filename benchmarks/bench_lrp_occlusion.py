"""``lrp-occlusion`` against full occlusion and AttnLRP on real cases: tokens-to-flip and cost side by side.

The faithfulness suite's claim for ``lrp-occlusion`` is that its tokens-to-flip is at least as good as full
leave-one-out occlusion's while it costs at most 2× one AttnLRP explanation. This script measures both on
the clean SmolLM2 cases (``--benchmarks`` picks them), with the suite's own masking (zero embedding) and
tokens-to-flip (censored at ``--limit``), for AttnLRP, full occlusion and one or more ``lrp-occlusion``
variants (``--variant k=32,budget=1.5``; repeatable; the default options when none is given).

Printed per case: its length, then per method tokens-to-flip (``*``: censored) and seconds relative to the
case's AttnLRP explanation; for each variant also whether its search found a flipping set (``lead_from``:
``greedy``, ``prefix`` or ``-``) and how many positions its shortlist verified. At the end, per method: mean
tokens-to-flip (censored values count as the limit), the share flipped within 2 and 5, the median and
maximum cost, and the number of cases where the variant is at least as good as occlusion.

Occlusion costs O(n) forwards; ``--cache FILE`` (an .npz) keeps its relevance between runs, so trying
variants costs only their own time.

    python benchmarks/bench_lrp_occlusion.py --benchmarks math500
    python benchmarks/bench_lrp_occlusion.py --variant k=16 --variant k=32,budget=2 --cache out/occ.npz
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str) -> object:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_variant(text: str) -> dict[str, object]:
    """``k=32,budget=2`` -> {"k": 32, "budget": 2}."""
    out: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--variant: expected name=value, got {part!r}")
        out[name.strip()] = _value(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--benchmarks", nargs="+", default=["math500", "ifeval", "humaneval"])
    ap.add_argument("--cases", type=int, default=None, help="at most N cases per benchmark (file order)")
    ap.add_argument("--limit", type=int, default=10, help="tokens-to-flip limit (as in studies/smollm2.toml)")
    ap.add_argument("--variant", action="append", default=None, metavar="OPTS",
                    help="lrp-occlusion options, e.g. k=32,budget=2 (repeatable)")
    ap.add_argument("--cache", type=Path, default=None, help="an .npz keeping occlusion's relevance per case")
    a = ap.parse_args()

    import numpy as np

    import contrastlens as cl
    from contrastlens.cases.io import load_cases
    from contrastlens.study.analyses.faithfulness import DeltaForward, tokens_to_flip

    variants = [parse_variant(v) for v in (a.variant or [""])]
    names = ["attnlrp", "occlusion"] + [
        "lrp-occ" + ("(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "") for opts in variants]
    cases = []
    for b in a.benchmarks:
        f = ROOT / "examples" / "cases" / "study" / f"{b}-{a.model}.jsonl"
        if not f.exists():
            raise SystemExit(f"no case file {f.relative_to(ROOT)}")
        cases += load_cases(f, clean_only=True)[: a.cases]
    cache: dict[str, np.ndarray] = {}
    if a.cache is not None and a.cache.exists():
        cache = dict(np.load(a.cache))
    lm = cl.load_model(a.model)
    print(f"lrp-occlusion vs occlusion: {a.model}, {len(cases)} clean cases, tokens-to-flip limit {a.limit}",
          flush=True)
    print(f"{'case':28} {'n':>5} " + " ".join(f"{m[:22]:>22}" for m in names), flush=True)
    flips: dict[str, list[tuple[int, bool]]] = {m: [] for m in names}
    costs: dict[str, list[float]] = {m: [] for m in names}
    for case in cases:
        t0 = time.perf_counter()
        ex = cl.explain(lm, case)
        base = time.perf_counter() - t0
        fwd = DeltaForward.from_explanation(lm, ex)
        key = str(case.id)
        cells = []
        for m, opts in zip(names, [None, None, *variants], strict=True):
            note = ""
            if m == "attnlrp":
                rel, sec = ex.input_relevance, base
            elif m == "occlusion":
                if key in cache:
                    rel, sec = cache[key][:-1], float(cache[key][-1])
                else:
                    t0 = time.perf_counter()
                    rel = np.asarray(cl.explain(lm, case, method="occlusion").input_relevance, dtype=np.float64)
                    sec = time.perf_counter() - t0
                    cache[key] = np.append(rel, sec)
                    if a.cache is not None:
                        a.cache.parent.mkdir(parents=True, exist_ok=True)
                        np.savez(a.cache, **cache)
            else:
                t0 = time.perf_counter()
                ex2 = cl.explain(lm, case, method="lrp-occlusion", method_params=dict(opts or {}))
                sec = time.perf_counter() - t0
                rel = ex2.input_relevance
                meta = ex2.meta
                note = f" {meta.get('lead_from') or '-'}/{len(meta.get('shortlist', []))}"
            flip = tokens_to_flip(fwd, np.asarray(rel, dtype=np.float64), limit=a.limit)
            flips[m].append((flip.tokens, flip.censored))
            costs[m].append(sec / base)
            cells.append(f"{str(flip.tokens) + ('*' if flip.censored else ''):>4} {sec / base:>6.2f}x{note:>10}")
        print(f"{key[:28]:28} {len(ex.input_ids):>5} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    print()
    print(f"{'method':28} {'mean':>6} {'within2':>8} {'within5':>8} {'cost med':>9} {'cost max':>9} {'≤ occ':>6}")
    occ = [t for t, _ in flips["occlusion"]]
    for m in names:
        toks = [t for t, _ in flips[m]]
        le = sum(x <= y for x, y in zip(toks, occ, strict=True))
        print(f"{m[:28]:28} {statistics.mean(toks):>6.2f} {sum(t <= 2 for t in toks) / len(toks):>8.2f} "
              f"{sum(t <= 5 for t in toks) / len(toks):>8.2f} {statistics.median(costs[m]):>9.2f} "
              f"{max(costs[m]):>9.2f} {le:>3}/{len(toks)}")


if __name__ == "__main__":
    main()
