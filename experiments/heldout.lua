-- heldout.lua — held-out concepts: does retrieval let the model draw what it was never trained on?
-- The diffusion model trains on 8 of the 10 Fashion-MNIST classes (2 held out by a seeded split,
-- or the classes named in `heldout`) while the index it samples with holds every training image.
-- Prompts of the held-out classes and of the seen ones are judged separately, for kNN, no-kNN,
-- LAFITE-noise and kNN-only conditioning over 3 training seeds, with paired t-tests against no_knn.
--
--   knnd sweep experiments/heldout.lua                          # 4 modes x 3 seeds into runs/heldout/
--   knnd sweep experiments/heldout.lua --resume                 # after an interruption
--   knnd sweep experiments/heldout.lua --set heldout=sandal,bag # name the held-out classes
--   knnd sweep experiments/heldout.lua --set heldout=3 --set split_seed=7 --dir runs/h3
--
-- What training sees: the images of the seen classes only, and as neighbours in the kNN condition
-- only seen images too (a neighbour cache over the seen images, built once per held-out set in the
-- testbed folder: data/subset-heldout-<classes>/, knnd.testbed:subset). At sampling the text's
-- neighbours come from the full index, held-out images included: that is where retrieval can help.
-- The CLIP (like a web-scale CLIP) and the judge were trained on every class; only the diffusion
-- model is kept from the held-out ones.
--
-- Metrics per run: alignment_heldout (the judge's accuracy on the samples of the held-out classes'
-- prompts and paraphrases), alignment_seen (the seen classes'), alignment (all), FID[fmnist-cnn]
-- and KID[fmnist-cnn] against the whole test set. summary.md holds mean ± std (CI95) over the seeds
-- and the paired comparisons of every mode against no_knn; paired.csv the same as numbers.
--
-- The defaults are sized for an hour on 2 cores: 300 training steps of the testbed's 32-channel
-- UNet (the quickstart trains 600), 20 samples judged per class. Measured: one run took 370 s (knn)
-- and 413 s (no_knn) on one thread of the 2-core machine while other jobs shared it, about 280 s of
-- CPU each; with both cores (0.5-0.6 s per training step, as the quickstart's) a run takes about
-- 3.5 min, so the 12 runs about 45 min, plus about 3 min when the testbed must be built first.
local knnd = require "knnd"
local C = knnd.config

local base = knnd.testbed.base {
  heldout = C.param("2", "held-out classes: a count drawn by split_seed (e.g. 2), or class names (e.g. sandal,bag)",
    { type = "string" }),
  split_seed = C.param(0, "the seed of the held-out split when heldout is a count", { min = 0 }),
  steps = C.param(300, "training steps (the quickstart: 600; see the header for the time)", { min = 1 }),
}

-- the held-out classes as sorted 0-based labels, from a count (a seeded draw) or class names
local function heldout_labels(classes, spec, split_seed)
  local count = tonumber(spec)
  local labels = {}
  if count then
    count = math.tointeger(count)
    if not count or count < 1 or count >= #classes then
      error(("heldout: a count must be a whole number in 1..%d, got '%s'"):format(#classes - 1, spec), 0)
    end
    local perm = knnd.randperm(#classes, { gen = knnd.Generator(split_seed) }):totable()
    for i = 1, count do labels[i] = perm[i] end
  else
    local index, seen = {}, {}
    for i, name in ipairs(classes) do index[name:lower()] = i - 1 end
    for name in spec:gmatch("[^,]+") do
      name = name:match("^%s*(.-)%s*$"):lower()
      local label = index[name]
      if not label then
        error(("heldout: unknown class '%s' (the classes: %s)"):format(name, table.concat(classes, ", ")), 0)
      end
      if not seen[label] then seen[label] = true; labels[#labels + 1] = label end
    end
    if #labels == 0 or #labels >= #classes then
      error(("heldout: hold out between 1 and %d classes, got '%s'"):format(#classes - 1, spec), 0)
    end
  end
  table.sort(labels)
  return labels
end

-- the training rows of the seen classes (0-based), as the testbed's subset of them
local function seen_subset(tb, held)
  local out = {}
  for _, l in ipairs(held) do out[l] = true end
  local rows = {}
  for i, label in ipairs(tb.train_set.labels:totable()) do
    if not out[label] then rows[#rows + 1] = i - 1 end
  end
  return tb:subset("heldout-" .. table.concat(held, "-"), rows)
end

local function mean_over(per_class, classes, labels)
  local s = 0
  for _, l in ipairs(labels) do s = s + per_class[classes[l + 1]] end
  return s / #labels
end

local sw = knnd.sweep {
  name = "heldout",
  base = base,
  grid = { mode = { "knn", "no_knn", "lafite_noise", "knn_only" }, seed = { 1, 2, 3 } },
  compare = { by = "mode", baseline = "no_knn",
    metrics = { "alignment_heldout", "alignment_seen", "alignment", "FID[fmnist-cnn]" } },
  run = function(cfg, run)
    local tb = knnd.testbed.open(cfg.testbed)
    local held = heldout_labels(tb.classes, cfg.heldout, cfg.split_seed)
    local seen = {}
    local is_held = {}
    for _, l in ipairs(held) do is_held[l] = true end
    for l = 0, #tb.classes - 1 do if not is_held[l] then seen[#seen + 1] = l end end
    local names = {}
    for i, l in ipairs(held) do names[i] = tb.classes[l + 1] end
    local sub = seen_subset(tb, held)
    run:log(("held out: %s; training on %d images of the other classes"):format(table.concat(names, ", "), sub.rows:numel()))
    local m, e = tb:train_and_score(cfg, run, { rows = sub.rows, cache = sub.cache, database = sub.embeddings })
    m.alignment_heldout = mean_over(e.per_class, tb.classes, held)
    m.alignment_seen = mean_over(e.per_class, tb.classes, seen)
    m.heldout_classes = table.concat(names, ",")
    return m
  end,
}
-- the groups' means with their CI95 over seeds (when a run has finished)
local ok, err = pcall(knnd.report.plot_groups, sw, { by = "mode", metrics = { "alignment_heldout", "alignment_seen" }, path = "alignment_by_mode.png",
  ylabel = "the judge's alignment" })
if not ok then print("no plot: " .. tostring(err)) end
