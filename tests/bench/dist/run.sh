#!/usr/bin/env bash
# run.sh — data parallelism on this machine's CPU: a train step of the reference UNet on 1 process and on
# N MPI ranks (knnd, bench_dist.lua; the gradient all-reduce overlapped with the backward, or around the
# ring after it: the default)
# against PyTorch DDP over gloo with the same ranks, threads and batch (torch_dist_peer.py), and the
# all-reduce bus bandwidth of both. The cores are split among the ranks (threads / N each), so the
# step times compare one process using all cores with N ranks sharing them.
# Usage: bash tests/bench/dist/run.sh [ranks=2] [batch=16] [iters=5] [warmup=2]
# Env:   KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#        KNND_BENCH_SKIP_BUILD=1 (reuse the knnd already built)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
ranks=${1:-2}
batch=${2:-16}
iters=${3:-5}
warmup=${4:-2}
bench_build knnd
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
per=$(( threads / ranks )); [ "$per" -ge 1 ] || per=1
have_torch=1
"$python" -c "import torch.distributed" 2>/dev/null || { have_torch=0; echo "# torch_dist_peer: not run (pip install torch)"; }
log=$work/results.log
: >"$log"
knnd1() { OMP_NUM_THREADS=$threads "$build/knnd" run tests/bench/dist/bench_dist.lua "$@"; }
knndn() { mpirun --oversubscribe --bind-to none -np "$ranks" -x OMP_NUM_THREADS=$per -x KNND_DIST_OVERLAP \
  "$build/knnd" run tests/bench/dist/bench_dist.lua "$@"; }
set_args="--set batch=$batch --set iters=$iters --set warmup=$warmup"
# shellcheck disable=SC2086
{
  knnd1 --set mode=train $set_args
  KNND_DIST_OVERLAP=1 knndn --set mode=train $set_args
  KNND_DIST_OVERLAP=0 knndn --set mode=train $set_args
  KNND_DIST_OVERLAP=1 knndn --set mode=allreduce
  if command -v mpicc >/dev/null; then
    mpicc -O2 tests/bench/dist/mpi_allreduce_probe.c -o "$work/probe" &&
      mpirun --oversubscribe --bind-to none -np "$ranks" "$work/probe"
  fi
  if [ $have_torch = 1 ]; then
    "$python" tests/bench/dist/torch_dist_peer.py --mode train --ranks 1 --threads "$threads" --batch "$batch" \
      --iters "$iters" --warmup "$warmup"
    "$python" tests/bench/dist/torch_dist_peer.py --mode train --ranks "$ranks" --threads "$per" --batch "$batch" \
      --iters "$iters" --warmup "$warmup"
    "$python" tests/bench/dist/torch_dist_peer.py --mode allreduce --ranks "$ranks" --threads "$per"
  fi
} 2>&1 | tee "$log" | grep "^RESULT" >&2 || true
"$python" - "$log" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    if line.startswith("RESULT"):
        rows.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
train = [r for r in rows if r["mode"] == "train"]
one = {r["impl"]: float(r["ms"]) for r in train if r["ranks"] == "1"}
print("| impl | ranks x threads | overlap | batch | ms/step | samples/s | vs 1 process | knnd / torch (same ranks) |")
print("|---|---|---|---:|---:|---:|---:|---:|")
torch_at = {r["ranks"]: float(r["ms"]) for r in train if r["impl"] == "torch"}
for r in train:
    ms = float(r["ms"])
    base = one.get(r["impl"])
    ratio = f"{ms / torch_at[r['ranks']]:.2f}" if r["impl"] == "knnd" and r["ranks"] in torch_at else "-"
    ov = r.get("overlap", "DDP") if r["ranks"] != "1" else "-"
    extra = f" (finish {r['finish_ms']} ms, {r['early']}/{r['buckets']} buckets early)" if r["impl"] == "knnd" and r["ranks"] != "1" else ""
    print(f"| {r['impl']} | {r['ranks']} x {r['threads']} | {ov} | {r['batch']} | {ms:.1f}{extra} | {r['samples_s']} | "
          f"{(base / ms if base else 0):.2f}x | {ratio} |")
probe = [r for r in rows if r["mode"] == "allreduce_probe"]
ar = [r for r in rows if r["mode"] == "allreduce"]
if ar:
    print()
    print("| impl | all_reduce | ranks | ms | bus bandwidth GB/s |")
    print("|---|---:|---:|---:|---:|")
    for r in ar:
        print(f"| {r['impl']} | {r['mib']} MiB | {r['ranks']} | {r['ms']} | {r['busbw_gbs']} |")
for r in probe:
    print(f"\nOpen MPI alone, {r['mib']} MiB over {r['ranks']} ranks: MPI_Allreduce {r['blocking_ms']} ms, "
          f"MPI_Iallreduce {r['nonblocking_ms']} ms (knnd's long sums go around its own ring instead: the knnd row)")
PY
