-- manipulation_emoji.lua — text-driven local edits on emoji (colour and object edits whose names exist
-- among the emoji captions), on the folder of a stickers run (experiments/stickers.lua: the emoji dataset,
-- its CLIP, embeddings and index, and its kNN text-to-image model as the baseline that regenerates the
-- whole image from the text).
--
--   knnd run experiments/stickers.lua                          # first: runs/stickers/
--   knnd run experiments/manipulation_emoji.lua                # an edit model into runs/stickers/edit/, the edits
--   knnd run experiments/manipulation_emoji.lua --set align=resize --set name=edit-resize
--
-- The edit model (knnd.edit: the stickers UNet with the image as 3 extra input channels; v-prediction, as the
-- quickstart's, which kept edit models' samples clean where eps gave noise) trains on pairs made from the
-- emoji with the stickers CLIP and index. Each edit turns the emoji of its source name into its
-- target name with `per_edit` seeds; so does the baseline, from the target name alone. Metrics per edit and
-- in the mean (metrics.json; edits.csv; edits.png: rows source, edits, regenerations):
--   top1, top10    edit success: the target name is CLIP's best (top-10) match among all emoji names
--   clip_gain      cos(result, target name) - cos(source, target name)
--   changed, outside, overall   preservation (knnd.edit.preservation): the share of pixels changed, the mean
--                  |change| outside that region and overall
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  stickers = "runs/stickers",
  name = "edit",
  seed = 0,
  align = knnd.config.param("ecc_affine", "how the retrieved neighbour is fitted into the area",
    { values = { "ecc_affine", "ecc_euclidean", "resize" } }),
  box = { 0.3, 0.7 },
  baseline = "knn",
  unet = { channels = 64, res_blocks = 1, steps = 2000, batch = 32, lr = 3e-4, p_uncond = 0.1, ema = 0.995, -- (see stickers.lua)
    checkpoint_every = 200, prediction = "v" },
  sample = { sampler = "dpmpp", steps = 25, guidance = 3.0, strength = 1.0 },
  per_edit = 4,
  -- the weights edited with and regenerated from: the EMA's (model.h5) or, "live", the training checkpoints'
  -- own (after a run shorter than the EMA's horizon, 1 / (1 - ema) steps, the average still holds the init)
  weights = knnd.config.param("ema", "which weights of the two models to use", { values = { "ema", "live" } }),
  -- source name > target name: colour edits, then object edits (the ones missing from the dataset are skipped)
  edits = "red apple>green apple,red heart>blue heart,green heart>yellow heart,blue circle>red circle,"
    .. "cat face>dog face,grinning face>smiling face with sunglasses,sun>snowflake,rocket>airplane",
}
local exists = require("knnd.cliutil").exists
local dir = opt.stickers
local function need(path, what)
  if not exists(path) then
    error(("manipulation_emoji: %s '%s' not found (run experiments/stickers.lua --set out=%s first)"):format(what, path,
      dir), 0)
  end
end
local ds_path, emb_path, index_path = ("%s/data/emoji32.h5"):format(dir), dir .. "/data/emoji_emb.h5", dir .. "/data/emoji.index"
for _, f in ipairs { { ds_path, "the emoji dataset" }, { emb_path, "the embeddings" }, { index_path, "the index" },
  { dir .. "/clip.safetensors", "the CLIP" } } do need(f[1], f[2]) end
local baseline_path = ("%s/%s/%s"):format(dir, opt.baseline, opt.weights == "live" and "checkpoint.h5" or "model.h5")
need(baseline_path, "the baseline model")

local t_start = knnd.wall_time()
local clip = knnd.clip.load(dir .. "/clip.safetensors", { tokenizer = dir .. "/clip.merges.txt" })
local ds = knnd.dataset.open(ds_path)
local n = ds:count()
local all = knnd.arange(0, n, { dtype = "i64" })
local images = ds:images(all)
local size = images:size(3)
local captions, row_of = {}, {}
for r = 0, n - 1 do
  captions[r + 1] = ds:caption(r)
  row_of[captions[r + 1]] = row_of[captions[r + 1]] or r
end
local store = knnd.embeddings.open(emb_path)
local index = knnd.index.load(index_path, { store = store })
local dim = index:info().dim

-- the edit model
local out = dir .. "/" .. opt.name
local u = opt.unet
local model = kd.new { image_size = size, channels = 3, seed = opt.seed, edit = true,
  cond = { mode = "knn", k = 10, dim = dim, p_uncond = u.p_uncond },
  unet = { channels = u.channels, num_res_blocks = u.res_blocks, attention_resolutions = { 16, 8 } },
  diffusion = { prediction = u.prediction } }
print(tostring(model))
local maker = knnd.edit.pairs { clip = clip, index = index, images = images, embeddings = store, k = 10, align = opt.align,
  box = opt.box }
local r = kd.train { model = model, dataset = ds_path, embeddings = emb_path, pairs = maker, out = out, steps = u.steps,
  batch = u.batch, lr = u.lr, ema = u.ema, seed = opt.seed, checkpoint_every = u.checkpoint_every, name = opt.name }
local t_train = knnd.wall_time() - t_start
if maker.stats.pairs > 0 then
  print(("pairs: %d made, ECC converged on %d"):format(maker.stats.pairs, maker.stats.ecc_converged))
end
model = kd.load(out .. (opt.weights == "live" and "/checkpoint.h5" or "/model.h5"), { weights = opt.weights })
local baseline = kd.load(baseline_path, { weights = opt.weights })

-- judging: CLIP retrieval among all names
local names_emb = knnd.no_grad(function() return clip:encode_text(captions, { normalize = true }) end)
local function retrieval(imgs, target_row)
  local e = knnd.no_grad(function() return clip:encode_images(knnd.clamp((imgs + 1) * 0.5, 0, 1), { normalize = true }) end)
  local sim = knnd.matmul(e, names_emb:t())
  local own = sim:narrow(2, target_row + 1, 1)
  local rank = knnd.gt(sim, own):to("f32"):sum { dim = 2 }
  return knnd.lt(rank, 1):to("f32"):mean():item(), knnd.lt(rank, 10):to("f32"):mean():item()
end

local s = opt.sample
local keys = { "top1", "top10", "clip_gain", "changed", "outside", "overall" }
local mean = { edit = {}, regenerate = {} }
for _, side in pairs(mean) do for _, k in ipairs(keys) do side[k] = 0 end end
local csv = { "edit,model," .. table.concat(keys, ",") }
local grid, caps, done = {}, {}, {}
for spec in opt.edits:gmatch("[^,]+") do
  local src_name, dst_name = spec:match("^%s*(.-)%s*>%s*(.-)%s*$")
  if not src_name or src_name == "" or not dst_name or dst_name == "" then
    error(("manipulation_emoji: edit '%s' is not 'source name>target name'"):format(spec), 0)
  end
  if not row_of[src_name] or not row_of[dst_name] then
    print(("skipped %s -> %s: %s is not an emoji name here"):format(src_name, dst_name,
      row_of[src_name] and dst_name or src_name))
  else
    local x = images:narrow(1, row_of[src_name] + 1, 1):to("f32") / 127.5 - 1
    local seed = opt.seed * 1000 + #done + 1
    local ed = knnd.edit.run { model = model, clip = clip, index = index, image = x, text = dst_name, n = opt.per_edit,
      strength = s.strength ~= 1 and s.strength or nil, sampler = s.sampler, steps = s.steps, guidance = s.guidance,
      seed = seed }
    local g = kd.generate { model = baseline, clip = clip, index = index, prompts = { dst_name }, n = opt.per_edit,
      sampler = baseline:sampler_option(s.sampler), steps = s.steps, guidance = s.guidance, seed = seed, progress = false }
    local src = x:expand(opt.per_edit, 3, size, size):contiguous()
    for _, side in ipairs { { "edit", ed.images }, { "regenerate", g.images } } do
      local imgs = side[2]
      local v = {}
      v.top1, v.top10 = retrieval(imgs, row_of[dst_name])
      v.clip_gain = knnd.edit.clip_gain(clip, src, imgs, dst_name).gain
      local pv = knnd.edit.preservation(src, imgs)
      v.changed, v.outside, v.overall = pv.changed, pv.outside, pv.overall
      local row = { ("%s -> %s"):format(src_name, dst_name), side[1] }
      for _, k in ipairs(keys) do
        row[#row + 1] = ("%.4f"):format(v[k])
        mean[side[1]][k] = mean[side[1]][k] + v[k]
      end
      csv[#csv + 1] = table.concat(row, ",")
    end
    done[#done + 1] = ("%s -> %s"):format(src_name, dst_name)
    grid[#grid + 1] = src
    grid[#grid + 1] = ed.images
    grid[#grid + 1] = g.images
    for i = 1, 3 * opt.per_edit do
      caps[#caps + 1] = (i == 1) and src_name or (i == opt.per_edit + 1) and ("edit: " .. dst_name)
        or (i == 2 * opt.per_edit + 1) and "regenerated" or ""
    end
  end
end
if #done == 0 then error("manipulation_emoji: none of the edits' names is an emoji of this dataset", 0) end
for _, side in pairs(mean) do for _, k in ipairs(keys) do side[k] = side[k] / #done end end
kd.write_atomic(out .. "/edits.csv", table.concat(csv, "\n") .. "\n")
knnd.save_grid(out .. "/edits.png", knnd.cat(grid, 1), { nrow = opt.per_edit, range = { -1, 1 }, scale = 3, captions = caps,
  title = "per edit: the source, its edits, then regenerations from the target name" })
local metrics = { config = opt, edits = done, edit = mean.edit, regenerate = mean.regenerate, final_loss = r.loss,
  train_seconds = t_train, ecc_converged = maker.stats.pairs > 0 and maker.stats.ecc_converged / maker.stats.pairs or nil,
  wall_seconds = knnd.wall_time() - t_start }
kd.write_atomic(out .. "/metrics.json", require("dkjson").encode(metrics, { indent = true }) .. "\n")
print(("\n%d edits, %d seeds each          top-1   top-10  CLIP gain  changed  outside  overall"):format(#done, opt.per_edit))
for _, side in ipairs { "edit", "regenerate" } do
  local m = mean[side]
  print(("  %-30s %6.1f%% %6.1f%%   %+.3f    %.3f    %.3f    %.3f"):format(side, 100 * m.top1, 100 * m.top10,
    m.clip_gain, m.changed, m.outside, m.overall))
end
print(("manipulation_emoji finished in %.0f s. Results in %s/: metrics.json, edits.csv, edits.png"):format(
  metrics.wall_seconds, out))
