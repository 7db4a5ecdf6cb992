#!/usr/bin/env bash
# test_train_cli.sh — a knn_diffusion training run killed with SIGKILL mid-run and started again
# continues exactly: the same per-step losses and the same final weights as a run that was never
# interrupted (same seed), on real Fashion-MNIST images.
# Usage: test_train_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
scratch train_cli

cat > train.lua <<'EOF'
local knnd = require "knnd"
local opt = knnd.options { out = "run", steps = 40, every = 5 }
local m = knnd.knn_diffusion.new { image_size = 16, channels = 1, seed = 1,
  unet = { channels = 16, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 },
    num_head_channels = 16, norm_groups = 8 },
  cond = { mode = "knn", k = 3, dim = 16 }, diffusion = { T = 100 } }
local r = knnd.knn_diffusion.train { model = m, dataset = "fm.h5", embeddings = "emb.h5", cache = "nn.h5",
  out = opt.out, steps = opt.steps, batch = 8, checkpoint_every = opt.every, seed = 7, progress = false }
print(("trained to step %d%s"):format(r.steps, r.resumed_from and (" (resumed from step %d)"):format(r.resumed_from) or ""))
EOF
# the data: 400 images at 16x16, a random-projection "encoder", an exact index and neighbour cache
out=$("$knnd" run "$here/fmnist16_setup.lua" 2>&1); rc=$?
check "setup: dataset, embeddings, index and neighbour cache ($out)" $rc

out=$("$knnd" run train.lua --set out=uninterrupted 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"trained to step 40"* ]]; check "an uninterrupted run of 40 steps ($out)" $?

# the interrupted run: SIGKILL once its first checkpoint is on disk
"$knnd" run train.lua --set out=killed > killed.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -f killed/checkpoint.h5 ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -f killed/checkpoint.h5 ] && [ ! -f killed/model.h5 ]; check "killed mid-run: a checkpoint and no final model" $?

out=$("$knnd" run train.lua --set out=killed 2>&1); rc=$?
[ $rc = 0 ] && [[ "$out" == *"trained to step 40 (resumed from step "* ]]; check "the rerun resumes ($out)" $?

# step, loss and lr of every step: identical (the seconds column differs)
cut -d, -f1-3 uninterrupted/log.csv > a.csv
cut -d, -f1-3 killed/log.csv > b.csv
[ "$(wc -l < a.csv)" = 41 ] && cmp -s a.csv b.csv; rc=$?
check "the same loss at every step as the uninterrupted run ($(diff a.csv b.csv | head -4))" $rc

cat > compare.lua <<'EOF'
local knnd = require "knnd"
local a = knnd.knn_diffusion.load("uninterrupted/model.h5"):state_dict()
local b = knnd.knn_diffusion.load("killed/model.h5"):state_dict()
local n = 0
for k, v in pairs(a) do
  if knnd.eq(v, b[k]):to("f32"):min():item() ~= 1 then error("tensor " .. k .. " differs") end
  n = n + 1
end
print(("%d tensors identical"):format(n))
EOF
out=$("$knnd" run compare.lua 2>&1); rc=$?
check "the same final (EMA) weights ($out)" $rc

# a corrupt checkpoint is an error naming the file, not a crash, and nothing is overwritten
cp uninterrupted/checkpoint.h5 good.h5
head -c 5000 good.h5 > uninterrupted/checkpoint.h5
out=$("$knnd" run train.lua --set out=uninterrupted --set steps=50 2>&1); rc=$?
[ $rc != 0 ] && [[ "$out" == *"checkpoint.h5"* ]]; check "a truncated checkpoint is a clear error ($out)" $?
[ "$(stat -c %s uninterrupted/checkpoint.h5)" = 5000 ]; check "the truncated checkpoint is left as it was" $?

finish
