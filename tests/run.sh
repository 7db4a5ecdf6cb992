#!/usr/bin/env bash
# run.sh — build knnd and run the whole test suite twice: a release build with warnings as
# errors, then an AddressSanitizer + UndefinedBehaviorSanitizer build.
# Usage: bash tests/run.sh [--no-asan]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
asan=1
[ "${1:-}" = "--no-asan" ] && asan=0

echo "== release build (-Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKNND_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900)

if [ "$asan" = 1 ]; then
  echo "== sanitizer build (ASan + UBSan)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKNND_SANITIZE=ON -DKNND_WERROR=ON -DKNND_CUDA=OFF >/dev/null
  cmake --build build-asan -j"$jobs"
  (cd build-asan && ctest --output-on-failure -j"$jobs" --timeout 1800)
fi
