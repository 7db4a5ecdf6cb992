#!/usr/bin/env bash
# run_clip.sh — CLIP encoding throughput, knnd against transformers on PyTorch (CPU, same
# threads): builds bench_clip (Release), runs both and prints items/s and the ratio.
# Usage: bash tests/bench/run_clip.sh [batch] [reps]
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#        KNND_BENCH_SKIP_BUILD=1 (reuse the bench_clip already built)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_build bench_clip
knnd_out=$(OMP_NUM_THREADS=$threads "$build/tests/bench/bench_clip" "$@")
torch_out=$(KNND_BENCH_THREADS=$threads OMP_NUM_THREADS=$threads "$python" tests/bench/torch_clip_peer.py "$@" 2>/dev/null ||
            echo "# torch_clip_peer: not run (pip install torch transformers)")
printf '%s\n' "$knnd_out" "$torch_out" | grep '^#' || true
{ printf '%s\n' "$torch_out" | sed -n 's/^ROW /T /p'; printf '%s\n' "$knnd_out" | sed -n 's/^ROW /K /p'; } | awk '
  $1 == "T" { t[$2] = $4; next }
  { order[++n] = $2; k[$2] = $4 }
  END {
    printf "\n| %-16s | %12s | %12s | %14s |\n", "row", "knnd items/s", "torch items/s", "knnd / torch"
    printf "|------------------|--------------|--------------|----------------|\n"
    for (i = 1; i <= n; i++) { r = order[i]
      printf "| %-16s | %12.1f | %12s | %14s |\n", r, k[r], (r in t) ? t[r] : "-", (r in t) ? sprintf("%.2f", k[r] / t[r]) : "-" }
  }'
