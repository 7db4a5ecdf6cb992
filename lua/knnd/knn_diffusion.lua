-- knn_diffusion.lua — the method end to end on the continuous backbone (knnd.knn_diffusion):
-- a UNet conditioned on CLIP embedding tokens (the image's or the text's embedding plus its k
-- nearest image embeddings), trained without text, sampled from text.
--
--   local kd = knnd.knn_diffusion
--   local m = kd.new{image_size = 28, channels = 1, cond = {mode = "knn", k = 10, dim = 64}}
--   kd.train{model = m, dataset = "fm.h5", embeddings = "fm_emb.h5", cache = "fm_nn.h5",
--            steps = 2000, batch = 64, out = "runs/knn"}          -- checkpoints, resumes, loss.png
--   local m = kd.load("runs/knn/model.h5")                         -- the EMA weights, for sampling
--   local r = kd.generate{model = m, clip = clip, index = idx, prompts = {"a photo of a bag"},
--                         n = 8, grid = "samples.png"}            -- idx: any index (database swap)
--
-- Conditioning (PAPER.md, "Method"): training conditions on the image's own CLIP embedding h and
-- its k nearest neighbours in the training index (the image itself excluded, from a precomputed
-- neighbour cache); inference on the text's embedding and its k nearest image embeddings. The
-- token set is built by knnd.cond (modes knn, no_knn, lafite_noise, knn_only); the UNet
-- cross-attends to it (GLIDE's encoder_kv) and adds a projection of its first token to the time
-- embedding (cond_embed). Classifier-free guidance: with probability p_uncond a sample's whole
-- token set is replaced by a learned null token set (Ho & Salimans 2022); at sampling the
-- guided output is uncond + s·(cond − uncond).
--
-- backbone = "discrete" swaps the UNet for VQ-Diffusion's transformer over the tokens of a trained
-- VQ-VAE (knnd.discrete; discrete = {vqvae = "runs/vq/model.h5", dim =, heads =, layers =, T =, ...}):
-- the same condition tokens, null condition, training loop, generation and saving.
--
-- edit = true makes a local-manipulation model (PAPER.md, capability 3; knnd.edit): the UNet also
-- takes an image Ĩ, concatenated to x_t as extra channels, and learns to reconstruct I from Ĩ
-- (an area of I replaced by a retrieved, aligned neighbour) conditioned on the area's embedding;
-- knnd.edit.pairs makes the pairs during training, knnd.edit.run applies it to a real image.
local knnd = require "knnd"
local discrete = require "knnd.discrete"
local options = require "knnd.options"

local M = {}
local Model = {}
Model.__index = Model
M.Model = Model

M.FORMAT = "knnd-knn-diffusion"

-- ---- options ------------------------------------------------------------------------------
local function fail(fname, fmt, ...)
  error(("knnd.knn_diffusion.%s: " .. fmt):format(fname, ...), 0)
end

local function check_keys(fname, what, t, allowed)
  return options.check_keys("knnd.knn_diffusion." .. fname, t, allowed, { optional = true, what = what })
end

-- a copy of defaults with the given values (one level of nesting, checked)
local function merged(fname, what, given, defaults)
  check_keys(fname, what, given, defaults)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for k, v in pairs(given or {}) do
    local d = defaults[k]
    if d ~= false and d ~= "" and type(d) ~= type(v) and not (type(d) == "table" and type(v) == "table") then
      fail(fname, "option '%s.%s' expected a %s, got %s", what, k, type(d), type(v))
    end
    out[k] = v
  end
  return out
end

local function positive_int(fname, name, v)
  local n = math.tointeger(v)
  if not n or n < 1 then fail(fname, "option '%s' expected a positive integer, got %s", name, tostring(v)) end
  return n
end

--- knnd.knn_diffusion.check_device(fname, v [, what]) -> the device named by v ("cpu", "cuda" or "cuda:N") as a tensor
--- reports it ("cpu" or "cuda:N"), nil when v is nil; an error naming the option (what, default "option 'device'")
--- for anything else, for a CUDA device when knnd.cuda.available() is false, or for an index past
--- knnd.cuda.device_count(). fname: the function named in the error ("train"; a name with a dot, e.g.
--- "knnd.testbed.fmnist" or a script's path, is used as it is).
function M.check_device(fname, v, what)
  if v == nil then return nil end
  what = what or "option 'device'"
  local function bad(fmt, ...)
    local head = fname:find(".", 1, true) and fname or ("knnd.knn_diffusion." .. fname)
    error(("%s: %s " .. fmt):format(head, what, ...), 0)
  end
  if type(v) ~= "string" then bad("expected \"cpu\", \"cuda\" or \"cuda:N\", got a %s", type(v)) end
  if v == "cpu" then return "cpu" end
  local index = v == "cuda" and 0 or math.tointeger(tonumber(v:match("^cuda:(%d+)$") or ""))
  if not index then bad("is '%s' (expected \"cpu\", \"cuda\" or \"cuda:N\")", v) end
  if not knnd.cuda.available() then
    bad("is '%s' but no CUDA device is available (knnd.cuda.available() is false: a build without CUDA, or no GPU); "
      .. "give device = \"cpu\"", v)
  end
  local n = knnd.cuda.device_count()
  if index >= n then bad("is '%s' but %d CUDA device(s) are present (cuda:0 .. cuda:%d)", v, n, n - 1) end
  return ("cuda:%d"):format(index)
end
local check_device = M.check_device

-- The defaults: a small ADM/GLIDE UNet that trains on 2 CPU cores in minutes at 28x28.
M.defaults = {
  unet = { channels = 32, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, attention_resolutions = { 7 },
    num_head_channels = 32, dropout = 0.0, use_scale_shift_norm = true, norm_groups = 32 },
  cond = { mode = "knn", k = 10, dim = 512, p_uncond = 0.1, xi = 3.0 },
  diffusion = { schedule = "cosine", T = 1000, prediction = "eps", min_snr_gamma = 5.0 },
  -- backbone = "discrete": vqvae is the path of a knnd.vqvae model (or the module, with vqvae_model its
  -- options); truncation the sampler's top-r mass (VQ-Diffusion's 0.86); time_sampling "uniform" or
  -- "importance" (VQ-Diffusion's training draws t by sqrt(E[L_t^2]) once every t was seen 10 times)
  discrete = { vqvae = "", vqvae_model = false, dim = 128, heads = 4, layers = 4, mlp_ratio = 4, dropout = 0.0,
    T = 100, aux_weight = 5e-4, truncation = 0.86, time_sampling = "uniform" },
}

M.BACKBONES = { "continuous", "discrete" }

local function resolve_config(fname, cfg)
  check_keys(fname, "option", cfg, { image_size = 1, channels = 1, unet = 1, cond = 1, diffusion = 1, seed = 1,
    backbone = 1, discrete = 1, edit = 1 })
  local backbone = cfg.backbone or "continuous"
  if backbone ~= "continuous" and backbone ~= "discrete" then
    fail(fname, "option 'backbone' is '%s' (expected continuous or discrete)", tostring(backbone))
  end
  local r = {
    backbone = backbone,
    edit = cfg.edit == true,
    image_size = positive_int(fname, "image_size", cfg.image_size),
    channels = positive_int(fname, "channels", cfg.channels or 3),
    seed = math.tointeger(cfg.seed or 0) or fail(fname, "option 'seed' expected an integer"),
    unet = merged(fname, "unet", cfg.unet, M.defaults.unet),
    cond = merged(fname, "cond", cfg.cond, M.defaults.cond),
    diffusion = merged(fname, "diffusion", cfg.diffusion, M.defaults.diffusion),
  }
  if cfg.edit ~= nil and type(cfg.edit) ~= "boolean" then
    fail(fname, "option 'edit' expected a boolean, got %s", type(cfg.edit))
  end
  if backbone == "discrete" then
    local dc = merged(fname, "discrete", cfg.discrete, M.defaults.discrete)
    for _, key in ipairs { "dim", "heads", "layers", "mlp_ratio", "T" } do
      dc[key] = positive_int(fname, "discrete." .. key, dc[key])
    end
    if dc.T < 2 then fail(fname, "option 'discrete.T' is %d (expected at least 2)", dc.T) end
    if dc.dim % dc.heads ~= 0 then
      fail(fname, "option 'discrete.dim' (%d) is not a multiple of 'discrete.heads' (%d)", dc.dim, dc.heads)
    end
    if not (dc.truncation > 0 and dc.truncation <= 1) then
      fail(fname, "option 'discrete.truncation' is %g (expected 0 < r <= 1)", dc.truncation)
    end
    if dc.time_sampling ~= "uniform" and dc.time_sampling ~= "importance" then
      fail(fname, "option 'discrete.time_sampling' is %s (expected \"uniform\" or \"importance\")",
        tostring(dc.time_sampling))
    end
    if dc.vqvae == "" or (type(dc.vqvae) ~= "string" and not knnd.nn.is_module(dc.vqvae)) then
      fail(fname, "backbone 'discrete' needs option 'discrete.vqvae' (the path of a trained knnd.vqvae model)")
    end
    r.discrete = dc
  elseif cfg.discrete ~= nil then
    fail(fname, "option 'discrete' is for backbone = 'discrete' (the backbone is '%s')", backbone)
  end
  local modes = {}
  for _, m in ipairs(knnd.cond.modes()) do modes[m] = true end
  if not modes[r.cond.mode] then
    fail(fname, "option 'cond.mode' is '%s' (expected one of %s)", tostring(r.cond.mode),
      table.concat(knnd.cond.modes(), ", "))
  end
  r.cond.k = math.tointeger(r.cond.k) or fail(fname, "option 'cond.k' expected an integer")
  r.cond.dim = positive_int(fname, "cond.dim", r.cond.dim)
  if r.cond.p_uncond < 0 or r.cond.p_uncond >= 1 then
    fail(fname, "option 'cond.p_uncond' is %g (expected 0 <= p < 1)", r.cond.p_uncond)
  end
  local tokens, needs_nb = knnd.cond.tokens(r.cond.mode, r.cond.k)
  r.cond.tokens, r.cond.needs_neighbors = tokens, needs_nb
  return r
end

-- ---- the model ----------------------------------------------------------------------------
-- the learned null condition: unit-norm random tokens, like the embeddings it stands in for
local function null_tokens(c)
  local null = knnd.randn(c.cond.tokens, c.cond.dim, { gen = knnd.Generator(c.seed + 1) })
  null = (null / null:square():sum { dim = 2, keepdim = true }:sqrt()):contiguous()
  null.requires_grad = true
  return null
end

-- backbone = "discrete": the frozen VQ-VAE (from its file, or built from its stored options when a saved
-- model is loaded: the weights then come with the model's) and VQ-Diffusion's transformer
local function new_discrete(fname, c)
  local dc = c.discrete
  local vq, vq_cfg = dc.vqvae, dc.vqvae_model
  if type(vq) == "string" and vq_cfg then
    vq = knnd.nn.vqvae(vq_cfg)
  elseif type(vq) == "string" then
    local ok, m, mcfg = pcall(knnd.vqvae.load, vq)
    if not ok then fail(fname, "option 'discrete.vqvae': %s", tostring(m)) end
    vq, vq_cfg = m, mcfg
  elseif not vq_cfg then
    fail(fname, "option 'discrete.vqvae' is a module: give its knnd.nn.vqvae options as 'discrete.vqvae_model' too")
  end
  dc.vqvae_model = vq_cfg
  if (vq_cfg.in_channels or 3) ~= c.channels then
    fail(fname, "the VQ-VAE takes %d channels but the model is built for %d", vq_cfg.in_channels or 3, c.channels)
  end
  local ok, net = pcall(discrete.new, { vqvae = vq, vqvae_config = vq_cfg, image_size = c.image_size,
    channels = c.channels, dim = dc.dim, heads = dc.heads, layers = dc.layers, mlp_ratio = dc.mlp_ratio,
    dropout = dc.dropout, context_dim = c.cond.dim, T = dc.T, aux_weight = dc.aux_weight, seed = c.seed, edit = c.edit,
    time_sampling = dc.time_sampling })
  if not ok then fail(fname, "cannot build the discrete backbone: %s", tostring(net)) end
  if type(dc.vqvae) ~= "string" then dc.vqvae = "(module)" end
  return setmetatable({ net = net, null = null_tokens(c), config = c }, Model)
end

--- knnd.knn_diffusion.new{image_size=, channels=3, unet={...}, cond={mode=, k=, dim=, p_uncond=, xi=},
--- diffusion={schedule=, T=, prediction=, min_snr_gamma=}, seed=0} -> a model
function M.new(cfg)
  local fname = "new"
  if type(cfg) ~= "table" then fail(fname, "expected a config table, got %s", type(cfg)) end
  local c = resolve_config(fname, cfg)
  if c.backbone == "discrete" then return new_discrete(fname, c) end
  local u = c.unet
  local net = knnd.nn.unet {
    in_channels = c.edit and 2 * c.channels or c.channels, out_channels = c.channels, channels = u.channels, channel_mult = u.channel_mult,
    num_res_blocks = u.num_res_blocks, image_size = c.image_size, attention_resolutions = u.attention_resolutions,
    num_head_channels = u.num_head_channels, dropout = u.dropout, use_scale_shift_norm = u.use_scale_shift_norm,
    norm_groups = u.norm_groups, context_dim = c.cond.dim, cond_embed = true, seed = c.seed,
  }
  local d = c.diffusion
  local diffusion = knnd.diffusion.new { schedule = d.schedule, T = d.T, prediction = d.prediction,
    min_snr_gamma = d.min_snr_gamma }
  return setmetatable({ net = net, null = null_tokens(c), diffusion = diffusion, config = c }, Model)
end

--- m:parameters() -> the UNet's parameters then the null tokens; m:parameter_names() their state-dict names
function Model:parameters()
  local p = {}
  for i, np in ipairs(self.net:named_parameters()) do p[i] = np.tensor end
  p[#p + 1] = self.null
  return p
end

function Model:parameter_names()
  local names = {}
  for i, np in ipairs(self.net:named_parameters()) do names[i] = np.name end
  names[#names + 1] = "null_cond"
  return names
end

function Model:num_params()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

function Model:state_dict()
  local sd = self.net:state_dict()
  sd.null_cond = self.null
  return sd
end

function Model:load_state_dict(sd)
  local null = sd.null_cond
  if null == nil then fail("load", "the weights have no 'null_cond' tensor (not a knn_diffusion model?)") end
  local rest = {}
  for k, v in pairs(sd) do if k ~= "null_cond" then rest[k] = v end end
  self.net:load_state_dict(rest)
  if null:dim() ~= 2 or null:size(1) ~= self.null:size(1) or null:size(2) ~= self.null:size(2) then
    fail("load", "'null_cond' is %s (expected %dx%d for mode %s, k=%d, dim=%d)", table.concat(null:shape(), "x"),
      self.null:size(1), self.null:size(2), self.config.cond.mode, self.config.cond.k, self.config.cond.dim)
  end
  knnd.no_grad(function() self.null:copy_(null) end)
end

function Model:train() self.net:train() end
function Model:eval() self.net:eval() end

--- m:device() -> where the model's weights are ("cpu" or "cuda:N")
function Model:device() return self.null:device() end

--- m:to(device) -> m: the network (and a discrete model's VQ-VAE) and the null tokens moved to device ("cpu",
--- "cuda", "cuda:N"); build optimisers and EMAs over m:parameters() after moving (they hold the tensors they
--- were given: the null tokens are a new tensor on the device)
function Model:to(device)
  local dev = check_device("Model:to", device, "argument 'device'")
  if dev == self:device() then return self end
  self.net:to(dev)
  local null = knnd.no_grad(function() return self.null:detach():to(dev):contiguous() end)
  null.requires_grad = true
  self.null = null
  return self
end

function Model:__tostring()
  local c = self.config
  if c.backbone == "discrete" then
    local dc, n = c.discrete, self.net
    return ("knnd.knn_diffusion (%dx%dx%d; discrete: %dx%d tokens of %d codes, transformer dim %d x %d layers, "
      .. "%d heads; cond %s k=%d dim=%d, %d tokens; mask-and-replace T=%d), %d parameters (VQ-VAE frozen)")
      :format(c.channels, c.image_size, c.image_size, n.h, n.w, n.K, dc.dim, dc.layers, dc.heads, c.cond.mode,
        c.cond.k, c.cond.dim, c.cond.tokens, dc.T, self:num_params())
  end
  return ((c.edit and "knnd.knn_diffusion edit model " or "knnd.knn_diffusion ") .. "(%dx%dx%d; UNet base %d, mults %s; cond %s k=%d dim=%d, %d tokens; %s/%s T=%d), %d parameters")
    :format(c.channels, c.image_size, c.image_size, c.unet.channels, table.concat(c.unet.channel_mult, ","),
      c.cond.mode, c.cond.k, c.cond.dim, c.cond.tokens, c.diffusion.schedule, c.diffusion.prediction, c.diffusion.T,
      self:num_params())
end

local function l2_normalize(x)
  return x / (x:square():sum { dim = -1, keepdim = true }:sqrt() + 1e-12)
end

--- m:condition(query [B,D], neighbors [B,k,D] or nil [, {drop = bool [B] tensor (u8), gen=, inference=}])
--- -> tokens [B,T,D] on the model's device (the inputs may be anywhere). The token set of the model's mode;
--- rows where drop is set get the learned null set instead. inference = true: lafite_noise uses the clean
--- (text) embedding, as LAFITE samples — the perturbation is a training device that makes image embeddings stand in for text ones.
function Model:condition(query, neighbors, opts)
  local c = self.config.cond
  opts = opts or {}
  if query:dim() ~= 2 or query:size(2) ~= c.dim then
    fail("condition", "query is %s (expected [B, %d]: the model was built for %d-d embeddings)",
      table.concat(query:shape(), "x"), c.dim, c.dim)
  end
  local B = query:size(1)
  if c.needs_neighbors then
    if neighbors == nil then fail("condition", "mode %s needs neighbours [B, k, D]", c.mode) end
    if neighbors:dim() ~= 3 or neighbors:size(1) ~= B or neighbors:size(2) < c.k or neighbors:size(3) ~= c.dim then
      fail("condition", "neighbors are %s (expected [%d, >= %d, %d])", table.concat(neighbors:shape(), "x"), B, c.k, c.dim)
    end
    if neighbors:size(2) > c.k then neighbors = neighbors:narrow(2, 1, c.k) end
  else
    neighbors = nil
  end
  local tokens
  local xi = opts.inference and 0 or c.xi
  if neighbors then
    tokens = knnd.cond.build(c.mode, l2_normalize(query), l2_normalize(neighbors), { xi = xi, gen = opts.gen })
  else
    tokens = knnd.cond.build(c.mode, l2_normalize(query), { xi = xi, gen = opts.gen })
  end
  -- the token sets are built on the host (knnd.cond); a model on a device gets them there
  local dev = self:device()
  if tokens:device() ~= dev then tokens = tokens:to(dev) end
  if opts.drop then
    local null = self.null:unsqueeze(1):expand(B, c.tokens, c.dim)
    local drop = opts.drop
    if drop:device() ~= dev then drop = drop:to(dev) end
    tokens = knnd.where(drop:view(B, 1, 1), null, tokens)
  end
  return tokens
end

--- m:null_tokens(B) -> [B,T,D] the learned null condition
function Model:null_tokens(B)
  local c = self.config.cond
  return self.null:unsqueeze(1):expand(B, c.tokens, c.dim)
end

-- the source images an edit model needs (and only an edit model takes), checked against the batch's shape
-- {B, C, H, W}
local function check_source(self, fname, shape, source)
  if not self.config.edit then
    if source ~= nil then fail(fname, "a source image is for an edit model (knn_diffusion.new{edit = true})") end
    return
  end
  if source == nil then fail(fname, "an edit model needs the source image (option 'source', [B,C,H,W])") end
  local ok = source:dim() == 4
  for d = 1, 4 do ok = ok and source:size(d) == shape[d] end
  if not ok then
    fail(fname, "the source images are %s (expected %s, as the images)", table.concat(source:shape(), "x"),
      table.concat(shape, "x"))
  end
end

-- an edit model's input: x_t and the source image Ĩ side by side in the channels
local function with_source(self, fname, x, source)
  check_source(self, fname, x:shape(), source)
  if not self.config.edit then return x end
  return knnd.cat({ x, source }, 2)
end

--- m:forward(x_t, t, tokens [, source]) -> the network's prediction (eps, v or x0); source: an edit
--- model's Ĩ [B,C,H,W]
function Model:forward(x, t, tokens, source)
  return self.net(with_source(self, "Model:forward", x, source), t, tokens)
end
Model.__call = Model.forward

--- m:loss(x0 [B,C,H,W] in [-1,1], tokens [B,T,D] [, {gen=, source=, pixel_weights=}]) -> the diffusion loss (a
--- scalar); source: an edit model's Ĩ [B,C,H,W]; pixel_weights [B,1,H,W] (continuous backbone): each image's
--- squared errors weighted by them (normalised to mean 1 per image), e.g. the pasted area of an edit pair stressed
function Model:loss(x0, tokens, opts)
  local gen = opts and opts.gen
  local source = opts and opts.source
  if self.config.backbone == "discrete" then
    check_source(self, "Model:loss", x0:shape(), source)
    if opts and opts.pixel_weights ~= nil then fail("Model:loss", "option 'pixel_weights' is for the continuous backbone") end
    return self.net:loss(x0, tokens, opts)
  end
  local B = x0:size(1)
  local d = self.diffusion
  -- t on the host, where the schedule's per-example coefficients are read from it; the UNet takes it on the
  -- images' device (drawn on the host either way: the same numbers)
  local t = knnd.randint(0, d:num_timesteps(), { B }, { gen = gen, dtype = "i64" })
  local noise = knnd.randn_like(x0, { gen = gen })
  local dev = x0:device()
  local t_net = dev ~= "cpu" and t:to(dev) or t
  local xt = d:q_sample(x0, t, noise)
  local out = self.net(with_source(self, "Model:loss", xt, source), t_net, tokens)
  local pw = opts and opts.pixel_weights
  if pw == nil then return d:loss(out, x0, noise, t) end
  if pw:dim() ~= 4 or pw:size(1) ~= B or pw:size(2) ~= 1 or pw:size(3) ~= x0:size(3) or pw:size(4) ~= x0:size(4) then
    fail("Model:loss", "option 'pixel_weights' is %s (expected [%d, 1, %d, %d])", table.concat(pw:shape(), "x"), B,
      x0:size(3), x0:size(4))
  end
  -- diffusion:loss with per-pixel weights: mean_b(w_b · mean(m_b · (out_b − target_b)²)), m_b of mean 1
  local m = pw / pw:mean { dim = { 2, 3, 4 }, keepdim = true }
  local se = (out - d:target(x0, t, noise)):square() * m
  local w = d:loss_weights(t)
  if dev ~= "cpu" then w = w:to(dev) end
  return (se:mean { dim = { 2, 3, 4 } } * w):mean()
end

--- m:sample{tokens = [B,T,D], sampler = "dpmpp"|"ddim"|"ddpm", steps = 25, guidance = 3,
---   eta = 0 (ddim), seed = 0 | gen =, progress = false, clip = true, device=} -> images f32 [B,C,H,W] in [-1, 1]
--- clip: each step's predicted x0 is clipped to [-1, 1] (guided-diffusion's clip_denoised).
--- guidance = 1 is the conditional model alone; 0 the unconditional one (the null tokens).
--- device ("cpu", "cuda", "cuda:N"; default where the model is): the model is moved there (m:to) and samples
--- there; tokens, noise and source may be anywhere, the images come back on that device. The random draws
--- are the generator's on any device: the same seed gives the same noise.
function Model:sample(opts)
  local fname = "Model:sample"
  check_keys(fname, "option", opts, { tokens = 1, sampler = 1, steps = 1, guidance = 1, eta = 1, seed = 1, gen = 1,
    progress = 1, noise = 1, clip = 1, truncation = 1, source = 1, strength = 1, device = 1 })
  local tokens = opts.tokens or fail(fname, "option 'tokens' ([B,T,D], from m:condition) is required")
  local c = self.config
  if tokens:dim() ~= 3 or tokens:size(2) ~= c.cond.tokens or tokens:size(3) ~= c.cond.dim then
    fail(fname, "tokens are %s (expected [B, %d, %d] for mode %s)", table.concat(tokens:shape(), "x"), c.cond.tokens,
      c.cond.dim, c.cond.mode)
  end
  local device = check_device(fname, opts.device)
  if device then self:to(device) end
  local dev = self:device()
  if tokens:device() ~= dev then tokens = tokens:to(dev) end
  if opts.source ~= nil and knnd.is_tensor(opts.source) and opts.source:device() ~= dev then
    local moved = {}
    for k, v in pairs(opts) do moved[k] = v end
    moved.source = opts.source:to(dev)
    opts = moved
  end
  if c.backbone == "discrete" then return self:sample_discrete(fname, opts, tokens) end
  if opts.truncation ~= nil then fail(fname, "option 'truncation' is for backbone = 'discrete'") end
  local sampler = opts.sampler or "dpmpp"
  if sampler ~= "dpmpp" and sampler ~= "ddim" and sampler ~= "ddpm" then
    fail(fname, "option 'sampler' is '%s' (expected dpmpp, ddim or ddpm)", tostring(sampler))
  end
  local steps = positive_int(fname, "steps", opts.steps or 25)
  local scale = opts.guidance or 3.0
  local gen = opts.gen or knnd.Generator(opts.seed or 0)
  local B = tokens:size(1)
  local d = self.diffusion
  local source = opts.source
  if source ~= nil then
    check_source(self, fname, { B, c.channels, c.image_size, c.image_size }, source)
  elseif c.edit then
    fail(fname, "an edit model needs option 'source' (the image to edit, [B,C,H,W] in [-1,1])")
  end
  local strength = opts.strength or 1.0
  if type(strength) ~= "number" or not (strength > 0 and strength <= 1) then
    fail(fname, "option 'strength' is %s (expected 0 < s <= 1)", tostring(strength))
  end
  if strength < 1 and not source then fail(fname, "option 'strength' needs a 'source' image") end
  local was_training = self.net.training
  self.net:eval()
  local prev = knnd.set_grad_enabled(false)
  local ok, res = pcall(function()
    local x = opts.noise or knnd.randn(B, c.channels, c.image_size, c.image_size, { gen = gen, device = dev })
    if x:device() ~= dev then x = x:to(dev) end
    local ts = d:timesteps(steps, sampler == "dpmpp" and "dpmpp" or sampler)
    if strength < 1 then
      -- SDEdit / img2img: start from the source noised to timestep strength·T, on the schedule's tail
      local t_start, tail = strength * (d:num_timesteps() - 1), {}
      for _, t in ipairs(ts) do if t <= t_start then tail[#tail + 1] = t end end
      if #tail == 0 then tail[1] = ts[#ts] end
      ts = tail
      x = d:q_sample(source, knnd.full({ B }, ts[1], { dtype = "i64" }), x)
    end
    local src_in = source and (scale ~= 1 and knnd.cat({ source, source }, 1) or source) or nil
    local solver = sampler == "dpmpp" and knnd.diffusion.dpmpp(d) or nil
    -- one batched call for the conditional and the unconditional halves when guiding
    local guided = scale ~= 1
    local ctx = guided and knnd.cat({ tokens, self:null_tokens(B) }, 1) or tokens
    local clip = opts.clip ~= false
    local alphas = clip and d:alphas_cumprod() or nil
    local bar = opts.progress and knnd.progress { total = #ts, desc = "sample", unit = "step" } or nil
    for i, t in ipairs(ts) do
      local xin = guided and knnd.cat({ x, x }, 1) or x
      local tt = knnd.full({ xin:size(1) }, t, { dtype = "i64", device = dev })
      local out = self.net(src_in and knnd.cat({ xin, src_in }, 2) or xin, tt, ctx)
      if guided then
        out = knnd.diffusion.cfg(out:narrow(1, B + 1, B), out:narrow(1, 1, B), scale)
      end
      if clip then
        -- the predicted x0 clipped to the data range and the output rebuilt from it (guided-diffusion's
        -- clip_denoised): near t = T the cosine schedule's alpha_bar is ~1e-9, and x0 = (x - sigma·eps)
        -- / alpha turns a small error in eps into values of 1e3 that the first steps carry into x
        local x0 = knnd.clamp(d:predict(out, t, x), -1, 1)
        local ab = alphas[t + 1]
        local eps = (x - x0 * math.sqrt(ab)) / math.sqrt(1 - ab)
        out = d:target(x0, knnd.full({ B }, t, { dtype = "i64" }), eps)
      end
      local t_prev = ts[i + 1] or -1
      if solver then
        x = solver:step(out, t, t_prev, x)
      else
        x = d:step(sampler, out, t, t_prev, x, { eta = opts.eta or (sampler == "ddpm" and 1 or 0), generator = gen })
      end
      if bar then bar:update(1) end
    end
    if bar then bar:close() end
    return knnd.clamp(x, -1, 1)
  end)
  knnd.set_grad_enabled(prev)
  if was_training then self.net:train() end
  if not ok then error(res, 0) end
  return res
end

--- m:sampler_option(name) -> the sampler option to give m:sample / generate for a script's configured
--- sampler name: the name for the continuous backbone, nil (its own, vqdiff) for the discrete one
function Model:sampler_option(name)
  if self.config.backbone == "discrete" then return nil end
  return name
end

-- Model:sample for backbone = "discrete": VQ-Diffusion's sampler (sampler "vqdiff"; steps: about that many
-- of the T timesteps, the fast sampler's skip; default all T)
function Model:sample_discrete(fname, opts, tokens)
  local dc = self.config.discrete
  if opts.sampler ~= nil and opts.sampler ~= "vqdiff" then
    fail(fname, "option 'sampler' is '%s' (the discrete backbone samples with vqdiff)", tostring(opts.sampler))
  end
  for _, key in ipairs { "eta", "noise", "clip" } do
    if opts[key] ~= nil then fail(fname, "option '%s' is for the continuous backbone", key) end
  end
  if opts.strength ~= nil and opts.strength ~= 1 then
    fail(fname, "option 'strength' is for the continuous backbone (the discrete one starts from all [MASK])")
  end
  if self.config.edit or opts.source ~= nil then
    local c = self.config
    check_source(self, fname, { tokens:size(1), c.channels, c.image_size, c.image_size }, opts.source)
  end
  local steps = positive_int(fname, "steps", opts.steps or dc.T)
  local r = opts.truncation or dc.truncation
  if type(r) ~= "number" or not (r > 0 and r <= 1) then
    fail(fname, "option 'truncation' is %s (expected 0 < r <= 1)", tostring(r))
  end
  local B = tokens:size(1)
  local was_training = self.net.training
  self.net:eval()
  local ok, res = pcall(knnd.no_grad, function()
    return self.net:sample { ctx = tokens, null = self:null_tokens(B), steps = steps, guidance = opts.guidance or 3.0,
      truncation = r, gen = opts.gen or knnd.Generator(opts.seed or 0), progress = opts.progress, source = opts.source }
  end)
  if was_training then self.net:train() end
  if not ok then error(res, 0) end
  return res
end

local function stored_config(m)
  local c = m.config
  local cond = {}
  for k, v in pairs(c.cond) do if k ~= "tokens" and k ~= "needs_neighbors" then cond[k] = v end end
  local out = { image_size = c.image_size, channels = c.channels, seed = c.seed, unet = c.unet, cond = cond,
    diffusion = c.diffusion }
  if c.edit then out.edit = true end
  if c.backbone == "discrete" then
    out.backbone, out.discrete = c.backbone, c.discrete
  end
  return out
end
M.stored_config = stored_config

-- ---- training -----------------------------------------------------------------------------
local exists = require("knnd.cliutil").exists

-- atomic writes (a crash leaves the old file) are knnd.files'; kept here as M.write_atomic for its users
local write_atomic = require("knnd.files").write_atomic
M.write_atomic = write_atomic

local mkdir_p = require("knnd.files").mkdir_p

-- the log: one row per step {step, loss, lr, seconds}
local function write_log(path, rows)
  local lines = { "step,loss,lr,seconds" }
  for _, r in ipairs(rows) do lines[#lines + 1] = ("%d,%.9g,%.9g,%.3f"):format(r[1], r[2], r[3], r[4]) end
  write_atomic(path, table.concat(lines, "\n") .. "\n")
end

--- knnd.knn_diffusion.read_log(path) -> {steps = {...}, loss = {...}, lr = {...}, seconds = {...}}
function M.read_log(path, upto)
  local f = io.open(path, "rb")
  local out = { steps = {}, loss = {}, lr = {}, seconds = {} }
  if not f then return out end
  local first = true
  for line in f:lines() do
    if first then
      first = false
    else
      local st, l, lr, sec = line:match("^(%d+),([^,]+),([^,]+),([^,]+)$")
      st = math.tointeger(tonumber(st))
      if st and (not upto or st <= upto) then
        local n = #out.steps + 1
        out.steps[n], out.loss[n], out.lr[n], out.seconds[n] = st, tonumber(l), tonumber(lr), tonumber(sec)
      end
    end
  end
  f:close()
  return out
end

--- knnd.knn_diffusion.plot_losses{path=, runs = {{name=, log=read_log(...)}, ...}, title=}: the loss
--- curves (each smoothed with an exponential moving average; the raw curve faint) as a PNG
function M.plot_losses(o)
  local series = {}
  for _, run in ipairs(o.runs) do
    local xs, ys, sm, v = run.log.steps, run.log.loss, {}, nil
    for i, y in ipairs(ys) do
      v = v and (0.98 * v + 0.02 * y) or y
      sm[i] = v
    end
    if #xs > 0 then series[#series + 1] = { name = run.name .. " (EMA 0.98)", x = xs, y = sm } end
  end
  if #series == 0 then return end
  knnd.plot { path = o.path, title = o.title or "diffusion training loss", xlabel = "step", ylabel = "loss",
    logy = true, series = series }
end

local function open_store(fname, what, v)
  if type(v) == "string" then
    if not exists(v) then fail(fname, "option '%s': '%s' not found", what, v) end
    local ok, st = pcall(knnd.embeddings.open, v)
    if not ok then fail(fname, "option '%s': %s", what, tostring(st)) end
    return st
  end
  return v
end

-- all rows of an embedding store (or a tensor [N,D]) as f32 [N,D]
local function all_embeddings(fname, what, v)
  if knnd.is_tensor(v) then
    if v:dim() ~= 2 then fail(fname, "option '%s' is a tensor of %d dims (expected [N, D])", what, v:dim()) end
    return v:to("f32"):contiguous(), nil
  end
  local st = open_store(fname, what, v)
  if st == nil then return nil end
  return st:read(1, #st), st
end

-- the first differing key of two stored configs ("unet.channels: 32 vs 16"), nil when equal
local function config_difference(a, b, prefix)
  prefix = prefix or ""
  if type(a) ~= "table" or type(b) ~= "table" then
    if a == b or (type(a) == "number" and type(b) == "number" and math.abs(a - b) <= 1e-12 * math.max(1, math.abs(b))) then
      return nil
    end
    return ("%s: %s vs %s"):format(prefix ~= "" and prefix or "config", tostring(a), tostring(b))
  end
  local seen, keys = {}, {}
  for _, t in ipairs { a, b } do
    for k in pairs(t) do
      if not seen[k] then seen[k] = true keys[#keys + 1] = k end
    end
  end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, k in ipairs(keys) do
    local d = config_difference(a[k], b[k], prefix == "" and tostring(k) or (prefix .. "." .. tostring(k)))
    if d then return d end
  end
  return nil
end

local train_keys = { model = 1, dataset = 1, embeddings = 1, cache = 1, database = 1, steps = 1, batch = 1, lr = 1,
  min_lr = 1, warmup = 1, weight_decay = 1, ema = 1, ema_warmup = 1, grad_clip = 1, flip = 1, seed = 1, out = 1,
  checkpoint_every = 1, resume = 1, progress = 1, until_step = 1, time_limit = 1, name = 1, rows = 1, pairs = 1,
  device = 1, log_every = 1 }

--- knnd.knn_diffusion.train{model=, dataset= (path or knnd.dataset), embeddings= (the CLIP image
---   embeddings of the dataset's rows: a store, its path, or f32 [N,D]), cache= (neighbour cache
---   or its path; modes knn and knn_only), database= (the store the cache's rows point into;
---   default embeddings), steps=2000, batch=64, lr=2e-4, min_lr=lr/10, warmup=steps/50,
---   weight_decay=0, ema=0.999, ema_warmup=false (true: the EMA's decay ramps up as diffusers' EMAModel's,
---   min(ema, (1+n)/(10+n)) after n updates: a short run's average holds none of the initial weights),
---   grad_clip=1, flip=false, seed=0, out= (run directory),
---   checkpoint_every=250, resume=true, progress=true, until_step=, time_limit=, name=, rows= (train on
---   these 0-based rows only, e.g. held-out classes left out; their neighbours still come from the cache),
---   pairs= (an edit model's pair maker, knnd.edit.pairs: each batch's Ĩ, the areas' embeddings and their
---   neighbours replace the images' own embeddings and cached neighbours; no cache needed),
---   device= ("cpu", "cuda" or "cuda:N"; default where the model is, the CPU for a new or loaded one: the model
---   and its EMA live there, the optimiser's state too, the loader puts the batches there, the condition
---   tokens, timesteps and noise go there; the random draws are the same on any device, the model stays
---   there after train returns; resuming onto a device from a CPU checkpoint and back works),
---   log_every= (steps whose losses are read back together: 1 on the CPU, 25 on a device, where reading a
---   loss waits for the device; the log still has every step, checkpoints read the pending ones first)}
--- -> {steps=, loss=, seconds=, resumed_from=, log=, checkpoint=, model_path=, ema_init_share= (ema^steps, 0
--- with ema_warmup: the share of the EMA weights still the initialisation; above 1% a warning is printed when
--- progress is on)}
--- Writes out/checkpoint.h5 (model, AdamW, EMA, step, generator, loader position: resuming from it
--- continues exactly), out/model.h5 (the EMA weights, for knnd.knn_diffusion.load), out/log.csv
--- and out/loss.png. Training sees no text: the condition is built from image embeddings.
function M.train(o)
  local fname = "train"
  check_keys(fname, "option", o, train_keys)
  local model = o.model
  if getmetatable(model) ~= Model then fail(fname, "option 'model' expected a knnd.knn_diffusion model") end
  local cfg = model.config
  local out = o.out or fail(fname, "option 'out' (the run directory) is required")
  if type(out) ~= "string" then fail(fname, "option 'out' expected a directory path") end
  local ds = o.dataset or fail(fname, "option 'dataset' (a prepared dataset or its path) is required")
  if type(ds) == "string" then
    if not exists(ds) then fail(fname, "option 'dataset': '%s' not found", ds) end
    ds = knnd.dataset.open(ds)
  end
  local n = ds:count()
  local shape = ds:image_shape()
  if shape[1] ~= cfg.channels or shape[2] ~= cfg.image_size or shape[3] ~= cfg.image_size then
    fail(fname, "the dataset's images are %dx%dx%d but the model was built for %dx%dx%d (channels, size)", shape[1],
      shape[2], shape[3], cfg.channels, cfg.image_size, cfg.image_size)
  end
  local emb, emb_store = all_embeddings(fname, "embeddings", o.embeddings
    or fail(fname, "option 'embeddings' (the CLIP embeddings of the dataset's images) is required"))
  if emb:size(1) ~= n then
    fail(fname, "the embeddings have %d rows but the dataset has %d images (encode this dataset)", emb:size(1), n)
  end
  if emb:size(2) ~= cfg.cond.dim then
    fail(fname, "the embeddings are %d-d but the model was built for cond.dim = %d", emb:size(2), cfg.cond.dim)
  end
  local cache, database
  local pairs_maker = o.pairs
  if cfg.edit and pairs_maker == nil then
    fail(fname, "an edit model trains on pairs: give option 'pairs' (knnd.edit.pairs{...})")
  elseif pairs_maker ~= nil and not cfg.edit then
    fail(fname, "option 'pairs' is for an edit model (knn_diffusion.new{edit = true})")
  end
  if pairs_maker ~= nil and (type(pairs_maker) ~= "table" or type(pairs_maker.make) ~= "function") then
    fail(fname, "option 'pairs' expected a pair maker (knnd.edit.pairs{...})")
  end
  if pairs_maker then
    if pairs_maker.dim ~= cfg.cond.dim then
      fail(fname, "the pair maker's CLIP gives %d-d embeddings, the model needs cond.dim = %d", pairs_maker.dim, cfg.cond.dim)
    end
    if pairs_maker.k < cfg.cond.k then
      fail(fname, "the pair maker retrieves k = %d neighbours, the model needs k = %d", pairs_maker.k, cfg.cond.k)
    end
  elseif cfg.cond.needs_neighbors then
    cache = o.cache or fail(fname, "mode %s needs option 'cache' (a neighbour cache of the dataset)", cfg.cond.mode)
    if type(cache) == "string" then
      if not exists(cache) then fail(fname, "option 'cache': '%s' not found", cache) end
      cache = knnd.cache.open(cache)
    end
    local info = cache:info()
    if info.count ~= n then fail(fname, "the neighbour cache has %d rows but the dataset has %d", info.count, n) end
    if info.k < cfg.cond.k then fail(fname, "the neighbour cache holds k = %d, the model needs k = %d", info.k, cfg.cond.k) end
    database = o.database and all_embeddings(fname, "database", o.database) or emb
    if database:size(2) ~= cfg.cond.dim then
      fail(fname, "the database embeddings are %d-d, the model needs %d", database:size(2), cfg.cond.dim)
    end
  end
  local steps = positive_int(fname, "steps", o.steps or 2000)
  local batch = positive_int(fname, "batch", o.batch or 64)
  local lr = o.lr or 2e-4
  local every = positive_int(fname, "checkpoint_every", o.checkpoint_every or 250)
  local seed = math.tointeger(o.seed or 0) or fail(fname, "option 'seed' expected an integer")
  local device = check_device(fname, o.device) or model:device()
  local log_every = positive_int(fname, "log_every", o.log_every or (device == "cpu" and 1 or 25))
  mkdir_p(out)
  local ck_path, model_path, log_path = out .. "/checkpoint.h5", out .. "/model.h5", out .. "/log.csv"

  -- everything random in a step (timesteps, noise, null-condition drops, LAFITE noise, dropout)
  -- comes from the default generator, which the checkpoint saves and restores
  knnd.manual_seed(seed)
  -- the model first, then the optimiser and the EMA over its parameters there
  if model:device() ~= device then model:to(device) end
  local params = model:parameters()
  -- data-parallel over the ranks of a job (mpirun -np N): the same start everywhere, each rank its
  -- slice of every batch and of its random draws, the gradients averaged: N ranks with batch B step
  -- as one process with batch B. Rank 0 alone writes files and shows progress.
  local dist = knnd.dist
  local world, rank, sync = dist.data_parallel(params, batch, "knn_diffusion.train")
  local main = rank == 0
  local opt = knnd.optim.AdamW(params, { lr = lr, weight_decay = o.weight_decay or 0.0 })
  if o.ema_warmup ~= nil and type(o.ema_warmup) ~= "boolean" then
    fail(fname, "option 'ema_warmup' expected true or false, got %s", tostring(o.ema_warmup))
  end
  local ema_rate = o.ema or 0.999
  local ema = knnd.optim.EMA(params, ema_rate, { warmup = o.ema_warmup == true })
  local sched = knnd.optim.lr_schedule { kind = "cosine", base_lr = lr, min_lr = o.min_lr or lr / 10,
    warmup_steps = math.min(o.warmup or math.max(1, steps // 50), steps - 1), total_steps = steps }
  -- the batches on the device (pinned, copied asynchronously); an edit model's pair maker works on host images,
  -- its pairs go to the device after
  local on_device = device ~= "cpu"
  local loader = ds:loader { batch = math.min(batch, o.rows and (knnd.is_tensor(o.rows) and o.rows:numel() or #o.rows) or n),
    shuffle = true, seed = seed, flip = o.flip == true, rows = o.rows, shard = world > 1 and { rank, world } or nil,
    device = on_device and not pairs_maker and device or nil }
  local store_info = emb_store and emb_store:info() or {}
  local info = { encoder = store_info.encoder, encoder_hash = store_info.encoder_hash, dataset = ds.path, name = o.name }
  model.info = info

  local start, resumed_from = 0, nil
  local log = { steps = {}, loss = {}, lr = {}, seconds = {} }
  if o.resume ~= false and exists(ck_path) then
    local ok, peek = pcall(knnd.io.load_checkpoint, ck_path, { gen = false })
    if not ok then
      fail(fname, "cannot resume from '%s' (%s): move it away, or give resume = false to start over",
        ck_path, tostring(peek):gsub("^.-knnd%.io%.load_checkpoint: ", ""))
    end
    local c = peek.config or {}
    if c.format ~= M.FORMAT then fail(fname, "'%s' is not a knn_diffusion training checkpoint", ck_path) end
    -- checkpoints from before discrete.time_sampling existed sampled t uniformly
    if type(c.model) == "table" and type(c.model.discrete) == "table" and c.model.discrete.time_sampling == nil then
      c.model.discrete.time_sampling = "uniform"
    end
    local differs = config_difference(c.model, stored_config(model))
    if differs then
      fail(fname, "'%s' holds a model of another configuration (%s): give another 'out' directory, or resume = false "
        .. "to start over there", ck_path, differs)
    end
    local ck = knnd.io.load_checkpoint(ck_path, { model = model, optimizer = opt, ema = ema })
    if c.loader then loader:load_state(c.loader) end
    start, resumed_from = ck.step, ck.step
    log = M.read_log(log_path, start)
  end
  local rows_log = {}
  for i = 1, #log.steps do rows_log[i] = { log.steps[i], log.loss[i], log.lr[i], log.seconds[i] } end

  -- every rank draws its slice of what one process would draw for the whole batch
  dist.shard_generator(world > 1)
  local function save(step)
    if not main then return end
    local c = { format = M.FORMAT, model = stored_config(model), info = info, loader = loader:state(),
      ema_names = model:parameter_names(), train = { steps = steps, batch = batch, lr = lr, seed = seed } }
    write_log(log_path, rows_log)
    knnd.io.save_checkpoint(ck_path, { model = model, optimizer = opt, ema = ema, step = step, config = c })
  end

  local bar = o.progress ~= false and main and knnd.progress { total = steps, desc = "train " .. (o.name or cfg.cond.mode),
    unit = "step" } or nil
  if bar and start > 0 then bar:update(start) end
  local t0 = knnd.wall_time()
  local seconds0 = #rows_log > 0 and rows_log[#rows_log][4] or 0
  local p_uncond = cfg.cond.p_uncond
  local stop = math.min(steps, o.until_step or steps)
  local step, loss_value = start, nil
  local db_n = database and database:size(1) or 0
  -- the steps whose losses are not read back yet {step, loss, lr, seconds}: read together every log_every steps
  -- (each step on the CPU), before a checkpoint and at the end, then checked, logged and shown
  local pending = {}
  local function flush()
    if #pending == 0 then return end
    local values
    if #pending == 1 then
      values = { pending[1][2]:item() }
    else
      local parts = {}
      for i, p in ipairs(pending) do parts[i] = p[2]:reshape(1) end
      values = knnd.cat(parts, 1):totable()
    end
    if world > 1 then values = dist.all_reduce(knnd.tensor(values), "mean"):totable() end
    for i, p in ipairs(pending) do
      local v = values[i]
      if v ~= v or v == math.huge then
        pending = {}
        fail(fname, "the loss is %s at step %d (lower lr, or check the data)", tostring(v), p[1])
      end
      rows_log[#rows_log + 1] = { p[1], v, p[3], p[4] }
      loss_value = v
      if bar then bar:update(1, { loss = v }) end
    end
    pending = {}
  end
  model:train()
  while step < stop do
    if dist.past(t0, o.time_limit) then break end -- the ranks stop together
    local b = loader:next()
    local B = b.x:size(1)
    local q, nb, source, pixel_weights
    if pairs_maker then
      local pr = pairs_maker:make(b.x, b.rows)
      q, source, pixel_weights = pr.query, pr.source, pr.pixel_weights
      if cfg.cond.needs_neighbors then nb = pr.neighbors end
      if on_device then
        b.x, source = b.x:to(device), source and source:to(device)
        pixel_weights = pixel_weights and pixel_weights:to(device)
      end
    else
      q = emb:index_select(1, b.rows)
    end
    if cache then
      local nrows = cache:lookup(b.rows, cfg.cond.k)
      local nf = nrows:to("f32")
      if nf:min():item() < 0 or nf:max():item() >= db_n then
        fail(fname, "the neighbour cache points outside the database (%d rows): was it built over another store?", db_n)
      end
      nb = database:index_select(1, nrows:reshape(-1)):view(B, cfg.cond.k, cfg.cond.dim)
    end
    local drop = p_uncond > 0 and knnd.lt(knnd.rand(B), p_uncond) or nil
    opt:set_lr(sched(step))
    opt:zero_grad()
    local loss = model:loss(b.x, model:condition(q, nb, { drop = drop }), { source = source,
      pixel_weights = pixel_weights })
    sync.begin()
    loss:backward()
    sync.finish()
    if o.grad_clip ~= false then knnd.optim.clip_grad_norm(params, o.grad_clip or 1.0) end
    opt:step()
    ema:update()
    step = step + 1
    pending[#pending + 1] = { step, log_every > 1 and loss:detach() or loss, sched(step - 1),
      seconds0 + knnd.wall_time() - t0 }
    local saving = step % every == 0 or step == steps
    if #pending >= log_every or saving then flush() end
    if saving then save(step) end
  end
  flush()
  if step % every ~= 0 and step ~= steps then save(step) end
  dist.shard_generator(false)
  if bar then bar:close() end
  model:eval()
  -- the sampling model: the EMA weights, the live ones kept in the checkpoint
  if main then
    ema:swap()
    model:save(model_path, info)
    ema:swap()
  end
  if world > 1 then dist.barrier() end -- the files are in place when train returns on any rank
  log = M.read_log(log_path)
  -- the share of the EMA average that is still the initialisation (a run shorter than a few times 1 / (1 - ema)
  -- steps): the zero-initialised output layer then shrinks every prediction by that share, and with eps
  -- prediction near the cosine schedule's alpha_bar of 2e-9 a 14% shrink made samples pure noise (stickers.lua
  -- at ema 0.999 for 2000 steps); above 1% say so where a person is watching
  -- (with ema_warmup the first update takes the weights as they are: none of the initialisation stays)
  local ema_init = (o.ema_warmup == true and step > 0) and 0 or ema_rate ^ step
  if ema_init > 0.01 and o.progress ~= false and main then
    io.stderr:write(("knnd.knn_diffusion.train: after %d steps the EMA (%g) still holds %.0f%% of the initial weights; "
      .. "sample with knn_diffusion.load('%s', {weights = \"live\"}), or train with 'ema_warmup' or a lower 'ema'\n")
      :format(step, ema_rate, 100 * ema_init, ck_path))
  end
  if main then M.plot_losses { path = out .. "/loss.png", runs = { { name = o.name or cfg.cond.mode, log = log } },
    title = ("training loss (%s)"):format(o.name or cfg.cond.mode) } end
  return { steps = step, loss = loss_value, seconds = knnd.wall_time() - t0, resumed_from = resumed_from, log = log,
    checkpoint = ck_path, model_path = model_path, ema_init_share = ema_init }
end

-- ---- generation from text -----------------------------------------------------------------
local generate_keys = { model = 1, clip = 1, index = 1, prompts = 1, query = 1, n = 1, sampler = 1, steps = 1,
  guidance = 1, seed = 1, grid = 1, neighbor_grid = 1, images = 1, progress = 1, batch = 1, scale = 1, title = 1,
  truncation = 1, device = 1 }

--- knnd.knn_diffusion.generate{model=, prompts={...}, clip= (a knnd.clip model) | query= f32 [P,D],
---   index= (any index with its store: swapping it swaps the database), n=4 per prompt,
---   sampler="dpmpp", steps=25, guidance=3, seed=0, batch=128, grid= PNG path, neighbor_grid= PNG
---   path (needs images= the database's images), scale=2, title=, progress=true, device= ("cpu", "cuda",
---   "cuda:N"; default where the model is: the model is moved there and samples there; the prompts' embeddings
---   and the retrieval stay where CLIP and the index are, the condition tokens go to the device)}
--- -> {images = f32 [P*n,C,H,W] in [-1,1] (prompt-major, on the CPU), prompts = {P*n}, neighbors = {rows=, scores=}}
--- The text's CLIP embedding and its k nearest image embeddings in the index give the condition.
function M.generate(o)
  local fname = "generate"
  check_keys(fname, "option", o, generate_keys)
  local model = o.model
  if getmetatable(model) ~= Model then fail(fname, "option 'model' expected a knnd.knn_diffusion model") end
  local cfg = model.config
  local device = check_device(fname, o.device)
  local prompts = o.prompts or fail(fname, "option 'prompts' (a list of strings) is required")
  if type(prompts) ~= "table" or #prompts == 0 then fail(fname, "option 'prompts' expected a non-empty list of strings") end
  local P = #prompts
  local q = o.query
  local prev = knnd.set_grad_enabled(false)
  local ok, err = pcall(function()
    if q == nil then
      if o.clip == nil then fail(fname, "give option 'clip' (to embed the prompts) or 'query' (their embeddings)") end
      q = o.clip:encode_text(prompts, { normalize = true })
    end
  end)
  knnd.set_grad_enabled(prev)
  if not ok then error(err, 0) end
  if q:dim() ~= 2 or q:size(1) ~= P or q:size(2) ~= cfg.cond.dim then
    fail(fname, "the prompt embeddings are %s (expected [%d, %d]: is the CLIP the one the model was trained with?)",
      table.concat(q:shape(), "x"), P, cfg.cond.dim)
  end
  local nb
  if cfg.cond.needs_neighbors or o.neighbor_grid then
    local idx = o.index or fail(fname, "mode %s needs option 'index' (an index over image embeddings)", cfg.cond.mode)
    local info = idx:info()
    if info.dim and info.dim ~= cfg.cond.dim then
      fail(fname, "the index holds %d-d embeddings, the model was trained on %d-d", info.dim, cfg.cond.dim)
    end
    nb = idx:knn(q, { k = math.max(cfg.cond.k, 1) })
  end
  local n = positive_int(fname, "n", o.n or 4)
  local rep = {}
  for p = 0, P - 1 do for _ = 1, n do rep[#rep + 1] = p end end
  local rep_t = knnd.tensor(rep, { dtype = "i64" })
  if device then model:to(device) end
  local tokens = model:condition(q, cfg.cond.needs_neighbors and nb.embeddings or nil, { gen = knnd.Generator(o.seed or 0),
    inference = true })
  tokens = tokens:index_select(1, tokens:device() == "cpu" and rep_t or rep_t:to(tokens:device()))
  local gen = knnd.Generator(o.seed or 0)
  local total = P * n
  local chunk = positive_int(fname, "batch", o.batch or 128)
  local images = knnd.empty(total, cfg.channels, cfg.image_size, cfg.image_size)
  -- rank 0 shows progress (a global `main` was read here, never set: the bar never appeared)
  local main = knnd.dist.rank() == 0
  local bar = o.progress ~= false and main and knnd.progress { total = total, desc = "generate", unit = "img" } or nil
  for first = 1, total, chunk do
    local m = math.min(chunk, total - first + 1)
    images:narrow(1, first, m):copy_(model:sample { tokens = tokens:narrow(1, first, m), sampler = o.sampler,
      steps = o.steps, guidance = o.guidance, gen = gen, truncation = o.truncation })
    if bar then bar:update(m) end
  end
  if bar then bar:close() end
  local caps = {}
  for i, p in ipairs(rep) do caps[i] = ((i - 1) % n == 0) and prompts[p + 1] or "" end
  if o.grid then
    knnd.save_grid(o.grid, images, { nrow = n, range = { -1, 1 }, scale = o.scale or 2, captions = caps,
      title = o.title })
  end
  if o.neighbor_grid then
    if o.images == nil then fail(fname, "option 'neighbor_grid' needs 'images' (the database's images)") end
    knnd.retrieval.neighbor_grid { path = o.neighbor_grid, images = o.images, neighbor_rows = nb.rows,
      query_texts = prompts, scores = nb.scores, scale = o.scale or 2,
      title = o.title and (o.title .. ": the prompts' nearest images") or nil }
  end
  local expanded = {}
  for i, p in ipairs(rep) do expanded[i] = prompts[p + 1] end
  return { images = images, prompts = expanded, prompt_index = rep_t, neighbors = nb and { rows = nb.rows,
    scores = nb.scores } or nil }
end

-- ---- saving and loading -------------------------------------------------------------------

--- m:save(path [, extra]): weights and config as a checkpoint file (atomic). extra: a table merged
--- into the stored config under "info" (e.g. the encoder's identity).
function Model:save(path, extra)
  knnd.io.save_checkpoint(path, { model = self:state_dict(), step = 0,
    config = { format = M.FORMAT, model = stored_config(self), info = extra or self.info or {} } })
end

--- knnd.knn_diffusion.load(path [, {weights = "ema" | "live", device = "cpu"}]) -> the model saved by m:save, or from
--- a training checkpoint written by train its EMA weights (the default) or its live ones (weights = "live": e.g. after
--- a run too short for the EMA's rate, whose average still holds much of the initialisation); device: moved there
function M.load(path, o)
  if type(path) ~= "string" then fail("load", "argument 1 'path' expected a file path, got %s", type(path)) end
  check_keys("load", "option", o, { weights = 1, device = 1 })
  local device = check_device("load", o and o.device)
  local which = (o and o.weights) or "ema"
  if which ~= "ema" and which ~= "live" then fail("load", "option 'weights' is '%s' (expected ema or live)", tostring(which)) end
  local f = io.open(path, "rb")
  if not f then fail("load", "'%s' not found", path) end
  f:close()
  local ok, ck = pcall(knnd.io.load_checkpoint, path, {})
  if not ok then fail("load", "%s", tostring(ck)) end
  local cfg = ck.config
  if type(cfg) ~= "table" or cfg.format ~= M.FORMAT or type(cfg.model) ~= "table" then
    fail("load", "'%s' is not a knn_diffusion model (its config has no format '%s')", path, M.FORMAT)
  end
  local m = M.new(cfg.model)
  local weights = ck.model
  if which == "live" and not (ck.ema and cfg.ema_names) then
    fail("load", "'%s' is a saved model, not a training checkpoint: it has no live weights apart from its own", path)
  end
  if which == "ema" and ck.ema and cfg.ema_names then -- a training checkpoint: sample with the EMA weights
    weights = {}
    for k, v in pairs(ck.model) do weights[k] = v end
    for i, name in ipairs(cfg.ema_names) do
      weights[name] = ck.ema[("%d.shadow"):format(i - 1)] or fail("load", "'%s' has no EMA weight %d (%s)", path, i - 1, name)
    end
  end
  m:load_state_dict(weights)
  m.info = cfg.info
  m:eval()
  if device then m:to(device) end
  return m
end

return M
