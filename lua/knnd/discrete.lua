-- discrete.lua — the discrete backbone of knnd.knn_diffusion (backbone = "discrete"): VQ-Diffusion's
-- denoising transformer over the tokens of a frozen VQ-VAE, trained with the mask-and-replace
-- diffusion of knnd.vqdiff (core/diffusion/vqdiffusion.c).
--
--   local net = require("knnd.discrete").new{vqvae = vq, vqvae_config = cfg, image_size = 28,
--     dim = 128, heads = 4, layers = 4, context_dim = 512, T = 100, seed = 0}
--   local loss, parts = net:loss(images, tokens_ctx)       -- images in [-1, 1], ctx [B, T', D]
--   local images = net:sample{ctx = ctx, null = null_ctx, steps = 25, guidance = 3, truncation = 0.86}
--
-- The network follows microsoft/VQ-Diffusion's Text2ImageTransformer (the COCO config): a token
-- embedding over the K codes plus [MASK] and a 2-D positional embedding (DalleMaskImageEmbedding:
-- a row and a column table added), blocks of AdaLN self-attention, cross-attention to the
-- condition and MLP (knnd.nn.transformer), then LayerNorm and Linear to the K code logits; weights
-- N(0, 0.02) as its _init_weights. The condition is knnd.knn_diffusion's token set (the CLIP
-- vectors of the query and its k neighbours) — the same knnd.cond code as the continuous backbone.
-- Sampling starts from all-[MASK] tokens and visits the fast sampler's timesteps; each step
-- guides the x0 prediction with the learned null condition (Improved VQ-Diffusion), truncates it
-- (top-r mass) and draws the next tokens, as VQ-Diffusion's generate_content.
local knnd = require "knnd"

local M = {}
local Net = {}
Net.__index = Net
M.Net = Net

local function fail(fname, fmt, ...) error(("knnd.knn_diffusion.%s: " .. fmt):format(fname, ...), 0) end

-- the child modules, in the order of their parameters and state-dict names
local PARTS = { "emb", "height_emb", "width_emb", "blocks", "ln_out", "to_logits" }

--- knnd.discrete.new{vqvae= (a knnd.nn.vqvae module), vqvae_config= (its options), image_size=, channels=,
---   dim=, heads=, layers=, mlp_ratio=, dropout=, context_dim=, T=, aux_weight=, seed=, edit=false} -> a network
--- edit: a local-manipulation model (knnd.edit): the tokens of the source image Ĩ, through an embedding of
--- their own ("src_emb"), are added to those of x_t at every position')
function M.new(o)
  local fname = "new"
  local vq = o.vqvae
  if not knnd.nn.is_module(vq) or vq:type() ~= "VQVAE" then
    fail(fname, "option 'discrete.vqvae' expected a knnd.nn.vqvae module or the path of a knnd.vqvae model")
  end
  vq:eval()
  -- the token grid and the codebook size, from the VQ-VAE itself
  local probe = knnd.zeros(1, o.channels, o.image_size, o.image_size)
  local grid = knnd.no_grad(function() return vq:encode(probe) end)
  local h, w = grid:size(2), grid:size(3)
  local K = vq:num_codes()
  local dim = o.dim
  local g = knnd.Generator(o.seed)
  local self = setmetatable({ vqvae = vq, vqvae_config = o.vqvae_config, K = K, h = h, w = w, dim = dim,
    training = true, edit = o.edit == true, parts = PARTS }, Net)
  self.emb = knnd.nn.Embedding(K + 1, dim, { gen = g })
  self.height_emb = knnd.nn.Embedding(h, dim, { gen = g })
  self.width_emb = knnd.nn.Embedding(w, dim, { gen = g })
  self.blocks = knnd.nn.transformer { dim = dim, num_heads = o.heads, context_dim = o.context_dim,
    mlp_ratio = o.mlp_ratio, dropout = o.dropout, diffusion_steps = o.T, num_blocks = o.layers, gen = g }
  self.ln_out = knnd.nn.LayerNorm(dim)
  self.to_logits = knnd.nn.Linear(dim, K, { gen = g })
  local init = { "emb", "height_emb", "width_emb", "to_logits" }
  if self.edit then
    self.src_emb = knnd.nn.Embedding(K, dim, { gen = g })
    self.parts = { table.unpack(PARTS) }
    self.parts[#self.parts + 1] = "src_emb"
    init[#init + 1] = "src_emb"
  end
  knnd.no_grad(function()
    for _, name in ipairs(init) do
      local wt = self[name].weight
      wt:copy_(knnd.randn_like(wt, { gen = g }) * 0.02)
    end
    self.to_logits.bias:fill_(0)
  end)
  self.process = knnd.vqdiff.new { num_classes = K, T = o.T, aux_weight = o.aux_weight }
  -- importance sampling of t (VQ-Diffusion's sample_time 'importance', from Improved DDPM): the running
  -- E[L_t^2] per timestep and how often each was seen, saved with the weights
  self.time_sampling = o.time_sampling or "uniform"
  if self.time_sampling == "importance" then
    self.Lt_history, self.Lt_count = knnd.zeros(o.T), knnd.zeros(o.T)
  end
  self.rows = knnd.arange(0, h, { dtype = "i64" })
  self.cols = knnd.arange(0, w, { dtype = "i64" })
  return self
end

--- net:named_parameters() -> {{name=, tensor=}, ...} of the trained parts (the VQ-VAE is frozen)
function Net:named_parameters()
  local out = {}
  for _, part in ipairs(self.parts) do
    for _, np in ipairs(self[part]:named_parameters()) do
      out[#out + 1] = { name = part .. "." .. np.name, tensor = np.tensor }
    end
  end
  return out
end

function Net:parameters()
  local p = {}
  for i, np in ipairs(self:named_parameters()) do p[i] = np.tensor end
  return p
end

--- net:state_dict() -> name -> tensor: the trained parts and the frozen VQ-VAE (under "vqvae."), so that
--- a saved model decodes on its own
function Net:state_dict()
  local sd = {}
  for _, np in ipairs(self:named_parameters()) do sd[np.name] = np.tensor end
  for k, v in pairs(self.vqvae:state_dict()) do sd["vqvae." .. k] = v end
  if self.Lt_history then
    sd["time_sampler.Lt_history"], sd["time_sampler.Lt_count"] = self.Lt_history, self.Lt_count
  end
  return sd
end

function Net:load_state_dict(sd)
  local parts, vq = {}, {}
  for _, part in ipairs(self.parts) do parts[part] = {} end
  for k, v in pairs(sd) do
    local head, rest = k:match("^([^.]+)%.(.+)$")
    if head == "vqvae" then
      vq[rest] = v
    elseif head == "time_sampler" then
      -- the importance sampler's statistics (kept when this model samples t that way)
      local mine = self.Lt_history and (rest == "Lt_history" and self.Lt_history or rest == "Lt_count" and self.Lt_count)
      if mine then
        if v:numel() ~= mine:numel() then
          fail("load", "'%s' has %d timesteps, the model %d", k, v:numel(), mine:numel())
        end
        knnd.no_grad(function() mine:copy_(v:to("f32"):reshape(-1)) end)
      end
    elseif head and parts[head] then
      parts[head][rest] = v
    else
      fail("load", "unexpected tensor '%s' in the weights of a discrete model", k)
    end
  end
  for _, part in ipairs(self.parts) do self[part]:load_state_dict(parts[part]) end
  self.vqvae:load_state_dict(vq)
  self.vqvae:eval()
end

function Net:train()
  self.training = true
  for _, part in ipairs(self.parts) do self[part]:train() end
end

function Net:eval()
  self.training = false
  for _, part in ipairs(self.parts) do self[part]:eval() end
end

--- net:device() -> where the network's weights are ("cpu" or "cuda:N")
function Net:device() return self.to_logits.weight:device() end

--- net:to(device) -> net: the trained parts, the frozen VQ-VAE and the position indices moved to device ("cpu",
--- "cuda", "cuda:N"). The importance sampler's statistics stay on the host, where t is drawn from them.
function Net:to(device)
  for _, part in ipairs(self.parts) do self[part]:to(device) end
  self.vqvae:to(device)
  self.rows, self.cols = self.rows:to(device), self.cols:to(device)
  return self
end

--- net:forward(x_t tokens i64 [B, N] in [0, K], t [B], ctx [B, T', D] [, source tokens i64 [B, N] in [0, K): an
--- edit model's Ĩ]) -> logits [B, K, N]
function Net:forward(x, t, ctx, src)
  local B, N = x:size(1), x:size(2)
  local pos = (self.height_emb(self.rows):view(self.h, 1, self.dim) + self.width_emb(self.cols):view(1, self.w, self.dim))
    :reshape(1, N, self.dim)
  local hdn = self.emb(x) + pos
  if self.edit then hdn = hdn + self.src_emb(src) end
  hdn = self.blocks(hdn, t, ctx)
  return self.to_logits(self.ln_out(hdn)):transpose(2, 3):view(B, self.K, N)
end
Net.__call = Net.forward

--- net:encode(images [B,C,H,W] in [-1, 1]) -> i64 tokens [B, h·w] (the frozen VQ-VAE, no gradient)
function Net:encode(x)
  return knnd.no_grad(function() return self.vqvae:encode(x) end):reshape(x:size(1), self.h * self.w)
end

--- net:decode(tokens [B, h·w] in [0, K)) -> images f32 [B,C,H,W] in [-1, 1]
function Net:decode(tokens)
  local B = tokens:size(1)
  return knnd.no_grad(function() return knnd.clamp(self.vqvae:decode(tokens:view(B, self.h, self.w)), -1, 1) end)
end

--- net:time_probabilities() -> the T probabilities importance sampling draws t from (a Lua list, t = 0 first),
--- or nil while uniform: VQ-Diffusion's sample_time — uniform until every timestep was seen more than 10
--- times, then p_t ∝ sqrt(E[L_t^2] + 1e-10) + 1e-4 with t = 0 given t = 1's (its decoder term is not L_t)
function Net:time_probabilities()
  if not self.Lt_history then return nil end
  local count = self.Lt_count:totable()
  for _, c in ipairs(count) do if c <= 10 then return nil end end
  local p, total = {}, 0
  for k, h in ipairs(self.Lt_history:totable()) do
    p[k] = math.sqrt(h + 1e-10) + 1e-4
  end
  p[1] = p[2]
  for k = 1, #p do total = total + p[k] end
  for k = 1, #p do p[k] = p[k] / total end
  return p
end

--- net:sample_t(B [, gen]) -> t i64 [B], pt f32 [B] (the probability each t was drawn with) or nil
--- (uniform): draws from net:time_probabilities() by inverting its CDF with B uniform numbers
function Net:sample_t(B, gen)
  local T = self.process:num_timesteps()
  local p = self.training and self:time_probabilities() or nil
  if not p then return knnd.randint(0, T, { B }, { gen = gen, dtype = "i64" }), nil end
  local cdf, acc = {}, 0
  for k = 1, T do
    acc = acc + p[k]
    cdf[k] = acc
  end
  local t, pt = {}, {}
  for i, u in ipairs(knnd.rand(B, { gen = gen }):totable()) do
    local x = u * acc
    local lo, hi = 1, T -- the first k with cdf[k] > x
    while lo < hi do
      local mid = (lo + hi) // 2
      if cdf[mid] > x then hi = mid else lo = mid + 1 end
    end
    t[i], pt[i] = lo - 1, p[lo]
  end
  return knnd.tensor(t, { dtype = "i64" }), knnd.tensor(pt)
end

--- net:record_t(t [B], kl [B]): the importance sampler's statistics after a training loss: for each
--- example, E[L_t^2] <- 0.1 L_t^2 + 0.9 E[L_t^2] (every example from the statistics before this batch,
--- the last of equal t kept, as the reference's scatter) and one more count for t. On the ranks of a
--- job the whole batch's t and L_t (gathered in rank order) update every rank's statistics alike.
function Net:record_t(t, kl)
  local dist = knnd.dist
  if kl:device() ~= "cpu" then kl = kl:detach():to("cpu") end
  if dist.size() > 1 then
    t, kl = dist.all_gather(t:contiguous()), dist.all_gather(kl:detach():to("f32"):contiguous())
  end
  local hist, count = self.Lt_history:totable(), self.Lt_count:totable()
  local before = { table.unpack(hist) }
  local tt, kk = t:totable(), kl:totable()
  for i = 1, #tt do
    local k = tt[i] + 1
    hist[k] = 0.1 * kk[i] * kk[i] + 0.9 * before[k]
    count[k] = count[k] + 1
  end
  knnd.no_grad(function()
    self.Lt_history:copy_(knnd.tensor(hist))
    self.Lt_count:copy_(knnd.tensor(count))
  end)
end

--- net:loss(images [B,C,H,W] in [-1, 1], ctx [B,T',D] [, {gen=}]) -> the VQ-Diffusion loss (scalar), its parts
--- t is drawn uniformly, or (time_sampling = "importance") by net:sample_t, the loss then divided by p_t as
--- the reference's vb_loss = L_t / p_t
function Net:loss(x0, ctx, opts)
  local gen = opts and opts.gen
  local tokens = self:encode(x0)
  local B = tokens:size(1)
  -- t drawn on the host (the importance sampler's statistics are there), used on the tokens' device
  local t_host, pt = self:sample_t(B, gen)
  local t, dev = t_host, tokens:device()
  if dev ~= "cpu" then
    t = t_host:to(dev)
    if pt then pt = pt:to(dev) end
  end
  local xt = self.process:q_sample(tokens, t, { gen = gen })
  local src = self.edit and self:encode(opts.source) or nil
  local loss, parts = self.process:loss(self:forward(xt, t, ctx, src), tokens, xt, t, pt and { pt = pt } or nil)
  if self.Lt_history and self.training then self:record_t(t_host, parts.kl) end
  return loss, parts
end

--- the skip of the fast sampler that visits about `steps` timesteps (0: every one of the T)
function Net:skip_for(steps)
  local T = self.process:num_timesteps()
  if steps >= T then return 0 end
  return math.max(0, math.ceil(T / steps) - 1)
end

--- net:sample{ctx= [B,T',D], null= [B,T',D] (the unconditional tokens), steps=, guidance=,
---   truncation=, gen=, progress=, source= (an edit model's Ĩ [B,C,H,W])} -> images f32 [B,C,H,W] in [-1, 1]
function Net:sample(o)
  local ctx, gen = o.ctx, o.gen
  local B, N = ctx:size(1), self.h * self.w
  local vq, scale, r = self.process, o.guidance, o.truncation
  local skip = self:skip_for(o.steps)
  local ts = vq:timesteps(skip)
  local guided = math.abs(scale - 1) > 1e-3
  local both = guided and knnd.cat({ ctx, o.null }, 1) or ctx
  local dev = ctx:device()
  local x = knnd.full({ B, N }, self.K, { dtype = "i64", device = dev })
  local src = self.edit and self:encode(o.source) or nil
  if src and guided then src = knnd.cat({ src, src }, 1) end
  local bar = o.progress and knnd.progress { total = #ts, desc = "sample", unit = "step" } or nil
  for _, t in ipairs(ts) do
    local xin = guided and knnd.cat({ x, x }, 1) or x
    local logits = self:forward(xin, knnd.full({ xin:size(1) }, t, { dtype = "i64", device = dev }), both, src)
    local lx0
    if guided then
      lx0 = vq:cfg(vq:log_x0(logits:narrow(1, B + 1, B)), vq:log_x0(logits:narrow(1, 1, B)), scale)
    else
      lx0 = vq:log_x0(logits)
    end
    if r < 1 then lx0 = vq:truncate(lx0, r) end
    x = vq:p_sample(lx0, x, t, { skip = skip, gen = gen })
    if bar then bar:update(1) end
  end
  if bar then bar:close() end
  return self:decode(x)
end

function Net:num_params()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

return M
