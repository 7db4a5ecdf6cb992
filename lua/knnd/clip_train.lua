-- clip_train.lua — the parts of knnd.clip written in Lua: contrastive training from scratch
-- (knnd.clip.train), zero-shot classification with prompt templates (knnd.clip.zero_shot),
-- captions from class names (knnd.clip.captions) and encoding a dataset into an embedding store
-- (m:encode_dataset). bind_clip.c reaches these through __index: knnd.clip.train is
-- require("knnd.clip_train").train, m:encode_dataset is its methods.encode_dataset.
--
--   local m = knnd.clip.new{embed_dim = 64, image_size = 28, patch_size = 7, vision_width = 64, ...}
--   knnd.clip.train{model = m, images = train.images, labels = train.labels, classes = names,
--                   steps = 2000, batch = 256, lr = 1e-3, checkpoint = "clip.ck.h5"}
--   local acc = knnd.clip.zero_shot{model = m, images = test.images, labels = test.labels, classes = names}
local knnd = require "knnd"
local options = require "knnd.options"

local M = { methods = {} }

-- Prompt templates for Fashion-MNIST-like data (the style of CLIP's ImageNet prompt list)
M.templates = {
  "a photo of a {}.", "a {} on a white background.", "a black and white photo of a {}.",
  "a low resolution photo of a {}.", "a grayscale image of a {}.", "a picture of a {}.",
  "a product photo of a {}.", "a small photo of the {}.",
}

local function check_opts(fname, opts, allowed) options.check_keys("knnd." .. fname, opts, allowed) end

local function require_opt(fname, opts, key, what)
  if opts[key] == nil then error(("knnd.%s: option '%s' is required (%s)"):format(fname, key, what), 3) end
  return opts[key]
end

local function fill(template, name)
  return (template:gsub("{}", function() return name end))
end

--- knnd.clip.captions(classes [, templates]) -> every caption, class by class ({class, template})
function M.captions(classes, templates)
  templates = templates or M.templates
  local out = {}
  for _, c in ipairs(classes) do
    for _, t in ipairs(templates) do out[#out + 1] = fill(t, c) end
  end
  return out
end

--- knnd.clip.train_tokenizer(classes [, {templates=, num_merges=, path=}]): BPE merges learnt on
--- the caption corpus of the classes and templates
function M.train_tokenizer(classes, opts)
  opts = opts or {}
  return knnd.clip.tokenizer { train = M.captions(classes, opts.templates), num_merges = opts.num_merges or 200,
    min_frequency = 1, path = opts.path }
end

-- the list of 0-based labels as a Lua list (one totable per call, not per element)
local function labels_list(labels)
  if type(labels) == "table" then return labels end
  return labels:to("i64"):totable()
end

-- the distinct captions of a batch (first appearance order) and each row's 0-based caption
local function distinct(captions)
  local unique, index_of, target = {}, {}, {}
  for i, c in ipairs(captions) do
    local j = index_of[c]
    if not j then
      unique[#unique + 1] = c
      j = #unique
      index_of[c] = j
    end
    target[i] = j - 1
  end
  return unique, target
end

-- InfoNCE both ways on logits [B, U] against the rows' captions (a caption's images share its target)
local function infonce(logits, target, U)
  local t = knnd.tensor(target, { dtype = "i64" })
  local loss_i = knnd.cross_entropy(logits, t)
  local onehot = knnd.eq(knnd.arange(U, { dtype = "i64" }):view(U, 1), t:view(1, -1)):to("f32") -- [U, B]
  local soft = onehot / onehot:sum { dim = 2, keepdim = true }
  local log_p = knnd.log_softmax(logits:t(), 2)
  local loss_t = -(log_p * soft):sum() / U
  return (loss_i + loss_t) * 0.5
end

-- The symmetric InfoNCE loss (CLIP, Radford et al. 2021, Figure 3) on a batch whose captions may
-- repeat: the texts are encoded once per distinct caption, an image's positive is its caption,
-- and a caption's positives are all the images carrying it (uniform soft target), which is
-- InfoNCE on the full [B, B] matrix with duplicates merged.
local function contrastive_loss(model, images, captions)
  local unique, target = distinct(captions)
  local img = model:encode_images(images)
  local txt = model:encode_text(unique)
  return infonce(model:logits(img, txt), target, #unique) -- logits [B, U]
end
M.contrastive_loss = contrastive_loss

-- every rank's rows of x (this rank's own with its gradient, the others' as constants), in rank
-- order: counts[r + 1] rows from rank r
local function gather_own(x, counts, rank)
  local dist = knnd.dist
  local all = dist.all_gather(x:detach():contiguous())
  local parts, at = {}, 0
  for r = 0, #counts - 1 do
    local c = counts[r + 1]
    if r == rank then
      if c > 0 then parts[#parts + 1] = x end
    elseif c > 0 then
      parts[#parts + 1] = all:narrow(1, at + 1, c)
    end
    at = at + c
  end
  return knnd.cat(parts, 1)
end

-- The same loss over a batch split across the ranks of a job (data-parallel): each rank encodes its
-- images (x: its slice of the batch) and its slice of the batch's distinct captions, the features of
-- the others are gathered, and every rank computes the loss of the whole batch, with gradients
-- reaching only its own features. Summed over the ranks these gradients are the gradient of the
-- whole batch's loss; logit_scale's, which every rank would give whole, counts on rank 0 only.
local function contrastive_loss_dist(model, x, captions, rank, world)
  local dist = knnd.dist
  local unique, target = distinct(captions)
  local U = #unique
  local img_counts, txt_counts = {}, {}
  for r = 0, world - 1 do
    img_counts[r + 1] = x:size(1)
    txt_counts[r + 1] = select(2, dist.shard(U, r, world))
  end
  local first, count = dist.shard(U, rank, world)
  local img = model:encode_images(x)
  local txt = count > 0 and model:encode_text(table.move(unique, first + 1, first + count, 1, {}))
    or knnd.empty(0, img:size(2))
  local logits = model:logits(gather_own(img, img_counts, rank), gather_own(txt, txt_counts, rank))
  if rank ~= 0 then
    -- the same values; no gradient to logit_scale (exp(s_const - s) is 1 with derivative -1)
    for _, p in ipairs(model:module():named_parameters()) do
      if p.name == "logit_scale" then logits = logits * (p.tensor:detach() - p.tensor):exp() end
    end
  end
  return infonce(logits, target, U)
end

local train_keys = { "model", "images", "labels", "classes", "templates", "captions", "steps", "batch", "lr",
  "min_lr", "warmup", "weight_decay", "checkpoint", "checkpoint_every", "resume", "seed", "progress", "log_every",
  "time_limit", "grad_clip", "templates_per_step", "until_step" }

--- knnd.clip.train{model=, images=u8 [N,H,W] | [N,C,H,W], labels= + classes= (+ templates=) or
--- captions={N strings}, steps=1000, batch=256, lr=1e-3, min_lr=lr/100, warmup=steps/20,
--- templates_per_step=2, weight_decay=0.05, grad_clip=1, checkpoint=path, checkpoint_every=200, resume=true, seed=0,
--- progress=true, time_limit=seconds, until_step=S (stop there, as an interruption would)} -> {steps=, loss=, seconds=, resumed_from=}
--- AdamW with linear warm-up then cosine decay; the model, optimizer and step are checkpointed
--- (knnd.io.save_checkpoint) and, with resume, training goes on from an existing checkpoint. Run by the
--- ranks of a job (mpirun), the batch is split across them with the negatives of the whole batch
--- (features gathered): N ranks train as one process with the same batch; rank 0 writes the checkpoint.
function M.train(opts)
  local fname = "clip.train"
  check_opts(fname, opts, train_keys)
  local model = require_opt(fname, opts, "model", "a knnd.clip.CLIP")
  local images = require_opt(fname, opts, "images", "u8 [N,H,W] or [N,C,H,W]")
  local n = images:size(1)
  local caption_of, gen
  local step_templates = function() return nil end
  gen = knnd.Generator(opts.seed or 0)
  if opts.captions then
    if #opts.captions ~= n then
      error(("knnd.%s: option 'captions' has %d entries for %d images"):format(fname, #opts.captions, n), 2)
    end
    caption_of = function(i) return opts.captions[i] end
  else
    local labels = labels_list(require_opt(fname, opts, "labels", "0-based class ids, or pass captions="))
    local classes = require_opt(fname, opts, "classes", "class names for the captions")
    local templates = opts.templates or M.templates
    if #labels ~= n then error(("knnd.%s: %d labels for %d images"):format(fname, #labels, n), 2) end
    -- each step draws only templates_per_step templates for its captions, so the text tower sees
    -- at most that many times the number of classes distinct captions per step
    local per_step = math.min(opts.templates_per_step or 2, #templates)
    caption_of = function(i, r, chosen) return fill(templates[chosen[r % per_step + 1]], classes[labels[i] + 1]) end
    step_templates = function()
      local p = knnd.randperm(#templates, { gen = gen }):totable()
      for k = 1, #p do p[k] = p[k] + 1 end
      return p
    end
  end
  local steps = opts.steps or 1000
  local batch = math.min(opts.batch or 256, n)
  local lr = opts.lr or 1e-3
  local warmup = opts.warmup or math.max(1, steps // 20)
  local sched = knnd.optim.lr_schedule { kind = "cosine", base_lr = lr, min_lr = opts.min_lr or lr / 100,
    warmup_steps = math.min(warmup, steps - 1), total_steps = steps }
  local params = model:parameters()
  -- data-parallel over the ranks of a job: the same batches everywhere (the generator is not
  -- sharded), each rank encoding its slice; N ranks with batch B train as one process with batch B
  local dist = knnd.dist
  local world, rank, sync = dist.data_parallel(params, batch, "clip.train")
  local main = rank == 0
  local opt = knnd.optim.AdamW(params, { lr = lr, weight_decay = opts.weight_decay or 0.05, betas = { 0.9, 0.98 },
    eps = 1e-6 })
  local start, resumed_from = 0, nil
  if opts.checkpoint and opts.resume ~= false then
    local f = io.open(opts.checkpoint, "rb")
    if f then
      f:close()
      local ck = knnd.io.load_checkpoint(opts.checkpoint, { model = model:module(), optimizer = opt, gen = gen })
      start, resumed_from = ck.step, ck.step
    end
  end
  local function save(step)
    if not main then return end
    knnd.io.save_checkpoint(opts.checkpoint, { model = model:module(), optimizer = opt, step = step, gen = gen,
      config = model:config() })
  end
  local bar = opts.progress ~= false and main and knnd.progress { total = steps, desc = "clip train", unit = "step" }
    or nil
  if bar and start > 0 then bar:update(start) end
  local t0 = knnd.wall_time()
  local loss_value = nil
  local every = opts.checkpoint_every or 200
  model:train()
  local perm, pos = nil, n
  local step = start
  local stop = math.min(steps, opts.until_step or steps)
  while step < stop do
    if dist.past(t0, opts.time_limit) then break end -- the ranks stop together
    if pos + batch > n then -- a new epoch: a fresh permutation from the checkpointed generator
      perm = knnd.randperm(n, { gen = gen })
      pos = 0
    end
    local rows = perm:narrow(1, pos + 1, batch)
    pos = pos + batch
    local idx = rows:totable()
    local r = knnd.randint(0, 1 << 30, { batch }, { gen = gen, dtype = "i64" }):totable()
    local caps, chosen = {}, step_templates()
    for i = 1, batch do caps[i] = caption_of(idx[i] + 1, r[i], chosen) end
    opt:set_lr(sched(step))
    opt:zero_grad()
    local loss
    if world > 1 then
      local per = batch // world
      loss = contrastive_loss_dist(model, images:index_select(1, rows:narrow(1, rank * per + 1, per)), caps, rank, world)
      -- the ranks' gradients add up to the batch's; all_reduce_grads averages them
      sync.begin()
      ;(loss * world):backward()
      sync.finish()
    else
      loss = contrastive_loss(model, images:index_select(1, rows), caps)
      loss:backward()
    end
    if opts.grad_clip ~= false then knnd.optim.clip_grad_norm(params, opts.grad_clip or 1.0) end
    opt:step()
    step = step + 1
    loss_value = loss:item()
    if bar then bar:update(1, { loss = loss_value, lr = sched(step) }) end
    if opts.checkpoint and (step % every == 0 or step == steps) then save(step) end
  end
  if opts.checkpoint and step % every ~= 0 and step ~= steps then save(step) end
  if bar then bar:close() end
  if world > 1 then dist.barrier() end -- the checkpoint is in place when train returns on any rank
  model:eval()
  return { steps = step, loss = loss_value, seconds = knnd.wall_time() - t0, resumed_from = resumed_from }
end

--- knnd.clip.class_embeddings(model, classes [, templates]) -> f32 [C, D]: the normalised mean
--- of each class's normalised prompt embeddings (CLIP's prompt ensembling)
function M.class_embeddings(model, classes, templates)
  templates = templates or M.templates
  local prev = knnd.set_grad_enabled(false)
  local ok, res = pcall(function()
    local t = model:encode_text(M.captions(classes, templates), { normalize = true })
    local mean = t:view(#classes, #templates, -1):mean { dim = 2 }
    return mean / mean:square():sum { dim = 2, keepdim = true }:sqrt()
  end)
  knnd.set_grad_enabled(prev)
  if not ok then error(res, 0) end
  return res
end

--- knnd.clip.zero_shot{model=, images=, labels=, classes=, templates=, batch=512}
--- -> top-1 accuracy, predictions (i64 [N], 0-based)
function M.zero_shot(opts)
  check_opts("clip.zero_shot", opts, { "model", "images", "labels", "classes", "templates", "batch" })
  local model = require_opt("clip.zero_shot", opts, "model", "a knnd.clip.CLIP")
  local classes = require_opt("clip.zero_shot", opts, "classes", "class names")
  local images = require_opt("clip.zero_shot", opts, "images", "images to classify")
  local w = M.class_embeddings(model, classes, opts.templates)
  local prev = knnd.set_grad_enabled(false)
  local ok, pred = pcall(function()
    local img = model:encode_images(images, { normalize = true, batch = opts.batch or 512 })
    return knnd.argmax(knnd.matmul(img, w:t()), 2)
  end)
  knnd.set_grad_enabled(prev)
  if not ok then error(pred, 0) end
  local acc
  if opts.labels then
    local labels = opts.labels
    if type(labels) == "table" then labels = knnd.tensor(labels, { dtype = "i64" }) end
    acc = knnd.eq(pred, labels:to("i64")):to("f32"):mean():item()
  end
  return acc, pred
end

-- A hash of the model's weights for the embedding store's encoder_hash: FNV-1a (64-bit, in Lua
-- integers) over the configuration and the saved safetensors bytes of the weights.
function M.weights_hash(model)
  local path = os.tmpname()
  model:save(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  os.remove(path)
  local h = -3750763034362895579 -- 14695981039346656037 as a signed 64-bit integer
  for i = 1, #data, 64 do -- every 64th byte plus the length: quick, and any weight change moves it
    h = (h ~ data:byte(i)) * 1099511628211
  end
  h = (h ~ #data) * 1099511628211
  return ("%016x"):format(h)
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

--- m:encode_dataset{images = u8 tensor | source = function(first, count) -> images, n = N,
---   output = path, batch = 256, segment = 8192, dtype = "f32", encoder = "clip", source_name = "",
---   progress = true, texts = {...}} -> {rows=, encoded=, skipped=, seconds=, per_second=}
--- Encodes images (or texts) in batches, L2-normalised, into an embedding store (retrieval.h) at
--- output. Rows are written in segments (output .. ".parts/NNNNNN.h5", each written atomically);
--- a rerun after an interruption skips the segments already there, then the store is assembled
--- and the segments removed. The ids are the 0-based row numbers of the dataset. Run by the ranks of a
--- job (mpirun), rank r encodes segments r, r + N, ... and rank 0 assembles the store: the same store
--- one process writes, with the same resumption.
function M.methods.encode_dataset(model, opts)
  local fname = "clip.CLIP:encode_dataset"
  check_opts(fname, opts, { "images", "texts", "source", "n", "output", "batch", "segment", "dtype", "encoder",
    "source_name", "progress" })
  local output = require_opt(fname, opts, "output", "the embedding store to write")
  local read, n
  if opts.images then
    n = opts.images:size(1)
    read = function(first, count) return opts.images:narrow(1, first, count) end
  elseif opts.texts then
    n = #opts.texts
    read = function(first, count) return table.move(opts.texts, first, first + count - 1, 1, {}) end
  elseif opts.source then
    n = require_opt(fname, opts, "n", "the number of rows source() can give")
    read = opts.source
  else
    error(("knnd.%s: one of the options 'images', 'texts' or 'source' is required"):format(fname), 2)
  end
  local batch = opts.batch or 256
  local segment = math.max(batch, opts.segment or 8192)
  local dim = model:config().embed_dim
  local meta = { encoder = opts.encoder or "knnd-clip", encoder_hash = M.weights_hash(model),
    source = opts.source_name or "" }
  local parts_dir = output .. ".parts"
  os.execute(("mkdir -p '%s'"):format(parts_dir:gsub("'", "'\\''")))
  local n_segments = (n + segment - 1) // segment
  -- sharded over the ranks of a job: rank r encodes segments r, r + N, ...; rank 0 assembles the store
  -- once every rank has written its segments (the same store as one process writes)
  local dist = knnd.dist
  local world, rank = dist.size(), dist.rank()
  local mine_rows = 0
  for s = rank, n_segments - 1, world do mine_rows = mine_rows + math.min(segment, n - s * segment) end
  local bar = opts.progress ~= false and rank == 0 and knnd.progress { total = mine_rows,
    desc = world > 1 and ("clip encode (rank 0 of %d)"):format(world) or "clip encode", unit = "row" } or nil
  local t0 = knnd.wall_time()
  local encoded, skipped = 0, 0
  local prev = knnd.set_grad_enabled(false)
  local ok, err = pcall(function()
    for s = rank, n_segments - 1, world do
      local first = s * segment + 1
      local count = math.min(segment, n - first + 1)
      local part = ("%s/%06d.h5"):format(parts_dir, s)
      local done = false
      if exists(part) then -- a segment from an earlier run: kept when it is whole and from this model
        local okp, st = pcall(knnd.embeddings.open, part)
        if okp then
          local info = st:info()
          done = info.count == count and info.encoder_hash == meta.encoder_hash and info.dim == dim
        end
      end
      if done then
        skipped = skipped + count
        if bar then bar:update(count) end
      else
        local emb = knnd.empty(count, dim)
        for b = 0, count - 1, batch do
          local len = math.min(batch, count - b)
          local x = read(first + b, len)
          local e
          if type(x) == "table" then
            e = model:encode_text(x, { normalize = true })
          else
            e = model:encode_images(x, { normalize = true, batch = batch })
          end
          emb:narrow(1, b + 1, len):copy_(e)
          encoded = encoded + len
          if bar then bar:update(len) end
        end
        local ids = knnd.arange(first - 1, first - 1 + count, { dtype = "i64" })
        knnd.embeddings.save(part, emb, { ids = ids, dtype = opts.dtype, encoder = meta.encoder,
          encoder_hash = meta.encoder_hash, source = meta.source })
      end
    end
    if world > 1 then dist.barrier() end
    if rank ~= 0 then return end
    local store = knnd.embeddings.create(output, { dim = dim, dtype = opts.dtype, encoder = meta.encoder,
      encoder_hash = meta.encoder_hash, source = meta.source })
    for s = 0, n_segments - 1 do
      local st = knnd.embeddings.open(("%s/%06d.h5"):format(parts_dir, s))
      store:append(st:read(1, #st), st:ids())
    end
    store:close()
    for s = 0, n_segments - 1 do os.remove(("%s/%06d.h5"):format(parts_dir, s)) end
    os.remove(parts_dir)
  end)
  if ok and world > 1 then dist.barrier() end -- the store is in place when this returns on any rank
  knnd.set_grad_enabled(prev)
  if bar then bar:close() end
  if not ok then error(err, 0) end
  local seconds = knnd.wall_time() - t0
  return { rows = n, encoded = encoded, skipped = skipped, seconds = seconds,
    per_second = encoded > 0 and encoded / seconds or 0, encoder_hash = meta.encoder_hash }
end

return M
