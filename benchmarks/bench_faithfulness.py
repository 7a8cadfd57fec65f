"""The faithfulness suite's cost on real cases: the four core methods (AttnLRP, I×G, occlusion, random) on
the clean SmolLM2 cases, printed per case and in total, side by side in one run.

For each case, :func:`contrastlens.study.analyses.faithfulness.evaluate_case` explains it with every method
and measures all the orderings (MoRF, LeRF and insertion curves, tokens-to-flip, the greedy oracle) in
batched masked forwards. Printed per case: tokens, seconds of the explanations, seconds of the masked
forwards, the masked variants and batched forward calls; then the total in minutes and each method's median
cost relative to one AttnLRP explanation. Settings as in ``studies/smollm2.toml`` (steps = limit = 10,
oracle limit 3, random with 3 seeds) unless given.

    python benchmarks/bench_faithfulness.py                  # every clean SmolLM2 case (30)
    python benchmarks/bench_faithfulness.py --cases 5        # the first 5 (by length)
    python benchmarks/bench_faithfulness.py --no-oracle      # the methods' orderings alone
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "examples" / "cases" / "study" / f"{b}-smollm2-135m-instruct.jsonl"
         for b in ("ifeval", "humaneval", "math500")]
CORE = ["attnlrp", "ixg", "occlusion", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cases", type=int, default=None, help="only the first N cases (shortest first)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--oracle-limit", type=int, default=3)
    ap.add_argument("--no-oracle", action="store_true",
                    help="measure the methods' orderings only (the greedy oracle is most of the masked forwards)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()

    import torch

    import contrastlens as cl
    from contrastlens.cases.io import load_cases
    from contrastlens.study.analyses.faithfulness import FaithfulnessSettings, evaluate_case

    if a.threads:
        torch.set_num_threads(a.threads)
    cases = [c for f in FILES if f.exists() for c in load_cases(f, clean_only=True)]
    cases.sort(key=lambda c: len(c.ids_before_err))
    if a.cases:
        cases = cases[: a.cases]
    lm = cl.load_model(a.model)
    s = FaithfulnessSettings(methods=CORE, steps=a.steps, limit=a.steps, oracle_limit=a.oracle_limit,
                             oracle=not a.no_oracle, random_seeds=[0, 1, 2], n_boot=200)
    print(f"faithfulness suite: {a.model}, {len(cases)} clean cases, methods {', '.join(CORE)}, "
          f"steps = limit = {a.steps}, " + ("no oracle" if a.no_oracle else f"oracle limit {a.oracle_limit}")
          + f", {torch.get_num_threads()} torch threads")
    print(f"{'case':26} {'tokens':>6} {'explain s':>9} {'masked s':>9} {'variants':>8} {'forwards':>8}")
    total0 = time.perf_counter()
    costs: dict[str, list[float]] = {}
    for c in cases:
        t0 = time.perf_counter()
        res = evaluate_case(lm, lambda method=None, _c=c, **o: cl.explain(lm, _c, method=method,
                                                                         method_params=o or None), s, case=c.id)
        wall = time.perf_counter() - t0
        m = res.metrics
        explain_s = float(m.drop_duplicates("method")["seconds"].sum())
        for method, g in m.groupby("method"):
            costs.setdefault(str(method), []).append(float(g["cost_vs_attnlrp"].mean()))
        print(f"{c.id:26} {res.meta['n_tokens']:6d} {explain_s:9.1f} {wall - explain_s:9.1f} "
              f"{res.meta['variants']:8d} {res.meta['forwards']:8d}", flush=True)
    total = time.perf_counter() - total0
    print(f"total: {total / 60:.1f} min for {len(cases)} cases ({total / max(1, len(cases)):.1f} s a case)")
    print("median cost relative to one AttnLRP explanation: "
          + ", ".join(f"{k} {statistics.median(v):.2f}x" for k, v in costs.items()))


if __name__ == "__main__":
    main()
