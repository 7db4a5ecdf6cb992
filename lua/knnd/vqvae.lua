-- vqvae.lua — training and evaluating the VQ-VAE of the discrete backbone (knnd.nn.vqvae) on a
-- prepared dataset (knnd.vqvae).
--
--   local r = knnd.vqvae.train{dataset = "fm.h5", out = "runs/vq", steps = 2000, batch = 64, lr = 2e-4,
--                              model = {channels = 32, channel_mult = {1, 2, 2}, num_codes = 256,
--                                       embed_dim = 16, codebook = "ema", dead_after = 100}}
--   local vq = knnd.vqvae.load("runs/vq/model.h5")                 -- a knnd.nn.Module (VQVAE)
--   local tokens = vq:encode(x)                                     -- i64 [B,h,w]
--   local e = knnd.vqvae.evaluate{model = vq, dataset = "fm_test.h5"} -- {psnr=, usage=, perplexity=}
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

--- knnd.vqvae.load(path) -> the VQVAE module (eval mode) saved by save or train (model.h5 or
--- checkpoint.h5), and its knnd.nn.vqvae options
function M.load(path)
  if type(path) ~= "string" then fail("load", "argument 1 'path' expected a file path, got %s", type(path)) end
  if not exists(path) then fail("load", "'%s' not found", path) end
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
--- -> {psnr= (mean dB over the images), mse=, usage=, perplexity= (of all the images' codes), count=}
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
  local psnr_sum, mse_sum, all_tokens = 0, 0, {}
  knnd.no_grad(function()
    for s = 1, n, batch do
      local r = rows:narrow(1, s, math.min(batch, n - s + 1))
      local x = ds:images(r):float() * (2 / 255) - 1
      local tokens = model:encode(x)
      local y = model:decode(tokens)
      local B = x:size(1)
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
  local K = model:state_dict()["quantize.embedding.weight"]:size(1) -- (model.quantize is the method)
  return { psnr = psnr_sum / n, mse = mse_sum / n, usage = used / K, perplexity = math.exp(entropy), count = n }
end

return M
