#!/usr/bin/env bash
# test_experiments_cli.sh — the experiments of experiments/ run end to end at toy scale on their
# real data (Fashion-MNIST; Noto emoji and EmojiOne): quickstart.lua, stickers.lua, then
# db_swap.lua on the stickers run, each writing its pictures and metrics. The recipes are cut to a
# few steps: this checks that the scripts work, not what they measure (the README has that).
# Usage: test_experiments_cli.sh KNND_EXE  (run by ctest in a scratch directory; release build only)
set -u
knnd=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
fails=0
check() { if [ "$2" = 0 ]; then echo "ok - $1"; else echo "not ok - $1"; fails=$((fails + 1)); fi; }
dir=$(mktemp -d "$PWD/experiments_cli.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir" || exit 1

out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set clip.steps=20 --set judge.steps=20 \
  --set unet.steps=6 --set unet.batch=8 --set unet.checkpoint_every=3 --set sample.steps=3 --set sample.per_prompt=2 \
  --set sample.eval_per_class=4 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"quickstart finished"* ]]; check "quickstart runs ($(echo "$out" | tail -3))" $?
for f in metrics.json loss.png alignment.png neighbors_text.png neighbors_images.png knn/samples.png no_knn/samples.png \
  knn/model.h5 no_knn/checkpoint.h5; do
  [ -s "qs/$f" ] || { echo "# missing qs/$f"; false; }
done; check "quickstart writes its grids, plots, metrics and models" $?
grep -q '"alignment"' qs/metrics.json; check "quickstart's metrics hold the alignment of each mode" $?

# a rerun finds every stage done and only samples again
out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set clip.steps=20 --set judge.steps=20 \
  --set unet.steps=6 --set unet.batch=8 --set unet.checkpoint_every=3 --set sample.steps=3 --set sample.per_prompt=2 \
  --set sample.eval_per_class=4 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" != *"clip train"* ]] && [[ "$out" == *"train knn done"* ]]; check "a rerun skips the finished stages" $?

out=$("$knnd" run "$root/experiments/quickstart.lua" --set out=qs --set unet.stepz=3 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"stepz"* ]]; check "an unknown --set key is an error naming it" $?

out=$("$knnd" run "$root/experiments/stickers.lua" --set out=st --set clip.steps=10 --set unet.steps=2 \
  --set unet.batch=4 --set unet.checkpoint_every=2 --set unet.channels=32 --set sample.per_prompt=1 \
  --set sample.steps=2 --set prompts="red apple,pizza" 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"stickers finished"* ]]; check "stickers runs ($(echo "$out" | tail -2))" $?
[ -s st/knn/samples.png ] && [ -s st/no_knn/model.h5 ] && [ -s st/metrics.json ]; check "stickers writes samples, models, metrics" $?

out=$("$knnd" run "$root/experiments/db_swap.lua" --set stickers=missing --set out=swap 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"run experiments/stickers.lua first"* ]]; check "db_swap without a stickers run says what to do" $?
out=$("$knnd" run "$root/experiments/db_swap.lua" --set stickers=st --set out=swap --set sample.per_prompt=1 \
  --set sample.steps=2 --set prompts="red apple,pizza" 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"with the EmojiOne index"* ]]; check "db_swap runs ($(echo "$out" | tail -2))" $?
[ -s swap/swap_knn.png ] && [ -s swap/neighbors_emojione.png ] && [ -s swap/metrics.json ]; check "db_swap writes its grids and metrics" $?

[ $fails = 0 ]
