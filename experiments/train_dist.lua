-- train_dist.lua — the kNN-conditioned UNet trained data-parallel over the ranks of a job, on the
-- Fashion-MNIST testbed (the quickstart's folder), then judged like every other run of experiments/:
--
--   knnd run experiments/quickstart.lua                                  # once: builds runs/quickstart
--   mpirun -np 4 knnd run experiments/train_dist.lua --set out=runs/dist  # 4 processes, batch 64 = 4 x 16
--   srun knnd run experiments/train_dist.lua ...                         # the same under Slurm (slurm_train.sh)
--
-- Every rank runs this script. Rank 0 opens the testbed first (building whatever is missing: one
-- process writes it), the others after it; training splits each batch of `batch` images over the ranks
-- and averages the gradients (knnd.knn_diffusion.train), so the model equals one process's with the same
-- batch and seed; rank 0 then samples the class prompts and paraphrases, and reports text alignment and
-- FID[fmnist-cnn] to out/metrics.json. One process (`knnd run experiments/train_dist.lua`) works the same.
local knnd = require "knnd"
local dist = knnd.dist

local opt = knnd.options {
  testbed = "runs/quickstart",
  out = "runs/dist",
  mode = "knn",
  steps = 600,
  batch = 64,
  seed = 0,
  per_class = 20,
  sample_steps = 20,
}
local function log(fmt, ...) if dist.is_main() then print((fmt):format(...)) end end
log("train_dist: %d rank%s, batch %d (%d per rank), %d steps, mode %s", dist.size(), dist.size() == 1 and "" or "s",
  opt.batch, opt.batch // dist.size(), opt.steps, opt.mode)

-- the testbed: built (when absent) by rank 0 alone, then read by every rank
if dist.is_main() then knnd.testbed.open(opt.testbed) end
dist.barrier()
local tb = knnd.testbed.open(opt.testbed)

local t0 = knnd.wall_time()
local model, r = tb:train { mode = opt.mode, steps = opt.steps, batch = opt.batch, seed = opt.seed, out = opt.out,
  progress = dist.is_main() }
local seconds = knnd.wall_time() - t0
log("trained %d steps in %.0f s (final loss %.4f%s)", r.steps, seconds, r.loss or 0 / 0,
  r.resumed_from and (", resumed from step " .. r.resumed_from) or "")

if dist.is_main() then
  local m = tb:evaluate { model = model, eval_per_class = opt.per_class, steps = opt.sample_steps, seed = opt.seed }
  knnd.files.write_json(opt.out .. "/metrics.json", { ranks = dist.size(), batch = opt.batch, steps = r.steps,
    train_seconds = seconds, alignment = m.alignment, fid_cnn = m.fid_cnn, kid_cnn = m.kid_cnn, final_loss = r.loss })
  log("alignment %.1f%%, FID[fmnist-cnn] %.1f (%s/metrics.json)", 100 * m.alignment, m.fid_cnn, opt.out)
end
dist.barrier()
