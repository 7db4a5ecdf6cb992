#!/usr/bin/env bash
# run.sh — build bench_inception (Release), run it and its PyTorch peer (torch_inception_peer.py:
# pytorch-fid's InceptionV3 on PyTorch's CPU backend) with the same thread count and batch, each
# RUNS times keeping the best, and print one table: images/s of pool3 (2048-d) features at
# 299x299 input (no resize) and 32x32 input (upsampled to 299), and the knnd/torch speed ratio
# (above 1: knnd is faster).
# Usage: bash tests/bench/fid/run.sh [iters=3] [warmup=1]
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BATCH (50), KNND_BENCH_BUILD (build-bench),
#        PYTHON (python3), KNND_BENCH_RUNS (2), KNND_BENCH_SKIP_BUILD=1 (reuse the built bench)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
iters=${1:-3}
warmup=${2:-1}
batch=${KNND_BENCH_BATCH:-50}
runs=${KNND_BENCH_RUNS:-2}
bench_build bench_inception
log=$work/results.log
: >"$log"
have_torch=1
"$python" -c "import torch, pytorch_fid" 2>/dev/null || { have_torch=0; echo "# torch peer: not run (pip install torch pytorch-fid)"; }
for r in $(seq "$runs"); do
  OMP_NUM_THREADS=$threads "$build/tests/bench/fid/bench_inception" both "$iters" "$warmup" "$batch" | tee -a "$log" >&2
  if [ $have_torch = 1 ]; then
    OMP_NUM_THREADS=$threads "$python" tests/bench/fid/torch_inception_peer.py --iters "$iters" --warmup "$warmup" \
      --batch "$batch" --threads "$threads" | tee -a "$log" >&2
  fi
done
"$python" - "$log" "$threads" "$batch" <<'PY'
import sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.startswith("RESULT ")]
def best(impl, size):  # the better of the runs: other processes may load the machine
    v = [float(r["images_per_s"]) for r in rows if r["impl"] == impl and r["size"] == str(size)]
    return max(v) if v else None
fmt = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
print(f"InceptionV3 pool3 features, CPU, {sys.argv[2]} threads, batch {sys.argv[3]} (images/s, higher is better)")
print("| input | knnd img/s | torch img/s | knnd/torch |")
print("|---|---:|---:|---:|")
for size in (299, 32):
    k, t = best("knnd", size), best("torch", size)
    print(f"| {size}x{size} | {fmt(k)} | {fmt(t)} | {fmt(k / t if k and t else None, 2)} |")
PY
