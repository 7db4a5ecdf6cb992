#!/usr/bin/env bash
# test_cli.sh — the knnd command: help, version, run with --set/--seed, and clear errors.
# Usage: test_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"

out=$("$knnd" --help 2>&1); rc=$?
check "help exits 0" $rc
contains "$out" "run" && contains "$out" "version"; check "help lists the commands" $?

out=$("$knnd" version 2>&1); rc=$?
check "version exits 0" $rc
contains "$out" "GEMM:" && contains "$out" "HDF5:" && contains "$out" "CUDA:"; check "version names GEMM, HDF5, CUDA" $?

cat > script.lua <<'LUA'
local opt = knnd.options{n = 3, scale = 1.5, name = "x", model = {width = 8}}
local t = knnd.randn(opt.n)
print(("n=%d scale=%.2f name=%s width=%d seed=%s first=%.6f"):format(opt.n, opt.scale, opt.name,
  opt.model.width, tostring(knnd.seed), t:get(1)))
print("args", ...)
LUA
out=$("$knnd" run script.lua --set n=5 --set model.width=16 --set name=abc --seed 7 extra1 2>&1); rc=$?
check "run exits 0" $rc
contains "$out" "n=5 scale=1.50 name=abc width=16 seed=7"; check "--set and --seed reach the script ($out)" $?
contains "$out" "extra1"; check "script arguments reach the script" $?
out2=$("$knnd" run script.lua --set n=5 --set model.width=16 --set name=abc --seed 7 extra1 2>&1)
[ "$out" = "$out2" ]; check "same seed, same numbers" $?
out3=$("$knnd" run script.lua --seed 8 2>&1)
[ "$(grep -o 'first=.*' <<<"$out")" != "$(grep -o 'first=.*' <<<"$out3")" ]; check "another seed, other numbers" $?

out=$("$knnd" run script.lua --set nn=5 2>&1); rc=$?
[ $rc != 0 ]; check "unknown --set key fails" $?
contains "$out" "unknown option 'nn'" && contains "$out" "model.width"; check "unknown key is named with the accepted ones ($out)" $?
out=$("$knnd" run script.lua --set n=abc 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "option 'n' expects an integer"; check "bad --set value is named ($out)" $?
out=$("$knnd" run missing.lua 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "cannot load script"; check "missing script is a clear error" $?
echo 'local x = knnd.zeros(2, 3) + knnd.zeros(4)' > bad.lua
out=$("$knnd" run bad.lua 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "broadcast"; check "a script error names the op and exits 1 ($out)" $?
out=$("$knnd" frobnicate 2>&1); rc=$?
[ $rc = 2 ]; check "unknown command exits 2" $?

# the README's tour runs as written
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out=$(TMPDIR="$PWD" "$knnd" run "$repo/experiments/tour.lua" 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "tour done" && [ -s tour_grid.png ] && [ -s tour_plot.png ] && [ -s tour.safetensors ]
check "experiments/tour.lua runs and writes its files ($out)" $?

finish
