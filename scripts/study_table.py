"""Per-benchmark table of a study's case files: items done, generated, passed, failed, localised, clean.

    python scripts/study_table.py out/study/*.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from contrastlens.cases.io import load_cases


def row(path: Path) -> dict:
    prog = [json.loads(x) for x in Path(str(path) + ".progress").read_text().splitlines() if x.strip()]
    cases = load_cases(path)
    status = Counter(r["status"] for r in prog)
    loc = [c for c in cases if c.status == "localised"]
    clean = [c for c in loc if c.clean]
    failed = status["case"]
    return {
        "file": path.name, "model": cases[0].model_source if cases else "-",
        "items": len(prog), "generated": status["case"] + status["passed"], "passed": status["passed"],
        "failed": failed, "localised": len(loc), "clean": len(clean),
        "clean/failed": f"{len(clean) / failed:.1%}" if failed else "-",
        "rollouts/localised": f"{sum(c.n_rollouts for c in loc) / len(loc):.1f}" if loc else "-",
        "rollouts/case": f"{sum(c.n_rollouts for c in cases) / len(cases):.1f}" if cases else "-",
        "positions/localised": f"{sum(c.n_positions for c in loc) / len(loc):.1f}" if loc else "-",
        "skipped": status["skipped"],
        "methods": dict(Counter(c.method for c in loc)),
    }


def main(paths: list[str]) -> None:
    rows = [row(Path(p)) for p in paths if not p.endswith((".progress", ".json"))]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
