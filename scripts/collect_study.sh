#!/usr/bin/env bash
# Reproduce the failure-case study runs with the embedded SmolLM2-135M-Instruct (CPU), then a small
# Qwen2.5-Coder-0.5B-Instruct run. Runs are resumable: re-running the script continues where it stopped,
# and each round raises --limit so earlier items are not redone.
#   DATA=path/to/data QWEN_GGUF=path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf scripts/collect_study.sh
set -u
DATA=${DATA:-${CONTRASTLENS_DATA:-../shared/data}}
OUT=${OUT:-out/study}
MODEL=${MODEL:-smollm2-135m-instruct}
ROUNDS=${ROUNDS:-"1 2 3 4 5 6"}
mkdir -p "$OUT"
run() {  # benchmark limit max_new_tokens [extra args]
  local b=$1 n=$2 t=$3; shift 3
  python -m contrastlens collect -b "$b" -m "$MODEL" --data "$DATA" --limit "$n" --max-new-tokens "$t" \
    --top-k 4 --max-probes 7 --batch-size 8 --threads "${THREADS:-1}" --no-progress --out "$OUT/$b-$(basename "$MODEL" .gguf).jsonl" "$@"
}
for r in $ROUNDS; do
  # IFEval: single-instruction items (a failure a single token can plausibly turn around)
  run ifeval $((16 * r)) 128 --filter n_instructions=1
  run math500 $((8 * r)) 192 --filter level=1
  run humaneval $((8 * r)) 256
done
if [ -n "${QWEN_GGUF:-}" ]; then
  MODEL=$QWEN_GGUF run humaneval "${QWEN_LIMIT:-12}" 256
fi
