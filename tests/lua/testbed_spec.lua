-- testbed_spec.lua — knnd.testbed's Testbed:train_and_score on a model directory that an earlier
-- run already trained (index_sweep shares one per training index): the final loss still comes
-- back. The testbed's training is a real (tiny) knnd.knn_diffusion.train; scoring is stubbed, as
-- building the real testbed (CLIP, judge, index) takes minutes.
local knnd = require "knnd"
local h = require "spec_helpers"
local testbed = require "knnd.testbed"
local kd = knnd.knn_diffusion
local function tmp(name) return h.tmp("testbed_spec", name) end

-- 64 real images at 16x16, a random projection of their pixels as embeddings, their neighbours
local N, D, S = 64, 8, 16
local ds_path, emb_path, cache_path = tmp("fm16.h5"), tmp("emb.h5"), tmp("nn.h5")
knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = S, limit = N, progress = false }
local pixels = knnd.dataset.open(ds_path):images(knnd.arange(0, N, { dtype = "i64" })):to("f32"):view(N, -1) / 255
local emb = knnd.matmul(pixels, knnd.randn(S * S, D, { gen = knnd.Generator(7) }))
knnd.embeddings.save(emb_path, emb / emb:square():sum { dim = 2, keepdim = true }:sqrt(), { encoder = "projection",
  encoder_hash = "spec" })
local store = knnd.embeddings.open(emb_path)
knnd.cache.build(cache_path, knnd.index.build { store = store, factory = "Flat" }, store, { k = 2, exclude_self = true })

-- a testbed whose train is Testbed:train's call of knn_diffusion.train at this size, and whose
-- score returns no metrics
local tb = setmetatable({
  train = function(_, o)
    local model = kd.new { image_size = S, channels = 1, seed = o.seed,
      unet = { channels = 16, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 },
        num_head_channels = 16, norm_groups = 8 },
      cond = { mode = o.mode, k = o.k, dim = D }, diffusion = { T = 50 } }
    local r = kd.train { model = model, dataset = ds_path, embeddings = emb_path, cache = cache_path, out = o.out,
      steps = o.steps, batch = o.batch, seed = o.seed, checkpoint_every = o.steps, progress = false }
    return kd.load(o.out .. "/model.h5"), r
  end,
  score = function() return {}, {} end,
}, testbed.Testbed)

local function run(name)
  local metrics = {}
  return { name = name, path = function(_, p) return tmp(name .. "/" .. p) end,
    metric = function(_, key, step, v) metrics[#metrics + 1] = { key, step, v } end, metrics = metrics }
end

describe("knnd.testbed Testbed:train_and_score", function()
  it("reports the final loss of a model directory that was already trained, from its log", function()
    local model_dir = tmp("shared_model")
    os.execute(("rm -rf '%s'"):format(model_dir))
    local cfg = { mode = "knn", k = 2, steps = 3, batch = 8, seed = 1 }
    local first = tb:train_and_score(cfg, run("first"), { model_dir = model_dir })
    assert.is_number(first.final_loss)
    local r2 = run("second")
    local second = tb:train_and_score(cfg, r2, { model_dir = model_dir }) -- nothing left to train
    assert.is_number(second.final_loss)
    assert.is_true(h.close(first.final_loss, second.final_loss, 1e-7), tostring(second.final_loss))
    assert.are.equal(3, #r2.metrics) -- the loss curve is still logged
  end)
end)
