#!/usr/bin/env bash
# test_clip_cli.sh — `knnd clip train|encode|zeroshot`: a tiny CLIP trained on Fashion-MNIST with a
# checkpoint and its resumption, zero-shot accuracy, and encoding images (Fashion-MNIST, an HDF5
# file) and captions into embedding stores, resumed after an interruption.
# Usage: test_clip_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
scratch clip_cli

out=$("$knnd" clip --help 2>&1); rc=$?
check "clip --help exits 0" $rc
contains "$out" "train" && contains "$out" "encode" && contains "$out" "zeroshot"; check "clip --help lists the subcommands" $?

out=$("$knnd" clip train model.safetensors --steps 20 --batch 64 --width 32 --layers 1 --limit 2048 \
  --checkpoint ck.h5 --checkpoint-every 10 --no-eval -q 2>&1); rc=$?
check "clip train exits 0 ($out)" $rc
[ -s model.safetensors ] && [ -s model.merges.txt ] && [ -s ck.h5 ]; check "clip train writes the model, merges and checkpoint" $?
contains "$out" "trained 20 steps"; check "clip train reports its steps ($out)" $?
out=$("$knnd" clip train model.safetensors --steps 30 --batch 64 --width 32 --layers 1 --limit 2048 \
  --checkpoint ck.h5 --checkpoint-every 10 --no-eval -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "resumed from step 20" && contains "$out" "trained 30 steps"
check "clip train resumes from the checkpoint ($out)" $?

out=$("$knnd" clip zeroshot model.safetensors --limit 500 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "zero-shot top-1 on 500 test images"; check "clip zeroshot reports accuracy ($out)" $?

# an encoding interrupted after two segments (the source fails at row 600), then resumed by the CLI
cat > interrupt.lua <<'LUA'
local m = knnd.clip.load("model.safetensors")
local d = knnd.data.fashion_mnist{split = "test", limit = 1000}
local ok, err = pcall(m.encode_dataset, m, {output = "emb.h5", n = 1000, segment = 256, batch = 128, progress = false,
  encoder = "model", source = function(first, count)
    if first > 600 then error("interrupted") end
    return d.images:narrow(1, first, count)
  end})
print(ok, err)
LUA
out=$("$knnd" run interrupt.lua 2>&1)
contains "$out" "interrupted" && [ ! -e emb.h5 ] && [ -s emb.h5.parts/000000.h5 ] && [ -s emb.h5.parts/000001.h5 ]
check "an interrupted encoding leaves its finished segments, no store ($out)" $?
out=$("$knnd" clip encode model.safetensors emb.h5 --fashion-mnist test --limit 1000 --segment 256 --batch 128 -q 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "encoded 1000 rows (512 skipped"; check "clip encode resumes, skipping written rows ($out)" $?
[ -s emb.h5 ] && [ ! -e emb.h5.parts ]; check "the store is assembled and the segments removed" $?

# the same images from an HDF5 file; captions with the model's merges
cat > checks.lua <<'LUA'
local d = knnd.data.fashion_mnist{split = "test", limit = 300}
local f = knnd.io.h5open("imgs.h5", "w"); f:write("pixels", d.images); f:close()
local f2 = io.open("captions.txt", "w")
for i = 1, 40 do f2:write(("a photo of a %s.\n"):format(d.classes[(i - 1) % 10 + 1])) end
f2:close()
LUA
"$knnd" run checks.lua >/dev/null 2>&1
out=$("$knnd" clip encode model.safetensors h5emb.h5 --h5 imgs.h5 --key pixels -q 2>&1); rc=$?
check "clip encode --h5 exits 0 ($out)" $rc
out=$("$knnd" clip encode model.safetensors txt.h5 --captions captions.txt -q 2>&1); rc=$?
check "clip encode --captions exits 0 ($out)" $rc
cat > verify.lua <<'LUA'
local a = knnd.embeddings.open("emb.h5")
local b = knnd.embeddings.open("h5emb.h5")
local t = knnd.embeddings.open("txt.h5")
local ia = a:info()
local ea, eb = a:read(1, #a), b:read(1, #b)
local norms = ea:square():sum{dim = 2}:sqrt()
local ids = a:ids()
print(("rows %d %d %d dim %d encoder %s"):format(#a, #b, #t, ia.dim, ia.encoder))
print(("norm_err %.2e"):format((norms - 1):abs():max():item()))
print(("ids %d %d"):format(ids:get(1), ids:get(1000)))
print(("h5_diff %.2e"):format((ea:narrow(1, 1, 300) - eb):abs():max():item()))
local tt = t:read(1, #t)
print(("txt_same %.2e"):format((tt:narrow(1, 1, 1) - tt:narrow(1, 11, 1)):abs():max():item()))
LUA
out=$("$knnd" run verify.lua 2>&1)
contains "$out" "rows 1000 300 40 dim 32 encoder model"; check "stores have the right rows, dim and encoder ($out)" $?
contains "$out" "norm_err 0.00e+00" || grep -qE "norm_err [0-9.]+e-0[6-9]" <<<"$out"; check "embeddings are L2-normalised ($out)" $?
contains "$out" "ids 0 999"; check "ids are the dataset's 0-based rows ($out)" $?
contains "$out" "h5_diff 0.00e+00"; check "an HDF5 image dataset encodes as the same images do ($out)" $?
contains "$out" "txt_same 0.00e+00"; check "the same caption encodes the same ($out)" $?

out=$("$knnd" clip encode model.safetensors x.h5 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "exactly one of"; check "encode without a source is a clear error ($out)" $?
out=$("$knnd" clip encode missing.safetensors x.h5 --fashion-mnist test 2>&1); rc=$?
[ $rc != 0 ] && contains "$out" "missing.safetensors"; check "a missing model is named ($out)" $?

finish
