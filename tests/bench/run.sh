#!/usr/bin/env bash
# run.sh — build bench_ops and bench_mem (Release), run bench_ops and the PyTorch peer
# (tests/bench/torch_peer.py) with the same thread count and print one table: knnd's time,
# PyTorch's, and their ratio per row; then bench_mem's table (STREAM copy/triad and large
# elementwise ops, GB/s and % of triad) with the same thread count.
# Usage: bash tests/bench/run.sh [substring]   (only the ops rows whose name contains it; bench_mem
#        runs with no substring or with "mem")
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#        KNND_BENCH_SKIP_BUILD=1 (reuse the bench_ops and bench_mem already built there)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_build bench_ops bench_mem

filter=${1:-}
if [ "$filter" != mem ]; then
  knnd_out=$(OMP_NUM_THREADS=$threads "$build/tests/bench/bench_ops" "$@")
  if "$python" -c "import torch" 2>/dev/null; then
    torch_out=$(KNND_BENCH_THREADS=$threads OMP_NUM_THREADS=$threads "$python" tests/bench/torch_peer.py "$@")
  else
    torch_out="# torch_peer: not run (pip install torch numpy)"
  fi
  printf '%s\n' "$knnd_out" | grep '^#' || true
  printf '%s\n' "$torch_out" | grep '^#' || true

  # Join the two outputs on the row name. ratio = knnd time / torch time (below 1: knnd is faster);
  # "% peak" = knnd's GFLOP/s against the fma_peak row (the FMA roofline measured in bench_ops).
  { printf '%s\n' "$torch_out" | sed -n 's/^ROW /T /p'; printf '%s\n' "$knnd_out" | sed -n 's/^ROW /K /p'; } | awk '
    $1 == "T" { tms[$2] = $3; tgf[$2] = $4; next }
    { order[++n] = $2; kms[$2] = $3; kgf[$2] = $4; if ($2 == "fma_peak") peak = $4 }
    END {
      printf "\n| %-26s | %10s | %8s | %7s | %10s | %8s | %11s |\n", "row", "knnd ms", "GFLOP/s", "% peak", "torch ms", "GFLOP/s", "knnd/torch"
      printf "|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------------", "------------", "----------", "---------", "------------", "----------", "-------------"
      for (i = 1; i <= n; i++) {
        r = order[i]
        # rows without a FLOP count (the norms: memory-bound) print "-" for GFLOP/s
        pk = (peak > 0 && r != "fma_peak" && kgf[r] > 0) ? sprintf("%6.0f%%", 100 * kgf[r] / peak) : "-"
        kg = kgf[r] > 0 ? sprintf("%8.1f", kgf[r]) : "-"
        if (r in tms) {
          tg = tgf[r] > 0 ? sprintf("%8.1f", tgf[r]) : "-"
          printf "| %-26s | %10.2f | %8s | %7s | %10.2f | %8s | %11.2f |\n", r, kms[r], kg, pk, tms[r], tg, kms[r] / tms[r]
        } else printf "| %-26s | %10.2f | %8s | %7s | %10s | %8s | %11s |\n", r, kms[r], kg, pk, "-", "-", "-"
      }
      print "\nGFLOP/s count the direct algorithm'"'"'s FLOPs (res blocks: their convolutions and embedding projection;"
      print "attention: its GEMMs); a conv row above 100% of the FMA peak is Winograd at work. Norm rows have no FLOP count."
    }'
fi

# bench_mem: large elementwise ops against STREAM bandwidth, measured in the same process
if [ -z "$filter" ] || [ "$filter" = mem ]; then
  echo
  OMP_NUM_THREADS=$threads "$build/tests/bench/bench_mem"
fi
