-- ablation_knn.lua — the paper's ablation: kNN vs no-kNN vs LAFITE-noise vs kNN-only conditioning,
-- the same UNet, data and training budget, over seeds (mean ± std), on the Fashion-MNIST testbed
-- (the quickstart's folder: CLIP, index, neighbour cache and judge are built there once if absent).
--
--   knnd sweep experiments/ablation_knn.lua                    # 4 modes x 2 seeds into runs/ablation_knn/
--   knnd sweep experiments/ablation_knn.lua --resume           # after an interruption: finished runs are kept
--   knnd sweep experiments/ablation_knn.lua --set seed=1,2,3 --set steps=1200 --shard 1/2
--
-- Each run trains without text (600 steps by default, as the quickstart), samples the 40 class
-- prompts and paraphrases, and reports text alignment (the judge's accuracy), FID[fmnist-cnn] and
-- KID[fmnist-cnn] against the test set; summary.md / summary.csv hold mean ± std over the seeds.
-- Adding a mode to the ablation is one word in `grid.mode`.
local knnd = require "knnd"

knnd.sweep {
  name = "ablation_knn",
  base = knnd.testbed.base(),
  grid = { mode = { "knn", "no_knn", "lafite_noise", "knn_only" }, seed = { 1, 2 } },
  run = function(cfg, run)
    return knnd.testbed.open(cfg.testbed):train_and_score(cfg, run)
  end,
}
