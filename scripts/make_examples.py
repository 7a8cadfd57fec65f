"""Copy a few clean cases from study runs into examples/cases/ and write their explanations as HTML.

    python scripts/make_examples.py out/study/ifeval-smollm2-135m-instruct.jsonl#ifeval-102 ...
    python scripts/make_examples.py --tag qwen0.5b out/study/ifeval-qwen2.5-coder-0.5b-instruct.jsonl#ifeval-1187

``--tag`` keeps another model's cases apart (case ids are per benchmark item, so two models share them):
they go to ``<benchmark>-<tag>.jsonl`` and ``<tag>-<case id>.html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import contrastlens as cl
from contrastlens.cases.io import get_case

OUT = Path("examples/cases")


def main(refs: list[str], tag: str | None = None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    models: dict[str, object] = {}
    for ref in refs:
        case = get_case(ref)
        lm = models.get(case.model_source) or cl.load_model(case.model_source)
        models[case.model_source] = lm
        dest = OUT / (f"{case.benchmark}-{tag}.jsonl" if tag else f"{case.benchmark}.jsonl")
        existing = {c.id for c in cl.load_cases(dest)} if dest.exists() else set()
        if case.id not in existing:
            with open(dest, "a", encoding="utf-8") as f:
                f.write(case.model_dump_json() + "\n")
        ex = cl.explain(lm, case)
        html = OUT / (f"{tag}-{case.id}.html" if tag else f"{case.id}.html")
        ex.to_html(str(html))
        print(f"{case.id}: dl case {case.delta_logit:.3f} / engine {ex.logit_diff:.3f} -> {html}")


if __name__ == "__main__":
    args = sys.argv[1:]
    tag = None
    if args[:1] == ["--tag"]:
        tag, args = args[1], args[2:]
    main(args, tag)
