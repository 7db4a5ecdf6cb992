-- guidance_sweep.lua — classifier-free guidance scale x sampler steps on one trained kNN model
-- (sampling only: the model is trained once, in the testbed, and every run reuses it), on the
-- Fashion-MNIST testbed; FID[fmnist-cnn] against the guidance scale, a line per step count, in
-- fid_vs_guidance.png, and text alignment, which guidance trades against diversity.
--
--   knnd sweep experiments/guidance_sweep.lua [--resume] [--set guidance=1,3,5] [--set sample_steps=10,25]
--   --set model=runs/quickstart/knn/model.h5 evaluates a model you trained (default: the
--   quickstart's kNN model when it exists, else one is trained into <testbed>/guidance_sweep_model)
local knnd = require "knnd"
local C = knnd.config
local exists = require("knnd.files").exists

local sw = knnd.sweep {
  name = "guidance_sweep",
  base = knnd.testbed.base({
    model = C.param("", "a trained model (.h5); default <testbed>/knn/model.h5, else one is trained"),
  }),
  grid = { guidance = { 1, 2, 3, 5, 8 }, sample_steps = { 10, 25 }, seed = { 1 } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    local path = cfg.model ~= "" and cfg.model or (cfg.testbed .. "/knn/model.h5")
    local model
    if exists(path) then
      model = knnd.knn_diffusion.load(path)
    else
      model = tb:train { mode = cfg.mode, steps = cfg.steps, out = cfg.testbed .. "/guidance_sweep_model", seed = 0, log = false }
    end
    run:log("model", { path = exists(path) and path or (cfg.testbed .. "/guidance_sweep_model/model.h5") })
    return tb:score(model, cfg, run)
  end,
}
knnd.report.plot_sweep(sw, { x = "guidance", path = "fid_vs_guidance.png",
  title = "FID[fmnist-cnn] against the guidance scale (a line per sampler step count)" })
knnd.report.plot_sweep(sw, { x = "guidance", metric = "alignment", path = "alignment_vs_guidance.png",
  title = "text alignment (the judge's accuracy) against the guidance scale" })
