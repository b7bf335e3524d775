#!/usr/bin/env bash
# Reproduce the embedded SAE set from a fresh checkout (after scripts/setup.sh):
#   scripts/train_saes.sh [WORKERS] [train-saes options...]
# 1. the model-written part of the corpus is sampled by WORKERS processes of one thread each
#    (default: the number of cores), each writing its own seeded shards to the cache;
# 2. `maskshare train-saes` then assembles the corpus (reading those shards), collects the
#    activations (bf16, streamed to disk), trains every SAE and measures the quality table.
# Every step resumes where a killed run stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
workers="${1:-$(nproc)}"
shift || true
pids=()
for ((i = 0; i < workers; i++)); do
  .venv/bin/maskshare train-saes --sample-worker "$i/$workers" --threads 1 "$@" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
exec .venv/bin/maskshare train-saes "$@"
