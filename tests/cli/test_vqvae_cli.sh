#!/usr/bin/env bash
# test_vqvae_cli.sh — `knnd vqvae MODEL`: a VQGAN of taming's layout (the fixtures of
# tests/reference/vqgan, with VQ-Diffusion's token map), its reconstructions of emoji (PSNR, tokens
# used, the picture), JSON, a knnd VQ-VAE trained for two steps, and the errors.
# Usage: test_vqvae_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd="$1"
. "$(dirname "$0")/lib.sh"
fix=$(cd "$(dirname "$0")/../reference/vqgan" && pwd)
scratch vqvae_cli

out=$("$knnd" vqvae --help 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "--token-map" && contains "$out" "--dataset" && contains "$out" "--grid"
check "vqvae --help lists its options ($out)" $?
"$knnd" data prepare emoji --out e16.h5 --size 16 --limit 12 -q >/dev/null 2>&1; checkst $? "12 emoji at 16x16"

out=$("$knnd" vqvae "$fix/gumbel_vqdiff.safetensors" --token-map "$fix/gumbel_token_map.safetensors" \
  --dataset e16.h5 --n 8 --grid recon.png 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "taming VQGAN, 20 tokens, downsampling by 4" && contains "$out" "codebook gumbel" \
  && contains "$out" "attention at levels {2}" && contains "$out" "under prefix 'content_codec.'" \
  && contains "$out" "e16.h5: 8 images through 4x4 tokens: PSNR" && contains "$out" "wrote recon.png"
check "a VQ-Diffusion GumbelVQ with its token map reconstructs emoji ($out)" $?
[ "$(head -c 4 recon.png | tail -c 3)" = "PNG" ]; check "the grid is a PNG" $?

out=$("$knnd" vqvae "$fix/vq_model.safetensors" --json 2>&1); rc=$?
[ $rc = 0 ] && python3 -c 'import json, sys; d = json.loads(sys.argv[1]); assert d["tokens"] == 64 and d["ignored"] == 1 and d["config"]["attn_levels"] == [1], d' "$out"
check "--json of taming's VQModel ($out)" $?

cat > train.lua <<'LUA'
knnd.vqvae.train { dataset = "e16.h5", out = "vq", steps = 2, batch = 4, progress = false,
  model = { channels = 8, channel_mult = { 1, 2 }, norm_groups = 4, num_codes = 16, embed_dim = 4 } }
LUA
"$knnd" run train.lua >/dev/null 2>&1; checkst $? "a knnd VQ-VAE trained for two steps"
out=$("$knnd" vqvae vq/model.h5 --dataset e16.h5 --n 4 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "knnd VQ-VAE, 16 tokens, downsampling by 2" && contains "$out" "4 images through 8x8 tokens"
check "a knnd VQ-VAE and its reconstructions ($out)" $?
# the command's PSNR and token count are knnd.vqvae.evaluate's
cat > eval.lua <<'LUA'
local e = knnd.vqvae.evaluate { model = knnd.vqvae.load("vq/model.h5"), dataset = "e16.h5", rows = { 0, 1, 2, 3 } }
print(("%.4f %d"):format(e.psnr, e.used))
LUA
want=$("$knnd" run eval.lua 2>&1); out=$("$knnd" vqvae vq/model.h5 --dataset e16.h5 --n 4 --json 2>&1); rc=$?
[ $rc = 0 ] && python3 -c 'import json, sys; d = json.loads(sys.argv[1]); got = "%.4f %d" % (d["psnr"], d["tokens_used"]); assert got == sys.argv[2], (got, sys.argv[2])' "$out" "$want"
check "the command measures as knnd.vqvae.evaluate does ($want; $out)" $?

# ---- errors ----
out=$("$knnd" vqvae nothing.safetensors 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "'nothing.safetensors' not found"; check "a missing model ($out)" $?
out=$("$knnd" vqvae vq/model.h5 --grid g.png 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "--grid needs --dataset"; check "--grid without --dataset ($out)" $?
out=$("$knnd" vqvae vq/model.h5 --token-map m.safetensors 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "are for a VQGAN in safetensors"; check "--token-map on a knnd model ($out)" $?
"$knnd" data prepare emoji --out e18.h5 --size 18 --limit 2 -q >/dev/null 2>&1
out=$("$knnd" vqvae "$fix/gumbel_vqdiff.safetensors" --dataset e18.h5 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "18x18 images are not divisible by the model's downsampling 4"
check "images the model cannot tile ($out)" $?
out=$("$knnd" vqvae "$fix/vqgan_io.safetensors" 2>&1); rc=$?
[ $rc = 1 ] && contains "$out" "knnd: knnd.vqvae.load_taming: '$fix/vqgan_io.safetensors' is not a VQGAN checkpoint"; check "a safetensors file that is no VQGAN ($out)" $?

finish
