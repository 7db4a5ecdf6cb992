-- bench_dist.lua — knnd's data parallelism on the CPU, run by tests/bench/dist/run.sh with 1 process
-- or as N MPI ranks (mpirun -np N knnd run ...):
--   train:     a train step of the reference UNet (tests/reference/unet_reference.py BENCH_UNET: 32x32x3,
--              base 64, mults 1,2,2, attention at 16 and 8, cross-attention to 11 tokens of 512-d):
--              forward, MSE, backward with the gradients averaged over the ranks (knnd.dist.grad_sync:
--              around a ring after the backward, or with KNND_DIST_OVERLAP=1 sent while it runs), AdamW; the global
--              batch split over the ranks
--   allreduce: all_reduce (sum) of an f32 tensor of `mib` MiB; bus bandwidth 2 (N - 1) / N · bytes / time
-- Median ms of `iters` timed steps after `warmup` (a barrier before each), and for train the median
-- time spent in finish (waiting for the last buckets). Prints one RESULT line (rank 0).
--   mpirun -np 2 knnd run tests/bench/dist/bench_dist.lua --set mode=train --set batch=16
local knnd = require "knnd"
local opt = knnd.options { mode = "train", batch = 16, iters = 5, warmup = 2, mib = 64 }
local dist = knnd.dist
local W, rank = dist.size(), dist.rank()

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end
local threads = tonumber(os.getenv("OMP_NUM_THREADS") or "") or 0

if opt.mode == "allreduce" then
  local n = opt.mib * 1024 * 1024 // 4
  local t = knnd.ones(n)
  local ms = {}
  for i = 1, opt.warmup + opt.iters do
    dist.barrier()
    local t0 = knnd.wall_time()
    dist.all_reduce(t, "sum")
    local dt = (knnd.wall_time() - t0) * 1e3
    if i > opt.warmup then ms[#ms + 1] = dt end
  end
  -- the slowest rank's time is the collective's
  local m = dist.all_reduce(knnd.tensor({ median(ms) }), "max"):item()
  local busbw = W > 1 and 2 * (W - 1) / W * (n * 4) / (m / 1e3) / 1e9 or 0
  if dist.is_main() then
    print(("RESULT impl=knnd mode=allreduce ranks=%d mib=%d ms=%.2f busbw_gbs=%.2f"):format(W, opt.mib, m, busbw))
  end
  return
end

if opt.batch % W ~= 0 then error(("batch %d does not divide among %d ranks"):format(opt.batch, W)) end
local B = opt.batch // W
local net = knnd.nn.unet { in_channels = 3, out_channels = 3, model_channels = 64, channel_mult = { 1, 2, 2 },
  num_res_blocks = 2, image_size = 32, attention_resolutions = { 16, 8 }, num_head_channels = 64,
  use_scale_shift_norm = true, context_dim = 512, cond_embed = true, seed = 1 }
net:train()
local params = net:parameters()
local nparams = 0
for _, p in ipairs(params) do nparams = nparams + p:numel() end
local sync = dist.grad_sync(params)
local o = knnd.optim.AdamW(params, { lr = 1e-4 })
local g = knnd.Generator(10 + rank)
local x, target = knnd.randn(B, 3, 32, 32, { gen = g }), knnd.randn(B, 3, 32, 32, { gen = g })
local ctx = knnd.randn(B, 11, 512, { gen = g })
local t = knnd.randint(0, 1000, { B }, { gen = g, dtype = "i64" })
local ms, fin = {}, {}
for i = 1, opt.warmup + opt.iters do
  dist.barrier()
  local t0 = knnd.wall_time()
  o:zero_grad()
  local loss = (net(x, t, ctx) - target):square():mean()
  sync.begin()
  loss:backward()
  local t1 = knnd.wall_time()
  sync.finish()
  local t2 = knnd.wall_time()
  o:step()
  local dt = (knnd.wall_time() - t0) * 1e3
  if i > opt.warmup then
    ms[#ms + 1] = dt
    fin[#fin + 1] = (t2 - t1) * 1e3
  end
end
local m = dist.all_reduce(knnd.tensor({ median(ms) }), "max"):item()
local st = sync.stats()
if dist.is_main() then
  print(("RESULT impl=knnd mode=train ranks=%d threads=%d batch=%d ms=%.1f samples_s=%.1f finish_ms=%.1f "
    .. "buckets=%d early=%d overlap=%s params=%d"):format(W, threads, opt.batch, m, opt.batch / (m / 1e3), median(fin),
    st.buckets, st.early, os.getenv("KNND_DIST_OVERLAP") == "1" and "on" or "off", nparams))
end
