#!/usr/bin/env bash
# run.sh — build bench_unet (Release), run it and its PyTorch peer (torch_unet_peer.py) on the CPU
# with the same thread count, each mode in a fresh process (so each peak RSS is that mode's) and
# each measurement RUNS times keeping the faster, and print one table: ms per step, knnd/torch
# time ratio, peak RSS, its increase over the RSS before the model was built, and the knnd/torch
# memory ratios (below 1: knnd is faster / smaller).
# Usage: bash tests/bench/unet/run.sh [iters=5] [warmup=2]
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#        KNND_BENCH_RUNS (default 2), KNND_BENCH_SKIP_BUILD=1 (reuse the bench_unet already built)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
iters=${1:-5}
warmup=${2:-2}
runs=${KNND_BENCH_RUNS:-2}
bench_build bench_unet
log=$work/results.log
: >"$log"
have_torch=1
"$python" -c "import torch" 2>/dev/null || { have_torch=0; echo "# torch_unet_peer: not run (pip install torch)"; }
for mode in train sample; do
  for r in $(seq "$runs"); do
    OMP_NUM_THREADS=$threads "$build/tests/bench/unet/bench_unet" "$mode" "$iters" "$warmup" | tee -a "$log" >&2
    if [ $have_torch = 1 ]; then
      OMP_NUM_THREADS=$threads "$python" tests/bench/unet/torch_unet_peer.py --mode "$mode" --iters "$iters" \
        --warmup "$warmup" --threads "$threads" | tee -a "$log" >&2
    fi
  done
done
"$python" tests/bench/peer_table.py "$log" train,sample
