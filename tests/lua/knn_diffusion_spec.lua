-- knn_diffusion_spec.lua — knnd.knn_diffusion on real Fashion-MNIST images: the config and its
-- errors, the condition token sets of every mode and the learned null set, sampling (shapes,
-- determinism, the guidance identity), save/load, training that resumes exactly from its
-- checkpoint, generation with a swapped index, and the errors of mismatched inputs.
local knnd = require "knnd"
local h = require "spec_helpers"
local kd = knnd.knn_diffusion
local function tmp(name) return h.tmp("knn_diffusion_spec", name) end
-- a run directory, emptied first (a stale checkpoint would be resumed from)
local function rundir(name) return h.rundir("knn_diffusion_spec", name) end

-- 600 real images at 16x16 with stand-in embeddings (a fixed random projection of the pixels: keeps
-- this spec fast), an exact index and a neighbour cache (spec_helpers.fmnist_retrieval)
local N, D, S = 600, 24, 16
local fx = h.fmnist_retrieval("knn_diffusion_spec", { n = N, size = S, dim = D, k = 4 })
local ds_path, emb_path, cache_path, ds, emb, store, index = fx.ds_path, fx.emb_path, fx.cache_path, fx.ds, fx.emb,
  fx.store, fx.index

local function tiny(mode, extra)
  local cfg = { image_size = S, channels = 1, seed = 3,
    unet = { channels = 32, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 } },
    cond = { mode = mode or "knn", k = 4, dim = D }, diffusion = { T = 100 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return kd.new(cfg)
end

local function same(a, b)
  return knnd.eq(a, b):to("f32"):min():item() == 1
end

describe("knnd.knn_diffusion.new", function()
  it("builds the UNet, the diffusion and a null token set of the mode's size", function()
    for mode, tokens in pairs { knn = 5, no_knn = 1, knn_only = 4, lafite_noise = 1 } do
      local m = tiny(mode)
      assert.are.equal(tokens, m.config.cond.tokens)
      assert.are.same({ tokens, D }, m.null:shape())
      assert.is_true(m.null.requires_grad)
      assert.truthy(tostring(m):find(mode, 1, true))
      assert.are.equal(#m:parameters(), #m:parameter_names())
    end
  end)

  it("rejects unknown options, modes and values, naming them", function()
    h.errors_with(function() kd.new { image_size = 16, chanels = 1, cond = { dim = 8 } } end, "unknown option 'chanels'")
    h.errors_with(function() tiny("knnn") end, "option 'cond.mode' is 'knnn' (expected one of")
    h.errors_with(function() kd.new { image_size = 16, cond = { dim = 8, kk = 3 } } end, "unknown cond 'kk'")
    h.errors_with(function() kd.new { image_size = 16, cond = { dim = 8, p_uncond = 1.5 } } end, "p_uncond")
    h.errors_with(function() kd.new { image_size = 16, cond = { dim = 8, mode = 3 } } end, "expected a string")
    h.errors_with(function() kd.new { cond = { dim = 8 } } end, "option 'image_size' expected a positive integer")
  end)
end)

describe("Model:condition", function()
  local q = emb:narrow(1, 1, 3)
  local nb = store:gather(knnd.tensor({ { 5, 6, 7, 8 }, { 9, 10, 11, 12 }, { 13, 14, 15, 16 } }, { dtype = "i64" }))

  it("puts the normalised query before its neighbours (knn) and only the query (no_knn)", function()
    local t = tiny("knn"):condition(q * 3, nb * 2)
    assert.are.same({ 3, 5, D }, t:shape())
    h.assert_close(t:select(2, 1), q:totable(), 1e-5)
    h.assert_close(t:narrow(2, 2, 4), nb:totable(), 1e-5)
    local t1 = tiny("no_knn"):condition(q)
    assert.are.same({ 3, 1, D }, t1:shape())
    local t2 = tiny("knn_only"):condition(q, nb)
    h.assert_close(t2, nb:totable(), 1e-5)
  end)

  it("perturbs the embedding in lafite_noise for training and uses it clean at inference (as LAFITE)", function()
    local m = tiny("lafite_noise")
    local train_t = m:condition(q * 2, nil, { gen = knnd.Generator(1) })
    local infer_t = m:condition(q * 2, nil, { gen = knnd.Generator(1), inference = true })
    assert.are.same({ 3, 1, D }, train_t:shape())
    h.assert_close(infer_t:select(2, 1), q:totable(), 1e-5)
    -- xi = 3: cos(h', h) is about 1/sqrt(1 + 9) for unit h
    local cos = (train_t:select(2, 1) * q):sum { dim = 2 }
    assert.is_true(cos:max():item() < 0.7, ("cos %s"):format(cos:max():item()))
  end)

  it("replaces dropped rows by the learned null set, and the null set learns", function()
    local m = tiny("knn")
    local drop = knnd.tensor({ 1, 0, 1 }, { dtype = "u8" })
    local t = m:condition(q, nb, { drop = drop })
    h.assert_close(t:select(1, 1), m.null:totable(), 0)
    h.assert_close(t:select(1, 3), m.null:totable(), 0)
    h.assert_close(t:select(1, 2):select(1, 1), q:select(1, 2):totable(), 1e-5)
    local x0 = ds:images(knnd.tensor({ 0, 1, 2 }, { dtype = "i64" })):to("f32") / 127.5 - 1
    -- the UNet's output layers and attention projections start at zero (guided-diffusion), so the
    -- condition gets a gradient only once a few steps have moved them
    local opt = knnd.optim.AdamW(m:parameters(), { lr = 1e-2 })
    for _ = 1, 3 do
      opt:zero_grad()
      m:loss(x0, m:condition(q, nb, { drop = drop })):backward()
      opt:step()
    end
    assert.truthy(m.null.grad)
    assert.is_true(m.null.grad:abs():sum():item() > 0)
  end)

  it("names what is wrong with the inputs", function()
    local m = tiny("knn")
    h.errors_with(function() m:condition(knnd.randn(3, D + 1), nb) end, "the model was built for 24-d embeddings")
    h.errors_with(function() m:condition(q) end, "mode knn needs neighbours")
    h.errors_with(function() m:condition(q, knnd.randn(3, 2, D)) end, "expected [3, >= 4, 24]")
  end)
end)

describe("Model:sample", function()
  local m = tiny("knn")
  local tokens = m:condition(emb:narrow(1, 1, 2), store:gather(knnd.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 } },
    { dtype = "i64" })))

  it("gives images in [-1, 1], the same for the same seed, others for another", function()
    local a = m:sample { tokens = tokens, steps = 4, seed = 1 }
    assert.are.same({ 2, 1, S, S }, a:shape())
    assert.is_true(a:abs():max():item() <= 1)
    assert.is_true(same(a, m:sample { tokens = tokens, steps = 4, seed = 1 }))
    assert.is_false(same(a, m:sample { tokens = tokens, steps = 4, seed = 2 }))
    for _, s in ipairs { "ddim", "ddpm" } do
      assert.are.same({ 2, 1, S, S }, m:sample { tokens = tokens, steps = 3, sampler = s }:shape())
    end
  end)

  it("at guidance 0 is the unconditional model, i.e. the null tokens at guidance 1", function()
    local g0 = m:sample { tokens = tokens, steps = 3, seed = 4, guidance = 0 }
    local null = m:sample { tokens = m:null_tokens(2):contiguous(), steps = 3, seed = 4, guidance = 1 }
    h.assert_close(g0, null:totable(), 1e-4)
  end)

  it("rejects tokens of another mode and unknown samplers", function()
    h.errors_with(function() m:sample { tokens = knnd.randn(2, 1, D) } end, "expected [B, 5, 24] for mode knn")
    h.errors_with(function() m:sample { tokens = tokens, sampler = "euler" } end, "option 'sampler' is 'euler'")
  end)
end)

describe("save and load", function()
  it("round-trips the weights and the config", function()
    local m = tiny("lafite_noise")
    local path = tmp("saved.h5")
    m:save(path, { note = "spec" })
    local m2 = kd.load(path)
    assert.are.equal("lafite_noise", m2.config.cond.mode)
    assert.are.equal("spec", m2.info.note)
    local x = knnd.randn(2, 1, S, S, { gen = knnd.Generator(1) })
    local t = knnd.tensor({ 10, 90 }, { dtype = "i64" })
    local c = m:null_tokens(2):contiguous()
    knnd.no_grad(function() assert.is_true(same(m(x, t, c), m2(x, t, c))) end)
    h.errors_with(function() kd.load(tmp("missing.h5")) end, "not found")
    h.errors_with(function() kd.load(ds_path) end, "knnd.knn_diffusion.load")
  end)
end)

describe("knnd.knn_diffusion.train", function()
  local function same_weights(a, b)
    local sa, sb = a:state_dict(), b:state_dict()
    for k, v in pairs(sa) do
      if not same(v, sb[k]) then return false end
    end
    return true
  end
  local function run(dir, extra)
    local o = { model = tiny("knn"), dataset = ds_path, embeddings = emb_path, cache = cache_path, out = dir,
      steps = 10, batch = 8, checkpoint_every = 4, progress = false, seed = 5 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kd.train(o)
  end

  it("writes the checkpoint, the EMA model, the log and the loss curve", function()
    local dir = rundir("run_full")
    local r = run(dir)
    assert.are.equal(10, r.steps)
    assert.are.equal(10, #r.log.loss)
    for _, f in ipairs { "checkpoint.h5", "model.h5", "log.csv", "loss.png" } do
      assert.is_true(h.exists(dir .. "/" .. f), f)
    end
    local m = kd.load(dir .. "/model.h5")
    assert.are.equal("random-projection", m.info.encoder)
  end)

  it("resumes from a checkpoint exactly: the same losses and weights as an uninterrupted run", function()
    local da, db = rundir("run_a"), rundir("run_b")
    local full = run(da)
    local part = run(db, { until_step = 6 }) -- stops at 6, as an interruption would
    assert.are.equal(6, part.steps)
    local rest = run(db)
    assert.are.equal(6, rest.resumed_from)
    assert.are.same(full.log.loss, rest.log.loss)
    assert.is_true(same_weights(kd.load(da .. "/model.h5"), kd.load(db .. "/model.h5")))
  end)

  it("with ema_warmup the average holds none of the initial weights, and resumes exactly", function()
    local function dist(a, b)
      local sa, sb, sum = a:state_dict(), b:state_dict(), 0
      for k, v in pairs(sa) do
        if v:dtype() == "f32" then sum = sum + ((v - sb[k]) ^ 2):sum():item() end
      end
      return math.sqrt(sum)
    end
    local init = tiny("knn")
    -- without warm-up 10 steps at 0.999 leave 99% of the initialisation in the average
    local plain = rundir("run_plain")
    assert.is_true(math.abs(run(plain, { ema = 0.999 }).ema_init_share - 0.999 ^ 10) < 1e-12)
    local live = kd.load(plain .. "/checkpoint.h5", { weights = "live" })
    local moved = dist(live, init)
    assert.is_true(moved > 0)
    assert.is_true(dist(kd.load(plain .. "/model.h5"), init) < 0.02 * moved)
    -- with it the decays are 0, 2/11, 3/12, ...: the average sits among the trained weights
    local da, db = rundir("run_warm_a"), rundir("run_warm_b")
    local r = run(da, { ema = 0.999, ema_warmup = true })
    assert.are.equal(0, r.ema_init_share)
    local warm = kd.load(da .. "/model.h5")
    local live_w = kd.load(da .. "/checkpoint.h5", { weights = "live" })
    assert.is_true(dist(warm, live_w) < 0.5 * dist(live_w, init), ("%g vs %g"):format(dist(warm, live_w), dist(live_w, init)))
    assert.is_true(dist(warm, live_w) > 0)
    run(db, { ema = 0.999, ema_warmup = true, until_step = 6 })
    run(db, { ema = 0.999, ema_warmup = true })
    assert.is_true(same_weights(warm, kd.load(db .. "/model.h5")))
    h.errors_with(function() run(tmp("x"), { ema_warmup = 1 }) end, "option 'ema_warmup' expected true or false, got 1")
  end)

  it("trains on a subset of rows (held-out classes stay unseen)", function()
    local rows = {}
    for r = 0, N - 1 do if ds:label(r) ~= 9 then rows[#rows + 1] = r end end
    local r = run(rundir("run_subset"), { rows = rows, steps = 3 })
    assert.are.equal(3, r.steps)
  end)

  it("names what does not match", function()
    local m28 = kd.new { image_size = 28, channels = 1, unet = { channels = 32, channel_mult = { 1, 2 } },
      cond = { mode = "no_knn", dim = D } }
    h.errors_with(function() kd.train { model = m28, dataset = ds_path, embeddings = emb_path, out = tmp("x") } end,
      "the dataset's images are 1x16x16 but the model was built for 1x28x28")
    h.errors_with(function() run(tmp("x"), { embeddings = emb:narrow(1, 1, 10) }) end,
      "the embeddings have 10 rows but the dataset has 600 images")
    h.errors_with(function() run(tmp("x"), { embeddings = knnd.randn(N, D + 2) }) end,
      "the embeddings are 26-d but the model was built for cond.dim = 24")
    h.errors_with(function() run(tmp("x"), { cache = false }) end, "mode knn needs option 'cache'")
    h.errors_with(function() run(tmp("x"), { cache = tmp("nope.h5") }) end, "not found")
    h.errors_with(function() run(tmp("x"), { model = tiny("knn", {}), stepz = 3 }) end, "unknown option 'stepz'")
    local d = rundir("run_cfg")
    run(d, { steps = 2 })
    h.errors_with(function() run(d, { model = tiny("knn", { seed = 9 }) }) end,
      "holds a model of another configuration (seed: 3 vs 9)")
  end)
end)

describe("knnd.knn_diffusion.generate", function()
  it("conditions on the query and its neighbours in the given index, and writes the grids", function()
    local m = tiny("knn")
    local q = emb:narrow(1, 1, 2)
    local grid, nn_grid = tmp("gen.png"), tmp("gen_nn.png")
    local r = kd.generate { model = m, prompts = { "first", "second" }, query = q, index = index, n = 3, steps = 2,
      grid = grid, neighbor_grid = nn_grid, images = ds:images(knnd.arange(0, N, { dtype = "i64" })),
      progress = false }
    assert.are.same({ 6, 1, S, S }, r.images:shape())
    assert.are.same({ "first", "first", "first", "second", "second", "second" }, r.prompts)
    assert.are.same({ 2, 4 }, r.neighbors.rows:shape())
    assert.are.equal(0, r.neighbors.rows:totable()[1][1]) -- the query is row 0 itself
    assert.is_true(h.exists(grid) and h.exists(nn_grid))
    -- the database swap: another index of the same dimension gives other neighbours
    local other = knnd.index.build { store = knnd.embeddings.open(emb_path), factory = "Flat" }
    assert.are.same({ 6, 1, S, S }, kd.generate { model = m, prompts = { "a", "b" }, query = q, index = other, n = 3,
      steps = 2, progress = false }.images:shape())
  end)

  it("names a CLIP or index of the wrong dimension", function()
    local m = tiny("knn")
    h.errors_with(function() kd.generate { model = m, prompts = { "a" }, query = knnd.randn(1, D + 1), index = index } end,
      "is the CLIP the one the model was trained with?")
    local wide = knnd.index.new { factory = "Flat", dim = D + 8 }
    h.errors_with(function() kd.generate { model = m, prompts = { "a" }, query = emb:narrow(1, 1, 1), index = wide } end,
      "the index holds 32-d embeddings, the model was trained on 24-d")
    h.errors_with(function() kd.generate { model = m, prompts = { "a" }, query = emb:narrow(1, 1, 1) } end,
      "needs option 'index'")
  end)
end)
