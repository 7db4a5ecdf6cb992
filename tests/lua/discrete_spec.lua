-- discrete_spec.lua — knnd.knn_diffusion with backbone = "discrete" (knnd.discrete: VQ-Diffusion's
-- transformer over VQ-VAE tokens) on real Fashion-MNIST images: the config and its errors, the
-- network's shapes and gradients, the same condition tokens as the continuous backbone, sampling
-- (range, determinism, the guidance identity), a self-contained save/load (the VQ-VAE's weights
-- travel with the model), training that resumes exactly and learns, and generation from an index.
local knnd = require "knnd"
local h = require "spec_helpers"
local kd = knnd.knn_diffusion
local function tmp(name) return h.tmp("discrete_spec", name) end
local function rundir(name) return h.rundir("discrete_spec", name) end

-- 400 real images at 16x16 with stand-in embeddings, an exact index and a neighbour cache
-- (spec_helpers.fmnist_retrieval); a small VQ-VAE (downsampling by 4: 4x4 tokens of 32 codes) trained
-- for a few steps and saved as knnd.vqvae.train writes it
local N, D, S = 400, 24, 16
local fx = h.fmnist_retrieval("discrete_spec", { n = N, size = S, dim = D, k = 4 })
local ds_path, emb_path, cache_path, ds, emb, store, index = fx.ds_path, fx.emb_path, fx.cache_path, fx.ds, fx.emb,
  fx.store, fx.index
local vq_dir = rundir("vq")
knnd.vqvae.train { dataset = ds_path, out = vq_dir, steps = 20, batch = 16, lr = 2e-3, seed = 1, progress = false,
  model = { channels = 16, channel_mult = { 1, 2, 2 }, num_res_blocks = 1, norm_groups = 8, num_codes = 32,
    embed_dim = 8 } }
local vq_path = vq_dir .. "/model.h5"

local function tiny(mode, extra)
  local cfg = { image_size = S, channels = 1, seed = 3, backbone = "discrete", cond = { mode = mode or "knn", k = 4, dim = D },
    discrete = { vqvae = vq_path, dim = 32, heads = 2, layers = 2, T = 20 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return kd.new(cfg)
end

local function same(a, b) return knnd.eq(a, b):to("f32"):min():item() == 1 end

describe("backbone = discrete: the model", function()
  it("builds the transformer over the VQ-VAE's token grid, with the mode's null token set", function()
    for mode, tokens in pairs { knn = 5, no_knn = 1, knn_only = 4, lafite_noise = 1 } do
      local m = tiny(mode)
      assert.are.equal("discrete", m.config.backbone)
      assert.are.same({ tokens, D }, m.null:shape())
      assert.are.equal(4, m.net.h)
      assert.are.equal(4, m.net.w)
      assert.are.equal(32, m.net.K)
      assert.truthy(tostring(m):find("discrete: 4x4 tokens of 32 codes", 1, true))
      assert.are.equal(#m:parameters(), #m:parameter_names())
    end
    -- the VQ-VAE is frozen: none of its tensors is a parameter, all are in the state dict
    local m = tiny("knn")
    for _, name in ipairs(m:parameter_names()) do assert.is_nil(name:find("^vqvae%."), name) end
    assert.is_not_nil(m:state_dict()["vqvae.quantize.embedding.weight"])
  end)

  it("names what is wrong in the config", function()
    h.errors_with(function() tiny("knn", { discrete = { dim = 32 } }) end, "needs option 'discrete.vqvae'")
    h.errors_with(function() tiny("knn", { discrete = { vqvae = vq_path, dimm = 3 } }) end, "unknown discrete 'dimm'")
    h.errors_with(function() tiny("knn", { discrete = { vqvae = vq_path, dim = 30, heads = 4 } }) end,
      "option 'discrete.dim' (30) is not a multiple of 'discrete.heads' (4)")
    h.errors_with(function() tiny("knn", { discrete = { vqvae = vq_path, truncation = 0 } }) end, "truncation")
    h.errors_with(function() tiny("knn", { discrete = { vqvae = tmp("none.h5") } }) end, "not found")
    h.errors_with(function() tiny("knn", { channels = 3 }) end, "the VQ-VAE takes 1 channels but the model is built for 3")
    h.errors_with(function() tiny("knn", { backbone = "pixels" }) end, "option 'backbone' is 'pixels'")
    h.errors_with(function() kd.new { image_size = S, channels = 1, cond = { dim = D }, discrete = { dim = 3 } } end,
      "option 'discrete' is for backbone = 'discrete'")
  end)

  it("maps tokens to code logits [B, K, N] and its loss reaches every trained tensor", function()
    local m = tiny("knn")
    local x = ds:images(knnd.arange(0, 4, { dtype = "i64" })):float() * (2 / 255) - 1
    local tokens = m.net:encode(x)
    assert.are.same({ 4, 16 }, tokens:shape())
    local ctx = m:condition(emb:narrow(1, 1, 4), store:gather(knnd.tensor({ { 5, 6, 7, 8 }, { 9, 10, 11, 12 },
      { 13, 14, 15, 16 }, { 17, 18, 19, 20 } }, { dtype = "i64" })))
    local logits = m.net(tokens, knnd.tensor({ 0, 5, 10, 19 }, { dtype = "i64" }), ctx)
    assert.are.same({ 4, 32, 16 }, logits:shape())
    local loss, parts = m:loss(x, ctx, { gen = knnd.Generator(1) })
    assert.are.same({}, loss:shape())
    assert.is_true(loss:item() > 0 and loss:item() < math.huge)
    assert.is_true(parts.vb:item() > 0)
    loss:backward()
    for i, p in ipairs(m.net:parameters()) do
      assert.is_not_nil(p.grad, m.net:named_parameters()[i].name)
    end
  end)
end)

describe("backbone = discrete: sampling", function()
  local m = tiny("knn")
  local ctx = m:condition(emb:narrow(1, 1, 2), store:gather(knnd.tensor({ { 5, 6, 7, 8 }, { 9, 10, 11, 12 } },
    { dtype = "i64" })), { inference = true })

  it("gives images in [-1, 1], the same for the same seed, others for another", function()
    local a = m:sample { tokens = ctx, steps = 5, seed = 1 }
    assert.are.same({ 2, 1, S, S }, a:shape())
    assert.is_true(a:min():item() >= -1 and a:max():item() <= 1)
    assert.is_true(same(a, m:sample { tokens = ctx, steps = 5, seed = 1 }))
    assert.is_false(same(a, m:sample { tokens = ctx, steps = 5, seed = 2 }))
    assert.is_false(same(a, m:sample { tokens = ctx, steps = 5, seed = 1, truncation = 0.5 }))
  end)

  it("at guidance 0 is the unconditional model, i.e. the null tokens at guidance 1", function()
    local u = m:sample { tokens = ctx, steps = 4, seed = 5, guidance = 0 }
    local n = m:sample { tokens = m:null_tokens(2), steps = 4, seed = 5, guidance = 1 }
    h.assert_close(u, n:totable(), 1e-5)
  end)

  it("names the continuous backbone's options and bad values", function()
    h.errors_with(function() m:sample { tokens = ctx, sampler = "ddim" } end, "the discrete backbone samples with vqdiff")
    h.errors_with(function() m:sample { tokens = ctx, eta = 1 } end, "option 'eta' is for the continuous backbone")
    h.errors_with(function() m:sample { tokens = ctx, truncation = 2 } end, "option 'truncation' is 2")
    local c = kd.new { image_size = S, channels = 1, unet = { channels = 32, channel_mult = { 1, 2 } },
      cond = { mode = "no_knn", dim = D } }
    h.errors_with(function() c:sample { tokens = c:null_tokens(1), truncation = 0.5 } end,
      "option 'truncation' is for backbone = 'discrete'")
  end)

  it("saves the VQ-VAE with the model: loading needs no VQ-VAE file", function()
    local vq_copy = tmp("vq_copy.h5")
    os.execute(("cp '%s' '%s'"):format(vq_path, vq_copy))
    local mc = tiny("knn", { discrete = { vqvae = vq_copy, dim = 32, heads = 2, layers = 2, T = 20 } })
    local path = tmp("model.h5")
    mc:save(path)
    os.remove(vq_copy)
    local back = kd.load(path)
    assert.are.equal("discrete", back.config.backbone)
    local sa, sb = mc:state_dict(), back:state_dict()
    for k, v in pairs(sa) do assert.is_true(same(v, sb[k]), k) end
    assert.is_true(same(mc:sample { tokens = ctx, steps = 3, seed = 4 }, back:sample { tokens = ctx, steps = 3, seed = 4 }))
  end)
end)

describe("backbone = discrete: training", function()
  local function run(dir, extra)
    local o = { model = tiny("knn"), dataset = ds_path, embeddings = emb_path, cache = cache_path, steps = 10, batch = 16,
      lr = 1e-3, out = dir, progress = false, checkpoint_every = 4 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return kd.train(o)
  end

  it("resumes from a checkpoint exactly: the same losses and weights as an uninterrupted run", function()
    local da, db = rundir("run_a"), rundir("run_b")
    local full = run(da)
    local part = run(db, { until_step = 6 })
    assert.are.equal(6, part.steps)
    local rest = run(db)
    assert.are.equal(6, rest.resumed_from)
    assert.are.same(full.log.loss, rest.log.loss)
    local a, b = kd.load(da .. "/model.h5"), kd.load(db .. "/model.h5")
    local sa, sb = a:state_dict(), b:state_dict()
    for k, v in pairs(sa) do assert.is_true(same(v, sb[k]), k) end
  end)

  it("learns: the loss of the last steps is below that of the first", function()
    local r = run(rundir("run_learn"), { steps = 60, lr = 2e-3, model = tiny("no_knn") })
    local function mean(i, j)
      local s = 0
      for k = i, j do s = s + r.log.loss[k] end
      return s / (j - i + 1)
    end
    local first, last = mean(1, 10), mean(51, 60)
    print(("# mean loss %.4f (steps 1-10) -> %.4f (51-60)"):format(first, last))
    assert.is_true(last < 0.8 * first, ("mean loss %.4f (steps 1-10) -> %.4f (51-60)"):format(first, last))
  end)

  it("generates from prompts' embeddings and their neighbours in an index, and writes the grid", function()
    local grid = tmp("gen.png")
    local r = kd.generate { model = tiny("knn"), prompts = { "first", "second" }, query = emb:narrow(1, 1, 2), index = index,
      n = 2, steps = 4, grid = grid, progress = false }
    assert.are.same({ 4, 1, S, S }, r.images:shape())
    assert.is_true(h.exists(grid))
  end)

  it("edits (edit = true): the source's tokens through an embedding of their own; trains on pairs, saves, loads", function()
    local m = tiny("knn", { edit = true })
    assert.is_not_nil(m:state_dict()["src_emb.weight"])
    local proj = knnd.randn(S * S, D, { gen = knnd.Generator(5) })
    local clip = { encode_images = function(_, x)
      local e = knnd.matmul(x:reshape(x:size(1), -1), proj)
      return e / e:square():sum { dim = 2, keepdim = true }:sqrt()
    end }
    local images = ds:images(knnd.arange(0, N, { dtype = "i64" }))
    local p = knnd.edit.pairs { clip = clip, index = index, images = images, embeddings = emb, k = 4 }
    local dir = rundir("edit")
    local r = kd.train { model = m, dataset = ds, embeddings = emb, pairs = p, out = dir, steps = 3, batch = 4,
      progress = false }
    assert.are.equal(3, r.steps)
    local back = kd.load(dir .. "/model.h5")
    assert.is_true(back.config.edit)
    local x = images:narrow(1, 1, 2):to("f32") / 127.5 - 1
    local res = knnd.edit.run { model = back, query = emb:narrow(1, 1, 1), index = index, image = x, steps = 3, text = "e" }
    assert.are.same({ 2, 1, S, S }, res.images:shape())
    -- the source enters the logits
    local tokens = back:condition(emb:narrow(1, 1, 2), emb:narrow(1, 1, 8):view(2, 4, D))
    local xt = knnd.full({ 2, back.net.h * back.net.w }, back.net.K, { dtype = "i64" })
    local t = knnd.full({ 2 }, 5, { dtype = "i64" })
    local other = images:narrow(1, 3, 2):to("f32") / 127.5 - 1
    local a = back.net:forward(xt, t, tokens, back.net:encode(x))
    local b = back.net:forward(xt, t, tokens, back.net:encode(other))
    assert.is_true((a - b):abs():max():item() > 1e-4)
    h.errors_with(function() back:sample { tokens = tokens, source = x, strength = 0.5 } end,
      "option 'strength' is for the continuous backbone")
    h.errors_with(function() back:sample { tokens = tokens } end, "an edit model needs the source image")
    h.errors_with(function() back:loss(x, tokens) end, "needs the source image")
  end)
end)

describe("backbone = discrete: importance sampling of t (VQ-Diffusion's sample_time 'importance')", function()
  local function imp()
    return tiny("knn", { discrete = { vqvae = vq_path, dim = 32, heads = 2, layers = 2, T = 20,
      time_sampling = "importance" } })
  end

  it("is uniform until every t was seen more than 10 times, then p_t ∝ sqrt(E[L_t^2]) + 1e-4, p_0 = p_1", function()
    local net = imp().net
    assert.is_nil(net:time_probabilities())
    local hist = {}
    for k = 1, 20 do hist[k] = (k / 10) ^ 2 end
    knnd.no_grad(function()
      net.Lt_history:copy_(knnd.tensor(hist))
      net.Lt_count:fill_(11)
    end)
    local p = net:time_probabilities()
    local q, total = {}, 0
    for k = 1, 20 do q[k] = math.sqrt(hist[k] + 1e-10) + 1e-4 end
    q[1] = q[2]
    for k = 1, 20 do total = total + q[k] end
    for k = 1, 20 do assert.is_true(math.abs(p[k] - q[k] / total) < 1e-7 * q[k] / total, k) end -- (f32 history)
    -- drawn with those probabilities (20000 draws: 5 standard deviations), each with its p_t
    local t, pt = net:sample_t(20000, knnd.Generator(4))
    local freq = {}
    for _, v in ipairs(t:totable()) do freq[v + 1] = (freq[v + 1] or 0) + 1 end
    for k = 1, 20 do
      local f = (freq[k] or 0) / 20000
      assert.is_true(math.abs(f - p[k]) < 5 * math.sqrt(p[k] * (1 - p[k]) / 20000) + 1e-9, ("t = %d: %g vs %g"):format(k - 1, f, p[k]))
    end
    local tt, pp = t:totable(), pt:totable()
    for i = 1, 50 do assert.is_true(math.abs(pp[i] - p[tt[i] + 1]) < 1e-7) end
    net:eval() -- not while evaluating
    assert.is_nil(select(2, net:sample_t(4)))
  end)

  it("updates E[L_t^2] as the reference: from the statistics before the batch, the last of equal t kept", function()
    local net = imp().net
    knnd.no_grad(function() net.Lt_history:fill_(2) end)
    net:record_t(knnd.tensor({ 3, 3, 5 }, { dtype = "i64" }), knnd.tensor({ 1, 2, 4 }))
    local hist, cnt = net.Lt_history:totable(), net.Lt_count:totable()
    assert.is_true(math.abs(hist[4] - (0.1 * 4 + 0.9 * 2)) < 1e-6)
    assert.is_true(math.abs(hist[6] - (0.1 * 16 + 0.9 * 2)) < 1e-6)
    assert.are.equal(2, hist[1])
    assert.are.same({ 0, 0, 0, 2, 0, 1 }, { cnt[1], cnt[2], cnt[3], cnt[4], cnt[5], cnt[6] })
  end)

  it("trains with the loss divided by p_t and keeps its statistics in the saved weights", function()
    local m = imp()
    knnd.no_grad(function()
      m.net.Lt_history:copy_(knnd.rand(20, { gen = knnd.Generator(2) }))
      m.net.Lt_count:fill_(11)
    end)
    local x = ds:images(knnd.arange(0, 4, { dtype = "i64" })):float() * (2 / 255) - 1
    local tokens = m:condition(emb:narrow(1, 1, 4), store:gather(knnd.tensor({ { 5, 6, 7, 8 }, { 9, 10, 11, 12 },
      { 13, 14, 15, 16 }, { 1, 2, 3, 4 } }, { dtype = "i64" })))
    local before = m.net.Lt_count:sum():item()
    local loss = m:loss(x, tokens, { gen = knnd.Generator(9) })
    assert.is_true(loss:item() == loss:item() and loss:item() < math.huge)
    assert.are.equal(before + 4, m.net.Lt_count:sum():item())
    local path = h.tmp("discrete_spec", "importance.h5")
    m:save(path)
    local back = kd.load(path)
    assert.are.equal("importance", back.config.discrete.time_sampling)
    assert.is_true(same(back.net.Lt_history, m.net.Lt_history) and same(back.net.Lt_count, m.net.Lt_count))
    h.errors_with(function()
      tiny("knn", { discrete = { vqvae = vq_path, dim = 32, heads = 2, layers = 2, time_sampling = "loss" } })
    end, "option 'discrete.time_sampling' is loss (expected \"uniform\" or \"importance\")")
  end)
end)
