-- dataset.lua — prepared image datasets: one HDF5 file of fixed-size images, labels and captions,
-- written once (prepare_*) and read in shuffled, reproducible, resumable batches (open / loader).
--
--   knnd.dataset.prepare_fashion_mnist{out = "fm.h5", split = "train", size = 32, channels = 1}
--   local ds = knnd.dataset.open("fm.h5")
--   local it = ds:loader{batch = 64, shuffle = true, seed = 0, flip = true}
--   local b = it:next()          -- {x = f32 [B,C,H,W] in [-1,1], rows = i64 [B], labels = i64 [B]}
--   local st = it:state()        -- {epoch =, position =, seed =}: load_state(st) gives the same batches
--
-- File format (format "knnd-image-dataset", format_version 1):
--   /images            u8  [N, C, H, W]   (H = W = size)
--   /labels            i64 [N]            (0-based class ids; -1 when the source has no classes)
--   /captions/bytes    u8  [total]        UTF-8 text of every caption, concatenated (HDF5 strings are
--   /captions/offsets  i64 [N + 1]        not used here): caption r is bytes[offsets[r] .. offsets[r+1])
--   root attributes: format, format_version, source, size, channels, count, classes (class names
--   joined by "\n", "" when none), and split ("train", "val", "test", "all") where the source has one.
-- Importers of COCO, LN-COCO and CUB (lua/knnd/dataset_import.lua) write the same layout.
-- Rows are 0-based everywhere (ds:caption(0) is the first), like every index tensor of knnd.
local knnd = require "knnd"
local options = require "knnd.options"

local M = {}

M.FORMAT = "knnd-image-dataset"
M.FORMAT_VERSION = 1

-- the caption templates of prepare_fashion_mnist; one is drawn per image by a seeded generator
M.caption_templates = {
  "a photo of a {class}",
  "a black and white photo of a {class}",
  "a picture of a {class}",
  "a low resolution photo of a {class}",
  "a grayscale image of a {class}",
  "a product photo of a {class}",
}

local function check_opts(fname, opts, allowed)
  return options.check_keys("knnd.dataset." .. fname, opts, allowed, { optional = true })
end

local function positive_int(fname, name, v, default)
  if v == nil then return default end
  local n = math.tointeger(v)
  if not n or n < 1 then
    error(("knnd.dataset.%s: option '%s' expected a positive integer, got %s"):format(fname, name, tostring(v)), 3)
  end
  return n
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- float [N,C,h,w] -> u8 [N,C,size,size], rounded (u8 conversion truncates)
local function to_u8(x)
  return knnd.clamp(x + 0.5, 0, 255):to("u8")
end

-- ---- writing -----------------------------------------------------------------------------------
-- A writer keeps the HDF5 file open ("w": committed by rename on finish, abandoned on error).
local function new_writer(out, c, size, total, desc, progress)
  local f = knnd.io.h5open(out, "w")
  local chunk = math.max(1, math.min(total, 256))
  f:create_appendable("images", "u8", { c, size, size }, { chunk_rows = chunk })
  f:create_appendable("labels", "i64", {}, { chunk_rows = math.max(1, math.min(total, 4096)) })
  f:create_appendable("captions/bytes", "u8", {}, { chunk_rows = 65536 })
  local w = { f = f, offsets = { 0 }, n = 0, total_bytes = 0 }
  if progress ~= false then w.bar = knnd.progress { total = total, desc = desc } end
  return w
end

-- images u8 [n,C,H,W], labels i64 [n], captions a list of n strings
local function append(w, images, labels, captions)
  w.f:append("images", images)
  w.f:append("labels", labels)
  local bytes = {}
  for _, s in ipairs(captions) do
    for i = 1, #s do bytes[#bytes + 1] = s:byte(i) end
    w.total_bytes = w.total_bytes + #s
    w.offsets[#w.offsets + 1] = w.total_bytes
  end
  if #bytes > 0 then w.f:append("captions/bytes", knnd.tensor(bytes, { dtype = "u8" })) end
  w.n = w.n + #captions
  if w.bar then w.bar:update(#captions) end
end

local function finish(w, attrs)
  if w.bar then w.bar:close() end
  local f = w.f
  f:write("captions/offsets", knnd.tensor(w.offsets, { dtype = "i64" }))
  f:attr("/", "format", M.FORMAT)
  f:attr("/", "format_version", M.FORMAT_VERSION)
  f:attr("/", "count", w.n)
  for k, v in pairs(attrs) do f:attr("/", k, v) end
  f:close()
end

-- run fn(w); abandon the file (the target stays as it was) when fn fails
local function with_writer(w, fn)
  local ok, err = pcall(fn, w)
  if not ok then
    if w.bar then w.bar:close() end
    if w.f:is_open() then w.f:abort() end
    error(err, 0)
  end
end

--- knnd.dataset.prepare_fashion_mnist{out=, split="train", size=32, channels=1, resize="bilinear"|"pad",
--- limit=N, seed=0, dir=, progress=true} -> the number of images written
function M.prepare_fashion_mnist(opts)
  local fname = "prepare_fashion_mnist"
  opts = check_opts(fname, opts, { out = 1, split = 1, size = 1, channels = 1, resize = 1, limit = 1, seed = 1,
    dir = 1, progress = 1 })
  if type(opts.out) ~= "string" then error("knnd.dataset.prepare_fashion_mnist: option 'out' (a file path) is required", 2) end
  local size = positive_int(fname, "size", opts.size, 32)
  local channels = positive_int(fname, "channels", opts.channels, 1)
  if channels ~= 1 and channels ~= 3 then
    error(("knnd.dataset.prepare_fashion_mnist: option 'channels' expected 1 or 3, got %d"):format(channels), 2)
  end
  local resize = opts.resize or "bilinear"
  if resize ~= "bilinear" and resize ~= "pad" then
    error(("knnd.dataset.prepare_fashion_mnist: option 'resize' expected \"bilinear\" or \"pad\", got %s")
      :format(tostring(resize)), 2)
  end
  if resize == "pad" and size < 28 then
    error(("knnd.dataset.prepare_fashion_mnist: resize \"pad\" needs size >= 28, got %d"):format(size), 2)
  end
  local seed = math.tointeger(opts.seed or 0)
  if not seed then error("knnd.dataset.prepare_fashion_mnist: option 'seed' expected an integer", 2) end
  local limit = positive_int(fname, "limit", opts.limit, nil)
  local src = knnd.data.fashion_mnist { split = opts.split, dir = opts.dir, limit = limit }
  local n, classes = src.n, src.classes
  local template = knnd.randint(0, #M.caption_templates, { n }, { gen = knnd.Generator(seed) })
  local w = new_writer(opts.out, channels, size, n, "prepare fashion-mnist", opts.progress)
  with_writer(w, function()
    local step = 1000
    for first = 1, n, step do
      local m = math.min(step, n - first + 1)
      local img = src.images:narrow(1, first, m):float():view(m, 1, 28, 28)
      if size ~= 28 then
        if resize == "bilinear" then
          img = knnd.interpolate(img, { size = size, mode = "bilinear" })
        else
          local canvas = knnd.zeros(m, 1, size, size)
          local o = (size - 28) // 2
          canvas:narrow(3, o + 1, 28):narrow(4, o + 1, 28):copy_(img)
          img = canvas
        end
      end
      img = to_u8(img)
      if channels == 3 then img = img:expand(m, 3, size, size):contiguous() end
      local labels = src.labels:narrow(1, first, m)
      local caps = {}
      for j = 1, m do
        local cls = classes[math.tointeger(labels:get(j)) + 1]
        local t = M.caption_templates[math.tointeger(template:get(first + j - 1)) + 1]
        caps[j] = (t:gsub("{class}", cls):gsub("^a ([aeiou])", "an %1"):gsub(" a ([aeiou])", " an %1"))
      end
      append(w, img, labels:contiguous(), caps)
    end
    finish(w, { source = "fashion-mnist/" .. (opts.split or "train"), size = size, channels = channels,
      classes = table.concat(classes, "\n"), split = opts.split or "train" })
  end)
  return n
end

-- a picture's file name: .png, .jpg or .jpeg, any case
local function is_image_name(name)
  local ext = name:lower():match("%.(%w+)$")
  return ext == "png" or ext == "jpg" or ext == "jpeg"
end

-- the image files (is_image_name) of a directory, sorted
local function list_images(dir)
  local names = {}
  local ok, lfs = pcall(require, "lfs")
  if ok then
    local iter_ok, iter, state = pcall(lfs.dir, dir)
    if not iter_ok then error(("knnd.dataset.prepare_folder: cannot read the directory '%s'"):format(dir), 3) end
    for name in iter, state do
      if is_image_name(name) then names[#names + 1] = name end
    end
  else
    local p = io.popen(("ls -1 -- '%s' 2>/dev/null"):format(dir:gsub("'", "'\\''")))
    for name in p:lines() do
      if is_image_name(name) then names[#names + 1] = name end
    end
    p:close()
  end
  table.sort(names)
  return names
end

local function read_captions_tsv(path)
  local f, err = io.open(path, "rb")
  if not f then error(("knnd.dataset.prepare_folder: cannot open the captions file: %s"):format(err), 3) end
  local caps, lineno = {}, 0
  for line in f:lines() do
    lineno = lineno + 1
    line = line:gsub("\r$", "")
    if line ~= "" then
      local name, cap = line:match("^([^\t]+)\t(.*)$")
      if not name then
        f:close()
        error(("knnd.dataset.prepare_folder: %s line %d: expected filename<TAB>caption"):format(path, lineno), 3)
      end
      caps[name] = cap
    end
  end
  f:close()
  return caps
end

-- u8 [C,H,W] (C = 1, 3, 4) -> u8 [1,3,size,size]: RGB (alpha composited on white), the centred
-- square crop, resized by bilinear interpolation
local function square_rgb(img, size)
  local c, h, w = img:size(1), img:size(2), img:size(3)
  local x = img:float()
  if c == 4 then
    local a = x:narrow(1, 4, 1) / 255
    x = x:narrow(1, 1, 3) * a + (1 - a) * 255
  elseif c == 1 then
    x = x:expand(3, h, w)
  elseif c ~= 3 then
    error(("an image with %d channels (expected 1, 3 or 4)"):format(c), 0)
  end
  local s = math.min(h, w)
  x = x:narrow(2, (h - s) // 2 + 1, s):narrow(3, (w - s) // 2 + 1, s):contiguous():view(1, 3, s, s)
  if s ~= size then x = knnd.interpolate(x, { size = size, mode = "bilinear" }) end
  return to_u8(x)
end

--- knnd.dataset.prepare_folder{dir=, out=, size=64, captions="captions.tsv", split=, progress=true}: every
--- .png, .jpg and .jpeg of dir (sorted by name; read by content, knnd.read_image) -> RGB size x size;
--- captions from the TSV (filename<TAB>caption, a path relative to dir or absolute), else the file name
--- without extension, '_' and '-' as spaces. Labels are -1. split: a name ("train", ...) kept in the
--- file's `split` attribute.
function M.prepare_folder(opts)
  local fname = "prepare_folder"
  opts = check_opts(fname, opts, { dir = 1, out = 1, size = 1, captions = 1, split = 1, progress = 1 })
  if type(opts.dir) ~= "string" then error("knnd.dataset.prepare_folder: option 'dir' (a directory) is required", 2) end
  if type(opts.out) ~= "string" then error("knnd.dataset.prepare_folder: option 'out' (a file path) is required", 2) end
  local size = positive_int(fname, "size", opts.size, 64)
  if opts.split ~= nil and (type(opts.split) ~= "string" or opts.split == "") then
    error(("knnd.dataset.prepare_folder: option 'split' expected a name, got %s"):format(tostring(opts.split)), 2)
  end
  local names = list_images(opts.dir)
  if #names == 0 then
    error(("knnd.dataset.prepare_folder: no .png, .jpg or .jpeg files in '%s'"):format(opts.dir), 2)
  end
  local caps = {}
  if opts.captions then
    local p = opts.captions
    if not exists(p) and exists(opts.dir .. "/" .. p) then p = opts.dir .. "/" .. p end
    caps = read_captions_tsv(p)
  end
  local w = new_writer(opts.out, 3, size, #names, "prepare folder", opts.progress)
  with_writer(w, function()
    for _, name in ipairs(names) do
      local path = opts.dir .. "/" .. name
      local ok, img = pcall(knnd.read_image, path)
      if ok then ok, img = pcall(square_rgb, img, size) end
      if not ok then error(("knnd.dataset.prepare_folder: %s: %s"):format(path, tostring(img)), 0) end
      local cap = caps[name] or (name:gsub("%.%w+$", ""):gsub("[_%-]+", " "))
      append(w, img, knnd.tensor({ -1 }, { dtype = "i64" }), { cap })
    end
    finish(w, { source = "folder:" .. opts.dir, size = size, channels = 3, classes = "", split = opts.split })
  end)
  return #names
end

-- ---- reading -----------------------------------------------------------------------------------
local Dataset = {}
Dataset.__index = Dataset

--- knnd.dataset.open(path [, {cache = true}]) -> a Dataset. cache: keep every image in memory
--- (default: when the images take at most 512 MiB), else rows are read from the file per batch.
function M.open(path, opts)
  opts = check_opts("open", opts, { cache = 1 })
  if type(path) ~= "string" then error("knnd.dataset.open: argument 1 'path' expected a file path", 2) end
  if not exists(path) then error(("knnd.dataset.open: '%s' not found"):format(path), 2) end
  local ok, f = pcall(knnd.io.h5open, path, "r")
  if not ok then
    error(("knnd.dataset.open: cannot read '%s' as HDF5: %s"):format(path, tostring(f)), 2)
  end
  local function bad(why)
    f:close()
    error(("knnd.dataset.open: '%s' is not a knnd image dataset (%s)"):format(path, why), 3)
  end
  if f:attr("/", "format") ~= M.FORMAT then bad("its 'format' attribute is not \"" .. M.FORMAT .. "\"") end
  local version = f:attr("/", "format_version")
  if version ~= M.FORMAT_VERSION then
    bad(("format_version %s, this knnd reads version %d"):format(tostring(version), M.FORMAT_VERSION))
  end
  for _, name in ipairs({ "images", "labels", "captions/bytes", "captions/offsets" }) do
    if not f:exists(name) then bad("no '" .. name .. "' dataset") end
  end
  local ii, li, oi = f:info("images"), f:info("labels"), f:info("captions/offsets")
  local n = ii.shape[1]
  if ii.dtype ~= "u8" or #ii.shape ~= 4 or li.dtype ~= "i64" or #li.shape ~= 1 or li.shape[1] ~= n
    or oi.dtype ~= "i64" or oi.shape[1] ~= n + 1 or f:attr("/", "count") ~= n then
    bad("the shapes of images, labels, captions/offsets and the count attribute do not agree")
  end
  local ds = setmetatable({ path = path, f = f, n = n, shape = { ii.shape[2], ii.shape[3], ii.shape[4] } }, Dataset)
  ds.source = f:attr("/", "source") or ""
  ds.split = f:attr("/", "split") -- nil when the source has none
  local classes = f:attr("/", "classes") or ""
  ds.classes = {}
  for c in classes:gmatch("[^\n]+") do ds.classes[#ds.classes + 1] = c end
  local rd_ok, err = pcall(function()
    ds.labels_t = f:read("labels")
    ds.offsets = f:read("captions/offsets"):totable()
    local nbytes = f:info("captions/bytes").shape[1]
    if ds.offsets[1] ~= 0 or ds.offsets[n + 1] ~= nbytes then error("caption offsets out of range", 0) end
    for r = 1, n do
      if ds.offsets[r + 1] < ds.offsets[r] then error("caption offsets decrease", 0) end
    end
    local bytes = n * ds.shape[1] * ds.shape[2] * ds.shape[3]
    local cache = opts.cache
    if cache == nil then cache = bytes <= 512 * 1024 * 1024 end
    if cache then ds.images_t = f:read("images") end
  end)
  if not rd_ok then bad(tostring(err)) end
  return ds
end

function Dataset:count() return self.n end

--- {C, H, W} of one image
function Dataset:image_shape() return { self.shape[1], self.shape[2], self.shape[3] } end

function Dataset:close()
  if self.f:is_open() then self.f:close() end
end

local function check_row(self, what, r)
  local i = math.tointeger(r)
  if not i or i < 0 or i >= self.n then
    error(("knnd.dataset %s: row %s is out of range (the dataset has %d rows, 0 .. %d)"):format(what, tostring(r),
      self.n, self.n - 1), 3)
  end
  return i
end

--- the caption of 0-based row r
function Dataset:caption(r)
  local i = check_row(self, "caption", r)
  local a, b = self.offsets[i + 1], self.offsets[i + 2]
  if b == a then return "" end
  local t = self.f:read_rows("captions/bytes", a + 1, b - a):totable()
  local parts = {}
  for k = 1, #t, 4096 do parts[#parts + 1] = string.char(table.unpack(t, k, math.min(#t, k + 4095))) end
  return table.concat(parts)
end

--- the label (0-based class id, -1 when none) of 0-based row r
function Dataset:label(r)
  return math.tointeger(self.labels_t:get(check_row(self, "label", r) + 1))
end

--- the name of the class of row r, or nil
function Dataset:class_name(r)
  return self.classes[self:label(r) + 1]
end

local function rows_tensor(self, rows, what)
  if knnd.is_tensor(rows) then
    if rows:dim() ~= 1 then error(("knnd.dataset %s: rows must be a 1-d tensor"):format(what), 3) end
    rows = rows:to("i64")
  elseif type(rows) == "table" then
    for _, r in ipairs(rows) do check_row(self, what, r) end
    rows = knnd.tensor(rows, { dtype = "i64" })
  else
    error(("knnd.dataset %s: rows expected an i64 tensor or a list of 0-based rows, got %s"):format(what, type(rows)), 3)
  end
  return rows
end

--- u8 [#rows, C, H, W] images of the 0-based rows (a list or an i64 tensor), in their order
function Dataset:images(rows)
  rows = rows_tensor(self, rows, "images")
  if self.images_t then return knnd.index_select(self.images_t, 1, rows) end
  local n = rows:numel()
  local out = knnd.empty(n, self.shape[1], self.shape[2], self.shape[3], { dtype = "u8" })
  local k = 1
  while k <= n do -- runs of consecutive rows are read at once
    local r = check_row(self, "images", rows:get(k))
    local m = 1
    while k + m <= n and rows:get(k + m) == r + m do m = m + 1 end
    check_row(self, "images", r + m - 1)
    out:narrow(1, k, m):copy_(self.f:read_rows("images", r + 1, m))
    k = k + m
  end
  return out
end

--- i64 [#rows] labels of the 0-based rows
function Dataset:labels(rows)
  return knnd.index_select(self.labels_t, 1, rows_tensor(self, rows, "labels"))
end

-- ---- loader ------------------------------------------------------------------------------------
local Loader = {}
Loader.__index = Loader

-- the generator of one stream (1: order, 2: flips) of one epoch: a fixed function of (seed, epoch)
local function epoch_gen(seed, epoch, stream)
  return knnd.Generator(seed + epoch * 1000003 + stream * 7919)
end

--- ds:loader{batch=64, shuffle=true, seed=0, flip=false, device="cpu", drop_last=true, rows=, shard=}
--- rows: only these 0-based rows (a list or an i64 tensor), e.g. the images of the classes a model may see
--- shard = {rank, world} (data-parallel training): every rank walks the same order and reads only its
--- slice of each batch (batch / world rows: batch must divide by world); together the ranks read the
--- batches one loader of the same batch reads
function Dataset:loader(opts)
  local fname = "loader"
  opts = check_opts(fname, opts, { batch = 1, shuffle = 1, seed = 1, flip = 1, device = 1, drop_last = 1, rows = 1,
    shard = 1 })
  local batch = opts.batch or 64
  if math.type(batch) ~= "integer" or batch < 1 then
    error(("knnd.dataset.loader: option 'batch' expected a positive integer, got %s"):format(tostring(batch)), 2)
  end
  local seed = opts.seed or 0
  if math.type(seed) ~= "integer" then
    error(("knnd.dataset.loader: option 'seed' expected an integer, got %s"):format(tostring(seed)), 2)
  end
  local device = opts.device or "cpu"
  if type(device) ~= "string" or not (device == "cpu" or device:match("^cuda")) then
    error(("knnd.dataset.loader: option 'device' expected \"cpu\" or \"cuda[:N]\", got %s"):format(tostring(device)), 2)
  end
  if device ~= "cpu" and not knnd.cuda.available() then
    error(("knnd.dataset.loader: device '%s' asked for, but no CUDA device is available (knnd.cuda.available() is "
      .. "false: build with -DKNND_CUDA=ON on a machine with a GPU, or use device = \"cpu\")"):format(device), 2)
  end
  -- rows: a subset (0-based rows, e.g. the images of some classes) that the loader goes through
  local subset, n = nil, self.n
  if opts.rows ~= nil then
    subset = opts.rows
    if type(subset) == "table" then subset = knnd.tensor(subset, { dtype = "i64" }) end
    if not knnd.is_tensor(subset) or subset:dim() ~= 1 or subset:numel() == 0 then
      error("knnd.dataset.loader: option 'rows' expected a non-empty list or 1-d tensor of 0-based rows", 2)
    end
    subset = subset:to("i64"):contiguous()
    local outside = knnd.lt(subset, 0):to("f32"):sum():item() + knnd.ge(subset, self.n):to("f32"):sum():item()
    if outside > 0 then
      error(("knnd.dataset.loader: option 'rows' holds rows outside 0 .. %d"):format(self.n - 1), 2)
    end
    n = subset:numel()
  end
  local drop_last = opts.drop_last ~= false
  if drop_last and batch > n then
    error(("knnd.dataset.loader: batch %d is larger than the dataset (%d rows) with drop_last"):format(batch, n), 2)
  end
  local shard = opts.shard
  if shard ~= nil then
    local r, w = type(shard) == "table" and shard[1], type(shard) == "table" and shard[2]
    if math.type(r) ~= "integer" or math.type(w) ~= "integer" or w < 1 or r < 0 or r >= w then
      error("knnd.dataset.loader: option 'shard' expected {rank, world} with 0 <= rank < world", 2)
    end
    if batch % w ~= 0 then
      error(("knnd.dataset.loader: batch %d does not divide among %d ranks (option 'shard')"):format(batch, w), 2)
    end
    if not drop_last then error("knnd.dataset.loader: option 'shard' needs drop_last (every batch divides evenly)", 2) end
    shard = w > 1 and { r, w } or nil
  end
  local it = setmetatable({ ds = self, batch = batch, shuffle = opts.shuffle ~= false, seed = seed,
    flip = opts.flip == true, device = device, drop_last = drop_last, epoch = 0, position = 0, subset = subset,
    n = n, shard = shard }, Loader)
  local c, w = self.shape[1], self.shape[3]
  it.reverse_w = knnd.arange(w - 1, -1, -1, { dtype = "i64" })
  it.c = c
  return it
end

-- the order and flip draws of the current epoch (recomputed only when the epoch changes)
function Loader:_epoch_plan()
  if self.plan_epoch == self.epoch then return end
  local n = self.n
  if self.shuffle then
    self.perm = knnd.randperm(n, { gen = epoch_gen(self.seed, self.epoch, 1) })
  else
    self.perm = knnd.arange(0, n, 1, { dtype = "i64" })
  end
  if self.flip then
    self.flips = knnd.randint(0, 2, { n }, { gen = epoch_gen(self.seed, self.epoch, 2) }):to("u8")
  end
  self.plan_epoch = self.epoch
end

--- the batches in one epoch
function Loader:batches_per_epoch()
  if self.drop_last then return self.n // self.batch end
  return (self.n + self.batch - 1) // self.batch
end

--- the next batch {x = f32 [B,C,H,W] in [-1,1], rows = i64 [B] (0-based), labels = i64 [B],
--- flipped = u8 [B] (1 where the image was mirrored), epoch =, index = (0-based batch of the epoch)}
function Loader:next()
  local n = self.n
  if self.position >= n or (self.drop_last and self.position + self.batch > n) then
    self.epoch = self.epoch + 1
    self.position = 0
  end
  self:_epoch_plan()
  local b = math.min(self.batch, n - self.position)
  -- this rank's slice of the batch (all of it without a shard)
  local from = self.position
  if self.shard then
    b = b // self.shard[2]
    from = from + self.shard[1] * b
  end
  local rows = self.perm:narrow(1, from + 1, b):contiguous()
  if self.subset then rows = self.subset:index_select(1, rows) end
  local index = self.position // self.batch
  self.position = self.position + (self.shard and b * self.shard[2] or b)
  local x = self.ds:images(rows):float() * (2 / 255) - 1
  local flipped
  if self.flip then
    flipped = self.flips:narrow(1, from + 1, b):contiguous()
    local mirrored = knnd.index_select(x, 4, self.reverse_w)
    x = knnd.where(flipped:view(b, 1, 1, 1), mirrored, x)
  else
    flipped = knnd.zeros(b, { dtype = "u8" })
  end
  if self.device ~= "cpu" then x = x:pin_memory():to(self.device) end
  return { x = x, rows = rows, labels = self.ds:labels(rows), flipped = flipped, epoch = self.epoch, index = index }
end

--- {epoch =, position =, seed =}: where the loader stands (position = rows of the epoch handed out)
function Loader:state()
  return { epoch = self.epoch, position = self.position, seed = self.seed }
end

--- continue from a state() so the following batches are those the saved loader would have given
function Loader:load_state(st)
  if type(st) ~= "table" then error("knnd.dataset Loader:load_state: expected the table of Loader:state()", 2) end
  for _, k in ipairs({ "epoch", "position", "seed" }) do
    if math.type(st[k]) ~= "integer" or (k ~= "seed" and st[k] < 0) then
      error(("knnd.dataset Loader:load_state: field '%s' expected a non-negative integer, got %s"):format(k,
        tostring(st[k])), 2)
    end
  end
  if st.position > self.n then
    error(("knnd.dataset Loader:load_state: position %d is past the end of the dataset (%d rows)"):format(st.position,
      self.n), 2)
  end
  self.epoch, self.position, self.seed = st.epoch, st.position, st.seed
  self.plan_epoch = nil
end

M.Dataset, M.Loader = Dataset, Loader
-- for the preparers in other files (dataset_*.lua): one writer, one way to square and round images
M.writer = { new = new_writer, append = append, finish = finish, run = with_writer }
M.square_rgb, M.to_u8, M.check_opts, M.positive_int = square_rgb, to_u8, check_opts, positive_int
package.loaded["knnd.dataset"] = M -- those files require this module back while it loads
local emoji = require "knnd.dataset_emoji"
M.prepare_emoji, M.prepare_emojione, M.emoji_meta = emoji.prepare_emoji, emoji.prepare_emojione, emoji.emoji_meta
local import = require "knnd.dataset_import"
M.prepare_coco, M.prepare_lncoco, M.prepare_cub = import.prepare_coco, import.prepare_lncoco, import.prepare_cub
return M
