"""The cost of every attribution method relative to one AttnLRP explanation, side by side in one run.

Prints, on a random Qwen3 (hidden 512, 4 layers by default; ``--small``: the 64-wide ``random:qwen3``), for
each n in --n the median wall time of each method divided by the median time of one AttnLRP explanation of
the same input (the measurements interleaved, so drift on a noisy machine hits all alike), in wall time and
in this process's CPU time (less sensitive to other load on a shared machine; on a GPU, read the wall
time). Full occlusion
(n forwards) runs only at n ≤ --occlusion-max-n. For ``lrp-occlusion`` it also prints the shortlist's
token positions its occlusion forwards ran (rows × suffix length over its batches) in units of n, the work
the prefix cache leaves; ``--lrp-k`` adds a column per shortlist size.

    python benchmarks/bench_methods.py                 # n = 256 and 2048
    python benchmarks/bench_methods.py --quick         # n = 128, one repeat, a smoke run
    python benchmarks/bench_methods.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, head_dim=64, max_position_embeddings=16384)
METHODS = ("attnlrp", "cp-lrp", "ixg", "ig", "occlusion", "random", "lrp-occlusion")


def build(small: bool, device: str):
    from contrastlens.models.loaded import LoadedModel
    from contrastlens.models.random import build_random_model

    if small:
        from contrastlens.models.loading import load_model

        lm = load_model("random:qwen3")
    else:
        model, tok = build_random_model("qwen3", seed=0, **CONFIG)
        lm = LoadedModel(model, tok, "random:qwen3-512")
    if device != "cpu":
        lm.model.to(device)
    return lm


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(lm, ids, method: str, device: str):
    """(wall seconds, CPU seconds, explanation); ``lrp-occlusion:K`` is lrp-occlusion with k=K."""
    from contrastlens.attribution.explain import explain

    name, _, k = method.partition(":")
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    ex = explain(lm, ids, 11, 17, method=name, method_params={"k": int(k)} if k else None)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, ex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--occlusion-max-n", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--lrp-k", type=int, nargs="*", default=[], help="also lrp-occlusion with these k")
    ap.add_argument("--small", action="store_true", help="the 64-wide random:qwen3 instead of the 512-wide one")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n, a.repeats, a.occlusion_max_n = [128], 1, 128
    lm = build(a.small, a.device)
    cfg = lm.model.config
    print(f"random Qwen3 (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers), torch {torch.__version__}, "
          f"device {a.device}, threads {torch.get_num_threads()}, median of {a.repeats}")
    methods = ["attnlrp"] + [m for m in a.methods if m != "attnlrp"] + [f"lrp-occlusion:{k}" for k in a.lrp_k]
    header = "   n  clock " + "".join(f"{m.replace('lrp-occlusion:', 'lrp-occ k='):>15}" for m in methods)
    header += "   lrp-occ work (×n)"
    print("\ntime relative to one AttnLRP explanation (AttnLRP: seconds); lrp-occ work: its occlusion forwards'"
          " token positions / n")
    print(header, flush=True)
    for n in a.n:
        ids = torch.randint(10, 500, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        todo = [m for m in methods if m != "occlusion" or n <= a.occlusion_max_n]
        for m in todo:  # warm-up
            run(lm, ids[:64], m, a.device)
        wall: dict[str, list[float]] = {m: [] for m in todo}
        cpu: dict[str, list[float]] = {m: [] for m in todo}
        work = float("nan")
        for _ in range(a.repeats):
            for m in todo:
                t, c, ex = run(lm, ids, m, a.device)
                wall[m].append(t)
                cpu[m].append(c)
                if m == "lrp-occlusion":
                    work = ex.meta["token_steps"] / n
        for clock, times in (("wall", wall), ("cpu", cpu)):
            base = statistics.median(times["attnlrp"])
            cells = []
            for m in methods:
                if m not in times:
                    cells.append(f"{'-':>15}")
                elif m == "attnlrp":
                    cells.append(f"{base:>14.3f}s")
                else:
                    cells.append(f"{statistics.median(times[m]) / base:>14.2f}×")
            print(f"{n:>5}  {clock:<5}" + "".join(cells) + f"   {work:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
