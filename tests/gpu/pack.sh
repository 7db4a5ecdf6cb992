#!/usr/bin/env bash
# pack.sh — build the CUDA test suite and GPU benchmarks here (a machine with nvcc, no GPU
# needed) and pack them, with the shared libraries they need that a bare GPU machine lacks,
# into .gpu/bundle.tar.xz; tests/gpu/device.sh runs the bundle on the GPU machine.
#   bash tests/gpu/pack.sh [build-dir]      (default build-gpu)
# cuBLAS, cuDNN and the driver are not packed: device.sh finds the GPU machine's own.
# Built for sm_90 (the lent machines are H100/H200); the tests link libknnd.so (one copy of the
# kernels) so the bundle stays inside the 64 MiB a device call carries.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$root/build-gpu}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKNND_CUDA=ON -DKNND_CUDA_ARCHS=90 -DKNND_TESTS_SHARED=ON >/dev/null
tests=$(cd "$root/tests/core" && ls test_cuda_*.c test_gpu_*.c | sed 's/\.c$//')
benches=""
[ -d "$root/tests/bench/gpu" ] && benches=$(cd "$root/tests/bench/gpu" && ls bench_*.c 2>/dev/null | sed 's/\.c$//' || true)
cmake --build "$build" -j"$(nproc)" --target $tests $benches >/dev/null
stage="$(mktemp -d)"
mkdir -p "$stage/bin" "$stage/lib"
for t in $tests; do cp "$build/tests/$t" "$stage/bin/"; done
for b in $benches; do cp "$build/tests/bench/gpu/$b" "$stage/bin/"; done
# the non-system libraries the binaries load, libknnd.so with them (glibc, the driver, cuBLAS
# and cuDNN excluded)
for f in "$stage"/bin/*; do ldd "$f"; done | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libcuda.so*|libcublas*|libcudnn*|libgcc_s*) ;;
    *) cp -L "$lib" "$stage/lib/" ;;
  esac
done
mkdir -p "$root/.gpu"
# the test binaries read fixtures and write scratch files under the paths they were built with
printf 'root=%s\nbuild=%s\n' "$root" "$build" >"$stage/paths"
tar -C "$stage" -cJf "$root/.gpu/bundle.tar.xz" bin lib paths
rm -rf "$stage"
ls -la "$root/.gpu/bundle.tar.xz"
