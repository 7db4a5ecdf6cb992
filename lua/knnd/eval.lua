-- eval.lua — knnd.eval: FID, KID, CLIP score and the zero-shot protocol over image sets, on top of
-- knnd.metrics (the C side: pytorch-fid's InceptionV3, float64 statistics, the Fréchet distance).
--
--   local inc = knnd.eval.inception("pt_inception.safetensors")          -- the FID network
--   local ref = knnd.eval.stats("coco_val.h5", { extractor = inc, out = "coco_val.fid.h5" })
--   print(knnd.eval.fid("samples/", ref, { extractor = inc }))          -- FID, as pytorch-fid
--
--   -- no Inception weights (the embedded data): a classifier trained on the dataset stands in,
--   -- and every number made with it is labelled so ("FID[fmnist-cnn]"), never mixed with FID
--   local cnn = knnd.eval.classifier_extractor(knnd.classifier.load("judge.h5"), { name = "fmnist-cnn" })
--
-- Image sets ("sources") are: a u8 tensor [N,C,H,W] (or [N,H,W]) or a float tensor in [-1, 1] (a
-- sampler's output); a knnd image dataset (.h5); a folder of PNG/JPEG files; a folder of samples
-- written by knnd.eval.zero_shot (part-*.h5). Images enter every extractor as u8, as when samples
-- are saved to PNG and read back: the protocol pytorch-fid users follow.
local knnd = require "knnd"
local options = require "knnd.options"
local dataset = require "knnd.dataset"
local files = require "knnd.files"
local exists = files.exists

local M = {}

local function fail(fname, fmt, ...)
  error(("knnd.eval.%s: " .. fmt):format(fname, ...), 0)
end

local function check_keys(fname, o, allowed)
  return options.check_keys("knnd.eval." .. fname, o, allowed, { optional = true })
end

local function positive_int(fname, name, v, default)
  if v == nil then return default end
  local n = math.tointeger(v)
  if not n or n < 1 then fail(fname, "option '%s' expected a positive integer, got %s", name, tostring(v)) end
  return n
end

local is_dir, list_dir, mkdir_p = files.is_dir, files.list_dir, files.mkdir_p

-- ---- extractors -------------------------------------------------------------------------------
-- An extractor: {id = "inception-v3-fid/pool3" | "<name>/penultimate@<hash>", dim =, preprocess =,
-- batch =, features = function(self, u8 [B,C,H,W]) -> f32 [B, dim]}.
local Extractor = {}
Extractor.__index = Extractor
M.Extractor = Extractor

function Extractor:__tostring()
  return ("knnd.eval extractor %s (%d-d; %s)"):format(self.id, self.dim, self.preprocess)
end

M.INCEPTION_POOL3 = "inception-v3-fid/pool3"

--- knnd.eval.inception(weights_path [, {dims = 2048, batch = 50, device = "cpu", reference = true}])
--- pytorch-fid's InceptionV3 (converted weights: eval/convert_inception.py). reference = false
--- admits weights other than pt_inception-2015-12-05 (their FIDs are not comparable to papers').
function M.inception(path, o)
  o = check_keys("inception", o, { "dims", "batch", "device", "reference" })
  if type(path) ~= "string" then fail("inception", "argument 1 'path' expected the weights file (safetensors)") end
  local dims = positive_int("inception", "dims", o.dims, 2048)
  local id = knnd.metrics.inception_id(dims)
  if not id then fail("inception", "option 'dims' is %d (expected 64, 192, 768 or 2048)", dims) end
  local net = knnd.metrics.inception(path, { reference = o.reference ~= false, device = o.device })
  local ex = { kind = "inception", id = id, dim = dims, net = net, batch = positive_int("inception", "batch", o.batch, 50),
    preprocess = "u8 -> [0,1], bilinear resize to 299x299 (align_corners=False), [-1,1] (pytorch-fid)" }
  ex.features = function(self, x) return self.net:features(x, { dims = self.dims or self.dim, batch = self.batch }) end
  return setmetatable(ex, Extractor)
end

--- knnd.eval.classifier_extractor(clf | path [, {name = "cnn", batch = 256}]) — the penultimate
--- features of a knnd.classifier as a stand-in for Inception where its weights are absent. The id
--- carries a digest of the weights, so statistics of two different classifiers never meet.
function M.classifier_extractor(clf, o)
  o = check_keys("classifier_extractor", o, { "name", "batch" })
  local classifier = require "knnd.classifier"
  if type(clf) == "string" then clf = classifier.load(clf) end
  if getmetatable(clf) ~= classifier.Classifier then
    fail("classifier_extractor", "argument 1 expected a knnd.classifier or its file")
  end
  local name = o.name or "cnn"
  if type(name) ~= "string" or not name:match("^[%w_%-%.]+$") then
    fail("classifier_extractor", "option 'name' expected a short name of letters, digits, '-', '_' or '.'")
  end
  -- the digest of the weights (as safetensors, whose bytes depend on the tensors alone) and the config: not
  -- of clf:save's HDF5 file, which records when each object was written, so the same classifier saved in
  -- another second had another id and its statistics were refused as another extractor's
  local path = os.tmpname()
  knnd.io.save_safetensors(path, (clf:state_dict()))
  local f = assert(io.open(path, "rb"))
  local bytes = f:read("a") .. require("knnd.files").json_encode(clf.config)
  f:close()
  os.remove(path)
  local cfg = clf.config
  local dim = 2 * cfg.width * (cfg.image_size // 4) ^ 2
  local ex = { kind = "classifier", id = ("%s/penultimate@%s"):format(name, knnd.sha256(bytes):sub(1, 12)),
    dim = math.tointeger(dim), clf = clf, batch = positive_int("classifier_extractor", "batch", o.batch, 256),
    preprocess = ("u8 [N,%d,%d,%d] -> [-1,1]"):format(cfg.channels, cfg.image_size, cfg.image_size) }
  ex.features = function(self, x) return knnd.no_grad(function() return self.clf:features(x) end) end
  return setmetatable(ex, Extractor)
end

--- the column label of an extractor's FID: "FID" for pytorch-fid's pool3 features only,
--- "FID[<name>]" otherwise (e.g. FID[fmnist-cnn])
function M.fid_label(id, metric)
  metric = metric or "FID"
  if id == M.INCEPTION_POOL3 then return metric end
  return ("%s[%s]"):format(metric, (id:match("^([^/]+)") or id))
end

-- ---- image sources --------------------------------------------------------------------------------
-- a sampler's f32 [-1, 1] images -> u8, rounded as a PNG writer would
local function samples_to_u8(x)
  return knnd.clamp((x + 1) * 127.5 + 0.5, 0, 255):to("u8")
end
M.samples_to_u8 = samples_to_u8

-- A source as {n =, desc =, batches = function(batch) -> iterator over u8 [B,C,H,W]}
local function tensor_source(t)
  if t:dim() == 3 then t = t:unsqueeze(2) end
  if t:dim() ~= 4 then error(("images are %s (expected [N,C,H,W] or [N,H,W])"):format(table.concat(t:shape(), "x")), 0) end
  local u8 = t:dtype() == "u8" and t or samples_to_u8(t)
  local n = u8:size(1)
  return { n = n, desc = ("a tensor of %d images"):format(n), batches = function(_, batch)
    local first = 1
    return function()
      if first > n then return nil end
      local m = math.min(batch, n - first + 1)
      local b = u8:narrow(1, first, m)
      first = first + m
      return b
    end
  end }
end

local function datasets_source(paths, rows, desc)
  local sets, n = {}, 0
  for i, p in ipairs(paths) do
    sets[i] = dataset.open(p, { cache = false })
    n = n + sets[i].n
  end
  if rows then
    if #sets ~= 1 then error("option 'rows' needs a single dataset", 0) end
    n = #rows
  end
  return { n = n, desc = desc, close = function() for _, s in ipairs(sets) do s:close() end end,
    batches = function(_, batch)
      local si, r = 1, 0
      return function()
        while sets[si] do
          local s = sets[si]
          local total = rows and #rows or s.n
          if r < total then
            local m = math.min(batch, total - r)
            local pick = {}
            for j = 1, m do pick[j] = rows and rows[r + j] or (r + j - 1) end
            r = r + m
            return s:images(pick)
          end
          si, r = si + 1, 0
        end
        return nil
      end
    end }
end

local function is_image_name(name)
  local ext = name:lower():match("%.(%w+)$")
  return ext == "png" or ext == "jpg" or ext == "jpeg"
end

local function folder_source(dir)
  local names = list_dir(dir)
  local parts, images = {}, {}
  for _, nm in ipairs(names) do
    if nm:match("^part%-%d+%.h5$") then parts[#parts + 1] = dir .. "/" .. nm
    elseif is_image_name(nm) then images[#images + 1] = dir .. "/" .. nm end
  end
  if #parts > 0 then return datasets_source(parts, nil, ("%d sample parts in %s"):format(#parts, dir)) end
  if #images == 0 then error(("'%s' holds no PNG/JPEG images and no part-*.h5 samples"):format(dir), 0) end
  return { n = #images, desc = ("%d images in %s"):format(#images, dir), batches = function(_, batch)
    local i = 1
    return function()
      if i > #images then return nil end
      local out, shape, m = nil, nil, 0
      while i <= #images and m < batch do
        local ok, img = pcall(knnd.read_image, images[i])
        if not ok then error(("cannot read '%s': %s"):format(images[i], tostring(img)), 0) end
        local s = table.concat(img:shape(), "x") -- u8 [C,H,W]
        if shape and s ~= shape then break end -- a batch holds images of one size
        if not out then
          shape = s
          out = knnd.empty(math.min(batch, #images - i + 1), img:size(1), img:size(2), img:size(3), { dtype = "u8" })
        end
        m = m + 1
        out:narrow(1, m, 1):copy_(img:unsqueeze(1))
        i = i + 1
      end
      return out:narrow(1, 1, m)
    end
  end }
end

--- knnd.eval.source(src [, {rows=}]) -> an image source (see the top of this file); rows: 0-based
--- rows of a dataset
function M.source(src, o)
  o = o or {}
  if knnd.is_tensor(src) then return tensor_source(src) end
  if type(src) == "table" and src.batches then return src end
  if type(src) ~= "string" then error(("expected images (a tensor, a dataset or a folder), got %s"):format(type(src)), 0) end
  if is_dir(src) then return folder_source(src) end
  if not exists(src) then error(("'%s' not found"):format(src), 0) end
  return datasets_source({ src }, o.rows, src)
end

-- ---- features and statistics ------------------------------------------------------------------------
local function check_extractor(fname, ex)
  if getmetatable(ex) ~= Extractor then
    fail(fname, "option 'extractor' expected a knnd.eval extractor (knnd.eval.inception or knnd.eval.classifier_extractor)")
  end
  return ex
end

-- run fn(features [B,D]) over the source's batches with a progress bar
local function each_feature_batch(fname, src, ex, o, fn)
  local s = M.source(src, { rows = o.rows })
  local bar = o.progress ~= false and knnd.progress { total = s.n, desc = o.desc or ("features " .. ex.id),
    unit = "img" } or nil
  local ok, err = pcall(function()
    for b in s:batches(ex.batch) do
      fn(ex:features(b), s.n)
      if bar then bar:update(b:size(1)) end
    end
  end)
  if bar then bar:close() end
  if s.close then s.close() end
  if not ok then fail(fname, "%s: %s", s.desc or "images", tostring(err)) end
  return s.n
end

--- knnd.eval.features(images, {extractor=, rows=, progress=true}) -> f32 [N, D]
function M.features(src, o)
  o = check_keys("features", o, { "extractor", "rows", "progress", "desc" })
  local ex = check_extractor("features", o.extractor)
  local feats, filled = nil, 0
  each_feature_batch("features", src, ex, o, function(f, total)
    feats = feats or knnd.empty(total, f:size(2))
    feats:narrow(1, filled + 1, f:size(1)):copy_(f)
    filled = filled + f:size(1)
  end)
  if filled == 0 then fail("features", "no images") end
  return feats
end

--- knnd.eval.stats(images, {extractor=, rows=, out= (save to this path), progress=true}) -> the
--- statistics (knnd.metrics stats: mean/cov in float64, the extractor's id and preprocessing)
function M.stats(src, o)
  o = check_keys("stats", o, { "extractor", "rows", "out", "progress", "desc" })
  local ex = check_extractor("stats", o.extractor)
  local st = knnd.metrics.stats(ex.dim, { extractor = ex.id, preprocess = ex.preprocess })
  each_feature_batch("stats", src, ex, o, function(f) st:add(f) end)
  if st:n() < 2 then fail("stats", "%d image(s): statistics need at least 2", st:n()) end
  st:finish()
  if o.out then st:save(o.out) end
  return st
end

-- a knnd.metrics statistics object (a userdata with the statistics' methods; a tensor has none)
local function is_stats(v)
  if type(v) ~= "userdata" or knnd.is_tensor(v) then return false end
  local ok, id = pcall(function() return v:extractor() end)
  return ok and type(id) == "string"
end

--- is `path` a statistics file (knnd's HDF5 stats or pytorch-fid's .npz)?
function M.is_stats_file(path)
  if type(path) ~= "string" or not exists(path) or is_dir(path) then return false end
  if path:lower():match("%.npz$") then return true end
  local ok, f = pcall(knnd.io.h5open, path, "r")
  if not ok then return false end
  local fmt = f:attr("/", "format")
  f:close()
  return fmt == "knnd-fid-stats"
end

--- knnd.eval.load_stats(path [, {extractor=}]) (extractor: the id for a non-2048-d .npz)
function M.load_stats(path, o)
  o = check_keys("load_stats", o, { "extractor" })
  return knnd.metrics.load_stats(path, { extractor = o.extractor })
end

-- statistics of a stats object, a stats file, or images (needs the extractor); cached at `cache`
local function stats_of(fname, v, ex, cache, progress, desc)
  if is_stats(v) then return v end
  if type(v) == "string" and M.is_stats_file(v) then return knnd.metrics.load_stats(v, {}) end
  if cache and exists(cache) then
    local st = knnd.metrics.load_stats(cache, {})
    if ex and st:extractor() == ex.id then return st end
  end
  if not ex then fail(fname, "images given without an 'extractor' (knnd.eval.inception(...) or a classifier)") end
  return M.stats(v, { extractor = ex, out = cache, progress = progress, desc = desc })
end

--- knnd.eval.fid(a, b [, {extractor=, progress=true}]) -> fid, {a = stats, b = stats, label =}
--- a, b: statistics, statistics files, or images (then the extractor computes their statistics).
--- Statistics of different extractors are refused: their distance means nothing.
function M.fid(a, b, o)
  o = check_keys("fid", o, { "extractor", "progress" })
  local ex = o.extractor and check_extractor("fid", o.extractor)
  local sa = stats_of("fid", a, ex, nil, o.progress, "statistics of A")
  local sb = stats_of("fid", b, ex, nil, o.progress, "statistics of B")
  local d = knnd.metrics.frechet(sa, sb)
  return d, { a = sa, b = sb, label = M.fid_label(sa:extractor()) }
end

--- knnd.eval.kid(a, b, {extractor=, subsets = 100, subset_size = 1000, seed = 0}) -> mean, std
--- a, b: images or f32 feature matrices [N, D]
function M.kid(a, b, o)
  o = check_keys("kid", o, { "extractor", "subsets", "subset_size", "seed", "progress" })
  local function feats(v, what)
    if knnd.is_tensor(v) and v:dim() == 2 and v:dtype() ~= "u8" then return v end
    return M.features(v, { extractor = check_extractor("kid", o.extractor), progress = o.progress, desc = what })
  end
  return knnd.metrics.kid(feats(a, "features of A"), feats(b, "features of B"),
    { subsets = o.subsets, subset_size = o.subset_size, seed = o.seed })
end

-- ---- the zero-shot protocol ---------------------------------------------------------------------------
local function read_captions(fname, o)
  if o.captions and o.dataset then fail(fname, "give 'captions' or 'dataset', not both") end
  local caps = {}
  if type(o.captions) == "table" then
    for i, c in ipairs(o.captions) do
      if type(c) ~= "string" then fail(fname, "captions[%d] is a %s (expected a string)", i, type(c)) end
      caps[i] = c
    end
  elseif type(o.captions) == "string" then
    local f, err = io.open(o.captions, "r")
    if not f then fail(fname, "cannot read the caption file: %s", err) end
    for line in f:lines() do
      line = line:gsub("\r$", "")
      if line:match("%S") then caps[#caps + 1] = line end
    end
    f:close()
  elseif type(o.dataset) == "string" then
    local ds = dataset.open(o.dataset, { cache = false })
    for r = 0, ds.n - 1 do
      local c = ds:caption(r)
      if c ~= "" then caps[#caps + 1] = c end
    end
    ds:close()
  else
    fail(fname, "option 'captions' (a file with one caption per line, or a list) or 'dataset' (a knnd dataset whose captions are used) is required")
  end
  if #caps == 0 then fail(fname, "no captions") end
  return caps
end

-- n captions: a seeded permutation of the list, cycled when n exceeds it (COCO-30k style)
local function pick_captions(caps, n, seed)
  local perm = knnd.randperm(#caps, { gen = knnd.Generator(seed) }):totable()
  local out = {}
  for i = 1, n do out[i] = caps[perm[(i - 1) % #caps + 1] + 1] end
  return out
end


local function part_ok(path, want)
  if not exists(path) then return false end
  local ok, ds = pcall(dataset.open, path, { cache = false })
  if not ok then return false end
  local n = ds.n
  ds:close()
  return n == want
end

local zero_shot_keys = { "model", "clip", "index", "captions", "dataset", "n", "reference", "extractor", "out",
  "batch", "part", "sampler", "steps", "guidance", "seed", "kid", "clip_score", "r_precision", "name", "progress",
  "kid_subsets", "kid_subset_size" }

--- knnd.eval.zero_shot{model= (knnd.knn_diffusion model or its file), clip= (the CLIP that embeds the
---   prompts, and scores the samples), index= (the image index; kNN modes), captions= (file, one per
---   line, or a list) | dataset= (a knnd dataset: its captions), n= (images; default one per caption),
---   reference= (images or statistics of the real set), extractor=, out= (folder), batch=50,
---   part=500 (images per resumable part file), sampler=, steps=, guidance=, seed=0, kid=true,
---   clip_score=true, r_precision=true, name=}
--- -> the result row {name, n, extractor, fid_label, fid, kid, kid_std, clip_score, r_precision, params, ...}
--- Captions -> N generated images (out/samples/part-*.h5, each written atomically: a rerun
--- continues after the last finished part) -> statistics -> FID/KID/CLIP score against the
--- reference -> out/result.json.
function M.zero_shot(o)
  local fname = "zero_shot"
  check_keys(fname, o, zero_shot_keys)
  local kd = require "knnd.knn_diffusion"
  if type(o.out) ~= "string" then fail(fname, "option 'out' (the result folder) is required") end
  local model = o.model
  if type(model) == "string" then model = kd.load(model) end
  if type(model) ~= "table" or getmetatable(model) ~= kd.Model then fail(fname, "option 'model' expected a knnd.knn_diffusion model or its file") end
  if o.clip == nil then fail(fname, "option 'clip' (the CLIP model the diffusion model was trained with) is required") end
  local ex = check_extractor(fname, o.extractor)
  if o.reference == nil then fail(fname, "option 'reference' (real images, or their statistics) is required") end
  local caps = read_captions(fname, o)
  local seed = math.tointeger(o.seed or 0) or fail(fname, "option 'seed' expected an integer")
  local n = positive_int(fname, "n", o.n, #caps)
  local batch = positive_int(fname, "batch", o.batch, 50)
  local part = positive_int(fname, "part", o.part, 500)
  local prompts = pick_captions(caps, n, seed)
  local t0 = knnd.wall_time()
  mkdir_p(o.out .. "/samples")
  -- 1. samples, part by part
  local nparts = (n + part - 1) // part
  local bar = o.progress ~= false and knnd.progress { total = n, desc = "zero-shot samples", unit = "img" } or nil
  local generated = 0
  for p = 0, nparts - 1 do
    local first, count = p * part + 1, math.min(part, n - p * part)
    local path = ("%s/samples/part-%05d.h5"):format(o.out, p)
    if not part_ok(path, count) then
      local w = dataset.writer.new(path, model.config.channels, model.config.image_size, count, "", false)
      dataset.writer.run(w, function()
        for s = first, first + count - 1, batch do
          local m = math.min(batch, first + count - s)
          local chunk = { table.unpack(prompts, s, s + m - 1) }
          local g = kd.generate { model = model, clip = o.clip, index = o.index, prompts = chunk, n = 1,
            sampler = o.sampler, steps = o.steps, guidance = o.guidance, seed = seed * 1000003 + s, batch = m,
            progress = false }
          dataset.writer.append(w, samples_to_u8(g.images), knnd.full({ m }, -1, { dtype = "i64" }), chunk)
          if bar then bar:update(m) end
        end
        dataset.writer.finish(w, { source = "knnd.eval.zero_shot", split = "samples" })
      end)
      generated = generated + count
    elseif bar then
      bar:update(count)
    end
  end
  if bar then bar:close() end
  local gen_seconds = knnd.wall_time() - t0
  -- 2. statistics and distances
  local samples = o.out .. "/samples"
  local safe_id = ex.id:gsub("[^%w%-_.@]", "_")
  local sample_stats = stats_of(fname, samples, ex, generated == 0 and (o.out .. "/samples." .. safe_id .. ".fid.h5") or nil,
    o.progress, "features of the samples")
  if generated > 0 then sample_stats:save(o.out .. "/samples." .. safe_id .. ".fid.h5") end
  local ref_stats = stats_of(fname, o.reference, ex, (type(o.reference) == "string" and not M.is_stats_file(o.reference))
    and (o.out .. "/reference." .. safe_id .. ".fid.h5") or nil, o.progress, "features of the reference")
  local row = { name = o.name or "zero-shot", n = n, extractor = ex.id, fid_label = M.fid_label(ex.id),
    params = model:num_params(), mode = model.config.cond.mode, k = model.config.cond.k,
    sampler = o.sampler or "dpmpp", steps = o.steps or 25, guidance = o.guidance or 3, seed = seed,
    reference_n = ref_stats:n(), generate_seconds = gen_seconds }
  row.fid = knnd.metrics.frechet(sample_stats, ref_stats)
  if o.kid ~= false and not (type(o.reference) == "string" and M.is_stats_file(o.reference)) and not is_stats(o.reference) then
    local fa = M.features(samples, { extractor = ex, progress = o.progress, desc = "KID: samples" })
    local fb = M.features(o.reference, { extractor = ex, progress = o.progress, desc = "KID: reference" })
    row.kid, row.kid_std = knnd.metrics.kid(fa, fb, { subsets = o.kid_subsets or 100,
      subset_size = o.kid_subset_size or 1000, seed = seed })
    row.kid_label = M.fid_label(ex.id, "KID")
  end
  if o.clip_score ~= false or o.r_precision ~= false then
    local s = M.source(samples)
    local img, filled = nil, 0
    for b in s:batches(256) do
      local e = o.clip:encode_images(b, { normalize = true })
      img = img or knnd.empty(s.n, e:size(2))
      img:narrow(1, filled + 1, e:size(1)):copy_(e)
      filled = filled + e:size(1)
    end
    if s.close then s.close() end
    local txt = knnd.no_grad(function() return o.clip:encode_text(prompts, { normalize = true }) end)
    if o.clip_score ~= false then row.clip_score = knnd.metrics.clip_score(img, txt) end
    -- R-precision ranks an image's caption among captions of other images: only meaningful when
    -- no two samples share a caption (class prompts repeated would tie with the true one)
    if o.r_precision ~= false then
      local seen, distinct = {}, true
      for _, c in ipairs(prompts) do
        if seen[c] then distinct = false break end
        seen[c] = true
      end
      local neg = math.min(99, n - 1)
      if distinct and neg >= 1 then
        row.r_precision = knnd.metrics.r_precision(img, txt, { negatives = neg, seed = seed })
        row.r_precision_negatives = neg
      else
        row.r_precision_note = "skipped: samples share captions"
      end
    end
  end
  row.seconds = knnd.wall_time() - t0
  files.write_json(o.out .. "/result.json", row)
  return row
end


-- ---- the modality gap -------------------------------------------------------------------------
--- knnd.eval.modality_gap{index=, texts= f32 [T,D] (text embeddings: the prompts), rows= i64 [M]
---   (0-based rows of the index's store whose neighbours are measured; default every row), k=10,
---   batch=4096} -> {text_top1=, text_topk=, image_top1=, image_topk=, gap_top1=, gap_topk=, k=,
---   texts= T, images= M}
--- The gap retrieval bridges: the mean cosine of a text to its nearest image (top1) and to its k
--- nearest (topk: the mean over the k), the same for an image to its nearest other images (itself
--- excluded), and gap_* = image_* - text_*. The index's scores are cosines (inner product on
--- L2-normalised vectors; exact for Flat). An in-domain CLIP on Fashion-MNIST gives text 0.86,
--- image 0.99 (issue 13): the conditions a no-kNN model sees at training and sampling barely differ.
function M.modality_gap(o)
  local fname = "modality_gap"
  check_keys(fname, o, { "index", "texts", "rows", "k", "batch" })
  if type(o) ~= "table" or o.index == nil then fail(fname, "option 'index' (a knnd.Index with its store) is required") end
  if not knnd.is_tensor(o.texts) or o.texts:dim() ~= 2 or o.texts:size(1) < 1 then
    fail(fname, "option 'texts' expected the text embeddings f32 [T, D] (T >= 1)")
  end
  local k, batch = positive_int(fname, "k", o.k, 10), positive_int(fname, "batch", o.batch, 4096)
  local store = o.index:store() or fail(fname, "the index has no store (load or build it with one)")
  local rows = o.rows or knnd.arange(0, #store, { dtype = "i64" })
  if not knnd.is_tensor(rows) or rows:dim() ~= 1 or rows:numel() < 1 then
    fail(fname, "option 'rows' expected 0-based rows i64 [M] (M >= 1)")
  end
  if k + 1 > #store then fail(fname, "option 'k' is %d but the index holds %d images (expected k < images)", k, #store) end
  -- mean over queries of the top-1 score and of the mean of the top k
  local function means(scores, sum1, sumk)
    return sum1 + scores:narrow(2, 1, 1):sum():item(), sumk + scores:mean { dim = 2 }:sum():item()
  end
  local t1, tk = means(o.index:knn(o.texts:to("f32"), { k = k }).scores, 0, 0)
  local ids = store:ids()
  local i1, ik, m = 0, 0, rows:numel()
  for s = 1, m, batch do
    local part = rows:narrow(1, s, math.min(batch, m - s + 1))
    local nb = o.index:knn(store:gather(part), { k = k, ids = ids:index_select(1, part), exclude_self = true })
    i1, ik = means(nb.scores, i1, ik)
  end
  local T = o.texts:size(1)
  local r = { text_top1 = t1 / T, text_topk = tk / T, image_top1 = i1 / m, image_topk = ik / m, k = k, texts = T,
    images = m }
  r.gap_top1, r.gap_topk = r.image_top1 - r.text_top1, r.image_topk - r.text_topk
  return r
end


--- knnd.eval.caption_retrieval{clip=, images= (u8 [N,C,H,W] or a sampler's floats in [-1, 1]),
---   captions= f32 [M,D] (the normalised text embeddings of every caption), targets= i64 [N] (each
---   image's own caption, a 0-based row of captions), top = {1, 10}, batch = 256}
--- -> for each k of top, the share of images whose own caption is among the k that CLIP scores
--- highest for it: text alignment where there are no classes, only names (the emoji judged among
--- all emoji names). A caption tied with the own one does not push it down.
function M.caption_retrieval(o)
  local fname = "caption_retrieval"
  check_keys(fname, o, { "clip", "images", "captions", "targets", "top", "batch" })
  if type(o) ~= "table" or o.clip == nil then fail(fname, "option 'clip' (the CLIP that judges) is required") end
  if not knnd.is_tensor(o.images) or o.images:dim() ~= 4 then fail(fname, "option 'images' expected images [N,C,H,W]") end
  if not knnd.is_tensor(o.captions) or o.captions:dim() ~= 2 then
    fail(fname, "option 'captions' expected the captions' text embeddings f32 [M, D]")
  end
  local n, m = o.images:size(1), o.captions:size(1)
  if not knnd.is_tensor(o.targets) or o.targets:numel() ~= n then
    fail(fname, "option 'targets' expected %d 0-based caption rows (one per image)", n)
  end
  local targets = o.targets:to("i64"):view(n, 1)
  local tmin, tmax = targets:to("f32"):min():item(), targets:to("f32"):max():item()
  if tmin < 0 or tmax >= m then fail(fname, "option 'targets' holds rows %d .. %d (expected 0 .. %d)", tmin, tmax, m - 1) end
  local top = o.top or { 1, 10 }
  local u8 = o.images:dtype() == "u8" and o.images or samples_to_u8(o.images)
  local e = knnd.no_grad(function()
    return o.clip:encode_images(u8, { normalize = true, batch = positive_int(fname, "batch", o.batch, 256) })
  end)
  local sim = knnd.matmul(e, o.captions:t()) -- [N, M]
  local rank = knnd.gt(sim, sim:gather(2, targets)):to("f32"):sum { dim = 2 } -- captions scored above the own one
  local out = {}
  for i, k in ipairs(top) do out[i] = knnd.lt(rank, k):to("f32"):mean():item() end
  return table.unpack(out)
end

return M
