-- edit.lua — knnd.edit: text-driven local manipulation without masks (PAPER.md, capability 3).
--
-- Training pairs come from unlabeled images: a random local area of an image I is embedded with
-- CLIP, its nearest image in the index (I itself and its near-duplicates excluded) is aligned to the
-- area — ECC (OpenCV's findTransformECC: affine or euclidean) after a resize to the box, or the resize
-- alone — and pasted in, giving Ĩ. An edit model (knnd.knn_diffusion.new{edit = true}) takes Ĩ as
-- extra input channels and learns to reconstruct I, conditioned on the area's CLIP embedding (plus
-- its neighbours, per the conditioning mode). At inference the real image is Ĩ and the text's
-- embedding (and its neighbours) the condition: the model changes what disagrees with the text.
--
--   local pairs = knnd.edit.pairs{clip = clip, index = idx, images = train_images, embeddings = emb, k = 10}
--   knnd.knn_diffusion.train{model = m, dataset = ds, embeddings = emb, pairs = pairs, out = "runs/edit"}
--   local r = knnd.edit{model = m, clip = clip, index = idx, image = "shirt.png", text = "a photo of a coat",
--                       out = "coat.png", grid = "before_after.png"}       -- knnd.edit.run{...} likewise
--   local q = knnd.edit.preservation(source, r.images)   -- the changed region, the distance outside it
local knnd = require "knnd"
local options = require "knnd.options"

local M = {}

local function fail(fname, fmt, ...) error(("knnd.edit.%s: " .. fmt):format(fname, ...), 0) end

M.ALIGN = { "ecc_affine", "ecc_euclidean", "resize" }
local MOTION = { ecc_affine = "affine", ecc_euclidean = "euclidean" }

M.defaults = {
  box = { 0.4, 0.8 },    -- the area's side, as fractions of the image's (the geometric mean of its sides)
  aspect = { 0.5, 2.0 }, -- the area's height / width, drawn log-uniformly
  align = "ecc_affine",
  dup_threshold = 0.98,  -- cosine to I's own embedding above which a neighbour is a near-duplicate of I
  extra = 8,             -- neighbours fetched beyond k, so that k remain after the exclusions
  rank = { 1, 1 },       -- the pasted neighbour's rank among the area's neighbours, drawn uniformly ({1, 1}: the
                         -- nearest, as the paper; further ranks paste content that disagrees more with the area)
  area_weight = 1,       -- the training loss's weight on the pasted area's pixels against the rest's (1: a plain
                         -- loss, as the paper; above 1 stresses rebuilding the area over copying the rest)
}

local function range_opt(fname, name, v, lo_min)
  if type(v) ~= "table" or type(v[1]) ~= "number" or type(v[2]) ~= "number" or not (v[1] > lo_min and v[1] <= v[2]) then
    fail(fname, "option '%s' expected {lo, hi} with %g < lo <= hi", name, lo_min)
  end
  return { v[1], v[2] }
end

-- images of a database (u8 [N,H,W] / [N,C,H,W], or floats in [-1,1]) as rows -> f32 [n,C,H,W] in [-1,1]
local function database_rows(images, rows)
  local x = images:index_select(1, rows)
  if x:dim() == 3 then x = x:unsqueeze(2) end
  if x:dtype() == "u8" then return x:to("f32") / 127.5 - 1 end
  return x:to("f32")
end

local Pairs = {}
Pairs.__index = Pairs
M.Pairs = Pairs

--- knnd.edit.pairs{clip= (a knnd.clip model), index= (an index over the database's CLIP image embeddings; its
---   store's ids are the database rows), images= (the database's images: u8 [N,H,W] / [N,C,H,W], or f32 in
---   [-1,1]), embeddings= (f32 [N,D], a store, or its path: the database's embeddings, for near-duplicates),
---   k=10, box={0.4, 0.8}, aspect={0.5, 2}, align="ecc_affine" | "ecc_euclidean" | "resize",
---   dup_threshold=0.98, extra=8, rank={1, 1}, area_weight=1} -> a pair maker for knnd.knn_diffusion.train{pairs = ...}
--- Its randomness (the boxes) comes from the default generator, which training checkpoints.
function M.pairs(o)
  local fname = "pairs"
  options.check_keys("knnd.edit.pairs", o, { clip = 1, index = 1, images = 1, embeddings = 1, k = 1, box = 1,
    aspect = 1, align = 1, dup_threshold = 1, extra = 1, rank = 1, area_weight = 1 })
  local clip = o.clip or fail(fname, "option 'clip' (the CLIP that embeds the areas) is required")
  local idx = o.index or fail(fname, "option 'index' (an index over the database's image embeddings) is required")
  local images = o.images or fail(fname, "option 'images' (the database's images) is required")
  if not knnd.is_tensor(images) or (images:dim() ~= 3 and images:dim() ~= 4) then
    fail(fname, "option 'images' expected the database's images as a tensor [N,H,W] or [N,C,H,W]")
  end
  local emb = o.embeddings or fail(fname, "option 'embeddings' (the database's CLIP embeddings) is required")
  if type(emb) == "string" then emb = knnd.embeddings.open(emb) end
  if not knnd.is_tensor(emb) then emb = emb:read(1, #emb) end
  local info = idx:info()
  local N = images:size(1)
  if emb:dim() ~= 2 or emb:size(1) ~= N then
    fail(fname, "the embeddings are %s but the database holds %d images", table.concat(emb:shape(), "x"), N)
  end
  if info.ntotal and info.ntotal ~= N then
    fail(fname, "the index holds %d vectors but the database %d images (build the index over these images)", info.ntotal, N)
  end
  if info.dim and info.dim ~= emb:size(2) then
    fail(fname, "the index holds %d-d embeddings but the database's embeddings are %d-d", info.dim, emb:size(2))
  end
  local k = math.tointeger(o.k or 10)
  if not k or k < 1 then fail(fname, "option 'k' expected a positive integer, got %s", tostring(o.k)) end
  local align = o.align or M.defaults.align
  if align ~= "resize" and not MOTION[align] then
    fail(fname, "option 'align' is '%s' (expected %s)", tostring(align), table.concat(M.ALIGN, ", "))
  end
  local extra = math.tointeger(o.extra or M.defaults.extra)
  if not extra or extra < 0 then fail(fname, "option 'extra' expected a non-negative integer") end
  local dup = o.dup_threshold or M.defaults.dup_threshold
  if type(dup) ~= "number" or not (dup > 0 and dup <= 1) then fail(fname, "option 'dup_threshold' expected 0 < t <= 1") end
  local rank = o.rank or M.defaults.rank
  if type(rank) ~= "table" or not math.tointeger(rank[1]) or not math.tointeger(rank[2]) or rank[1] < 1
      or rank[2] < rank[1] then
    fail(fname, "option 'rank' expected {lo, hi}: whole numbers with 1 <= lo <= hi")
  end
  local area_weight = o.area_weight or M.defaults.area_weight
  if type(area_weight) ~= "number" or not (area_weight > 0) or area_weight == math.huge then
    fail(fname, "option 'area_weight' expected a positive number, got %s", tostring(area_weight))
  end
  local e = emb:to("f32")
  e = (e / (e:square():sum { dim = 2, keepdim = true }:sqrt() + 1e-12)):contiguous()
  return setmetatable({ clip = clip, index = idx, images = images, embeddings = e, k = k, dim = emb:size(2),
    box = range_opt(fname, "box", o.box or M.defaults.box, 0), aspect = range_opt(fname, "aspect",
    o.aspect or M.defaults.aspect, 0), align = align, dup_threshold = dup, extra = extra, rank = { rank[1], rank[2] },
    area_weight = area_weight,
    stats = { pairs = 0, ecc_converged = 0, short_lists = 0 } }, Pairs)
end

-- B random boxes {y, x, h, w} (0-based) inside H x W
local function draw_boxes(self, B, H, W, gen)
  local u = knnd.rand(B, 4, { gen = gen }):totable()
  local boxes = {}
  local la, lb = math.log(self.aspect[1]), math.log(self.aspect[2])
  local full = math.sqrt(H * W)
  for i = 1, B do
    local side = (self.box[1] + (self.box[2] - self.box[1]) * u[i][1]) * full
    local r = math.exp(la + (lb - la) * u[i][2])
    local h = math.max(2, math.min(H, math.floor(side * math.sqrt(r) + 0.5)))
    local w = math.max(2, math.min(W, math.floor(side / math.sqrt(r) + 0.5)))
    local y = math.floor(u[i][3] * (H - h + 1))
    local x = math.floor(u[i][4] * (W - w + 1))
    boxes[i] = { math.min(y, H - h), math.min(x, W - w), h, w }
  end
  return boxes
end

-- CLIP's unit image embeddings of images in [-1, 1] (CLIP takes [0, 1])
local function clip_embed(clip, x)
  return clip:encode_images(knnd.clamp((x + 1) * 0.5, 0, 1), { normalize = true })
end

local function crop(img, b) -- img [C,H,W] -> [C,h,w]
  return img:narrow(2, b[1] + 1, b[3]):narrow(3, b[2] + 1, b[4])
end

--- p:embed_areas(x [B,C,H,W] in [-1,1], boxes) -> f32 [B,D]: each area resized to the image size, through CLIP
function Pairs:embed_areas(x, boxes)
  local B, H, W = x:size(1), x:size(3), x:size(4)
  local areas = knnd.empty(B, x:size(2), H, W)
  for i = 1, B do
    local a = crop(x:select(1, i), boxes[i]):unsqueeze(1)
    areas:narrow(1, i, 1):copy_(knnd.interpolate(a, { size = { H, W }, mode = "bilinear" }))
  end
  return clip_embed(self.clip, areas)
end

--- p:neighbors(q [B,D], rows (i64 [B] database rows of the images, or nil)) -> {rows = i64 [B,k], embeddings =
--- f32 [B,k,D], pasted = i64 [B]}: the areas' nearest database images, each image itself and its near-duplicates
--- (cosine to its own embedding above dup_threshold) left out; pasted: the neighbour of a rank drawn from p.rank
function Pairs:neighbors(q, rows, gen)
  local B = q:size(1)
  local k = math.max(self.k, self.rank[2])
  local want = k + self.extra
  local nb = self.index:knn(q, rows and { k = want, ids = rows, exclude_self = true } or { k = want })
  local got = nb.rows:size(2)
  local own = rows and self.embeddings:index_select(1, rows) or nil
  local sims = own and knnd.bmm(nb.embeddings, own:unsqueeze(3)):view(B, got):totable() or nil
  local nrows = nb.rows:totable()
  local pick, flat, lists = {}, {}, {}
  for i = 1, B do
    local list, taken = {}, {}
    for j = 1, got do
      local r = nrows[i][j]
      if r >= 0 and (not sims or sims[i][j] <= self.dup_threshold) then list[#list + 1] = j; taken[j] = true end
      if #list == k then break end
    end
    if #list < k then
      -- too few left after the exclusions: the remaining ones stand in (never the image itself)
      self.stats.short_lists = self.stats.short_lists + 1
      for j = 1, got do
        if #list == k then break end
        local r = nrows[i][j]
        if r >= 0 and not taken[j] and not (rows and r == rows:get(i)) then list[#list + 1] = j end
      end
      if #list == 0 then fail("pairs", "no neighbour found for row %d (is the index empty?)", rows and rows:get(i) or i - 1) end
      while #list < k do list[#list + 1] = list[#list] end
    end
    pick[i], lists[i] = {}, list
    for c = 1, self.k do
      pick[i][c] = nrows[i][list[c]]
      flat[#flat + 1] = (i - 1) * got + list[c] - 1
    end
  end
  local lo, hi = self.rank[1], self.rank[2]
  local pasted = {}
  local u = hi > lo and knnd.rand(B, { gen = gen }):totable() or nil
  for i = 1, B do
    local r = u and lo + math.min(hi - lo, math.floor(u[i] * (hi - lo + 1))) or lo
    pasted[i] = nrows[i][lists[i][math.min(r, #lists[i])]]
  end
  local D = q:size(2)
  local emb = nb.embeddings:reshape(B * got, D):index_select(1, knnd.tensor(flat, { dtype = "i64" })):view(B, self.k, D)
  return { rows = knnd.tensor(pick, { dtype = "i64" }), embeddings = emb, pasted = knnd.tensor(pasted, { dtype = "i64" }) }
end

--- p:paste(x [B,C,H,W] in [-1,1], boxes, neighbor_rows i64 [B]) -> Ĩ [B,C,H,W], {cc = {...}, converged = {...}}:
--- each neighbour resized to its box, aligned to the area (p.align) and pasted in
function Pairs:paste(x, boxes, nrows)
  local B, C, H, W = x:size(1), x:size(2), x:size(3), x:size(4)
  local nimg = database_rows(self.images, nrows)
  if nimg:size(2) ~= C or nimg:size(3) ~= H or nimg:size(4) ~= W then
    fail("pairs", "the database's images are %s but the training images %dx%dx%d", table.concat(nimg:shape(), "x", 2), C, H, W)
  end
  local out = x:clone()
  local cc, converged = {}, {}
  for i = 1, B do
    local b = boxes[i]
    local area = crop(x:select(1, i), b):contiguous()
    local moving = knnd.interpolate(nimg:narrow(1, i, 1), { size = { b[3], b[4] }, mode = "bilinear" }):select(1, 1)
      :contiguous()
    local placed = moving
    if MOTION[self.align] then
      local info
      placed, info = knnd.align_ecc(area, moving, { motion = MOTION[self.align], iterations = 50, eps = 1e-4,
        gauss_filter = math.min(b[3], b[4]) >= 12 and 5 or 3 })
      cc[i], converged[i] = info.cc, info.converged
      if info.converged then self.stats.ecc_converged = self.stats.ecc_converged + 1 end
    end
    crop(out:select(1, i), b):copy_(placed)
  end
  self.stats.pairs = self.stats.pairs + B
  return out, { cc = cc, converged = converged }
end

--- p:make(x [B,C,H,W] in [-1,1], rows (i64 [B], the images' database rows; nil: images outside the database)
---   [, {gen=}]) -> {source = Ĩ [B,C,H,W], query = f32 [B,D] (the areas' embeddings), neighbors = f32 [B,k,D],
---   neighbor_rows = i64 [B,k], pasted = i64 [B] (the row pasted into each), boxes = {{y, x, h, w}, ...} (0-based),
---   cc =, converged =, pixel_weights = f32 [B,1,H,W] (area_weight inside each box, 1 outside; nil when 1)}
function Pairs:make(x, rows, opts)
  if not knnd.is_tensor(x) or x:dim() ~= 4 then fail("pairs", "make: argument 1 expected images [B,C,H,W]") end
  if rows ~= nil and (not knnd.is_tensor(rows) or rows:numel() ~= x:size(1)) then
    fail("pairs", "make: argument 2 expected the images' %d database rows (i64), or nil", x:size(1))
  end
  local gen = opts and opts.gen
  local prev = knnd.set_grad_enabled(false)
  local ok, res = pcall(function()
    local boxes = draw_boxes(self, x:size(1), x:size(3), x:size(4), gen)
    local q = self:embed_areas(x, boxes)
    local nb = self:neighbors(q, rows, gen)
    local pasted = nb.pasted
    local source, al = self:paste(x, boxes, pasted)
    local pw
    if self.area_weight ~= 1 then
      pw = knnd.ones(x:size(1), 1, x:size(3), x:size(4))
      for i, b in ipairs(boxes) do
        pw:narrow(1, i, 1):narrow(3, b[1] + 1, b[3]):narrow(4, b[2] + 1, b[4]):fill_(self.area_weight)
      end
    end
    return { source = source, query = q, neighbors = nb.embeddings, neighbor_rows = nb.rows, pasted = pasted,
      boxes = boxes, cc = al.cc, converged = al.converged, pixel_weights = pw }
  end)
  knnd.set_grad_enabled(prev)
  if not ok then error(res, 0) end
  return res
end

-- ---- inference ----------------------------------------------------------------------------

-- an image argument: a path (PNG/JPEG), u8 [C,H,W] / [H,W], or f32 [C,H,W] in [-1,1] -> f32 [C,H,W] in [-1,1]
local function as_image(fname, v, C, S)
  local img = v
  if type(v) == "string" then
    local ok, t = pcall(knnd.read_image, v)
    if not ok then fail(fname, "option 'image': %s", tostring(t)) end
    img = t
  end
  if not knnd.is_tensor(img) then fail(fname, "option 'image' expected a path or an image tensor [C,H,W]") end
  if img:dim() == 2 then img = img:unsqueeze(1) end
  if img:dim() == 4 and img:size(1) == 1 then img = img:select(1, 1) end
  if img:dim() ~= 3 then fail(fname, "option 'image' has %d dims (expected [C,H,W])", img:dim()) end
  if img:dtype() == "u8" then img = img:to("f32") / 127.5 - 1 else img = img:to("f32") end
  if img:size(1) == 4 and C ~= 4 then img = img:narrow(1, 1, 3) end -- drop alpha
  if img:size(1) ~= C then
    if C == 1 and img:size(1) == 3 then
      img = img:mean { dim = 1, keepdim = true }
    elseif C == 3 and img:size(1) == 1 then
      img = img:expand(3, img:size(2), img:size(3))
    else
      fail(fname, "the image has %d channels but the model takes %d", img:size(1), C)
    end
  end
  if img:size(2) ~= S or img:size(3) ~= S then
    img = knnd.interpolate(img:unsqueeze(1), { size = S, mode = "bilinear" }):select(1, 1)
  end
  local total = img:sum():item()
  if total ~= total or math.abs(total) == math.huge then fail(fname, "the image holds NaN or infinity") end
  return img:contiguous()
end
M.as_image = as_image

local run_keys = { model = 1, clip = 1, index = 1, image = 1, text = 1, query = 1, n = 1, strength = 1, seed = 1,
  sampler = 1, steps = 1, guidance = 1, out = 1, grid = 1, scale = 1, progress = 1 }

--- knnd.edit.run{model= (an edit model), clip= | query= (f32 [D], the text's embedding), index= (modes with
---   neighbours), image= (a path, or [C,H,W]: u8, or f32 in [-1,1]; several: [B,C,H,W] f32), text=,
---   n=1 per image, strength=1 (0 < s <= 1: below 1 the sampler starts from the image noised to s·T, img2img
---   style, keeping more of it), seed=0, sampler="dpmpp", steps=25, guidance=3, out= (PNG of the first
---   result), grid= (before/after PNG), scale=4, progress=false}
--- -> {images = f32 [B*n,C,H,W] in [-1,1], source = f32 [B,C,H,W], text =}
function M.run(o)
  local fname = "run"
  options.check_keys("knnd.edit.run", o, run_keys)
  local model = o.model
  if type(model) ~= "table" or type(model.config) ~= "table" or not model.config.edit then
    fail(fname, "option 'model' expected an edit model (knnd.knn_diffusion.new{edit = true}, trained on knnd.edit.pairs)")
  end
  local cfg = model.config
  local text = o.text or fail(fname, "option 'text' (the edit, e.g. \"a photo of a coat\") is required")
  if type(text) ~= "string" or text == "" then fail(fname, "option 'text' expected a non-empty string") end
  local source
  if knnd.is_tensor(o.image) and o.image:dim() == 4 and o.image:size(1) > 1 then
    local parts = {}
    for i = 1, o.image:size(1) do
      parts[i] = as_image(fname, o.image:select(1, i), cfg.channels, cfg.image_size):unsqueeze(1)
    end
    source = knnd.cat(parts, 1)
  else
    source = as_image(fname, o.image or fail(fname, "option 'image' is required"), cfg.channels, cfg.image_size)
      :unsqueeze(1)
  end
  local n = math.tointeger(o.n or 1)
  if not n or n < 1 then fail(fname, "option 'n' expected a positive integer") end
  local B = source:size(1)
  local q = o.query
  if q == nil then
    if o.clip == nil then fail(fname, "give option 'clip' (to embed the text) or 'query' (its embedding)") end
    q = knnd.no_grad(function() return o.clip:encode_text({ text }, { normalize = true }) end)
  elseif q:dim() == 1 then
    q = q:unsqueeze(1)
  end
  if q:dim() ~= 2 or q:size(1) ~= 1 or q:size(2) ~= cfg.cond.dim then
    fail(fname, "the text embedding is %s (expected %d-d: is the CLIP the one the model was trained with?)",
      table.concat(q:shape(), "x"), cfg.cond.dim)
  end
  local nb
  if cfg.cond.needs_neighbors then
    local idx = o.index or fail(fname, "mode %s needs option 'index' (an index over image embeddings)", cfg.cond.mode)
    local info = idx:info()
    if info.dim and info.dim ~= cfg.cond.dim then
      fail(fname, "the index holds %d-d embeddings, the model was trained on %d-d", info.dim, cfg.cond.dim)
    end
    nb = idx:knn(q, { k = cfg.cond.k }).embeddings
  end
  local tokens = model:condition(q, nb, { inference = true })
  local total = B * n
  local rep = {}
  for b = 0, B - 1 do for _ = 1, n do rep[#rep + 1] = b end end
  local rep_t = knnd.tensor(rep, { dtype = "i64" })
  local src = source:index_select(1, rep_t)
  local images = model:sample { tokens = tokens:expand(total, tokens:size(2), tokens:size(3)):contiguous(),
    source = src, strength = o.strength, sampler = o.sampler, steps = o.steps, guidance = o.guidance,
    gen = knnd.Generator(o.seed or 0), progress = o.progress }
  if o.out then
    knnd.save_png(o.out, knnd.clamp((images:select(1, 1) + 1) * 127.5 + 0.5, 0, 255):to("u8"))
  end
  if o.grid then
    -- a column per source image: the source on top, its n edits below
    local parts, caps = { source }, {}
    for c = 1, B do caps[c] = c == 1 and "source" or "" end
    for j = 1, n do
      parts[#parts + 1] = images:index_select(1, knnd.arange(j - 1, total, n, { dtype = "i64" }))
      for c = 1, B do caps[#caps + 1] = (c == 1 and j == 1) and text or "" end
    end
    knnd.save_grid(o.grid, knnd.cat(parts, 1), { nrow = B, range = { -1, 1 }, scale = o.scale or 4, captions = caps,
      title = ("edit: \"%s\""):format(text) })
  end
  return { images = images, source = source, text = text }
end

-- ---- metrics ------------------------------------------------------------------------------

--- knnd.edit.changed_region(source [B,C,H,W], result [B,C,H,W] (both in [-1,1]) [, {threshold=0.25, blur=3}])
--- -> f32 [B,1,H,W] of 0/1: where the edit changed the image. No mask is given, so the region is found
--- from the difference: the channel mean of |result - source|, box-blurred over blur x blur pixels (so
--- that noise-level changes do not count), above threshold (in units of the [-1,1] range).
function M.changed_region(source, result, o)
  o = o or {}
  local fname = "changed_region"
  if source:dim() ~= 4 or result:dim() ~= 4 then fail(fname, "expected images [B,C,H,W] on both sides") end
  for d = 1, 4 do
    if source:size(d) ~= result:size(d) then
      fail(fname, "source is %s but result %s", table.concat(source:shape(), "x"), table.concat(result:shape(), "x"))
    end
  end
  local blur = math.tointeger(o.blur or 3)
  if not blur or blur < 1 or blur % 2 == 0 then fail(fname, "option 'blur' expected an odd size") end
  local diff = (result - source):abs():mean { dim = 2, keepdim = true }
  if blur > 1 then
    diff = knnd.avg_pool2d(diff, { kernel_size = blur, stride = 1, padding = blur // 2, count_include_pad = false })
  end
  return knnd.gt(diff, o.threshold or 0.25):to("f32")
end

--- knnd.edit.preservation(source, result [, {threshold=, blur=}]) -> {changed = mean fraction of pixels
--- changed, outside = mean |result - source| outside the changed region (in [-1,1] units, per pixel and
--- channel; images without an unchanged pixel count as 0), overall = mean |result - source|, region =
--- the changed-region masks [B,1,H,W], per_image = {{changed, outside, overall}, ...}}
function M.preservation(source, result, o)
  local mask = M.changed_region(source, result, o)
  local B = source:size(1)
  local diff = (result - source):abs():mean { dim = 2, keepdim = true }
  local keep = 1 - mask
  local out_sum = (diff * keep):sum { dim = { 2, 3, 4 } }:totable()
  local keep_n = keep:sum { dim = { 2, 3, 4 } }:totable()
  local changed = mask:mean { dim = { 2, 3, 4 } }:totable()
  local overall = diff:mean { dim = { 2, 3, 4 } }:totable()
  local r = { changed = 0, outside = 0, overall = 0, region = mask, per_image = {} }
  for i = 1, B do
    local outside = keep_n[i] > 0 and out_sum[i] / keep_n[i] or 0
    r.per_image[i] = { changed = changed[i], outside = outside, overall = overall[i] }
    r.changed = r.changed + changed[i] / B
    r.outside = r.outside + outside / B
    r.overall = r.overall + overall[i] / B
  end
  return r
end

--- knnd.edit.clip_gain(clip, source, result, texts) -> {gain = mean over images of cos(result, text) -
--- cos(source, text), per_image = {...}}: how much closer to its edit text each result is than its source
--- (texts: one per image, or one for all; images [B,C,H,W] in [-1,1])
function M.clip_gain(clip, source, result, texts)
  if type(texts) == "string" then texts = { texts } end
  local B = result:size(1)
  local uniq, at = {}, {}
  for _, t in ipairs(texts) do if not at[t] then uniq[#uniq + 1] = t; at[t] = #uniq end end
  return knnd.no_grad(function()
    local te = clip:encode_text(uniq, { normalize = true })
    local es, er = clip_embed(clip, source), clip_embed(clip, result)
    local idx = {}
    for i = 1, B do idx[i] = at[texts[#texts == 1 and 1 or i]] - 1 end
    local t = te:index_select(1, knnd.tensor(idx, { dtype = "i64" }))
    local gs = (er * t):sum { dim = 2 }:totable()
    local ss = (es * t):sum { dim = 2 }:totable()
    local r = { gain = 0, per_image = {} }
    for i = 1, B do
      r.per_image[i] = gs[i] - ss[i]
      r.gain = r.gain + r.per_image[i] / B
    end
    return r
  end)
end

-- knnd.edit{...} is knnd.edit.run{...}
return setmetatable(M, { __call = function(_, o) return M.run(o) end })
