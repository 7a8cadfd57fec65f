"""The greedy oracle's cost and answer, three ways on the same real cases, side by side in one run.

The faithfulness suite's oracle (:func:`contrastlens.study.analyses.faithfulness.greedy_oracle`) masks, at
each step, the one extra position that lowers Δℓ most. Run in full it costs about limit × m masked
variants (m maskable positions) and was most of the suite's time. Two savings, measured here against the
full search on the shortest clean SmolLM2 cases:

- ``singles``: the first step (leave-one-out) taken from an occlusion explanation (R_i = Δℓ − Δℓ with i
  zeroed), checked at the chosen position: the same search, m − 1 fewer variants;
- ``pool``: in addition, steps 2… only try the ``--pool`` positions whose single masking lowered Δℓ most.

Printed per case: maskable positions, then per way the oracle's tokens-to-flip (``*``: censored at the
limit), its masked variants and seconds; at the end the number of cases where each way agrees with the full
search, the total seconds of each way and those of the occlusion explanations (which the faithfulness
suite computes anyway when ``occlusion`` is one of its methods).

    python benchmarks/bench_oracle.py                     # 8 cases, oracle limit 3, pool 64
    python benchmarks/bench_oracle.py --cases 30 --pool 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "examples" / "cases" / "study" / f"{b}-smollm2-135m-instruct.jsonl"
         for b in ("math500", "ifeval", "humaneval")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cases", type=int, default=8, help="the N shortest clean cases")
    ap.add_argument("--limit", type=int, default=3, help="the oracle's limit (as in studies/smollm2.toml)")
    ap.add_argument("--pool", type=int, default=64, help="candidates of steps 2… in the pooled way")
    a = ap.parse_args()

    import numpy as np

    import contrastlens as cl
    from contrastlens.cases.io import load_cases
    from contrastlens.study.analyses.faithfulness import DeltaForward, greedy_oracle

    cases = [c for f in FILES if f.exists() for c in load_cases(f, clean_only=True)]
    cases.sort(key=lambda c: len(c.ids_before_err))  # shortest first: the full search is O(limit · m²)
    cases = cases[: a.cases]
    lm = cl.load_model(a.model)
    print(f"greedy oracle: {a.model}, {len(cases)} clean cases, limit {a.limit}, pool {a.pool}", flush=True)
    ways = ("full", "singles", "pool")
    print(f"{'case':30} {'m':>5} " + " ".join(f"{w + ' k':>9} {'variants':>8} {'s':>6}" for w in ways))
    agree = dict.fromkeys(ways, 0)
    total = dict.fromkeys(ways, 0.0)
    occ_total = 0.0
    for case in cases:
        ex = cl.explain(lm, case)
        t0 = time.perf_counter()
        occ = cl.explain(lm, case, method="occlusion")
        occ_total += time.perf_counter() - t0
        fwd = DeltaForward.from_explanation(lm, ex)
        singles = fwd.unmasked - np.asarray(occ.input_relevance, dtype=np.float64)
        res = {}
        cells = []
        for way in ways:
            f = DeltaForward.from_explanation(lm, ex)
            t0 = time.perf_counter()
            if way == "full":
                r = greedy_oracle(f, limit=a.limit)
            elif way == "singles":
                r = greedy_oracle(f, limit=a.limit, singles=singles)
            else:
                r = greedy_oracle(f, limit=a.limit, singles=singles, candidates=a.pool)
            sec = time.perf_counter() - t0
            total[way] += sec
            res[way] = r
            cells.append(f"{str(r.tokens) + ('*' if r.censored else ''):>9} {f.n_variants:>8} {sec:>6.1f}")
        for way in ways:
            agree[way] += (res[way].tokens, res[way].censored) == (res["full"].tokens, res["full"].censored)
        label = str(case.id)[:30]
        print(f"{label:30} {int(fwd.maskable.sum()):>5} " + " ".join(cells), flush=True)
    print("agreement with the full search (tokens and censoring): "
          + ", ".join(f"{w} {agree[w]}/{len(cases)}" for w in ways))
    print("oracle seconds: " + ", ".join(f"{w} {total[w]:.0f}" for w in ways)
          + f"; full / pool = {total['full'] / max(total['pool'], 1e-9):.1f}x"
          + f" (the occlusion explanations: {occ_total:.0f} s)")


if __name__ == "__main__":
    main()
