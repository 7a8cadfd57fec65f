"""Copy a few clean cases from study runs into examples/cases/ and write their explanations as HTML.

    python scripts/make_examples.py out/study/ifeval-smollm2-135m-instruct.jsonl#ifeval-102 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import contrastlens as cl
from contrastlens.cases.io import get_case

OUT = Path("examples/cases")


def main(refs: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    models: dict[str, object] = {}
    for ref in refs:
        case = get_case(ref)
        lm = models.get(case.model_source) or cl.load_model(case.model_source)
        models[case.model_source] = lm
        dest = OUT / f"{case.benchmark}.jsonl"
        existing = {c.id for c in cl.load_cases(dest)} if dest.exists() else set()
        if case.id not in existing:
            with open(dest, "a", encoding="utf-8") as f:
                f.write(case.model_dump_json() + "\n")
        ex = cl.explain(lm, case)
        html = OUT / f"{case.id}.html"
        ex.to_html(str(html))
        print(f"{case.id}: dl case {case.delta_logit:.3f} / engine {ex.logit_diff:.3f} -> {html}")


if __name__ == "__main__":
    main(sys.argv[1:])
