#!/usr/bin/env bash
# run.sh — the GPU model and kernel benchmarks beside their PyTorch peer, as one table.
#   bash tests/bench/gpu/run.sh [bin-dir] [peer-script] [iters]
# bin-dir holds bench_gpu_models and bench_gpu_kernels (default: build-gpu/tests/bench/gpu; on
# the GPU machine, after tests/gpu/device.sh unpacked the bundle: /tmp/knnd-gpu/bin, whose
# ../lib is put on LD_LIBRARY_PATH with that machine's cuBLAS/cuDNN). peer-script defaults to
# torch_models_peer.py beside this file. Logs go to $OUT (or /tmp/knnd-gpu-out) when set.
# Columns: knnd and torch eager/compile ms, knnd/eager and knnd/compile time ratios (> 1: knnd
# slower), peak memory and its knnd/eager ratio; kernels: TFLOP/s and the fraction of the
# measured cuBLAS bf16 peak (torch.matmul 4096³ bf16).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin="${1:-$root/build-gpu/tests/bench/gpu}"
peer="${2:-$here/torch_models_peer.py}"
iters="${3:-10}"
out="${OUT:-/tmp/knnd-gpu-out}"
mkdir -p "$out"
libs="$bin/../lib"
for pat in 'libcublas.so.1*' 'libcublasLt.so.1*' 'libcudnn.so.9*'; do
  f=$(find /usr/local/cuda*/lib64 /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$pat" 2>/dev/null | head -1)
  [ -n "$f" ] && libs="$libs:$(dirname "$f")"
done
# the bundle's libraries are for knnd's binaries only: on the peer they would override the CUDA
# libraries torch was built with (its cuBLAS peak would then be another library's)
knnd_libs="$libs:${LD_LIBRARY_PATH:-}"
log="$out/bench_gpu_models_table.log"
: >"$log"
# the peer needs torch with a GPU: say so in the table rather than print an empty one
if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "ERROR the PyTorch peer cannot run here: python3 has no torch with CUDA (pip install torch on this machine)" \
    | tee -a "$log" >&2
  peer_ok=0
else
  peer_ok=1
fi
for b in bench_gpu_models bench_gpu_kernels; do
  if [ -x "$bin/$b" ]; then
    echo "== $b" >&2
    LD_LIBRARY_PATH="$knnd_libs" timeout 900 "$bin/$b" "$([ $b = bench_gpu_kernels ] && echo 20 || echo "$iters")" 2>&1 \
      | tee -a "$log" >&2
  else
    echo "run.sh: $bin/$b not found" >&2
  fi
done
if [ "$peer_ok" = 1 ]; then
  echo "== $(basename "$peer")" >&2
  # PEER_ARGS: more peer options, e.g. "--compile-dtypes bf16" to halve the compile time
  timeout 1500 python3 "$peer" --iters "$iters" ${PEER_ARGS:-} 2>&1 | tee -a "$log" >&2
fi
python3 - "$log" <<'PY'
import re, sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.startswith("RESULT ")]
errors = [l.strip() for l in open(sys.argv[1]) if l.startswith("ERROR")]
def get(impl, **k):
    for r in rows:
        if r.get("impl") == impl and all(r.get(a) == b for a, b in k.items()):
            return r
def f(r, key):
    return float(r[key]) if r and key in r else None
def fmt(v, p=2):
    return "-" if v is None else f"{v:.{p}f}"
def ratio(a, b):
    return a / b if a is not None and b else None
print("| model | mode | dtype | params knnd/torch | knnd ms | eager ms | compile ms | knnd/eager | knnd/compile | knnd MiB | eager MiB | mem knnd/eager |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for model in ("unet", "transformer"):
    for mode in ("train", "sample"):
        for dt in ("f32", "bf16"):
            k, e, c = (get(i, model=model, mode=mode, dtype=dt) for i in ("knnd", "torch_eager", "torch_compile"))
            if not (k or e or c):
                continue
            km, em, cm = f(k, "ms"), f(e, "ms"), f(c, "ms")
            kp, ep = f(k, "peak_mib"), f(e, "peak_mib")
            params = f"{k['params'] if k else '-'}/{(e or c or {}).get('params', '-')}"
            print(f"| {model} | {mode} | {dt} | {params} | {fmt(km)} | {fmt(em)} | {fmt(cm)} | {fmt(ratio(km, em))} | "
                  f"{fmt(ratio(km, cm))} | {fmt(kp, 0)} | {fmt(ep, 0)} | {fmt(ratio(kp, ep))} |")
peak = f(get("torch", kernel="gemm_4096", dtype="bf16"), "tflops")
print()
print(f"measured cuBLAS bf16 peak (torch.matmul 4096^3 bf16): {fmt(peak, 1)} TFLOP/s")
print("| kernel | dtype | knnd TFLOP/s | torch TFLOP/s | knnd/torch | knnd/peak | torch/peak |")
print("|---|---|---|---|---|---|---|")
kernels = []
for r in rows:
    if "kernel" in r and r["kernel"] not in kernels:
        kernels.append(r["kernel"])
for name in kernels:
    for dt in ("f32", "tf32", "bf16"):
        kt, tt = f(get("knnd", kernel=name, dtype=dt), "tflops"), f(get("torch", kernel=name, dtype=dt), "tflops")
        if kt is None and tt is None:
            continue
        print(f"| {name} | {dt} | {fmt(kt)} | {fmt(tt)} | {fmt(ratio(kt, tt))} | {fmt(ratio(kt, peak))} | {fmt(ratio(tt, peak))} |")
for e in errors:
    print(e)
PY
[ "$peer_ok" = 1 ]
