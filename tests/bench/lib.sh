# lib.sh — what the CPU benchmark scripts share; each starts with `. "$(dirname "$0")/[../]lib.sh"`:
# the repository root as the working directory, the common settings, a scratch folder removed on
# exit ($work) and bench_build for a Release build of the bench targets.
# Env: KNND_BENCH_THREADS (default 2), KNND_BENCH_BUILD (default build-bench), PYTHON (python3),
#      KNND_BENCH_SKIP_BUILD=1 (reuse the targets already built there)
# shellcheck shell=bash disable=SC2034 # threads, python: the scripts use them
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
threads=${KNND_BENCH_THREADS:-2}
build=${KNND_BENCH_BUILD:-build-bench}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# bench_build TARGET...: configure $build (Release, no CUDA) and build the targets, unless
# KNND_BENCH_SKIP_BUILD=1; on failure print the build's log and exit
bench_build() {
  [ "${KNND_BENCH_SKIP_BUILD:-0}" = 1 ] && return 0
  if ! { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKNND_CUDA=OFF &&
    cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target "$@"; } >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    echo "$(basename "$0"): building $* failed" >&2
    exit 1
  fi
}
