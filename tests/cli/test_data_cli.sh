#!/usr/bin/env bash
# test_data_cli.sh — `knnd data prepare fashion-mnist|folder` and `knnd data info` on real
# Fashion-MNIST (Debian's dataset-fashion-mnist) and a folder of PNGs made by a Lua script, and the
# errors for a missing file, a truncated file and bad options.
# Usage: test_data_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
scratch data_cli

out=$("$knnd" --help 2>&1)
contains "$out" "data"; check "knnd --help lists the data command" $?
out=$("$knnd" data --help 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "prepare" && contains "$out" "info"; check "data --help lists prepare, info ($out)" $?

# ---- fashion-mnist ----
out=$(KNND_PROGRESS=plain "$knnd" data prepare fashion-mnist --out fm.h5 --split test --size 16 --channels 3 \
  --limit 200 2>&1); rc=$?
[ $rc = 0 ] && [ -s fm.h5 ] && contains "$out" "wrote fm.h5: 200 images"; check "prepare fashion-mnist ($out)" $?
contains "$out" "prepare fashion-mnist"; check "prepare shows a progress bar ($out)" $?
out=$("$knnd" data info fm.h5 --captions 3 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "count:    200" && contains "$out" "3 x 16 x 16" && contains "$out" "fashion-mnist/test" \
  && contains "$out" "ankle boot" && [ "$(grep -cE '^ +[0-9]+  a' <<<"$out")" = 3 ]
check "info prints count, shape, source, classes, 3 captions ($out)" $?
out=$("$knnd" data prepare fashion-mnist --out q.h5 --limit 10 -q 2>&1); rc=$?
[ $rc = 0 ] && ! contains "$out" "100%"; check "prepare --quiet ($out)" $?

# ---- folder ----
cat > make_pngs.lua <<'LUA'
os.execute("mkdir -p pngs")
knnd.save_png("pngs/red_square.png", knnd.ones(3, 12, 12) * knnd.tensor({1, 0, 0}):view(3, 1, 1))
knnd.save_png("pngs/gray.png", knnd.full({1, 10, 14}, 0.5))
knnd.save_png("pngs/wide-blue.png", knnd.ones(3, 6, 20) * knnd.tensor({0, 0, 1}):view(3, 1, 1))
print("pngs written")
LUA
out=$("$knnd" run make_pngs.lua 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "pngs written"; check "knnd run writes the PNGs ($out)" $?
printf 'gray.png\ta gray rectangle\n' > caps.tsv
out=$("$knnd" data prepare folder pngs --out folder.h5 --size 8 --captions caps.tsv -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "wrote folder.h5: 3 images"; check "prepare folder ($out)" $?
out=$("$knnd" data info folder.h5 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "count:    3" && contains "$out" "3 x 8 x 8" && contains "$out" "a gray rectangle" \
  && contains "$out" "red square" && contains "$out" "wide blue" && contains "$out" "(none)"
check "info of the folder dataset ($out)" $?

# ---- errors ----
out=$("$knnd" data info missing.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "dataset 'missing.h5' not found"; check "info of a missing file ($out)" $?
head -c 1500 fm.h5 > truncated.h5
out=$("$knnd" data info truncated.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "cannot read the dataset"; check "info of a truncated file ($out)" $?
out=$("$knnd" data prepare fashion-mnist --out x.h5 --size 0 2>&1); rc=$?
[ $rc = 2 ] && contains "$out" "--size expects a positive integer" && [ ! -e x.h5 ]; check "a bad --size ($out)" $?
out=$("$knnd" data prepare fashion-mnist --out x.h5 --channels 2 2>&1); rc=$?
[ $rc = 2 ] && [ ! -e x.h5 ]; check "a bad --channels ($out)" $?
out=$("$knnd" data prepare folder --out x.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "directory argument is missing"; check "folder without a directory ($out)" $?
out=$("$knnd" data prepare folder pngs --out x.h5 --captions nope.tsv 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "captions file 'nope.tsv' not found" && [ ! -e x.h5 ]; check "a missing captions file ($out)" $?
mkdir -p empty
out=$("$knnd" data prepare folder empty --out x.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "no .png, .jpg or .jpeg files" && [ ! -e x.h5 ]; check "a folder without images ($out)" $?
out=$("$knnd" data prepare mnist --out x.h5 2>&1); rc=$?
[ $rc = 2 ]; check "an unknown source is a usage error ($out)" $?
out=$("$knnd" data 2>&1); rc=$?
[ $rc = 2 ]; check "data without a subcommand is a usage error ($out)" $?

finish
