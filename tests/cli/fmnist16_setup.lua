-- fmnist16_setup.lua — the small training fixture the CLI tests share (run in their scratch folder):
-- 400 Fashion-MNIST training images at 16x16 (fm.h5), a random-projection "encoder" of them (emb.h5,
-- 16-d, L2-normalised), and an exact index's neighbour cache of every image's 3 nearest others (nn.h5).
--   knnd run tests/cli/fmnist16_setup.lua
local knnd = require "knnd"
knnd.dataset.prepare_fashion_mnist { out = "fm.h5", split = "train", size = 16, limit = 400, progress = false }
local ds = knnd.dataset.open("fm.h5")
local x = ds:images(knnd.arange(0, 400, { dtype = "i64" })):to("f32"):view(400, -1) / 255
local e = knnd.matmul(x, knnd.randn(256, 16, { gen = knnd.Generator(3) }))
knnd.embeddings.save("emb.h5", e / e:square():sum { dim = 2, keepdim = true }:sqrt(), { encoder = "projection",
  encoder_hash = "seed3" })
local store = knnd.embeddings.open("emb.h5")
knnd.cache.build("nn.h5", knnd.index.build { store = store, factory = "Flat" }, store, { k = 3, exclude_self = true })
