"""Attribution-graph cost: exact closed form against batch-packed replay, and against one explanation.

Prints, on a random Qwen3 (hidden 512, 8 layers, 8 query / 4 KV heads of 64, MLP 1536):

  1. exact vs replay, full graph with mid nodes (16 transitions), no pruning, at --speed-n (512): both
     times, the speed ratio and the max relative difference of the matrices (max |A_exact - A_replay| /
     max |A_replay| per transition, worst transition). With --replay-rows K the replay is timed on the
     first K rows of every transition only and its full time is extrapolated linearly (cost per chunk
     is constant); this is printed next to the number.
  2. exact full graph (mid nodes, cum_mass 0.85) time / one explanation's time at each --ratio-n, in one
     process, interleaved (explain, graph, explain, graph, ...), medians of --repeats; "graph total"
     includes the graph's own explanation (keep_states=True), "edges" is the rest.
  3. peak memory at --mem-n (8192): peak RSS above the loaded-model baseline of the pruned exact graph
     against that of the explanation alone, each in a fresh subprocess (and the peak total RSS).

    python benchmarks/bench_graph.py                 # everything (tens of minutes on 2 CPU cores)
    python benchmarks/bench_graph.py --quick         # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rss import CHILD_ENV, peak_extra_rss, rss  # noqa: E402

CONFIG = dict(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=4, head_dim=64, max_position_embeddings=16384, tie_word_embeddings=False,
              initializer_range=0.05, bos_token_id=0, eos_token_id=1, pad_token_id=2)
TARGET, CONTRAST = 11, 17


def build(seed: int = 0):
    import transformers as tf

    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import random_tokenizer

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tf.Qwen3Config(**CONFIG), attn_implementation="sdpa").eval()
    return LoadedModel(model, random_tokenizer(CONFIG["vocab_size"]), "random:qwen3-512x8")


def ids_of(n: int) -> list[int]:
    return torch.randint(10, 500, (n,), generator=torch.Generator().manual_seed(n)).tolist()


def explain(lm, ids, keep_states=False):
    from contrastlens.attribution.explain import explain as _explain

    return _explain(lm, ids, TARGET, CONTRAST, keep_states=keep_states)


def graph(lm, ids, **kw):
    from contrastlens.graph.build import attribution_graph

    return attribution_graph(lm, ids, TARGET, CONTRAST, **kw)


_BASE_RSS = 0


def child(kind: str, n: int) -> None:
    global _BASE_RSS
    lm = build()
    ids = ids_of(n)
    if kind == "explain":
        explain(lm, ids[:64])  # warm-up
        _BASE_RSS = rss()
        t0 = time.perf_counter()
        peak, _ = peak_extra_rss(lambda: explain(lm, ids))
        res = {"seconds": time.perf_counter() - t0}
    else:
        graph(lm, ids[:64], prune="cum_mass:0.85")
        _BASE_RSS = rss()
        t0 = time.perf_counter()
        peak, g = peak_extra_rss(lambda: graph(lm, ids, prune="cum_mass:0.85"))
        res = {"seconds": time.perf_counter() - t0, "explain_seconds": g.meta["seconds_explain"],
               "edges_seconds": g.meta["seconds_edges"], "edges": g.num_edges(), "edge_bytes": g.nbytes}
    res.update(peak=peak, base=_BASE_RSS)
    print(json.dumps(res))


def run_child(kind: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                         env={**os.environ, **CHILD_ENV})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(n: int, replay_rows: int | None) -> None:
    import numpy as np

    from contrastlens.graph.build import attribution_graph
    from contrastlens.graph.replay import replay_rows as _replay_rows
    from contrastlens.rules.context import apply_rules

    lm = build()
    ids = ids_of(n)
    ex = explain(lm, ids, keep_states=True)
    attribution_graph(lm, explanation=ex)  # warm-up
    t0 = time.perf_counter()
    g = attribution_graph(lm, explanation=ex)
    t_exact = time.perf_counter() - t0
    rows = list(range(n)) if not replay_rows or replay_rows >= n else list(range(n - replay_rows, n))
    worst = 0.0
    t_replay = 0.0
    with apply_rules(lm.model, "attnlrp"):
        for s, t in g.transitions:
            t1 = time.perf_counter()
            Ar = _replay_rows(lm.model, lm.adapter, s, t, ex.states[s][0], ex.states[t][1], rows).cpu().numpy()
            t_replay += time.perf_counter() - t1
            Ae = g.matrix(s, t)[rows]
            worst = max(worst, float(np.abs(Ae - Ar).max() / max(np.abs(Ar).max(), 1e-30)))
    full = t_replay * n / len(rows)
    how = "timed on all rows" if len(rows) == n else f"timed on the last {len(rows)} rows per transition, extrapolated x{n / len(rows):.1f}"
    print(f"[1] exact vs replay, n={n}, {len(g.transitions)} transitions (mid nodes), fp32, no pruning")
    print(f"    exact {t_exact:.3f} s   replay {full:.1f} s ({how})   speed ratio {full / t_exact:.0f}x   "
          f"max rel diff {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed-n", type=int, default=512)
    ap.add_argument("--replay-rows", type=int, default=0, help="time replay on K rows per transition (0 = all)")
    ap.add_argument("--ratio-n", type=int, nargs="*", default=[2048, 8192])
    ap.add_argument("--mem-n", type=int, nargs="*", default=[8192])
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]))
        return
    if a.quick:
        a.speed_n, a.ratio_n, a.mem_n, a.replay_rows, a.repeats = 128, [256], [256], 32, 1
    print(f"random Qwen3 {CONFIG['hidden_size']}x{CONFIG['num_hidden_layers']}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device cpu")
    if not a.skip_speed:
        speed(a.speed_n, a.replay_rows)
    cache: dict[tuple[str, int], dict] = {}

    def get(kind, n):
        if (kind, n) not in cache:
            cache[(kind, n)] = run_child(kind, n)
        return cache[(kind, n)]

    if a.ratio_n:
        print(f"[2] exact graph (mid nodes, cum_mass 0.85) / one explanation, interleaved, median of {a.repeats}")
        print("      n   explain (s)   graph total (s)   of which edges (s)   total/explain   edges/explain   edges kept")
        lm = build()
        graph(lm, ids_of(64), prune="cum_mass:0.85")  # warm-up
        for n in a.ratio_n:
            ids = ids_of(n)
            te, tg, tedge = [], [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                explain(lm, ids)
                te.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                g = graph(lm, ids, prune="cum_mass:0.85")
                tg.append(time.perf_counter() - t0)
                tedge.append(g.meta["seconds_edges"])
                kept = g.num_edges()
                del g
            e, gt, ed = statistics.median(te), statistics.median(tg), statistics.median(tedge)
            print(f"  {n:>5}  {e:11.2f}  {gt:16.2f}  {ed:19.2f}  {gt / e:14.2f}  {ed / e:14.2f}  {kept:11d}")
    if a.mem_n:
        print("[3] peak memory, pruned exact graph vs explanation alone, fresh subprocess each")
        print("      n   explain extra RSS (MiB)   graph extra RSS (MiB)   ratio   (peak total RSS: explain / graph MiB)")
        for n in a.mem_n:
            e, g = get("explain", n), get("graph", n)
            print(f"  {n:>5}  {e['peak'] / 2**20:23.1f}  {g['peak'] / 2**20:22.1f}  {g['peak'] / e['peak']:6.2f}   "
                  f"({(e['base'] + e['peak']) / 2**20:.0f} / {(g['base'] + g['peak']) / 2**20:.0f})")


if __name__ == "__main__":
    main()
