#!/usr/bin/env bash
# run_clip_fuzz.sh — build knnd with clang + ASan/UBSan and fuzz the CLIP file parsers and the
# tokenizer with libFuzzer for SECONDS (default 60) per target, seeded from the committed fixtures.
# Usage: bash tests/fuzz/run_clip_fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B $build -DCMAKE_BUILD_TYPE=Debug -DKNND_SANITIZE=ON -DKNND_CUDA=OFF \
  -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link >/dev/null
cmake --build $build -j"$(nproc)" --target knnd_static >/dev/null
libs=$(pkg-config --libs icu-uc cairo plplot)
clang -g -O1 -fsanitize=fuzzer,address,undefined -I core/include tests/fuzz/fuzz_clip_files.c \
  $build/libknnd.a -ldnnl -llapacke -lopenblas -lhdf5_serial -lpng -lz $libs -lm -fopenmp -lstdc++ \
  -o $build/fuzz_clip_files
fix=tests/reference/clip
work=$build/fuzz_corpus
for t in 0 1 2 3; do
  mkdir -p $work/$t
  case $t in
    0) for f in $fix/small_hf.safetensors $fix/small_openai.safetensors; do (printf '\x00'; cat $f) > $work/0/$(basename $f); done ;;
    1) (printf '\x01'; cat $fix/vocab.json) > $work/1/vocab ;;
    2) (printf '\x02'; zcat $fix/bpe_merges.txt.gz) > $work/2/merges ;;
    3) (printf '\x03'; cut -f1 $fix/tokenizer_cases.txt | head -50 | xxd -r -p) > $work/3/text ;;
  esac
  echo "== target $t, ${secs}s"
  KNND_CLIP_FIXTURE=$fix ASAN_OPTIONS=detect_leaks=1 OMP_NUM_THREADS=1 \
    $build/fuzz_clip_files -max_total_time="$secs" -max_len=400000 -timeout=20 -rss_limit_mb=4096 $work/$t 2>&1 |
    grep -E "^#[0-9]+.*(DONE|pulse)|ERROR|SUMMARY|Done" | tail -3
done
