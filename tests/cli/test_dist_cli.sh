#!/usr/bin/env bash
# test_dist_cli.sh — knnd over MPI on this machine (Open MPI, ranks on the CPU): the collectives and
# sharded search on 3 ranks (tests/cli/dist_collectives.lua), data-parallel training on 2 ranks with
# batch B against one process with batch B (the same losses and weights within float tolerance; the
# UNet on 2 and 3 ranks, the discrete backbone, the VQ-VAE with an EMA codebook, CLIP and sharded
# encoding), a rank killed mid-run or failing or hanging ends the job with a clear error within the timeout,
# and the killed job resumes from its checkpoint.
# Usage: test_dist_cli.sh KNND_EXE  (run by ctest in a scratch directory)
set -u
knnd=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
scratch dist_cli
if ! command -v mpirun >/dev/null; then
  echo "not ok - mpirun not found (install openmpi-bin: tests/deps.sh)"
  exit 1
fi
# Open MPI refuses root without these, and more ranks than cores without --oversubscribe
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# In the ASan build the ranks run without leak detection: Open MPI keeps allocations past MPI_Finalize in
# plugins it has unmapped, which LeakSanitizer can neither name nor suppress (memory errors are still
# caught; the one-process runs here and dist_spec keep leak detection)
mpi() { ASAN_OPTIONS=detect_leaks=0 timeout 300 mpirun --oversubscribe --bind-to none -np "$@"; }

cat > setup.lua <<'EOF'
local knnd = require "knnd"
-- a small VQ-VAE for the discrete backbone
knnd.vqvae.train { dataset = "fm.h5", out = "vq", steps = 5, batch = 16, lr = 2e-3, seed = 1, progress = false,
  model = { channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8, num_codes = 32,
    embed_dim = 8 } }
EOF
out=$("$knnd" run "$here/fmnist16_setup.lua" 2>&1 && "$knnd" run setup.lua 2>&1); rc=$?
check "setup: dataset, embeddings, index and neighbour cache ($out)" $rc

out=$(mpi 3 "$knnd" run "$here/dist_collectives.lua" 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "collectives ok on 3 ranks"; ok=$?
check "collectives and sharded search on 3 ranks ($out)" $ok
out=$(mpi 2 "$knnd" run "$here/dist_collectives.lua" 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "collectives ok on 2 ranks"; ok=$?
check "collectives and sharded search on 2 ranks ($out)" $ok
out=$("$knnd" run "$here/dist_collectives.lua" 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "collectives ok on 1 rank"; ok=$?
check "the same script on one process, no launcher ($out)" $ok

cat > train.lua <<'EOF'
local knnd = require "knnd"
local opt = knnd.options { out = "run", steps = 16, every = 4, batch = 8, mode = "knn", backbone = "continuous",
  time_sampling = "uniform" }
-- each rank's pid, for the test to kill one
local f = io.open("/proc/self/stat")
local pid = f:read("n")
f:close()
os.execute(("mkdir -p %s && echo %d > %s/pid.%d"):format(opt.out, pid, opt.out, knnd.dist.rank()))
local m
if opt.backbone == "discrete" then
  m = knnd.knn_diffusion.new { image_size = 16, channels = 1, seed = 1, backbone = "discrete",
    cond = { mode = opt.mode, k = 3, dim = 16, p_uncond = 0.2 },
    discrete = { vqvae = "vq/model.h5", dim = 32, heads = 2, layers = 2, T = 20, time_sampling = opt.time_sampling } }
else
  m = knnd.knn_diffusion.new { image_size = 16, channels = 1, seed = 1,
    unet = { channels = 16, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 },
      num_head_channels = 16, norm_groups = 8, dropout = 0.1 },
    cond = { mode = opt.mode, k = 3, dim = 16, p_uncond = 0.2 }, diffusion = { T = 100 } }
end
local r = knnd.knn_diffusion.train { model = m, dataset = "fm.h5", embeddings = "emb.h5", cache = "nn.h5",
  out = opt.out, steps = opt.steps, batch = opt.batch, checkpoint_every = opt.every, seed = 7, progress = false,
  flip = true }
if knnd.dist.is_main() then
  print(("trained to step %d on %d ranks%s"):format(r.steps, knnd.dist.size(),
    r.resumed_from and (" (resumed from step %d)"):format(r.resumed_from) or ""))
end
EOF
out=$("$knnd" run train.lua --set out=one 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "trained to step 16 on 1 ranks"; ok=$?
check "one process, batch 8 ($out)" $ok
out=$(mpi 2 "$knnd" run train.lua --set out=two 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "trained to step 16 on 2 ranks"; ok=$?
check "two ranks, batch 8 (4 each) ($out)" $ok
[ -f two/model.h5 ] && [ -f two/checkpoint.h5 ] && [ -f two/loss.png ]; ok=$?
check "rank 0 wrote the model, checkpoint and plot" $ok

cat > compare.lua <<'EOF'
local knnd = require "knnd"
local a, b = arg[1], arg[2]
local la, lb = knnd.knn_diffusion.read_log(a .. "/log.csv"), knnd.knn_diffusion.read_log(b .. "/log.csv")
assert(#la.loss == #lb.loss, ("%d and %d logged steps"):format(#la.loss, #lb.loss))
local worst = 0
for i = 1, #la.loss do
  worst = math.max(worst, math.abs(la.loss[i] - lb.loss[i]) / math.max(1e-6, math.abs(la.loss[i])))
end
assert(worst < 1e-3, ("losses differ by up to %.3g (relative)"):format(worst))
local sa = knnd.knn_diffusion.load(a .. "/checkpoint.h5", { weights = "live" }):state_dict()
local sb = knnd.knn_diffusion.load(b .. "/checkpoint.h5", { weights = "live" }):state_dict()
local wdiff, n = 0, 0
for k, v in pairs(sa) do
  local d = (v:to("f32") - sb[k]:to("f32")):abs():max():item()
  wdiff = math.max(wdiff, d)
  n = n + 1
end
assert(wdiff < 1e-4, ("weights differ by up to %.3g"):format(wdiff))
print(("same run: %d losses within %.2g (relative), %d tensors within %.2g"):format(#la.loss, worst, n, wdiff))
EOF
out=$("$knnd" run compare.lua one two 2>&1); rc=$?
check "2 ranks x batch 4 = 1 process x batch 8: losses and weights ($out)" $rc
"$knnd" run train.lua --set out=one6 --set batch=6 --set steps=6 >/dev/null 2>&1
out=$(mpi 3 "$knnd" run train.lua --set out=three6 --set batch=6 --set steps=6 2>&1); rc=$?
[ $rc = 0 ] && out=$("$knnd" run compare.lua one6 three6 2>&1); rc=$?
check "3 ranks x batch 2 = 1 process x batch 6 ($out)" $rc
"$knnd" run train.lua --set out=disc1 --set backbone=discrete --set steps=8 >/dev/null 2>&1
out=$(mpi 2 "$knnd" run train.lua --set out=disc2 --set backbone=discrete --set steps=8 2>&1); rc=$?
[ $rc = 0 ] && out=$("$knnd" run compare.lua disc1 disc2 2>&1); rc=$?
check "the discrete backbone: 2 ranks x batch 4 = 1 process x batch 8 ($out)" $rc
# importance sampling of t: the statistics from the whole batch on every rank (40 x 8 draws over 20 timesteps)
imp="--set backbone=discrete --set time_sampling=importance --set steps=40 --set every=20"
# shellcheck disable=SC2086
"$knnd" run train.lua --set out=imp1 $imp >/dev/null 2>&1
# shellcheck disable=SC2086
out=$(mpi 2 "$knnd" run train.lua --set out=imp2 $imp 2>&1); rc=$?
[ $rc = 0 ] && out=$("$knnd" run compare.lua imp1 imp2 2>&1); rc=$?
check "importance sampling of t on 2 ranks = 1 process, E[L_t^2] included ($out)" $rc

# generation conditioned through a sharded index: the same samples as through one index
cat > gen.lua <<'EOF'
local knnd = require "knnd"
local m = knnd.knn_diffusion.load("one/model.h5")
local store = knnd.embeddings.open("emb.h5")
local q = store:read(1, 2)
local function gen(index)
  return knnd.knn_diffusion.generate { model = m, index = index, query = q, prompts = { "a", "b" }, n = 2, steps = 3, seed = 5,
    progress = false }.images
end
local a = gen(knnd.index.build { store = store, factory = "Flat" })
local b = gen(knnd.dist.sharded_index { store = store })
local d = (a - b):abs():max():item()
assert(d == 0, ("sharded generation differs by %g"):format(d))
if knnd.dist.is_main() then print(("generated %d images through a sharded index, identical"):format(a:size(1))) end
EOF
out=$(mpi 2 "$knnd" run gen.lua 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "identical"; ok=$?
check "generation through a sharded index on 2 ranks = through one index ($out)" $ok

# the VQ-VAE with an EMA codebook and dead-code restarts: the codebook follows the whole batch on every rank
cat > vq.lua <<'EOF'
local knnd = require "knnd"
local opt = knnd.options { out = "vq1", codebook = "ema" }
local r = knnd.vqvae.train { dataset = "fm.h5", out = opt.out, steps = 8, batch = 16, lr = 2e-3, seed = 1, progress = false,
  model = { channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8, num_codes = 64,
    embed_dim = 8, codebook = opt.codebook, dead_after = 2 } }
if knnd.dist.is_main() then print(("vq loss %.6f usage %.3f"):format(r.loss, r.usage)) end
EOF
cat > vq_compare.lua <<'EOF'
local knnd = require "knnd"
local a, b = knnd.vqvae.load(arg[1] .. "/model.h5"):state_dict(), knnd.vqvae.load(arg[2] .. "/model.h5"):state_dict()
local la, lb = knnd.vqvae.read_log(arg[1] .. "/log.csv"), knnd.vqvae.read_log(arg[2] .. "/log.csv")
local worst, n = 0, 0
for k, v in pairs(a) do
  worst = math.max(worst, (v:to("f32") - b[k]:to("f32")):abs():max():item())
  n = n + 1
end
local lw = 0
for i = 1, #la.loss do lw = math.max(lw, math.abs(la.loss[i] - lb.loss[i]) / math.abs(la.loss[i])) end
assert(#la.loss == #lb.loss and lw < 1e-4, ("losses differ by %g (relative)"):format(lw))
assert(worst < 1e-4, ("weights and codebook differ by %g"):format(worst))
for i = 1, #la.usage do assert(la.usage[i] == lb.usage[i], "usage differs at step " .. i) end
print(("same VQ-VAE: %d losses within %.2g, %d tensors (codebook and EMA statistics too) within %.2g"):format(#la.loss,
  lw, n, worst))
EOF
"$knnd" run vq.lua --set out=vq1 >/dev/null 2>&1
out=$(mpi 2 "$knnd" run vq.lua --set out=vq2 2>&1); rc=$?
[ $rc = 0 ] && out=$("$knnd" run vq_compare.lua vq1 vq2 2>&1); rc=$?
check "VQ-VAE (EMA codebook, restarts): 2 ranks x batch 8 = 1 process x batch 16 ($out)" $rc

# CLIP: training (the batch split, the negatives gathered) and sharded encoding against one process
cat > clip.lua <<'EOF'
local knnd = require "knnd"
local opt = knnd.options { out = "clip1" }
local d = knnd.data.fashion_mnist { split = "train", limit = 64 }
local tok = knnd.clip.train_tokenizer(d.classes, { num_merges = 50 })
local function model()
  return knnd.clip.new { embed_dim = 16, image_size = 28, patch_size = 7, vision_width = 16, vision_layers = 1,
    vision_heads = 2, context_length = 16, text_width = 16, text_layers = 1, text_heads = 2, tokenizer = tok,
    gen = knnd.Generator(5) }
end
os.execute("mkdir -p " .. opt.out)
-- 64 rows in segments of 12: 6 segments, the last one short
model():encode_dataset { images = d.images, output = opt.out .. "/untrained.h5", batch = 5, segment = 12,
  progress = false }
local m = model()
local r = knnd.clip.train { model = m, images = d.images, labels = d.labels, classes = d.classes, batch = 16,
  steps = 6, lr = 1e-3, progress = false, checkpoint = opt.out .. "/ck.h5", checkpoint_every = 3 }
m:encode_dataset { images = d.images, output = opt.out .. "/trained.h5", batch = 8, segment = 16, progress = false }
if knnd.dist.is_main() then print(("clip loss %.9g"):format(r.loss)) end
EOF
cat > clip_compare.lua <<'EOF'
local knnd = require "knnd"
local function diff(name)
  local a, b = knnd.embeddings.open("clip1/" .. name), knnd.embeddings.open("clip2/" .. name)
  assert(#a == 64 and #b == 64, name .. ": 64 rows each")
  assert(knnd.eq(a:ids(), b:ids()):to("f32"):min():item() == 1, name .. ": the same ids")
  return (a:read(1, 64) - b:read(1, 64)):abs():max():item()
end
local du, dt = diff("untrained.h5"), diff("trained.h5")
assert(du == 0, ("sharded encoding differs from one process by %g"):format(du))
assert(dt < 1e-4, ("the trained CLIPs' embeddings differ by %g"):format(dt))
print(("encoding identical; trained embeddings within %.2g"):format(dt))
EOF
out1=$("$knnd" run clip.lua --set out=clip1 2>&1); rc1=$?
out2=$(mpi 2 "$knnd" run clip.lua --set out=clip2 2>&1); rc2=$?
l1=$(grep -o "clip loss .*" <<<"$out1"); l2=$(grep -o "clip loss .*" <<<"$out2")
[ $rc1 = 0 ] && [ $rc2 = 0 ] && [ -n "$l1" ] && [ -f clip2/ck.h5 ] && [ ! -d clip2/untrained.h5.parts ]; ok=$?
check "CLIP on 1 process and on 2 ranks ($l1 / $l2; $out2)" $ok
out=$("$knnd" run clip_compare.lua 2>&1); rc=$?
awk -v a="${l1#clip loss }" -v b="${l2#clip loss }" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * (a < 0 ? -a : a)) }'; ok=$?
[ $rc = 0 ] && [ $ok = 0 ]; ok=$?
check "2 ranks x batch 8 = 1 process x batch 16 for CLIP; sharded encoding = one process ($out)" $ok

# a rank killed mid-run: the job ends with a clear error (Open MPI's launcher names the rank), and resumes
mpi 2 "$knnd" run train.lua --set out=killed --set steps=400 > killed.log 2>&1 &
job=$!
for _ in $(seq 1 1200); do
  [ -f killed/checkpoint.h5 ] && break
  kill -0 $job 2>/dev/null || break
  sleep 0.1
done
[ -f killed/checkpoint.h5 ] && [ -f killed/pid.1 ]; ok=$?
check "the 2-rank job wrote its first checkpoint" $ok
start=$(date +%s)
kill -9 "$(cat killed/pid.1)" 2>/dev/null
wait $job
rc=$?
took=$(( $(date +%s) - start ))
[ $rc != 0 ] && [ $took -lt 60 ]; ok=$?
check "rank 1 killed: the job ends within 60 s (took $took s, status $rc)" $ok
grep -qE "exited on signal 9" killed.log; ok=$?
check "and says a rank was killed ($(grep -iE 'signal|killed' killed.log | head -2))" $ok
out=$(mpi 2 "$knnd" run train.lua --set out=killed --set steps=12 2>&1); rc=$?
[ $rc = 0 ] && contains "$out" "(resumed from step"; ok=$?
check "the job started again resumes from the checkpoint ($out)" $ok

# a rank that fails: the job ends at once with that rank's message
cat > fail.lua <<'EOF'
local knnd = require "knnd"
if knnd.dist.rank() == 1 then error("rank one gives up") end
knnd.dist.barrier()
EOF
start=$(date +%s)
out=$(mpi 2 "$knnd" run fail.lua 2>&1); rc=$?
took=$(( $(date +%s) - start ))
[ $rc != 0 ] && contains "$out" "rank 1 of 2" && contains "$out" "rank one gives up" && [ $took -lt 60 ]; ok=$?
check "a rank's error ends the job with its message ($took s: $(echo "$out" | head -3))" $ok

# a rank that hangs: the others fail after the timeout, naming the collective
cat > hang.lua <<'EOF'
local knnd = require "knnd"
if knnd.dist.rank() == 1 then os.execute("sleep 30") end
knnd.dist.all_reduce(knnd.ones(4))
EOF
start=$(date +%s)
out=$(KNND_DIST_TIMEOUT=3 mpi 2 "$knnd" run hang.lua 2>&1); rc=$?
took=$(( $(date +%s) - start ))
[ $rc != 0 ] && contains "$out" "all_reduce" && contains "$out" "waited 3 s for the other ranks" && [ $took -lt 60 ]; ok=$?
check "a hung rank: the others fail after the timeout ($took s: $(echo "$out" | head -3))" $ok

# a sweep launched as MPI ranks: each rank runs its shard of the runs on its own (a world of one inside)
cat > sweep.lua <<'EOF'
local knnd = require "knnd"
knnd.sweep {
  name = "ranks",
  base = { seed = 0 },
  grid = { seed = { 1, 2, 3, 4 } },
  run = function(cfg, run)
    assert(knnd.dist.size() == 1, "a sweep's run sees a world of one")
    local m = knnd.knn_diffusion.new { image_size = 16, channels = 1, seed = cfg.seed,
      unet = { channels = 16, channel_mult = { 1 }, num_res_blocks = 1, attention_resolutions = {}, norm_groups = 8,
        num_head_channels = 16 },
      cond = { mode = "no_knn", dim = 16 }, diffusion = { T = 50 } }
    local r = knnd.knn_diffusion.train { model = m, dataset = "fm.h5", embeddings = "emb.h5", out = run.dir .. "/train",
      steps = 2, batch = 4, progress = false, seed = cfg.seed }
    return { loss = r.loss }
  end,
}
EOF
out=$(mpi 2 "$knnd" sweep sweep.lua --dir sw 2>&1); rc=$?
n=$(grep -l '"status": "finished"' sw/ranks/*/run.json 2>/dev/null | wc -l)
[ $rc = 0 ] && [ "$n" = 4 ]; ok=$?
check "a sweep on 2 ranks: 4 runs finished, 2 by each rank alone ($n; $(tail -2 <<<"$out"))" $ok

finish
