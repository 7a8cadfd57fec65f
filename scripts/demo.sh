#!/usr/bin/env bash
# The main job: explain a real failure of the embedded demo model (SmolLM2-135M-Instruct).
# Asked to write 'hello' in all capital letters, the model starts its answer with "Hello" instead of
# "HELLO". Which prompt tokens push it to the wrong token "Hello" rather than the correct "H"?
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p out
PROMPT="Write the word 'hello' in all capital letters."
echo "== the model's top next tokens (the greedy answer starts with 'Hello'; 'H' continues as 'HELLO')"
contrastlens logits --model smollm2-135m-instruct --chat --prompt "$PROMPT" --top 5
echo "== why 'Hello' and not 'H'?"
contrastlens explain --model smollm2-135m-instruct --chat --prompt "$PROMPT" \
  --target "Hello" --contrast "H" --html out/demo.html --json out/demo.json
echo "open out/demo.html for the heatmap"
