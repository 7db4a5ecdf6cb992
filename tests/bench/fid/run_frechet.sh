#!/usr/bin/env bash
# run_frechet.sh — build bench_frechet (Release), run it and its Python peer (scipy_frechet_peer.py:
# pytorch-fid's calculate_frechet_distance and clean-fid's kernel_distance) on the same 2048-d
# inputs, and print knnd time, peer time and the ratio, plus the KID precision comparison.
# Usage: bash tests/bench/fid/run_frechet.sh [rows=5000] [repeats=3]
# Env:   KNND_BENCH_BUILD (default build-bench), PYTHON (python3), KNND_BENCH_THREADS (default 2),
#        KNND_BENCH_SKIP_BUILD=1 (reuse the bench_frechet already built)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
rows=${1:-5000}
repeats=${2:-3}
bench_build bench_frechet
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$build/tests/bench/fid/bench_frechet" "$work" "$rows" "$repeats" \
  | tee "$work/knnd.txt"
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$python" tests/bench/fid/scipy_frechet_peer.py "$work" "$rows" 1 \
  | tee "$work/peer.txt"
"$python" - "$work/knnd.txt" "$work/peer.txt" <<'PY'
import sys
v = {}
for path in sys.argv[1:]:
    for line in open(path):
        k, x = line.split()
        v[k] = float(x)
print()
print(f"{'':28s}{'knnd':>12s}{'peer':>12s}{'peer/knnd':>11s}")
print(f"{'frechet 2048-d (s)':28s}{v['frechet_s']:12.3f}{v['scipy_frechet_s']:12.3f}{v['scipy_frechet_s'] / v['frechet_s']:10.1f}x")
print(f"{'kid m=1000 x100 (s)':28s}{v['kid_s']:12.3f}{v['cleanfid_kid_s']:12.3f}{v['cleanfid_kid_s'] / v['kid_s']:10.1f}x")
rel = abs(v['frechet'] - v['scipy_frechet']) / abs(v['scipy_frechet'])
print(f"frechet value: knnd {v['frechet']:.10g}, pytorch-fid {v['scipy_frechet']:.10g} (rel diff {rel:.2e})")
ref = v['numpy_kid_full_f64']
for k in ('kid_full_f32gemm', 'kid_full_f64gemm', 'numpy_kid_full_f32'):
    print(f"full-set KID {k:20s} {v[k]:.12g}  rel err vs numpy f64 {abs(v[k] - ref) / abs(ref):.2e}")
print(f"KID subset GEMMs: f32 {v['kid_subset_f32gemm_s']:.3f} s, f64 {v['kid_subset_f64gemm_s']:.3f} s")
print(f"stats_add: {v['stats_add_ms_per_50']:.2f} ms per batch of 50 rows (2048-d)")
print(f"2048-d eigendecomposition with vectors: dsyevd {v['dsyevd_s']:.3f} s, dsyevr {v['dsyevr_s']:.3f} s")
PY
