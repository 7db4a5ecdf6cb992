#!/usr/bin/env bash
# run.sh — the discrete backbone's network on the CPU: bench_discrete.lua (knnd, through the knnd
# executable: build it in Release) and its PyTorch peer torch_discrete_peer.py with the same thread
# count, each mode in a fresh process (each peak RSS is that mode's), each measurement RUNS times
# keeping the faster; one table: ms per step, knnd/torch time ratio, peak RSS, its increase over the
# RSS before the model was built, and the memory ratios (below 1: knnd is faster / smaller). Then
# knnd's full VQ-Diffusion steps (knnd.vqdiff's loss; a sampler step with truncation and p_sample),
# which have no peer here.
# Usage: bash tests/bench/discrete/run.sh [iters=5] [warmup=2]
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#        KNND_BENCH_RUNS (default 2), KNND_BENCH_SKIP_BUILD=1 (reuse the knnd already built)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
iters=${1:-5}
warmup=${2:-2}
runs=${KNND_BENCH_RUNS:-2}
bench_build knnd
log=$work/results.log
: >"$log"
have_torch=1
"$python" -c "import torch" 2>/dev/null || { have_torch=0; echo "# torch_discrete_peer: not run (pip install torch)"; }
bench() { OMP_NUM_THREADS=$threads "$build/knnd" run tests/bench/discrete/bench_discrete.lua --set mode="$1" \
  --set iters="$iters" --set warmup="$warmup"; }
for mode in train sample; do
  for r in $(seq "$runs"); do
    bench "$mode" | tee -a "$log" >&2
    if [ $have_torch = 1 ]; then
      OMP_NUM_THREADS=$threads "$python" tests/bench/discrete/torch_discrete_peer.py --mode "$mode" --iters "$iters" \
        --warmup "$warmup" --threads "$threads" | tee -a "$log" >&2
    fi
  done
done
for mode in vqstep_train vqstep_sample; do bench "$mode" | tee -a "$log" >&2; done
"$python" tests/bench/peer_table.py "$log" train,sample vqstep_train="train step with knnd.vqdiff's loss" vqstep_sample="sampler step (truncation, p_sample)"
