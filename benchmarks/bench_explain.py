"""Explanation cost against plain Input x Gradient, side by side in one run.

Prints, on a random Qwen3 (hidden 512 by default):
  * time ratio explain / plain Input x Gradient (forward + backward of the same objective, same input,
    parameters frozen in both, last-position logits only in both) at each n in --time-n,
  * peak-memory ratio (extra RSS during the call, each measured in a fresh subprocess),
  * the peak extra RSS of an explanation at each n in --mem-n, to show linear growth.

    python benchmarks/bench_explain.py                # defaults: time at 1k/4k, memory at 1k..8k
    python benchmarks/bench_explain.py --quick        # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, head_dim=64, max_position_embeddings=16384)


def build(seed: int = 0):
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import build_random_model

    model, tok = build_random_model("qwen3", seed=seed, **CONFIG)
    return LoadedModel(model, tok, "random:qwen3-512")


def plain_input_x_gradient(lm, ids, t, c):
    model, ad = lm.model, lm.adapter
    for p in model.parameters():
        p.requires_grad_(False)
    emb = ad.embedding(model)(torch.tensor([ids])).detach().requires_grad_(True)
    hidden = ad.base(model)(inputs_embeds=emb, use_cache=False).last_hidden_state
    logits = ad.head(model)(hidden[:, -1])[0].float()
    (g,) = torch.autograd.grad(logits[t] - logits[c], emb)
    return (emb.detach() * g).float().sum(-1)


def explanation(lm, ids, t, c):
    from contrastlens.attribution.explain import explain

    return explain(lm, ids, t, c)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn) -> int:
    """Peak RSS above the level before ``fn`` runs, sampled every millisecond."""
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], _rss())
    return peak[0] - base


def child(kind: str, n: int) -> None:
    torch.manual_seed(0)
    lm = build()
    ids = torch.randint(10, 500, (n,)).tolist()
    fn = {"plain": plain_input_x_gradient, "explain": explanation}[kind]
    fn(lm, ids[:64], 11, 17)  # warm-up (allocator, lazy inits) at a small size
    print(json.dumps({"peak": peak_extra_rss(lambda: fn(lm, ids, 11, 17))}))


def measure_memory(kind: str, n: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def measure_time(lm, n: int, repeats: int) -> tuple[float, float]:
    ids = torch.randint(10, 500, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    plain_input_x_gradient(lm, ids, 11, 17)
    explanation(lm, ids, 11, 17)
    tp, te = [], []
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
        t0 = time.perf_counter()
        plain_input_x_gradient(lm, ids, 11, 17)
        tp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explanation(lm, ids, 11, 17)
        te.append(time.perf_counter() - t0)
    return statistics.median(tp), statistics.median(te)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-n", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--mem-n", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]))
        return
    if a.quick:
        a.time_n, a.mem_n, a.repeats = [256], [256, 512], 2
    print(f"random Qwen3 {CONFIG}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    lm = build()
    print("\n n      plain I×G (s)   explain (s)   time ratio   plain peak (MiB)   explain peak (MiB)   memory ratio")
    for n in a.time_n:
        tp, te = measure_time(lm, n, a.repeats)
        mp, me = measure_memory("plain", n), measure_memory("explain", n)
        print(f"{n:>5}  {tp:14.3f}  {te:12.3f}  {te / tp:11.3f}  {mp / 2**20:17.1f}  {me / 2**20:19.1f}  {me / mp:13.3f}")
    print("\n n      explain peak extra RSS (MiB)   per token (KiB)")
    for n in a.mem_n:
        me = measure_memory("explain", n)
        print(f"{n:>5}  {me / 2**20:29.1f}  {me / n / 1024:16.1f}")


if __name__ == "__main__":
    main()
