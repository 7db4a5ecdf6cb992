-- backbone_ablation.lua — the paper's two backbones side by side: the continuous one (the GLIDE-like
-- UNet over pixels) and the discrete one (VQ-Diffusion's transformer over the tokens of a VQ-VAE),
-- both kNN-conditioned on the same CLIP, index and neighbour cache, with the same training budget
-- (steps, batch, lr, EMA), on the Fashion-MNIST testbed; text alignment (the judge's accuracy) and
-- FID[fmnist-cnn] per backbone, mean ± CI over the seeds, and the paired comparison.
--
--   knnd sweep experiments/backbone_ablation.lua                 # 2 backbones x 2 seeds into runs/backbone_ablation/
--   knnd sweep experiments/backbone_ablation.lua --resume        # after an interruption
--   knnd sweep experiments/backbone_ablation.lua --set mode=no_knn --set seed=1,2,3
--
-- The testbed's VQ-VAE (runs/quickstart/vqvae/model.h5: 28x28 -> 7x7 tokens of 128 codes) is
-- trained the first time a discrete run needs it and shared by every run after; its test PSNR is
-- printed (--set vq_steps=N sizes its training). The discrete model samples with VQ-Diffusion's fast sampler over sample_steps of its
-- T = 100 timesteps, truncation 0.86, the same classifier-free guidance scale as the UNet.
local knnd = require "knnd"

knnd.sweep {
  name = "backbone_ablation",
  base = knnd.testbed.base {
    vq_steps = knnd.config.param(1500, "training steps of the testbed's VQ-VAE (when it is first built)", { min = 1 }),
  },
  grid = { backbone = { "continuous", "discrete" }, seed = { 1, 2 } },
  compare = { by = "backbone", baseline = "continuous", metrics = { "alignment", "FID[fmnist-cnn]" } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    if cfg.backbone == "discrete" then tb:vqvae { steps = cfg.vq_steps } end
    return tb:train_and_score(cfg, run)
  end,
}
