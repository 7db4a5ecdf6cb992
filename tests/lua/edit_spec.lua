-- edit_spec.lua — knnd.edit (local manipulation without masks) on real Fashion-MNIST images: the ECC
-- alignment recovers known warps, the pair maker never retrieves the image itself or a duplicate of it
-- and changes the image only inside its area, the edit model's inputs and errors, and the metrics.
-- (That a briefly trained edit model edits better than an untrained one: train_fmnist_spec.)
local knnd = require "knnd"
local h = require "spec_helpers"
local kd = knnd.knn_diffusion

local S, D, K = 16, 32, 4

-- a smooth random image [1,S,S]
local function smooth(seed, size)
  local base = knnd.randn(1, 1, 6, 6, { gen = knnd.Generator(seed) })
  return knnd.interpolate(base, { size = size, mode = "bilinear" }):view(1, size, size):contiguous()
end

describe("knnd.align_ecc", function()
  it("recovers a known affine warp of a textured image", function()
    local img = smooth(3, 48)
    local W = { 1.05, 0.08, 2.5, -0.06, 0.97, -1.5 }
    local moved = knnd.warp_affine(img, W, knnd.zeros(1, 48, 48))
    local al, info = knnd.align_ecc(moved, img, { motion = "affine" })
    assert.is_true(info.converged)
    assert.is_true(info.cc > 0.99, "correlation " .. info.cc)
    for i, v in ipairs(W) do
      local tol = (i == 3 or i == 6) and 0.15 or 0.01
      assert.is_true(math.abs(info.warp[i] - v) < tol, ("warp[%d] = %g, expected %g"):format(i, info.warp[i], v))
    end
    -- the aligned image is the moved one where the warp stays inside img
    local inner = function(t) return t:narrow(2, 9, 24):narrow(3, 9, 24) end
    local off = (inner(al) - inner(moved)):abs():max():item()
    assert.is_true(off < 0.05, "largest difference " .. off)
  end)

  it("recovers a rotation and shift with the euclidean motion", function()
    local img = smooth(5, 40)
    local a = math.rad(4)
    local W = { math.cos(a), -math.sin(a), 1.5, math.sin(a), math.cos(a), -2.0 }
    local moved = knnd.warp_affine(img, W, knnd.zeros(1, 40, 40))
    local _, info = knnd.align_ecc(moved, img, { motion = "euclidean" })
    assert.is_true(info.converged)
    h.assert_close(info.warp, W, 0.1)
    local _, tinfo = knnd.align_ecc(knnd.warp_affine(img, { 1, 0, 2, 0, 1, -1 }, knnd.zeros(1, 40, 40)), img,
      { motion = "translation" })
    h.assert_close(tinfo.warp, { 1, 0, 2, 0, 1, -1 }, 0.1)
  end)

  it("keeps the initial warp and says so when the images have no texture", function()
    local flat = knnd.zeros(1, 20, 20)
    local al, info = knnd.align_ecc(flat, smooth(1, 20))
    assert.is_false(info.converged)
    h.assert_close(info.warp, { 1, 0, 0, 0, 1, 0 }, 0)
    assert.are.same({ 1, 20, 20 }, al:shape())
  end)

  it("names what is wrong with its arguments", function()
    local a = smooth(1, 20)
    h.errors_with(function() knnd.align_ecc(a, smooth(1, 24)) end, "target is 1x20x20 but moving is 1x24x24")
    h.errors_with(function() knnd.align_ecc(a:to("u8"), a) end, "expected an f32 [C,H,W] image")
    local bad = a:clone()
    bad:view(-1):narrow(1, 5, 1):fill_(0 / 0)
    h.errors_with(function() knnd.align_ecc(a, bad) end, "NaN")
    h.errors_with(function() knnd.align_ecc(a, a, { motion = "homography" }) end, "option 'motion'")
    h.errors_with(function() knnd.align_ecc(a, a, { warp = { 1, 2 } }) end, "list of 6 numbers")
    h.errors_with(function() knnd.align_ecc(a, a, { gauss_filter = 4 }) end, "odd size")
    h.errors_with(function() knnd.warp_affine(a, { 1, 0, 0, 0, 1, 0 }, knnd.zeros(3, 20, 20)) end, "1 channels but fill has 3")
  end)
end)

-- real images, stand-in CLIP embeddings (a fixed random projection of the pixels), an exact index
local R = h.fmnist_retrieval("edit_spec", { n = 400, size = S, dim = D, k = K })
local images = R.ds:images(knnd.arange(0, 400, { dtype = "i64" }))
local proj = knnd.randn(S * S, D, { gen = knnd.Generator(7) })
-- what CLIP does for the pair maker: images in [0,1] [B,1,S,S] -> unit embeddings, as the store's
local clip = {
  encode_images = function(_, x)
    local e = knnd.matmul(x:reshape(x:size(1), -1), proj)
    return e / e:square():sum { dim = 2, keepdim = true }:sqrt()
  end,
}

local function batch_of(rows)
  local r = knnd.tensor(rows, { dtype = "i64" })
  return images:index_select(1, r):to("f32") / 127.5 - 1, r
end

describe("knnd.edit.pairs", function()
  it("never retrieves the image itself, and changes the image only inside its area", function()
    local p = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K }
    knnd.manual_seed(3)
    for first = 0, 399, 100 do
      local rows = {}
      for r = first, first + 99 do rows[#rows + 1] = r end
      local x, rt = batch_of(rows)
      local pr = p:make(x, rt)
      assert.are.same({ 100, 1, S, S }, pr.source:shape())
      assert.are.same({ 100, K, D }, pr.neighbors:shape())
      assert.are.same({ 100, D }, pr.query:shape())
      local nr = pr.neighbor_rows:totable()
      local diff = (pr.source - x):abs():totable()
      for i, row in ipairs(rows) do
        for _, n in ipairs(nr[i]) do assert.are_not.equal(row, n) end
        assert.are.equal(nr[i][1], pr.pasted:get(i))
        local y0, x0, bh, bw = table.unpack(pr.boxes[i])
        assert.is_true(bh >= 2 and bw >= 2 and y0 >= 0 and x0 >= 0 and y0 + bh <= S and x0 + bw <= S)
        for y = 1, S do
          for xx = 1, S do
            local inside = y > y0 and y <= y0 + bh and xx > x0 and xx <= x0 + bw
            if not inside then assert.are.equal(0, diff[i][1][y][xx]) end
          end
        end
      end
    end
    assert.are.equal(400, p.stats.pairs)
  end)

  it("leaves out near-duplicates of the image (and takes them when told to)", function()
    -- a database with rows 0..9 appearing twice: row 10 + j is row j again
    local N = 20
    local dup_rows = {}
    for j = 0, 9 do dup_rows[#dup_rows + 1] = j end
    for j = 0, 9 do dup_rows[#dup_rows + 1] = j end
    local dr = knnd.tensor(dup_rows, { dtype = "i64" })
    local db_images, db_emb = images:index_select(1, dr), R.emb:index_select(1, dr)
    local path = h.tmp("edit_spec", "dups.h5")
    knnd.embeddings.save(path, db_emb, { encoder = "random-projection", encoder_hash = "edit_spec" })
    local idx = knnd.index.build { store = knnd.embeddings.open(path), factory = "Flat" }
    -- the area is the whole image, so its embedding is the image's and the nearest others are its copy
    local opts = { clip = clip, index = idx, images = db_images, embeddings = db_emb, k = 2, box = { 1, 1 },
      aspect = { 1, 1 }, align = "resize" }
    local p = knnd.edit.pairs(opts)
    local x = db_images:narrow(1, 1, 10):to("f32") / 127.5 - 1
    local rows = knnd.arange(0, 10, { dtype = "i64" })
    local pr = p:make(x, rows)
    opts.dup_threshold = 1.0
    local with_dups = knnd.edit.pairs(opts):make(x, rows)
    for j = 0, 9 do
      local got = pr.neighbor_rows:totable()[j + 1]
      for _, n in ipairs(got) do
        assert.are_not.equal(j, n)
        assert.are_not.equal(j + 10, n)
      end
      assert.are.equal(j + 10, with_dups.pasted:get(j + 1))
    end
    assert.are.equal(N, #db_emb:totable())
  end)

  it("pastes the plain resize of the neighbour with align = resize, and is reproducible by seed", function()
    local p = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K, align = "resize" }
    local x, rt = batch_of { 5, 6, 7, 8 }
    knnd.manual_seed(11)
    local a = p:make(x, rt)
    knnd.manual_seed(11)
    local b = p:make(x, rt)
    h.assert_close(a.source, b.source:totable(), 0)
    for i = 1, 4 do
      local y0, x0, bh, bw = table.unpack(a.boxes[i])
      local nb = images:narrow(1, a.pasted:get(i) + 1, 1):to("f32") / 127.5 - 1
      local want = knnd.interpolate(nb, { size = { bh, bw }, mode = "bilinear" })
      h.assert_close(a.source:narrow(1, i, 1):narrow(3, y0 + 1, bh):narrow(4, x0 + 1, bw), want:totable(), 1e-6)
    end
  end)

  it("pastes a neighbour of a rank drawn from 'rank', and weights the pasted area by 'area_weight'", function()
    local x, rt = batch_of { 10, 11, 12, 13, 14, 15 }
    local p = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K, rank = { 3, 3 },
      area_weight = 4 }
    knnd.manual_seed(2)
    local pr = p:make(x, rt)
    -- rank 3 of the area's own neighbour list (the one the condition's first k come from)
    local q = p:embed_areas(x, pr.boxes)
    local nb = R.index:knn(q, { k = 3, ids = rt, exclude_self = true })
    for i = 1, 6 do assert.are.equal(nb.rows:totable()[i][3], pr.pasted:get(i)) end
    assert.are.same({ 6, 1, S, S }, pr.pixel_weights:shape())
    for i, b in ipairs(pr.boxes) do
      local w = pr.pixel_weights:select(1, i)
      assert.are.equal(4 * b[3] * b[4] + (S * S - b[3] * b[4]), w:sum():item())
    end
    local plain = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K }
    assert.is_nil(plain:make(x, rt).pixel_weights)
    h.errors_with(function() knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb,
      rank = { 3, 2 } } end, "option 'rank'")
    h.errors_with(function() knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb,
      area_weight = 0 } end, "option 'area_weight'")
  end)

  it("names wrong options and mismatched databases", function()
    local o = { clip = clip, index = R.index, images = images, embeddings = R.emb }
    local function with(k, v)
      local t = {}
      for kk, vv in pairs(o) do t[kk] = vv end
      t[k] = v
      return t
    end
    h.errors_with(function() knnd.edit.pairs(with("align", "sift")) end, "option 'align' is 'sift'")
    h.errors_with(function() knnd.edit.pairs(with("images", images:narrow(1, 1, 10))) end, "the embeddings are 400x32 but the database holds 10")
    h.errors_with(function() knnd.edit.pairs(with("box", { 0.9, 0.2 })) end, "option 'box'")
    h.errors_with(function() knnd.edit.pairs(with("clip", nil)) end, "option 'clip'")
    h.errors_with(function() knnd.edit.pairs(with("colour", 1)) end, "colour")
    local p = knnd.edit.pairs(o)
    h.errors_with(function() p:make(knnd.zeros(2, S, S)) end, "images [B,C,H,W]")
    h.errors_with(function() p:make(knnd.zeros(2, 1, S, S), knnd.tensor({ 1, 2, 3 }, { dtype = "i64" })) end, "2 database rows")
  end)
end)

local function tiny(o)
  local cfg = { image_size = S, channels = 1, seed = 1, edit = true,
    unet = { channels = 16, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 },
      num_head_channels = 16, norm_groups = 8 },
    cond = { mode = "knn", k = K, dim = D } }
  for k, v in pairs(o or {}) do cfg[k] = v end
  return kd.new(cfg)
end

describe("an edit model (knn_diffusion.new{edit = true})", function()
  it("takes the source image as extra channels, trains on pairs, saves and loads as an edit model", function()
    local m = tiny()
    assert.is_true(tostring(m):find("edit model", 1, true) ~= nil)
    local p = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K }
    local dir = h.rundir("edit_spec", "run")
    local r = kd.train { model = m, dataset = R.ds, embeddings = R.emb, pairs = p, out = dir, steps = 4, batch = 8,
      progress = false, checkpoint_every = 2 }
    assert.are.equal(4, r.steps)
    assert.is_true(r.loss == r.loss)
    h.assert_close(r.ema_init_share, 0.999 ^ 4, 1e-12)
    local back = kd.load(dir .. "/model.h5")
    assert.is_true(back.config.edit)
    -- a training checkpoint gives its EMA weights, or with weights = "live" the trained ones themselves
    local ema, live = kd.load(dir .. "/checkpoint.h5"), kd.load(dir .. "/checkpoint.h5", { weights = "live" })
    h.assert_close(ema:state_dict().null_cond, back:state_dict().null_cond:totable(), 0)
    assert.is_true((live:state_dict().null_cond - ema:state_dict().null_cond):abs():max():item() > 0)
    h.errors_with(function() kd.load(dir .. "/model.h5", { weights = "live" }) end, "not a training checkpoint")
    h.errors_with(function() kd.load(dir .. "/checkpoint.h5", { weights = "best" }) end, "option 'weights' is 'best'")
    local x = batch_of { 1, 2 }
    local grid, out = h.tmp("edit_spec", "grid.png"), h.tmp("edit_spec", "out.png")
    local res = knnd.edit.run { model = back, query = R.emb:narrow(1, 1, 1):view(D), index = R.index, image = x, steps = 3,
      text = "(an embedding)", n = 2, grid = grid, out = out }
    assert.are.same({ 4, 1, S, S }, res.images:shape())
    assert.is_true(h.exists(grid) and h.exists(out))
    assert.are.same({ 1, S, S }, knnd.read_png(out):shape())
    -- a lower strength starts from the noised source: closer to it than a full run
    local full = knnd.edit { model = back, query = R.emb:narrow(1, 1, 1), index = R.index, image = x, steps = 10,
      text = "x", seed = 1 }
    local part = knnd.edit.run { model = back, query = R.emb:narrow(1, 1, 1), index = R.index, image = x, steps = 10,
      text = "x", seed = 1, strength = 0.2 }
    assert.is_true((part.images - x):abs():mean():item() < (full.images - x):abs():mean():item())
  end)

  it("weights the loss per pixel: uniform weights are the plain loss, and the weights are checked", function()
    local m = tiny()
    local x = batch_of { 1, 2 }
    local tokens = m:condition(R.emb:narrow(1, 1, 2), R.emb:narrow(1, 1, 2 * K):view(2, K, D))
    knnd.manual_seed(4)
    local plain = m:loss(x, tokens, { source = x }):item()
    knnd.manual_seed(4)
    local uniform = m:loss(x, tokens, { source = x, pixel_weights = knnd.full({ 2, 1, S, S }, 3) }):item()
    h.assert_close(uniform, plain, 1e-5)
    local w = knnd.ones(2, 1, S, S)
    w:narrow(3, 1, 4):fill_(10)
    knnd.manual_seed(4)
    local weighted = m:loss(x, tokens, { source = x, pixel_weights = w })
    weighted:backward()
    assert.is_true(math.abs(weighted:item() - plain) > 1e-6)
    h.errors_with(function() m:loss(x, tokens, { source = x, pixel_weights = knnd.ones(2, S, S) }) end,
      "option 'pixel_weights' is 2x16x16")
  end)

  it("names a missing source, a wrong strength, and pairs given to the wrong model", function()
    local m = tiny()
    local tokens = m:condition(R.emb:narrow(1, 1, 2), R.emb:narrow(1, 1, 2 * K):view(2, K, D))
    local x = batch_of { 1, 2 }
    h.errors_with(function() m:sample { tokens = tokens, steps = 2 } end, "an edit model needs option 'source'")
    h.errors_with(function() m:sample { tokens = tokens, steps = 2, source = x, strength = 1.5 } end, "option 'strength' is 1.5")
    h.errors_with(function() m:sample { tokens = tokens, steps = 2, source = x:narrow(3, 1, 8) } end, "the source images are")
    h.errors_with(function() m:loss(x, tokens) end, "needs the source image")
    h.errors_with(function() kd.train { model = m, dataset = R.ds, embeddings = R.emb, out = h.rundir("edit_spec", "x"),
      steps = 1 } end, "give option 'pairs'")
    local plain = tiny { edit = false }
    local p = knnd.edit.pairs { clip = clip, index = R.index, images = images, embeddings = R.emb, k = K }
    h.errors_with(function() kd.train { model = plain, dataset = R.ds, embeddings = R.emb, cache = R.cache_path, pairs = p,
      out = h.rundir("edit_spec", "y"), steps = 1 } end, "option 'pairs' is for an edit model")
    h.errors_with(function() plain:sample { tokens = tokens, steps = 2, source = x } end, "a source image is for an edit model")
    h.errors_with(function() knnd.edit.run { model = plain, image = x, text = "t" } end, "expected an edit model")
    h.errors_with(function() kd.new { image_size = S, channels = 1, edit = "yes" } end, "option 'edit' expected a boolean")
    h.errors_with(function() knnd.edit.run { model = m, image = x, text = "t", query = knnd.zeros(D + 1), index = R.index } end,
      "expected 32-d")
  end)
end)

describe("knnd.edit metrics", function()
  it("finds the changed region from the difference and measures preservation outside it", function()
    local src = knnd.full({ 2, 1, 16, 16 }, -1)
    local res = src:clone()
    -- image 1: a 6x6 square changed by 1.5; image 2: noise of 0.05 everywhere, nothing really changed
    res:narrow(1, 1, 1):narrow(3, 3, 6):narrow(4, 5, 6):fill_(0.5)
    res:narrow(1, 2, 1):copy_(src:narrow(1, 2, 1) + 0.05)
    local pv = knnd.edit.preservation(src, res)
    local changed = pv.region:narrow(1, 1, 1):sum():item()
    assert.is_true(changed >= 36 and changed <= 64, "changed pixels " .. changed)
    assert.are.equal(0, pv.per_image[2].changed)
    h.assert_close(pv.per_image[2].outside, 0.05, 1e-5)
    assert.is_true(pv.per_image[1].outside < 0.2)
    h.assert_close(pv.per_image[1].overall, 36 * 1.5 / 256, 1e-5)
    h.errors_with(function() knnd.edit.changed_region(src, res:narrow(3, 1, 8)) end, "source is 2x1x16x16")
    -- CLIP gain: cos(result, text) - cos(source, text); the 'text' here is the first result's own embedding
    local a, b = batch_of { 1, 2 }, batch_of { 3, 4 }
    local e = function(x) return clip:encode_images((x + 1) * 0.5) end
    local fake = { encode_images = clip.encode_images, encode_text = function() return e(b:narrow(1, 1, 1)) end }
    local g = knnd.edit.clip_gain(fake, a, b, "the first result")
    local ea, eb = e(a), e(b)
    local t = eb:narrow(1, 1, 1)
    h.assert_close(g.per_image[1], 1 - (ea:narrow(1, 1, 1) * t):sum():item(), 1e-5)
    h.assert_close(g.per_image[2], ((eb:narrow(1, 2, 1) - ea:narrow(1, 2, 1)) * t):sum():item(), 1e-5)
    h.assert_close(g.gain, (g.per_image[1] + g.per_image[2]) / 2, 1e-9)
  end)
end)
