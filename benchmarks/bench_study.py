"""Units per minute of the study runner, in-process and on Ray, side by side in one run.

Builds one small study and runs it twice into fresh results folders: in this process (one model at a time)
and on a local Ray (``--cpus`` CPUs, ``--actors`` actors of ``[runner] num_cpus = 1`` per model, so up to
``--cpus`` actors at once). Prints, for each, the units done, the wall time, units per minute and the ratio Ray /
in-process; the Ray start-up is timed apart (the runner uses the Ray started here). It also checks that
both runs stored identical tables (timing columns aside) and the same digests.

- default: ``--models`` tiny random models (llama, qwen2, mistral, ... sharing one tokenizer) and
  ``--cases`` cases made with random:llama (prompt segments included);
- ``--real``: smollm2-135m-instruct on the first ``--cases`` clean cases of
  ``examples/cases/study/ifeval-smollm2-135m-instruct.jsonl`` (the model is fetched once into the cache).

The analyses are the built-in ``segments``, ``token_weights`` and a light ``faithfulness`` (AttnLRP, I×G
and one random order, 16 steps, no oracle); ``--analyses`` picks some of them.

    python benchmarks/bench_study.py                 # 3 random models x 8 cases
    python benchmarks/bench_study.py --quick         # 2 x 3, a smoke run
    python benchmarks/bench_study.py --real --cases 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_CASES = ROOT / "examples" / "cases" / "study" / "ifeval-smollm2-135m-instruct.jsonl"
ARCHS = ("llama", "qwen2", "mistral", "qwen3", "olmo2", "gemma3")
ANALYSES = {
    "segments": {},
    "token_weights": {},
    "faithfulness": {"methods": ["attnlrp", "ixg", "random"], "random_seeds": [0], "steps": 16, "limit": 16,
                     "oracle": False, "n_boot": 200},
}
PROMPTS = ["What is the sum of 3 and 5? Answer with one number.",
           "Write a short answer and do not use any commas in your reply.",
           "The capital of France is Paris, and the capital of Italy is",
           "Please respond in English only, in lowercase letters.",
           "Let x be a number such that 2x + 3 = 11. What is x?",
           "Answer with exactly three bullet points about the quick brown fox."]
ANSWER = "The answer is 42, and the sum of 3 and 5 is 8. done"


def random_cases(n: int) -> list[dict]:
    """``n`` localised cases of random:llama with instruction / query / answer segments (character spans)."""
    import torch

    import contrastlens as cl
    from contrastlens.cases.schema import FailureCase

    lm = cl.load_model("random:llama")
    tok = lm.tokenizer
    out = []
    for i in range(n):
        instruction, query = "Answer briefly.", PROMPTS[i % len(PROMPTS)] + f" ({i})"
        msgs = [{"role": "user", "content": f"{instruction}\n{query}"}]
        prompt = lm.apply_chat_template(msgs)
        prompt_ids = lm.encode(prompt, add_special_tokens=False)
        comp = lm.encode(ANSWER, add_special_tokens=False)
        fi = 3 + i % 4
        with torch.no_grad():
            logits = lm.model(torch.tensor([prompt_ids + comp[:fi]])).logits[0, -1]
        masked = logits.clone()
        masked[comp[fi]] = float("inf")
        contrast = int(masked.argmin())
        delta = float(logits[comp[fi]] - logits[contrast])
        before = tok.decode(comp[:fi])
        a, q = prompt.index(instruction), prompt.index(query)
        out.append(FailureCase(
            id=f"rnd-{i}", benchmark="random", item_id=str(i), model_source=lm.source, messages=msgs, prompt=prompt,
            prompt_ids=prompt_ids, completion=tok.decode(comp), completion_ids=comp, status="localised",
            failure_index=fi, target_id=comp[fi], target_str=tok.decode([comp[fi]]), contrast_id=contrast,
            contrast_str=tok.decode([contrast]), delta_logit=delta, clean=delta > 1, method="manual",
            completion_before_err=before,
            segments={"instruction": [(a, a + len(instruction))], "query": [(q, q + len(query))],
                      "answer": [(len(prompt), len(prompt) + len(before))]}).model_dump(mode="json"))
    return out


def write_study(folder: Path, a: argparse.Namespace) -> Path:
    lines = ['[study]', 'name = "bench-study"', "[attribution]", 'rules = ["attnlrp"]']
    if a.real:
        models = [("smollm2", "smollm2-135m-instruct")]
        cases = [{"path": str(REAL_CASES), "limit": a.cases}]
    else:
        models = [(arch, f"random:{arch}") for arch in ARCHS[: a.models]]
        (folder / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in random_cases(a.cases)))
        cases = [{"path": "cases.jsonl", "clean_only": False}]
    for name, src in models:
        lines += ["[[models]]", f'name = "{name}"', f'source = "{src}"']
    for c in cases:
        lines.append("[[cases]]")
        lines += [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in c.items()]
    for name in a.analyses:
        lines.append(f"[analyses.{name}]")
        lines += [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                  for k, v in ANALYSES[name].items()]
    lines += ["[runner]", "num_cpus = 1", f"local_cpus = {a.cpus}", f"actors_per_model = {a.actors}"]
    p = folder / "study.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def same_results(x: Path, y: Path, analyses: list[str]) -> bool:
    import pandas as pd

    from contrastlens.study.store import Store

    sx, sy = Store.open(x), Store.open(y)
    if [(u["id"], u["digest"]) for u in sx.read_manifest()["units"]] != [
            (u["id"], u["digest"]) for u in sy.read_manifest()["units"]]:
        return False
    for name in analyses:
        tx, ty = sx.tables(name), sy.tables(name)
        if set(tx) != set(ty):
            return False
        for t in tx:
            keys = [c for c in ("case", "model", "rule", "position", "method", "seed", "k") if c in tx[t].columns]
            timing = [c for c in tx[t].columns if "seconds" in c or c.startswith("cost")]  # measured, not computed
            try:
                pd.testing.assert_frame_equal(tx[t].drop(columns=timing).sort_values(keys).reset_index(drop=True),
                                              ty[t].drop(columns=timing).sort_values(keys).reset_index(drop=True))
            except AssertionError:
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="smollm2-135m-instruct on real IFEval cases")
    ap.add_argument("--models", type=int, default=3, help="random models (default 3)")
    ap.add_argument("--cases", type=int, default=8, help="cases (default 8)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--actors", type=int, default=None,
                    help="Ray actors per model (default: 1; with --real, --cpus: one model, cases dealt out)")
    ap.add_argument("--analyses", nargs="+", default=None, choices=list(ANALYSES),
                    help="default: those of segments, token_weights, faithfulness that are registered")
    ap.add_argument("--quick", action="store_true", help="2 random models x 3 cases")
    ap.add_argument("--keep", action="store_true", help="keep the results folders (printed)")
    a = ap.parse_args()
    if a.quick:
        a.models, a.cases = 2, 3
    if a.actors is None:
        a.actors = a.cpus if a.real else 1
    if a.analyses is None:
        from contrastlens.study.base import analysis_names

        a.analyses = [n for n in ANALYSES if n in analysis_names()]
    import ray
    import torch

    from contrastlens.study.runner import run_study

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        study = write_study(tmp, a)
        what = (f"smollm2-135m-instruct x {a.cases} IFEval cases" if a.real
                else f"{a.models} random models x {a.cases} cases")
        print(f"study: {what}, analyses {', '.join(a.analyses)}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} torch threads in-process, Ray {ray.__version__} with {a.cpus} CPUs "
              f"({a.actors} actor(s) per model)", flush=True)
        t0 = time.perf_counter()
        local = run_study(study, tmp / "in-process", progress=False)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
        t_start = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            dist = run_study(study, tmp / "ray", progress=False, ray=True)
            t_ray = time.perf_counter() - t0
        finally:
            ray.shutdown()
        if local.failed or dist.failed:
            print("failed units:", (local.failed + dist.failed)[:5])
        rate_l = len(local.done) / t_local * 60
        rate_r = len(dist.done) / t_ray * 60
        print(f"\n{'runner':<12}{'units':>7}{'skipped':>9}{'wall s':>9}{'units/min':>11}")
        print(f"{'in-process':<12}{len(local.done):>7}{len(local.skipped):>9}{t_local:>9.1f}{rate_l:>11.1f}")
        print(f"{'ray':<12}{len(dist.done):>7}{len(dist.skipped):>9}{t_ray:>9.1f}{rate_r:>11.1f}"
              f"   (+ {t_start:.1f} s Ray start-up, not counted)")
        print(f"ray / in-process: {rate_r / rate_l:.2f}x units per minute; identical results (timings aside): "
              f"{'yes' if same_results(tmp / 'in-process', tmp / 'ray', a.analyses) else 'NO'}")
        if a.keep:
            print(f"results: {tmp}")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
