-- vqvae.lua — training and evaluating the VQ-VAE of the discrete backbone (knnd.nn.vqvae) on a
-- prepared dataset (knnd.vqvae).
--
--   local r = knnd.vqvae.train{dataset = "fm.h5", out = "runs/vq", steps = 2000, batch = 64, lr = 2e-4,
--                              model = {channels = 32, channel_mult = {1, 2, 2}, num_codes = 256,
--                                       embed_dim = 16, codebook = "ema", dead_after = 100}}
--   local vq = knnd.vqvae.load("runs/vq/model.h5")                 -- a knnd.nn.Module (VQVAE)
--   local tokens = vq:encode(x)                                     -- i64 [B,h,w]
--   local e = knnd.vqvae.evaluate{model = vq, dataset = "fm_test.h5"} -- {psnr=, usage=, perplexity=}
--   local vg = knnd.vqvae.load("vqgan_f8.safetensors")             -- a taming-transformers VQGAN
--
-- Conventions of knnd.knn_diffusion.train: out/checkpoint.h5 (model, AdamW, step, generator,
-- loader position; training resumes from it exactly), out/model.h5 (the weights and config, for
-- load), out/log.csv (step, loss, recon_loss, usage, perplexity, lr, seconds), all written
-- atomically. Images are in [-1, 1]; PSNR is over that range (peak-to-peak 2).
local knnd = require "knnd"
local options = require "knnd.options"
local exists = require("knnd.cliutil").exists
local files = require "knnd.files"

local M = {}
M.FORMAT = "knnd-vqvae"

local function fail(fname, fmt, ...)
  error(("knnd.vqvae.%s: " .. fmt):format(fname, ...), 3)
end

local function check_keys(fname, t, allowed) options.check_keys("knnd.vqvae." .. fname, t, allowed) end

local function positive_int(fname, name, v)
  local i = math.tointeger(v)
  if not i or i < 1 then fail(fname, "option '%s' is %s (expected a positive integer)", name, tostring(v)) end
  return i
end

local function open_dataset(fname, ds)
  if ds == nil then fail(fname, "option 'dataset' (a prepared dataset or its path) is required") end
  if type(ds) == "string" then
    if not exists(ds) then fail(fname, "option 'dataset': '%s' not found", ds) end
    ds = knnd.dataset.open(ds)
  end
  return ds
end

-- the model options with the dataset's channels filled in: a plain table (stored as JSON)
local function model_config(fname, given, channels)
  if given ~= nil and type(given) ~= "table" then
    fail(fname, "option 'model' expected a table of knnd.nn.vqvae options, got %s", type(given))
  end
  local c = {}
  for k, v in pairs(given or {}) do c[k] = v end
  c.in_channels = c.in_channels or channels
  c.seed = c.seed or 0
  -- GroupNorm's 32 groups, or the most that divide a narrow model's channels (16 channels: 16 groups)
  if c.norm_groups == nil and math.type(c.channels) == "integer" and c.channels > 0 then
    local a, b = 32, c.channels
    while b ~= 0 do a, b = b, a % b end
    c.norm_groups = a
  end
  return c
end

--- knnd.vqvae.new(options) -> knnd.nn.vqvae(options) (options as knnd.nn.vqvae's)
function M.new(cfg)
  return knnd.nn.vqvae(cfg)
end

--- knnd.vqvae.psnr(a, b) -> mean over the batch of each image's PSNR in dB, images in [-1, 1]
function M.psnr(a, b)
  local B = a:size(1)
  local mse = (a - b):square():view(B, -1):mean { dim = 2 }:totable()
  local s = 0
  for i = 1, B do s = s + 10 * math.log(4 / math.max(mse[i], 1e-12), 10) end
  return s / B
end

local log_header = "step,loss,recon_loss,usage,perplexity,lr,seconds"

local function write_log(path, rows)
  local lines = { log_header }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = ("%d,%.9g,%.9g,%.6g,%.6g,%.9g,%.3f"):format(r[1], r[2], r[3], r[4], r[5], r[6], r[7])
  end
  files.write_atomic(path, table.concat(lines, "\n") .. "\n")
end

--- knnd.vqvae.read_log(path [, upto]) -> {steps=, loss=, recon_loss=, usage=, perplexity=, lr=, seconds=}
function M.read_log(path, upto)
  local keys = { "steps", "loss", "recon_loss", "usage", "perplexity", "lr", "seconds" }
  local out = {}
  for _, k in ipairs(keys) do out[k] = {} end
  local f = io.open(path, "rb")
  if not f then return out end
  for line in f:lines() do
    if line ~= log_header then
      local vals = {}
      for v in line:gmatch("[^,]+") do vals[#vals + 1] = tonumber(v) end
      local st = math.tointeger(vals[1])
      if #vals == #keys and st and (not upto or st <= upto) then
        for i, k in ipairs(keys) do table.insert(out[k], i == 1 and st or vals[i]) end
      end
    end
  end
  f:close()
  return out
end

local train_keys = { model = 1, dataset = 1, steps = 1, batch = 1, lr = 1, min_lr = 1, warmup = 1, grad_clip = 1,
  flip = 1, seed = 1, out = 1, checkpoint_every = 1, log_every = 1, resume = 1, progress = 1, until_step = 1,
  time_limit = 1, rows = 1, name = 1 }

--- knnd.vqvae.train{dataset= (path or knnd.dataset), out= (run directory), model= (knnd.nn.vqvae
---   options; in_channels defaults to the dataset's), steps=2000, batch=64, lr=2e-4, min_lr=lr/10,
---   warmup=steps/50, grad_clip=1 (false: none), flip=false, seed=0, checkpoint_every=250,
---   log_every=100 (a usage/perplexity line on stderr with progress), resume=true, progress=true,
---   until_step=, time_limit=, rows= (0-based rows to train on), name=}
--- -> {model=, steps=, loss=, recon_loss=, usage=, perplexity=, seconds=, resumed_from=, log=,
---     checkpoint=, model_path=}
function M.train(o)
  local fname = "train"
  check_keys(fname, o, train_keys)
  local out = o.out or fail(fname, "option 'out' (the run directory) is required")
  if type(out) ~= "string" then fail(fname, "option 'out' expected a directory path, got %s", type(out)) end
  local ds = open_dataset(fname, o.dataset)
  local shape = ds:image_shape()
  local cfg = model_config(fname, o.model, shape[1])
  local ok, model = pcall(knnd.nn.vqvae, cfg)
  if not ok then fail(fname, "option 'model': %s", tostring(model):gsub("^.-knnd%.nn%.vqvae: ", "")) end
  local steps = positive_int(fname, "steps", o.steps or 2000)
  local batch = positive_int(fname, "batch", o.batch or 64)
  local every = positive_int(fname, "checkpoint_every", o.checkpoint_every or 250)
  local log_every = positive_int(fname, "log_every", o.log_every or 100)
  local lr = o.lr or 2e-4
  if type(lr) ~= "number" or lr <= 0 then fail(fname, "option 'lr' is %s (expected a positive number)", tostring(lr)) end
  local seed = math.tointeger(o.seed or 0) or fail(fname, "option 'seed' expected an integer")
  files.mkdir_p(out)
  local ck_path, model_path, log_path = out .. "/checkpoint.h5", out .. "/model.h5", out .. "/log.csv"

  -- dead-code restarts draw from the default generator, which the checkpoint saves and restores
  knnd.manual_seed(seed)
  local params = model:parameters()
  -- data-parallel over the ranks of a job, as knnd.knn_diffusion.train: each rank its slice of every
  -- batch and of the random draws, the gradients averaged, the codebook's EMA statistics and restarts
  -- from the whole batch (core/nn/vqvae.c); rank 0 alone writes files
  local dist = knnd.dist
  local world, rank, sync = dist.data_parallel(params, batch, "vqvae.train")
  local main = rank == 0
  local opt = knnd.optim.AdamW(params, { lr = lr, weight_decay = 0.0 })
  local sched = knnd.optim.lr_schedule { kind = "cosine", base_lr = lr, min_lr = o.min_lr or lr / 10,
    warmup_steps = math.min(o.warmup or math.max(1, steps // 50), math.max(steps - 1, 0)), total_steps = steps }
  local n_rows = o.rows and (knnd.is_tensor(o.rows) and o.rows:numel() or #o.rows) or ds:count()
  local loader = ds:loader { batch = math.min(batch, n_rows), shuffle = true, seed = seed, flip = o.flip == true,
    rows = o.rows, shard = world > 1 and { rank, world } or nil }

  local start, resumed_from = 0, nil
  local rows_log = {}
  if o.resume ~= false and exists(ck_path) then
    local okp, peek = pcall(knnd.io.load_checkpoint, ck_path, { gen = false })
    if not okp then
      fail(fname, "cannot resume from '%s' (%s): move it away, or give resume = false to start over", ck_path,
        (tostring(peek):gsub("^.-knnd%.io%.load_checkpoint: ", "")))
    end
    local c = peek.config or {}
    if c.format ~= M.FORMAT then fail(fname, "'%s' is not a knnd.vqvae training checkpoint", ck_path) end
    for k, v in pairs(cfg) do
      local w = c.model and c.model[k]
      if type(v) == "table" and type(w) == "table" then
        if table.concat(v, ",") ~= table.concat(w, ",") then w = "other" end
      end
      if type(v) ~= "table" and w ~= v or (type(v) == "table" and w == "other") then
        fail(fname, "'%s' holds a model of another configuration (%s): give another 'out' directory, or resume = false",
          ck_path, k)
      end
    end
    local ck = knnd.io.load_checkpoint(ck_path, { model = model, optimizer = opt })
    if c.loader then loader:load_state(c.loader) end
    start, resumed_from = ck.step, ck.step
    local log = M.read_log(log_path, start)
    for i = 1, #log.steps do
      rows_log[i] = { log.steps[i], log.loss[i], log.recon_loss[i], log.usage[i], log.perplexity[i], log.lr[i],
        log.seconds[i] }
    end
  end

  dist.shard_generator(world > 1)
  local function save(step)
    if not main then return end
    write_log(log_path, rows_log)
    knnd.io.save_checkpoint(ck_path, { model = model, optimizer = opt, step = step,
      config = { format = M.FORMAT, model = cfg, loader = loader:state(), dataset = ds.path,
        train = { steps = steps, batch = batch, lr = lr, seed = seed } } })
  end

  local bar = o.progress ~= false and main and knnd.progress { total = steps, desc = "vqvae " .. (o.name or "train"),
    unit = "step" } or nil
  if bar and start > 0 then bar:update(start) end
  local t0 = knnd.wall_time()
  local seconds0 = #rows_log > 0 and rows_log[#rows_log][7] or 0
  local stop = math.min(steps, o.until_step or steps)
  local step, last = start, {}
  model:train()
  while step < stop do
    if dist.past(t0, o.time_limit) then break end -- the ranks stop together
    local b = loader:next()
    opt:set_lr(sched(step))
    opt:zero_grad()
    local _, info = model:forward(b.x)
    sync.begin()
    info.loss:backward()
    sync.finish()
    if o.grad_clip ~= false then knnd.optim.clip_grad_norm(params, o.grad_clip or 1.0) end
    opt:step()
    step = step + 1
    last = { loss = info.loss:item(), recon_loss = info.recon_loss:item(), usage = info.usage,
      perplexity = info.perplexity }
    if world > 1 then -- the whole batch's means (the ranks' batches are the same size)
      local l = dist.all_reduce(knnd.tensor({ last.loss, last.recon_loss }), "mean"):totable()
      last.loss, last.recon_loss = l[1], l[2]
    end
    if last.loss ~= last.loss or last.loss == math.huge then
      fail(fname, "the loss is %s at step %d (lower lr, or check the data)", tostring(last.loss), step)
    end
    rows_log[#rows_log + 1] = { step, last.loss, last.recon_loss, last.usage, last.perplexity, sched(step - 1),
      seconds0 + knnd.wall_time() - t0 }
    if bar then
      bar:update(1, { loss = last.loss, usage = last.usage, ppl = last.perplexity })
      if step % log_every == 0 then
        io.stderr:write(("\nvqvae step %d: loss %.5f recon %.5f codebook usage %.1f%% perplexity %.1f (restarted %d)\n")
          :format(step, last.loss, last.recon_loss, 100 * last.usage, last.perplexity, info.restarted))
      end
    end
    if step % every == 0 or step == steps then save(step) end
  end
  if step % every ~= 0 and step ~= steps then save(step) end
  dist.shard_generator(false)
  if bar then bar:close() end
  model:eval()
  if main then M.save(model, model_path, cfg) end
  if world > 1 then dist.barrier() end -- the files are in place when train returns on any rank
  return { model = model, steps = step, loss = last.loss, recon_loss = last.recon_loss, usage = last.usage,
    perplexity = last.perplexity, seconds = knnd.wall_time() - t0, resumed_from = resumed_from,
    log = M.read_log(log_path), checkpoint = ck_path, model_path = model_path }
end

--- knnd.vqvae.save(model, path, config): the weights and the knnd.nn.vqvae options (atomic)
function M.save(model, path, cfg)
  knnd.io.save_checkpoint(path, { model = model, step = 0, config = { format = M.FORMAT, model = cfg } })
end

-- ---- VQGANs of taming-transformers, VQ-Diffusion and latent-diffusion -------------------------
-- knnd's VQVAE is laid out as taming's VQModel, so its names are taming's; what differs between
-- the checkpoints users bring is where the model sits. Each part of knnd's model, and the places
-- (after the checkpoint's root prefix) the layouts keep it, first found wins:
M.TAMING_PARTS = {
  { "encoder.", { "encoder.", "enc.encoder." } },                   -- taming / LDM; VQ-Diffusion's codec
  { "quant_conv.", { "quant_conv.", "enc.quant_conv." } },
  { "quantize.", { "quantize.", "enc.quantize.", "dec.quantize." } }, -- VQ-Diffusion keeps it twice
  { "post_quant_conv.", { "post_quant_conv.", "dec.post_quant_conv." } },
  { "decoder.", { "decoder.", "dec.decoder." } },
}
-- knnd's own state, absent from taming's checkpoints (kept at the model's initial values)
local KNND_ONLY = { ["quantize.unused_steps"] = true }

local function shape_str(t)
  return "[" .. table.concat(t:shape(), ", ") .. "]"
end

-- the checkpoint's root prefix: where encoder.conv_in.weight (or enc.encoder.conv_in.weight) is
local function taming_root(fname, path, sd, given)
  if given ~= nil then
    if type(given) ~= "string" then fail(fname, "option 'prefix' expected a string, got %s", type(given)) end
    if sd[given .. "encoder.conv_in.weight"] == nil and sd[given .. "enc.encoder.conv_in.weight"] == nil then
      fail(fname, "'%s' has no %sencoder.conv_in.weight (option 'prefix' is '%s')", path, given, given)
    end
    return given
  end
  local roots = {}
  for k in pairs(sd) do
    local r = k:match("^(.-)encoder%.conv_in%.weight$")
    if r then
      r = r:gsub("enc%.$", "")
      if sd[r .. "encoder.conv_in.weight"] or sd[r .. "enc.encoder.conv_in.weight"] then roots[r] = true end
    end
  end
  local list = {}
  for r in pairs(roots) do list[#list + 1] = ("'%s'"):format(r) end
  table.sort(list)
  if #list == 0 then
    fail(fname, "'%s' is not a VQGAN checkpoint: it has no encoder.conv_in.weight under any prefix", path)
  elseif #list > 1 then
    fail(fname, "'%s' holds several encoders (prefixes %s): choose one with option 'prefix'", path,
      table.concat(list, ", "))
  end
  return (next(roots))
end

-- knnd name -> {tensor, source name} of the checkpoint, and the number of tensors left out
local function taming_tensors(sd, root)
  local out, used = {}, {}
  for _, part in ipairs(M.TAMING_PARTS) do
    local dst, srcs = part[1], part[2]
    for _, src in ipairs(srcs) do
      local from, found = root .. src, false
      for k, v in pairs(sd) do
        if k:sub(1, #from) == from then
          found = true
          out[dst .. k:sub(#from + 1)] = { v, k }
        end
      end
      if found then
        -- the part's keys, and those of a second copy of it (VQ-Diffusion's dec.quantize), are not left out
        for _, other in ipairs(srcs) do
          for k in pairs(sd) do
            if k:sub(1, #root + #other) == root .. other then used[k] = true end
          end
        end
        break
      end
    end
  end
  local ignored = 0
  for k in pairs(sd) do
    if not used[k] then ignored = ignored + 1 end
  end
  return out, ignored
end

-- the knnd.nn.vqvae options of taming's ddconfig, read from the tensors' names and shapes
local function taming_config(fname, path, t)
  local function need(name)
    local v = t[name]
    if not v then fail(fname, "'%s' has no tensor for %s", path, name) end
    return v[1]
  end
  local conv_in = need("encoder.conv_in.weight")
  local ch = conv_in:size(1)
  local c = { in_channels = conv_in:size(2), channels = ch, channel_mult = {}, attn_levels = {}, pad_taming = true,
              norm_groups = 32 }
  local levels = 0
  while t[("encoder.down.%d.block.0.conv1.weight"):format(levels)] do levels = levels + 1 end
  if levels == 0 then fail(fname, "'%s' has no tensor for encoder.down.0.block.0.conv1.weight", path) end
  for i = 0, levels - 1 do
    local out = need(("encoder.down.%d.block.0.conv1.weight"):format(i)):size(1)
    if out % ch ~= 0 then
      fail(fname, "'%s': encoder.down.%d.block.0.conv1.weight has %d output channels, not a multiple of conv_in's %d",
        path, i, out, ch)
    end
    c.channel_mult[i + 1] = out // ch
    if t[("encoder.down.%d.attn.0.q.weight"):format(i)] then c.attn_levels[#c.attn_levels + 1] = i end
  end
  local blocks = 0
  while t[("encoder.down.0.block.%d.conv1.weight"):format(blocks)] do blocks = blocks + 1 end
  c.num_res_blocks = blocks
  c.mid_attn = t["encoder.mid.attn_1.q.weight"] ~= nil
  c.z_channels = need("decoder.conv_in.weight"):size(2)
  local enc_out = need("encoder.conv_out.weight"):size(1)
  if enc_out == 2 * c.z_channels then
    fail(fname, "'%s': encoder.conv_out.weight has 2 x %d outputs (double_z: a KL autoencoder, not a VQGAN)", path,
      c.z_channels)
  end
  c.out_channels = need("decoder.conv_out.weight"):size(1)
  c.embed_dim = need("quant_conv.weight"):size(1)
  if t["quantize.proj.weight"] then
    c.codebook = "gumbel"
    c.num_codes = need("quantize.embed.weight"):size(1)
  else
    c.codebook = t["quantize.embedding.embed_avg"] and "ema" or "loss"
    c.num_codes = need("quantize.embedding.weight"):size(1)
  end
  return c
end

local load_taming_keys = { prefix = 1, model = 1, token_map = 1 }

-- option token_map: an integer tensor [K], or the path of a safetensors file holding one
local function token_map_option(fname, v, K)
  local map = v
  if type(v) == "string" then
    if not exists(v) then fail(fname, "option 'token_map': '%s' not found", v) end
    local ok, t = pcall(knnd.io.load_safetensors, v)
    if not ok then fail(fname, "option 'token_map': cannot read '%s' as safetensors (%s)", v, tostring(t)) end
    local names = {}
    for k in pairs(t) do names[#names + 1] = k end
    if #names ~= 1 then
      fail(fname, "option 'token_map': '%s' holds %d tensors (expected one: the code -> token map)", v, #names)
    end
    map = t[names[1]]
  end
  if not knnd.is_tensor(map) then
    fail(fname, "option 'token_map' expected an integer tensor [K] or a safetensors path, got %s", type(v))
  end
  if map:dim() ~= 1 or map:size(1) ~= K then
    fail(fname, "option 'token_map' is %s (expected [%d]: a token for each code)", shape_str(map), K)
  end
  if map:dtype() ~= "i64" and map:dtype() ~= "i32" then
    fail(fname, "option 'token_map' has dtype %s (expected i64 or i32)", map:dtype())
  end
  map = map:to("i64")
  local f = map:float() -- (min and max take float tensors; token ids are far below 2^24)
  local lo, hi = math.tointeger(f:min():item()), math.tointeger(f:max():item())
  if lo < 0 then fail(fname, "option 'token_map' holds %d (expected tokens >= 0)", lo) end
  return map, hi + 1
end

--- knnd.vqvae.load_taming(path [, {prefix=, model=, token_map=}]) -> the VQVAE module (eval mode),
---   its knnd.nn.vqvae options, {prefix=, ignored=, tensors=}
--- A VQGAN of taming-transformers (VQModel, GumbelVQ, taming's EMA quantiser), as latent-diffusion
--- or VQ-Diffusion (content_codec.enc / .dec) keep it, in a safetensors file: convert a .ckpt once
--- with safetensors.torch.save_file({k: v.contiguous() for k, v in torch.load(p)["state_dict"].items()}).
--- The architecture is read from the tensors (taming's ddconfig: ch, ch_mult, num_res_blocks, the
--- levels with attention, z_channels, embed_dim, n_embed; GroupNorm's 32 groups); option 'model'
--- overrides any of those knnd.nn.vqvae options. Tensors outside the model (the discriminator's
--- loss.*, a transformer's) are left out and counted; a missing, extra or mis-shaped tensor of the
--- model is an error naming it. token_map (an integer tensor [K] or a safetensors file holding one:
--- VQ-Diffusion's full_to_quantize, e.g. 8,192 codes to 2,887 tokens) makes the tokens classes of
--- codes: encode maps each code to its token, decode takes the first code of each token.
function M.load_taming(path, o)
  local fname = "load_taming"
  if type(path) ~= "string" then fail(fname, "argument 1 'path' expected a file path, got %s", type(path)) end
  o = o or {}
  check_keys(fname, o, load_taming_keys)
  if not exists(path) then fail(fname, "'%s' not found", path) end
  local ok, sd = pcall(knnd.io.load_safetensors, path)
  if not ok then
    fail(fname, "cannot read '%s' as safetensors (%s)", path, (tostring(sd):gsub("^.-load_safetensors: ", "")))
  end
  local root = taming_root(fname, path, sd, o.prefix)
  if sd[root .. "quantize.unused_steps"] then
    -- knnd's own VQ-VAE (symmetric padding, its own groups): its options are not in the tensors
    fail(fname, "'%s' holds a knnd VQ-VAE's weights (quantize.unused_steps), not a taming VQGAN: build "
      .. "knnd.nn.vqvae(options) and m:load(path), or load its model.h5 with knnd.vqvae.load", path)
  end
  local t, ignored = taming_tensors(sd, root)
  local cfg = taming_config(fname, path, t)
  local token_map
  if o.token_map ~= nil then token_map, cfg.token_codes = token_map_option(fname, o.token_map, cfg.num_codes) end
  if o.model ~= nil then
    if type(o.model) ~= "table" then fail(fname, "option 'model' expected a table of knnd.nn.vqvae options") end
    for k, v in pairs(o.model) do cfg[k] = v end
  end
  if cfg.token_codes and not token_map then
    fail(fname, "model option 'token_codes' needs option 'token_map' (the code -> token map)")
  end
  local okm, m = pcall(knnd.nn.vqvae, cfg)
  if not okm then fail(fname, "'%s': %s", path, tostring(m)) end
  local own, load = m:state_dict(), {}
  local names = {}
  for k in pairs(own) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local got = t[k]
    if k == "token_map" then
      load[k] = token_map
    elseif not got then
      if not KNND_ONLY[k] then
        fail(fname, "'%s' has no tensor for %s (looked under prefix '%s')", path, k, root)
      end
      load[k] = own[k]
    else
      local v, src = got[1], got[2]
      local want = own[k]
      if shape_str(v) ~= shape_str(want) then
        fail(fname, "tensor %s of '%s' (%s) is %s, the model expects %s", k, path, src, shape_str(v), shape_str(want))
      end
      load[k] = v:dtype() == want:dtype() and v or v:to(want:dtype())
    end
  end
  local extra = {}
  for k, got in pairs(t) do
    if own[k] == nil then extra[#extra + 1] = ("%s (%s)"):format(k, got[2]) end
  end
  table.sort(extra)
  if #extra > 0 then
    fail(fname, "'%s' has tensors this model has no place for: %s", path, table.concat(extra, ", "))
  end
  m:load_state_dict(load)
  m:eval()
  cfg.seed = 0
  return m, cfg, { prefix = root, ignored = ignored, tensors = #names }
end

--- knnd.vqvae.load(path) -> the VQVAE module (eval mode) saved by save or train (model.h5 or
--- checkpoint.h5), or a taming VQGAN in a .safetensors file (knnd.vqvae.load_taming), and its
--- knnd.nn.vqvae options
function M.load(path)
  if type(path) ~= "string" then fail("load", "argument 1 'path' expected a file path, got %s", type(path)) end
  if not exists(path) then fail("load", "'%s' not found", path) end
  if path:match("%.safetensors$") then return M.load_taming(path) end
  local ok, ck = pcall(knnd.io.load_checkpoint, path, { gen = false })
  if not ok then
    fail("load", "cannot read '%s' as a knnd.vqvae model (%s)", path,
      (tostring(ck):gsub("^.-knnd%.io%.load_checkpoint: ", "")))
  end
  local cfg = ck.config
  if type(cfg) ~= "table" or cfg.format ~= M.FORMAT or type(cfg.model) ~= "table" then
    fail("load", "cannot read '%s' as a knnd.vqvae model (its config has no format '%s')", path, M.FORMAT)
  end
  local m = knnd.nn.vqvae(cfg.model)
  m:load_state_dict(ck.model)
  m:eval()
  return m, cfg.model
end

local eval_keys = { model = 1, dataset = 1, rows = 1, batch = 1 }

--- knnd.vqvae.evaluate{model=, dataset=, rows= (0-based; default all), batch=64}
--- -> {psnr= (mean dB over the images), mse=, usage= (share of the tokens used), used= (how many),
---     perplexity= (of all the images' codes), token_grid= {h, w}, count=}
--- The reconstructions are clamped to [-1, 1] before PSNR and MSE: what a saved image would show.
function M.evaluate(o)
  local fname = "evaluate"
  check_keys(fname, o, eval_keys)
  local model = o.model
  if not knnd.nn.is_module(model) or model:type() ~= "VQVAE" then
    fail(fname, "option 'model' expected a knnd.nn.vqvae module")
  end
  local ds = open_dataset(fname, o.dataset)
  local rows = o.rows
  if rows == nil then
    rows = knnd.arange(0, ds:count(), { dtype = "i64" })
  elseif not knnd.is_tensor(rows) then
    rows = knnd.tensor(rows, { dtype = "i64" })
  end
  local n = rows:numel()
  if n == 0 then fail(fname, "option 'rows' is empty") end
  local batch = positive_int(fname, "batch", o.batch or 64)
  local was_training = model.training
  model:eval()
  local psnr_sum, mse_sum, all_tokens, grid = 0, 0, {}, nil
  knnd.no_grad(function()
    for s = 1, n, batch do
      local r = rows:narrow(1, s, math.min(batch, n - s + 1))
      local x = ds:images(r):float() * (2 / 255) - 1
      local tokens = model:encode(x)
      local y = knnd.clamp(model:decode(tokens), -1, 1)
      local B = x:size(1)
      grid = grid or { tokens:size(2), tokens:size(3) }
      psnr_sum = psnr_sum + M.psnr(y, x) * B
      mse_sum = mse_sum + (y - x):square():mean():item() * B
      all_tokens[#all_tokens + 1] = tokens:reshape(-1)
    end
  end)
  if was_training then model:train() end
  local tokens = knnd.cat(all_tokens, 1)
  local counts, used, total = {}, 0, tokens:numel()
  for _, t in ipairs(tokens:totable()) do counts[t] = (counts[t] or 0) + 1 end
  local entropy = 0
  for _, c in pairs(counts) do
    used = used + 1
    entropy = entropy - (c / total) * math.log(c / total)
  end
  local K = model:num_codes()
  return { psnr = psnr_sum / n, mse = mse_sum / n, usage = used / K, used = used, perplexity = math.exp(entropy),
    token_grid = grid, count = n }
end

return M
