#!/usr/bin/env bash
# The test suite, from a fresh clone: set up .venv, lint, run every test (slow real-model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m pytest -q --durations=15 "$@"
