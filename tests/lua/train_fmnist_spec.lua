-- train_fmnist_spec.lua — does knnd.knn_diffusion learn? A tiny kNN-conditioned UNet trained for
-- a few hundred steps on real Fashion-MNIST images (four classes at 16x16): the loss falls, and
-- samples conditioned on held-out images' embeddings and their neighbours are recognised as the
-- class of those images by a classifier trained on the same data, well above chance (25%): at
-- least 50% of 96 samples (69% when written).
local knnd = require "knnd"
local h = require "spec_helpers"
local kd = knnd.knn_diffusion
local function tmp(name) return h.tmp("train_fmnist_spec", name) end

local S, D, K = 16, 32, 4
local CLASSES = { 1, 2, 7, 8 } -- trouser, pullover, sneaker, bag: four shapes a 16x16 image keeps apart

describe("knnd.knn_diffusion on real Fashion-MNIST", function()
  it("learns: the loss falls and conditioned samples are judged to be the condition's class", function()
    local ds_path, emb_path, cache_path, run_dir = tmp("fm.h5"), tmp("emb.h5"), tmp("nn.h5"), tmp("run")
    os.execute(("rm -rf '%s'"):format(run_dir))
    knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = S, limit = 4000, progress = false }
    local ds = knnd.dataset.open(ds_path)
    local n = ds:count()
    -- the embeddings: a fixed random projection of the pixels, L2-normalised (CLIP's role, cheaply)
    local images = ds:images(knnd.arange(0, n, { dtype = "i64" }))
    local flat = images:to("f32"):view(n, -1) / 255
    local emb = knnd.matmul(flat - flat:mean { dim = 1, keepdim = true }, knnd.randn(S * S, D, { gen = knnd.Generator(11) }))
    emb = emb / emb:square():sum { dim = 2, keepdim = true }:sqrt()
    knnd.embeddings.save(emb_path, emb, { encoder = "random-projection", encoder_hash = "train_fmnist_spec" })
    local store = knnd.embeddings.open(emb_path)
    local index = knnd.index.build { store = store, factory = "Flat" }
    knnd.cache.build(cache_path, index, store, { k = K, exclude_self = true })

    -- rows of the four classes: the first 3000 images train, the rest are held out
    local class_of, train_rows, held = {}, {}, {}
    for i, c in ipairs(CLASSES) do class_of[c] = i - 1 held[i] = {} end
    local labels = ds:labels(knnd.arange(0, n, { dtype = "i64" })):totable()
    for r = 0, n - 1 do
      local c = class_of[labels[r + 1]]
      if c then
        if r < 3000 then train_rows[#train_rows + 1] = r else table.insert(held[c + 1], r) end
      end
    end

    local model = kd.new { image_size = S, channels = 1, seed = 1,
      unet = { channels = 16, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 },
        num_head_channels = 16, norm_groups = 8 },
      cond = { mode = "knn", k = K, dim = D, p_uncond = 0.1 }, diffusion = { T = 1000 } }
    local r = kd.train { model = model, dataset = ds, embeddings = emb, cache = cache_path, rows = train_rows,
      out = run_dir, steps = 300, batch = 32, lr = 1e-3, ema = 0.98, progress = false, seed = 2,
      checkpoint_every = 300 }
    local first, last = 0, 0
    for i = 1, 30 do
      first = first + r.log.loss[i]
      last = last + r.log.loss[#r.log.loss - 30 + i]
    end
    assert.is_true(last < 0.6 * first, ("the loss fell from %.4f to %.4f (mean of 30 steps)"):format(first / 30, last / 30))

    -- the judge: a classifier of the four classes on the training rows
    local judge = knnd.classifier.new { channels = 1, image_size = S, classes = #CLASSES, width = 16, seed = 3 }
    local tr = knnd.tensor(train_rows, { dtype = "i64" })
    local tl = {}
    for i, row in ipairs(train_rows) do tl[i] = class_of[labels[row + 1]] end
    knnd.classifier.train { model = judge, images = images:index_select(1, tr), labels = knnd.tensor(tl, { dtype = "i64" }),
      steps = 150, batch = 64, progress = false }

    -- 6 held-out images per class: their embedding and its neighbours condition 4 samples each
    local ema_model = kd.load(run_dir .. "/model.h5")
    local q_rows, target = {}, {}
    for c = 1, #CLASSES do
      for j = 1, 6 do
        q_rows[#q_rows + 1] = held[c][j]
        target[#target + 1] = c - 1
      end
    end
    local qr = knnd.tensor(q_rows, { dtype = "i64" })
    local nb = index:knn(emb:index_select(1, qr), { k = K, ids = qr, exclude_self = true })
    local tokens = ema_model:condition(emb:index_select(1, qr), nb.embeddings)
    local rep = {}
    for i = 0, #q_rows - 1 do for _ = 1, 4 do rep[#rep + 1] = i end end
    local rep_t = knnd.tensor(rep, { dtype = "i64" })
    local samples = ema_model:sample { tokens = tokens:index_select(1, rep_t), steps = 20, guidance = 2, seed = 4 }
    knnd.save_grid(tmp("samples.png"), samples, { nrow = 24, range = { -1, 1 }, scale = 2 })
    local want = knnd.tensor(target, { dtype = "i64" }):index_select(1, rep_t)
    local pred = judge:predict(samples)
    local acc = knnd.eq(pred, want):to("f32"):mean():item()
    local real_acc = judge:accuracy(images:index_select(1, qr), knnd.tensor(target, { dtype = "i64" }))
    io.stderr:write(("train_fmnist_spec: loss %.4f -> %.4f; judge %.0f%% on real held-out images, %.0f%% on samples\n")
      :format(first / 30, last / 30, 100 * real_acc, 100 * acc))
    assert.is_true(real_acc > 0.85, ("the judge recognises %.0f%% of held-out real images"):format(100 * real_acc))
    assert.is_true(acc >= 0.5, ("%.0f%% of the samples are judged to be their condition's class (chance 25%%)")
      :format(100 * acc))
  end)
end)
