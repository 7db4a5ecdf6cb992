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
"$python" - "$log" <<'PY'
import sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.startswith("RESULT ")]
def best(impl, mode, key):  # the better of the runs: other processes may load the machine
    v = [float(r[key]) for r in rows if r["impl"] == impl and r["mode"] == mode]
    return min(v) if v else None
def params(impl):
    return next((r["params"] for r in rows if r["impl"] == impl), "-")
fmt = lambda v, p=0: "-" if v is None else f"{v:.{p}f}"
ratio = lambda a, b: a / b if a is not None and b else None
print(f"parameters: knnd {params('knnd')}, torch {params('torch')}")
print("| mode | knnd ms | torch ms | knnd/torch | knnd MiB | torch MiB | knnd/torch | knnd +MiB | torch +MiB | knnd/torch |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in ("train", "sample"):
    km, tm = best("knnd", mode, "ms"), best("torch", mode, "ms")
    kp, tp = best("knnd", mode, "peak_mib"), best("torch", mode, "peak_mib")
    kb, tb = best("knnd", mode, "base_mib"), best("torch", mode, "base_mib")
    kd, td = (kp - kb if kp is not None else None), (tp - tb if tp is not None else None)
    print(f"| {mode} | {fmt(km)} | {fmt(tm)} | {fmt(ratio(km, tm), 2)} | {fmt(kp)} | {fmt(tp)} | {fmt(ratio(kp, tp), 2)} | "
          f"{fmt(kd)} | {fmt(td)} | {fmt(ratio(kd, td), 2)} |")
print("MiB: peak RSS of the process; +MiB: its increase over the RSS before the model was built "
      "(knnd: at start; torch: after import torch)")
PY
