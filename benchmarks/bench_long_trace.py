"""lrp-occlusion against one AttnLRP explanation on the 8k-token GAIA2-style agent trace (the shipped
synthetic trace's last turn), where occluding every position (n forwards) is out of reach on a CPU.

Explains the first token of the trace's recorded completion against the model's best other token, with
``attnlrp`` and ``lrp-occlusion`` (default budget, and ``--budgets`` more), interleaved ``--repeats`` times;
prints the median wall time of each relative to AttnLRP, the shortlist and greedy picks, the work run (in
units of n), and, with ``--flip K``, tokens-to-flip within K of both orderings (K+1 masked forwards each).

    python benchmarks/bench_long_trace.py                       # SmolLM2-135M-Instruct, one thread
    python benchmarks/bench_long_trace.py --flip 5              # and tokens-to-flip within 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--budgets", type=float, nargs="*", default=[])
    ap.add_argument("--flip", type=int, default=0, help="tokens-to-flip within this many tokens (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import contrastlens as cl
    from contrastlens.benchmarks.registry import get_benchmark
    from contrastlens.study.analyses.faithfulness import DeltaForward, tokens_to_flip

    lm = cl.load_model(a.model)
    bench = get_benchmark("gaia2")
    item = bench.load()[0][0]  # (items, unreadable files)
    prompt = lm.apply_chat_template(bench.messages(item))
    ids = lm.encode(prompt, add_special_tokens=False)
    target = lm.encode(item.recorded_completion or " the", add_special_tokens=False)[0]
    from contrastlens.attribution.logits import position_logits

    with torch.no_grad():
        top = torch.topk(position_logits(lm, ids), 2).indices.tolist()  # only the last position's logits
    contrast = top[1] if top[0] == target else top[0]
    n = len(ids)
    print(f"{a.model}: agent trace, n = {n} tokens, target {lm.tokenizer.decode([target])!r} vs contrast "
          f"{lm.tokenizer.decode([contrast])!r}, torch threads {a.threads}")
    runs = [("attnlrp", {})] + [("lrp-occlusion", {})] + [("lrp-occlusion", {"budget": b}) for b in a.budgets]
    times: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    last = {}
    for _ in range(a.repeats):
        for i, (m, p) in enumerate(runs):
            t = time.perf_counter()
            last[i] = cl.explain(lm, ids, target, contrast, method=m, method_params=p)
            times[i].append(time.perf_counter() - t)
    ref = statistics.median(times[0])
    print(f"Δℓ = {last[0].logit_diff:.3f}; AttnLRP {ref:.1f} s")
    for i, (m, p) in enumerate(runs[1:], start=1):
        meta = last[i].meta
        print(f"{m} {p or '(default budget 1.5)'}: {statistics.median(times[i]) / ref:.2f}× AttnLRP; "
              f"shortlist {len(meta['shortlist'])}, greedy {len(meta['greedy'])} (flipped: {meta['flipped']}), "
              f"work {meta['work'] / n:.2f}·n")
    if a.flip:
        fw = DeltaForward.from_explanation(lm, last[0])
        mk = ~np.asarray(last[0].special_mask)
        for i, (m, p) in enumerate(runs):
            f = tokens_to_flip(fw, last[i].input_relevance, maskable=mk, limit=a.flip)
            print(f"tokens-to-flip {m} {p or ''}: {'>' if f.censored else ''}{f.tokens}")


if __name__ == "__main__":
    main()
