#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv, lint, type-check (against scripts/mypy-baseline.txt,
# see scripts/typecheck.py), run every test (slow real-model tests and the documentation's examples
# included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m ruff check src tests benchmarks scripts
.venv/bin/python scripts/typecheck.py
.venv/bin/python -m pytest -q --durations=15 "$@"
