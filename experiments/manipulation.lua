-- manipulation.lua — text-driven local manipulation without masks (the paper's third capability) on
-- Fashion-MNIST: an edit model (knnd.edit) learns, from unlabeled training images alone, to rebuild an
-- image whose random area was replaced by a retrieved, aligned neighbour; then real test images are
-- edited by a sentence ("a photo of a coat"), garment type into garment type.
--
--   knnd sweep experiments/manipulation.lua                       # ECC vs plain resize, 2 seeds, runs/manipulation/
--   knnd sweep experiments/manipulation.lua --resume               # after an interruption
--   knnd sweep experiments/manipulation.lua --set align=ecc_affine --set seed=1,2,3 --set mode=knn,no_knn
--   knnd sweep experiments/manipulation.lua --set backbone=discrete  # VQ-Diffusion taking the source's tokens
--
-- Each run trains an edit model (the testbed's UNet with the image as 1 extra input channel; pairs made
-- on the fly with the testbed's CLIP and index; align: how the neighbour is fitted into the area), and
-- once per seed a text-to-image model of the same mode and budget (the baseline that regenerates the
-- whole image from the text; shared by the runs in the testbed folder: edit-baseline/). Both then turn
-- `edit_images` test images of each edit's source class into its target text, with the same seeds.
--
-- Metrics per run (the edit model; with suffix _regen the regenerating baseline):
--   target_acc  edit success: the judge's share of results in the target class
--   source_acc  the share still judged the source class
--   clip_gain   cos(result, text) - cos(source, text) under the testbed's CLIP
--   changed     the share of pixels the edit changed (|difference| box-blurred 3x3 above 0.25 of the
--               [-1,1] range: no mask is given, so the region is found from the difference)
--   outside     mean |result - source| outside that region (preservation; [-1,1] units)
--   overall     mean |result - source| over the whole image
-- summary.md holds mean ± CI95 over seeds and a paired test of each align against ecc_affine; every run
-- writes edits.png (rows: source, edit, regeneration for each edit) and edit_metrics.csv (per edit).
--
-- Sized for an hour on 2 cores: 400 training steps per model (the quickstart trains 600).
local knnd = require "knnd"
local C = knnd.config

local base = knnd.testbed.base {
  steps = C.param(400, "training steps of each model (the quickstart: 600)", { min = 1 }),
  align = C.param("ecc_affine", "how the retrieved neighbour is fitted into the area",
    { values = { "ecc_affine", "ecc_euclidean", "resize" } }),
  edit_images = C.param(16, "test images edited per edit", { min = 1 }),
  strength = C.param(1.0, "sampling starts from the source noised to strength·T (1: from noise)", { min = 0.01, max = 1 }),
  box_min = C.param(0.4, "the smallest area side (a fraction of the image's)", { min = 0.05, max = 1 }),
  box_max = C.param(0.8, "the largest area side", { min = 0.05, max = 1 }),
}

-- garment type into garment type: {source class, target class}
local EDITS = {
  { "pullover", "coat" }, { "shirt", "t-shirt/top" }, { "dress", "coat" },
  { "sneaker", "sandal" }, { "sandal", "sneaker" }, { "ankle boot", "sneaker" },
}

local function prompt(name)
  return ((("a photo of a %s"):format(name)):gsub(" a ([aeiou])", " an %1"))
end

-- the first n test images of a class, as f32 [n,1,28,28] in [-1,1]
local function test_images(tb, label, n)
  local rows = {}
  for i, l in ipairs(tb.test_labels) do
    if l == label then rows[#rows + 1] = i - 1 end
    if #rows == n then break end
  end
  local x = tb.test_set.images:index_select(1, knnd.tensor(rows, { dtype = "i64" }))
  if x:dim() == 3 then x = x:unsqueeze(2) end
  return x:to("f32") / 127.5 - 1
end

local function judge_shares(tb, images, target, source)
  local pred = tb.judge:predict(images):totable()
  local t, s = 0, 0
  for _, p in ipairs(pred) do
    if p == target then t = t + 1 end
    if p == source then s = s + 1 end
  end
  return t / #pred, s / #pred
end

local sw = knnd.sweep {
  name = "manipulation",
  base = base,
  grid = { align = { "ecc_affine", "resize" }, seed = { 1, 2 } },
  compare = { by = "align", baseline = "ecc_affine", metrics = { "target_acc", "clip_gain", "outside", "changed" } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    if cfg.box_min > cfg.box_max then error(("box_min (%g) is above box_max (%g)"):format(cfg.box_min, cfg.box_max), 0) end
    tb.test_labels = tb.test_labels or tb.test_set.labels:totable()
    local t0 = knnd.wall_time()
    local model, r, maker = tb:train_edit { backbone = cfg.backbone, mode = cfg.mode, k = cfg.k, xi = cfg.xi, steps = cfg.steps, batch = cfg.batch,
      seed = cfg.seed, align = cfg.align, box = { cfg.box_min, cfg.box_max }, out = run:path("edit"), name = run.name,
      progress = false, log = false }
    for i, step in ipairs((r.log or {}).steps or {}) do run:metric("loss", step, r.log.loss[i]) end
    if maker.stats.pairs > 0 then
      run:log(("pairs: %d made, ECC converged on %d (%.0f%%; the others kept the plain resize)"):format(maker.stats.pairs,
        maker.stats.ecc_converged, 100 * maker.stats.ecc_converged / maker.stats.pairs))
    end
    -- the baseline: a text-to-image model of the same mode, budget and seed (shared by the align runs)
    local t1 = knnd.wall_time()
    local regen_dir = ("%s/edit-baseline/%s%s-k%d-steps%d-batch%d-seed%d"):format(cfg.testbed, cfg.mode,
      cfg.backbone == "discrete" and "-discrete" or "", cfg.k, cfg.steps, cfg.batch, cfg.seed)
    local t2i = tb:train { backbone = cfg.backbone, mode = cfg.mode, k = cfg.k, xi = cfg.xi, steps = cfg.steps, batch = cfg.batch, seed = cfg.seed,
      out = regen_dir, name = "regenerate " .. cfg.mode, progress = false, log = false }
    local t2 = knnd.wall_time()

    local cls = {}
    for i, c in ipairs(tb.classes) do cls[c] = i - 1 end
    local acc = { target_acc = 0, source_acc = 0, clip_gain = 0, changed = 0, outside = 0, overall = 0 }
    local m = {}
    for key in pairs(acc) do m[key], m[key .. "_regen"] = 0, 0 end
    local csv = { "edit,model,target_acc,source_acc,clip_gain,changed,outside,overall" }
    local rows = {}
    for e, pair in ipairs(EDITS) do
      local src, dst = cls[pair[1]], cls[pair[2]]
      local x = test_images(tb, src, cfg.edit_images)
      local text = prompt(pair[2])
      local seed = cfg.seed * 1000 + e
      local ed = knnd.edit.run { model = model, clip = tb.clip, index = tb.index, image = x, text = text,
        strength = cfg.strength ~= 1 and cfg.strength or nil, steps = cfg.sample_steps, guidance = cfg.guidance,
        sampler = model:sampler_option(cfg.sampler), seed = seed }
      local g = knnd.knn_diffusion.generate { model = t2i, clip = tb.clip, index = tb.index, prompts = { text },
        n = x:size(1), steps = cfg.sample_steps, guidance = cfg.guidance, sampler = t2i:sampler_option(cfg.sampler),
        seed = seed, progress = false }
      for _, side in ipairs { { "", ed.images }, { "_regen", g.images } } do
        local imgs = side[2]
        local ta, sa = judge_shares(tb, imgs, dst, src)
        local pv = knnd.edit.preservation(x, imgs)
        local cg = knnd.edit.clip_gain(tb.clip, x, imgs, text).gain
        local vals = { target_acc = ta, source_acc = sa, clip_gain = cg, changed = pv.changed, outside = pv.outside,
          overall = pv.overall }
        for key, v in pairs(vals) do m[key .. side[1]] = m[key .. side[1]] + v / #EDITS end
        csv[#csv + 1] = ("%s -> %s,%s,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f"):format(pair[1], pair[2],
          side[1] == "" and "edit" or "regenerate", ta, sa, cg, pv.changed, pv.outside, pv.overall)
      end
      local show = math.min(8, x:size(1))
      rows[#rows + 1] = x:narrow(1, 1, show)
      rows[#rows + 1] = ed.images:narrow(1, 1, show)
      rows[#rows + 1] = g.images:narrow(1, 1, show)
    end
    knnd.files.write_atomic(run:path("edit_metrics.csv"), table.concat(csv, "\n") .. "\n")
    knnd.save_grid(run:path("edits.png"), knnd.cat(rows, 1), { nrow = math.min(8, cfg.edit_images), range = { -1, 1 },
      scale = 2, title = ("%s: per edit, rows source / edit / regenerated (%s)"):format(run.name,
        table.concat((function()
          local names = {}
          for i, p in ipairs(EDITS) do names[i] = p[1] .. "->" .. p[2] end
          return names
        end)(), ", ")) })
    m.final_loss = r.loss or (r.log and r.log.loss[#r.log.loss])
    m.train_seconds, m.baseline_seconds, m.eval_seconds = t1 - t0, t2 - t1, knnd.wall_time() - t2
    m.ecc_converged = maker.stats.pairs > 0 and maker.stats.ecc_converged / maker.stats.pairs or 0
    return m
  end,
}
-- the groups' means with their CI95 over seeds (when a run has finished)
local ok, err = pcall(knnd.report.plot_groups, sw, { by = "align", metrics = { "target_acc", "target_acc_regen", "changed", "changed_regen" }, path = "edits_by_align.png",
  ylabel = "share (of images, of pixels)" })
if not ok then print("no plot: " .. tostring(err)) end
