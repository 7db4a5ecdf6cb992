-- classifier.lua — a small CNN image classifier (knnd.classifier): the judge of text alignment
-- (does a sample drawn for "a photo of a sneaker" look like a sneaker to a classifier trained on
-- the dataset?) and, later, the domain feature extractor where Inception weights are absent.
--
--   local clf = knnd.classifier.new{channels = 1, image_size = 28, classes = 10}
--   knnd.classifier.train{model = clf, images = train.images, labels = train.labels, steps = 400}
--   local acc = clf:accuracy(test.images, test.labels)
--   local pred = clf:predict(x)       -- x f32 [B,C,H,W] in [-1,1] (a sampler's output) or u8 images
--
-- Two conv blocks (conv 3x3, GroupNorm, SiLU, max-pool 2) and a linear head on the flattened
-- features; features(x) is the penultimate layer.
local knnd = require "knnd"
local options = require "knnd.options"

local M = {}
local Classifier = {}
Classifier.__index = Classifier
M.Classifier = Classifier
M.FORMAT = "knnd-classifier"

local function fail(fname, fmt, ...)
  error(("knnd.classifier.%s: " .. fmt):format(fname, ...), 0)
end

local function positive_int(fname, name, v, default)
  if v == nil then return default end
  local n = math.tointeger(v)
  if not n or n < 1 then fail(fname, "option '%s' expected a positive integer, got %s", name, tostring(v)) end
  return n
end

local function check_keys(fname, o, allowed) options.check_keys("knnd.classifier." .. fname, o, allowed) end

local order = { "conv1", "norm1", "conv2", "norm2", "head" }

--- knnd.classifier.new{channels=1, image_size=28, classes=10, width=32, seed=0}
function M.new(o)
  o = o or {}
  check_keys("new", o, { channels = 1, image_size = 1, classes = 1, width = 1, seed = 1 })
  local cfg = { channels = positive_int("new", "channels", o.channels, 1),
    image_size = positive_int("new", "image_size", o.image_size, 28),
    classes = positive_int("new", "classes", o.classes, 10), width = positive_int("new", "width", o.width, 32),
    seed = math.tointeger(o.seed or 0) or fail("new", "option 'seed' expected an integer") }
  if cfg.image_size % 4 ~= 0 then fail("new", "option 'image_size' is %d (expected a multiple of 4)", cfg.image_size) end
  if cfg.width % 4 ~= 0 then fail("new", "option 'width' is %d (expected a multiple of 4)", cfg.width) end
  local g = knnd.Generator(cfg.seed)
  local c, s = cfg.width, cfg.image_size // 4
  local layers = {
    conv1 = knnd.nn.Conv2d(cfg.channels, c, 3, { padding = 1, gen = g }),
    norm1 = knnd.nn.GroupNorm(4, c),
    conv2 = knnd.nn.Conv2d(c, 2 * c, 3, { padding = 1, gen = g }),
    norm2 = knnd.nn.GroupNorm(4, 2 * c),
    head = knnd.nn.Linear(2 * c * s * s, cfg.classes, { gen = g }),
  }
  return setmetatable({ layers = layers, config = cfg }, Classifier)
end

function Classifier:parameters()
  local params = {}
  for _, name in ipairs(order) do
    for _, p in ipairs(self.layers[name]:parameters()) do params[#params + 1] = p end
  end
  return params
end

function Classifier:state_dict()
  local sd = {}
  for _, name in ipairs(order) do
    for k, v in pairs(self.layers[name]:state_dict()) do sd[name .. "." .. k] = v end
  end
  return sd
end

function Classifier:load_state_dict(sd)
  for _, name in ipairs(order) do
    local part, prefix = {}, name .. "."
    for k, v in pairs(sd) do
      if k:sub(1, #prefix) == prefix then part[k:sub(#prefix + 1)] = v end
    end
    self.layers[name]:load_state_dict(part)
  end
end

-- images as the network's input: u8 [N,H,W] / [N,C,H,W] -> f32 in [-1,1]; floats are taken as
-- already in [-1,1] (a sampler's output)
function Classifier:input(x)
  local cfg = self.config
  if x:dim() == 3 then x = x:unsqueeze(2) end
  if x:dim() ~= 4 or x:size(2) ~= cfg.channels or x:size(3) ~= cfg.image_size or x:size(4) ~= cfg.image_size then
    fail("input", "images are %s (expected [N, %d, %d, %d])", table.concat(x:shape(), "x"), cfg.channels,
      cfg.image_size, cfg.image_size)
  end
  if x:dtype() == "u8" then return x:to("f32") / 127.5 - 1 end
  return x:to("f32")
end

--- clf:features(x) -> f32 [N, 2·width·(size/4)²]: the penultimate features
function Classifier:features(x)
  local l = self.layers
  x = self:input(x)
  x = knnd.max_pool2d(knnd.silu(l.norm1(l.conv1(x))), { kernel_size = 2 })
  x = knnd.max_pool2d(knnd.silu(l.norm2(l.conv2(x))), { kernel_size = 2 })
  return x:flatten(2)
end

function Classifier:logits(x)
  return self.layers.head(self:features(x))
end
Classifier.__call = Classifier.logits

--- clf:predict(x [, {batch=512}]) -> i64 [N] the 0-based classes, and the softmax probabilities [N, classes]
function Classifier:predict(x, opts)
  local batch = opts and opts.batch or 512
  local n = x:size(1)
  local preds, probs = knnd.empty(n, { dtype = "i64" }), knnd.empty(n, self.config.classes)
  knnd.no_grad(function()
    for s = 1, n, batch do
      local m = math.min(batch, n - s + 1)
      local logits = self:logits(x:narrow(1, s, m))
      preds:narrow(1, s, m):copy_(knnd.argmax(logits, 2))
      probs:narrow(1, s, m):copy_(knnd.softmax(logits, 2))
    end
  end)
  return preds, probs
end

--- clf:accuracy(images, labels) -> the fraction of images whose predicted class is the label
function Classifier:accuracy(images, labels)
  local pred = self:predict(images)
  return knnd.eq(pred, labels:to("i64")):to("f32"):mean():item()
end

function Classifier:save(path)
  knnd.io.save_checkpoint(path, { model = self:state_dict(), step = 0,
    config = { format = M.FORMAT, model = self.config, accuracy = self.test_accuracy, class_names = self.class_names } })
end

--- knnd.classifier.load(path) -> the classifier saved by clf:save
function M.load(path)
  local ok, ck = pcall(knnd.io.load_checkpoint, path, {})
  if not ok then fail("load", "%s", tostring(ck)) end
  if type(ck.config) ~= "table" or ck.config.format ~= M.FORMAT then
    fail("load", "'%s' is not a knnd classifier (its config has no format '%s')", path, M.FORMAT)
  end
  local clf = M.new(ck.config.model)
  clf:load_state_dict(ck.model)
  clf.test_accuracy = ck.config.accuracy
  clf.class_names = ck.config.class_names -- what each class is, when the trainer named them (knnd.style)
  return clf
end

--- knnd.classifier.train{model=, images= u8 [N,H,W] | [N,C,H,W], labels= i64 [N], steps=400, batch=64,
---   lr=2e-3, weight_decay=1e-4, seed=0, progress=true, desc="classifier"} -> {loss=, seconds=, losses=}
--- AdamW, cosine schedule after a 10% warm-up; batches drawn with replacement from a seeded generator.
function M.train(o)
  check_keys("train", o, { model = 1, images = 1, labels = 1, steps = 1, batch = 1, lr = 1, weight_decay = 1, seed = 1,
    progress = 1, desc = 1 })
  local clf = o.model
  if getmetatable(clf) ~= Classifier then fail("train", "option 'model' expected a knnd.classifier") end
  local images = o.images or fail("train", "option 'images' is required")
  local labels = (o.labels or fail("train", "option 'labels' is required")):to("i64")
  if labels:dim() ~= 1 or labels:size(1) ~= images:size(1) then
    fail("train", "%d labels for %d images", labels:numel(), images:size(1))
  end
  local lf = labels:to("f32")
  local lmin, lmax = math.tointeger(lf:min():item()), math.tointeger(lf:max():item())
  if lmin < 0 or lmax >= clf.config.classes then
    fail("train", "labels must be in 0 .. %d (got %d .. %d)", clf.config.classes - 1, lmin, lmax)
  end
  local steps = positive_int("train", "steps", o.steps, 400)
  local batch = positive_int("train", "batch", o.batch, 64)
  local lr = o.lr or 2e-3
  local params = clf:parameters()
  local opt = knnd.optim.AdamW(params, { lr = lr, weight_decay = o.weight_decay or 1e-4 })
  local sched = knnd.optim.lr_schedule { kind = "cosine", base_lr = lr, warmup_steps = math.max(1, steps // 10),
    total_steps = steps, min_lr = lr * 0.05 }
  local gen = knnd.Generator(o.seed or 0)
  local bar = o.progress ~= false and knnd.progress { total = steps, desc = o.desc or "classifier", unit = "step" } or nil
  local t0, losses, last = knnd.wall_time(), {}, nil
  for step = 1, steps do
    local idx = knnd.randint(0, images:size(1), { batch }, { gen = gen, dtype = "i64" })
    opt:set_lr(sched(step - 1))
    opt:zero_grad()
    local loss = knnd.cross_entropy(clf:logits(images:index_select(1, idx)), labels:index_select(1, idx))
    loss:backward()
    opt:step()
    last = loss:item()
    losses[step] = last
    if bar then bar:update(1, { loss = last }) end
  end
  if bar then bar:close() end
  return { loss = last, seconds = knnd.wall_time() - t0, losses = losses }
end

return M
