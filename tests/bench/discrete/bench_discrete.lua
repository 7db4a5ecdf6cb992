-- bench_discrete.lua — the discrete backbone's network (knnd.discrete, as knn_diffusion builds it) on the
-- CPU at the issue's size: VQ-Diffusion's transformer, 8 blocks of width 512 and 8 heads, over 16x16 = 256
-- tokens of a 1024-code VQ-VAE, cross-attending to 11 condition tokens of 512-d; batch 4.
--   train:  token + position embeddings, the blocks, LayerNorm + Linear to the 1024 logits, the
--           cross-entropy of the logits against the clean tokens, backward, AdamW (lr 1e-4)
--   sample: the same forward without gradients (eval mode): one step of the sampler's network
--   vqstep: (knnd only, not compared) a full training step with knnd.vqdiff's loss (q_sample, the
--           posterior KL and the auxiliary term) instead of the cross-entropy, and a full sampler
--           step (forward, log x0, truncation, p_sample)
-- Median ms of N timed steps after warm-up and the peak RSS of the process (VmHWM: one mode per process),
-- with the RSS before the model was built. Prints the RESULT line tests/bench/discrete/run.sh tabulates
-- beside torch_discrete_peer.py (the same model: same parameter count).
--   knnd run tests/bench/discrete/bench_discrete.lua --set mode=train --set iters=5 --set warmup=2
local knnd = require "knnd"
local opt = knnd.options { mode = "train", iters = 5, warmup = 2, batch = 4 }

local function status_mib(key)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. key .. ":%s*(%d+) kB")
    if v then return tonumber(v) / 1024 end
  end
end
local base = status_mib("VmRSS")

local K, H, DIM, CTX = 1024, 16, 512, 11
-- a VQ-VAE with a 16x16 token grid of K codes (64x64 images, downsampling by 4); only its grid and
-- codebook size matter here: the benchmarked steps never run it
local vq_cfg = { in_channels = 3, channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8,
  num_codes = K, embed_dim = 8 }
local net = require("knnd.discrete").new { vqvae = knnd.nn.vqvae(vq_cfg), vqvae_config = vq_cfg, image_size = 64,
  channels = 3, dim = DIM, heads = 8, layers = 8, mlp_ratio = 4, dropout = 0, context_dim = 512, T = 100, seed = 0 }
local B = opt.batch
local g = knnd.Generator(1)
local x0 = knnd.randint(0, K, { B, H * H }, { gen = g, dtype = "i64" })
local xt = knnd.randint(0, K + 1, { B, H * H }, { gen = g, dtype = "i64" })
local t = knnd.randint(0, 100, { B }, { gen = g, dtype = "i64" })
local ctx = knnd.randn(B, CTX, 512, { gen = g })
local params = net:num_params()

local step
if opt.mode == "train" or opt.mode == "vqstep_train" then
  net:train()
  local o = knnd.optim.AdamW(net:parameters(), { lr = 1e-4 })
  step = function()
    o:zero_grad()
    local logits = net(xt, t, ctx)
    local loss
    if opt.mode == "train" then
      loss = knnd.cross_entropy(logits, x0)
    else
      loss = net.process:loss(logits, x0, net.process:q_sample(x0, t, { gen = g }), t)
    end
    loss:backward()
    o:step()
  end
elseif opt.mode == "sample" or opt.mode == "vqstep_sample" then
  net:eval()
  step = function()
    knnd.no_grad(function()
      local logits = net(xt, t, ctx)
      if opt.mode == "vqstep_sample" then
        local lx0 = net.process:truncate(net.process:log_x0(logits), 0.86)
        net.process:p_sample(lx0, xt, t, { gen = g })
      end
    end)
  end
else
  error("bench_discrete: mode must be train, sample, vqstep_train or vqstep_sample, got " .. tostring(opt.mode), 0)
end

for _ = 1, opt.warmup do step() end
local ms = {}
for i = 1, opt.iters do
  local t0 = knnd.wall_time()
  step()
  ms[i] = (knnd.wall_time() - t0) * 1e3
end
table.sort(ms)
local median = #ms % 2 == 1 and ms[(#ms + 1) // 2] or (ms[#ms // 2] + ms[#ms // 2 + 1]) / 2
print(("RESULT impl=knnd model=discrete mode=%s batch=%d threads=%s ms=%.2f min_ms=%.2f peak_mib=%.1f base_mib=%.1f "
  .. "params=%d"):format(opt.mode, B, os.getenv("OMP_NUM_THREADS") or "?", median, ms[1], status_mib("VmHWM"), base,
  params))
