-- k_sweep.lua — how many neighbours? k in {1, 5, 10, 20, 100} for the kNN-conditioned UNet (the
-- paper's k ablation), on the Fashion-MNIST testbed; FID[fmnist-cnn] against k in fid_vs_k.png.
-- The neighbour cache of the largest k is built once in the testbed (k = 1000 fits the 60k-image
-- database too: --set k=1000, at the cost of a 1001-token condition).
--
--   knnd sweep experiments/k_sweep.lua [--resume] [--set k=1,10,100] [--set seed=1,2]
local knnd = require "knnd"

local sw = knnd.sweep {
  name = "k_sweep",
  base = knnd.testbed.base(),
  grid = { k = { 1, 5, 10, 20, 100 }, seed = { 1 } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    return tb:train_and_score(cfg, run, { cache = tb:cache_for("Flat", cfg.k) })
  end,
}
knnd.report.plot_sweep(sw, { x = "k", path = "fid_vs_k.png", title = "FID[fmnist-cnn] against k (kNN conditioning)" })
