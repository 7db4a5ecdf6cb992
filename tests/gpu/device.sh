#!/usr/bin/env bash
# device.sh — run on the GPU machine, from the repository root, with .gpu carried:
#   bash tests/gpu/device.sh [tests|sanitize|bench|all] [test-name-regex]
# Unpacks .gpu/bundle.tar.xz (tests/gpu/pack.sh made it), finds that machine's cuBLAS and
# cuDNN, runs the CUDA test suite (every op's CPU parity), optionally under compute-sanitizer
# (memcheck), and the GPU benchmarks. Logs go to $OUT when it is set.
set -uo pipefail
what="${1:-all}"
filter="${2:-.}"
out="${OUT:-/tmp/knnd-gpu-out}"
mkdir -p "$out" /tmp/knnd-gpu
tar -C /tmp/knnd-gpu -xJf .gpu/bundle.tar.xz
# the tests were built elsewhere: their fixture and scratch paths must exist here
. /tmp/knnd-gpu/paths
[ -e "$root/tests" ] || { mkdir -p "$root" && ln -s "$PWD/tests" "$root/tests"; }
mkdir -p "$build/tests/tmp"
libs=/tmp/knnd-gpu/lib
for pat in 'libcublas.so.1*' 'libcublasLt.so.1*' 'libcudnn.so.9*'; do
  f=$(find /usr/local/cuda*/lib64 /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$pat" 2>/dev/null | head -1)
  [ -n "$f" ] && libs="$libs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export OMP_NUM_THREADS=8 CMOCKA_MESSAGE_OUTPUT=stdout
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
pass=0; fail=0; failed=""
run_tests() { # $1: prefix command (empty or compute-sanitizer ...)
  for t in /tmp/knnd-gpu/bin/test_*; do
    name=$(basename "$t")
    echo "$name" | grep -Eq "$filter" || continue
    log="$out/${2:-}$name.log"
    start=$(date +%s%N)
    if timeout "${KNND_GPU_TEST_TIMEOUT:-240}" $1 "$t" >"$log" 2>&1; then pass=$((pass + 1)); r=ok; else fail=$((fail + 1)); r=FAIL; failed="$failed ${2:-}$name"; fi
    printf '%-28s %-4s %6.1fs  %s\n' "${2:-}$name" "$r" "$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN{print (b-a)/1e9}')" \
      "$(grep -cE '^\[       OK \]' "$log") ok, $(grep -cE '^\[  FAILED  \] [a-z_]+$' "$log") failed, $(grep -cE '^\[  SKIPPED \] [a-z_]+$' "$log") skipped"
    if [ $r = FAIL ]; then grep -E 'FAILED|Failure|error|Error|differs|ERROR' "$log" | head -20; fi
  done
}
case "$what" in tests|all) run_tests "" "" ;; esac
case "$what" in sanitize|all)
  run_tests "compute-sanitizer --tool memcheck --error-exitcode 9 --leak-check no --report-api-errors no" "memcheck."
  ;; esac
case "$what" in bench|all)
  for b in /tmp/knnd-gpu/bin/bench_*; do [ -x "$b" ] && timeout 300 "$b" 2>&1 | tee "$out/$(basename "$b").log"; done
  ;; esac
echo "device suite: $pass passed, $fail failed${failed:+ ($failed)}"
[ "$fail" -eq 0 ]
