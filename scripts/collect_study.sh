#!/usr/bin/env bash
# The failure-case study runs with the embedded SmolLM2-135M-Instruct on CPU, then a small run with
# Qwen2.5-Coder-0.5B-Instruct (GGUF path in QWEN_GGUF). Every run is resumable: run the script again and
# it continues where it stopped; raising a --limit only processes the new items.
#   DATA=path/to/data QWEN_GGUF=path/to/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf scripts/collect_study.sh
#   python scripts/study_table.py out/study/*.jsonl        # the per-benchmark table
set -u
DATA=${DATA:-${CONTRASTLENS_DATA:-../shared/data}}
OUT=${OUT:-out/study}
THREADS=${THREADS:-1}   # one torch thread is much faster than two on a busy 2-core machine
mkdir -p "$OUT"
collect() {  # model benchmark out-name [args...]
  local m=$1 b=$2 name=$3; shift 3
  python -m contrastlens collect -b "$b" -m "$m" --data "$DATA" --top-k 4 --batch-size 8 \
    --threads "$THREADS" --no-progress --out "$OUT/$b-$name.jsonl" "$@"
}
S=smollm2-135m-instruct
# IFEval: single-instruction items (a failure one token can plausibly turn around), 128 new tokens
collect $S ifeval $S --limit "${IFEVAL_LIMIT:-48}" --max-new-tokens 128 --max-probes 7 --filter n_instructions=1
# MATH-500: level-1 problems, 192 new tokens
collect $S math500 $S --limit "${MATH_LIMIT:-8}" --max-new-tokens 192 --max-probes 7 --filter level=1
# HumanEval+: 256 new tokens
collect $S humaneval $S --limit "${HUMANEVAL_LIMIT:-8}" --max-new-tokens 256 --max-probes 6
# GAIA2-style: the shipped synthetic trace (recorded last turn, 8.1k-token prompt)
collect $S agent $S --max-new-tokens 32 --max-probes 1 --top-k 2 --data "$(python -c 'from contrastlens.benchmarks.agent import synthetic_trace_path as p; print(p())')"
if [ -n "${QWEN_GGUF:-}" ]; then
  collect "$QWEN_GGUF" humaneval qwen2.5-coder-0.5b --limit "${QWEN_LIMIT:-6}" --max-new-tokens 192 --max-probes 5
fi
