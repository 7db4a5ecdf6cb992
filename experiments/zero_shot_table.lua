-- zero_shot_table.lua — the paper's Table 1 layout: a row per system (the published LAFITE,
-- FuseDream, kNN-Diffusion ... numbers of eval/baselines, then our runs), a column per dataset,
-- each cell the zero-shot FID under the same protocol (knnd.eval.zero_shot: captions -> samples
-- -> statistics -> FID against the real set).
--
--   knnd run experiments/zero_shot_table.lua             # our quickstart models on Fashion-MNIST
--   knnd run experiments/zero_shot_table.lua --set inception=pt_inception.safetensors \
--     --set coco.run=runs/coco --set coco.captions=coco_val2014_captions.txt \
--     --set coco.reference=coco_val2014_30k.npz           # and MS-COCO (likewise lncoco.*, cub.*)
--
-- MS-COCO, LN-COCO and CUB need the user's data: a run trained on it (knnd.testbed layout:
-- clip.safetensors, clip.merges.txt, data/train_emb.h5, data/train.index, <model>/model.h5), the
-- evaluation captions (one per line) and the reference images or statistics, plus pytorch-fid's
-- Inception weights (eval/convert_inception.py): the published numbers are Inception FIDs and a
-- cell is only ever compared with its own column's extractor. The embedded dataset's column is
-- FID[fmnist-cnn] (the testbed's classifier), labelled so.
local knnd = require "knnd"
local report = knnd.report
local files = require "knnd.files"

local function user_dataset() return { run = "", captions = "", reference = "", n = 30000 } end
local opt = knnd.options {
  run = "runs/quickstart",   -- the embedded column: the testbed with its models
  models = "knn,no_knn",
  n = 1000,                  -- samples per model on the embedded data
  inception = "",
  coco = user_dataset(), lncoco = user_dataset(), cub = user_dataset(),
  steps = 20, guidance = 3.0, batch = 50, seed = 0,
  out = "",                  -- default <run>/zero_shot_table
}
local out = opt.out ~= "" and opt.out or (opt.run .. "/zero_shot_table")
files.mkdir_p(out)

local function need(path, what, hint)
  if not files.exists(path) then error(("zero_shot_table: %s '%s' not found (%s)"):format(what, path, hint), 0) end
  return path
end

-- one column: {key, title, run, captions (opts for zero_shot), reference, extractor, n}
local columns = {}
do
  need(opt.run .. "/judge.h5", "the testbed's classifier", "run experiments/quickstart.lua first, or --set run=<a testbed>")
  local tb = knnd.testbed.open(opt.run)
  local test_path = opt.run .. "/data/test.h5"
  if not files.exists(test_path) then
    knnd.dataset.prepare_fashion_mnist { out = test_path, split = "test", size = 28, channels = 1 }
  end
  columns[#columns + 1] = { key = "fashion-mnist", run = opt.run, caption_opts = { dataset = test_path },
    reference = test_path, extractor = tb:fid_reference().extractor, n = opt.n, testbed = tb }
end
local names = { coco = "ms-coco", lncoco = "ln-coco", cub = "cub" }
for _, key in ipairs { "coco", "lncoco", "cub" } do
  local d = opt[key]
  if d.run ~= "" then
    local hint = ("--set %s.run/captions/reference and --set inception"):format(key)
    if opt.inception == "" then error(("zero_shot_table: the %s column is an Inception FID: give --set inception=<weights>"):format(names[key]), 0) end
    need(d.captions, key .. ".captions", hint)
    need(d.reference, key .. ".reference", hint)
    columns[#columns + 1] = { key = names[key], run = need(d.run, key .. ".run", hint),
      caption_opts = { captions = d.captions }, reference = d.reference, n = d.n,
      extractor = knnd.eval.inception(need(opt.inception, "the Inception weights", "eval/convert_inception.py")) }
  end
end

-- our cells
local ours = {}
for _, col in ipairs(columns) do
  local clip = knnd.clip.load(need(col.run .. "/clip.safetensors", "the CLIP of", col.run),
    { tokenizer = need(col.run .. "/clip.merges.txt", "the tokenizer of", col.run) })
  local store = knnd.embeddings.open(need(col.run .. "/data/train_emb.h5", "the image embeddings of", col.run))
  local index = knnd.index.load(need(col.run .. "/data/train.index", "the index of", col.run), { store = store })
  for name in opt.models:gmatch("[^,%s]+") do
    local model_path = col.run .. "/" .. name .. "/model.h5"
    if files.exists(model_path) then
      local model = knnd.knn_diffusion.load(model_path)
      local o = { model = model, clip = clip, index = index, n = col.n, reference = col.reference,
        extractor = col.extractor, out = ("%s/%s/%s"):format(out, col.key, name), batch = opt.batch, steps = opt.steps,
        guidance = opt.guidance, seed = opt.seed, name = name, kid = false, r_precision = false }
      for k, v in pairs(col.caption_opts) do o[k] = v end
      local r = knnd.eval.zero_shot(o)
      ours[name] = ours[name] or { params = r.params }
      ours[name][col.key] = r
      print(("%s on %s: %s %.3f (%d samples)"):format(name, col.key, r.fid_label, r.fid, r.n))
    else
      print(("zero_shot_table: no model '%s' in %s: left out"):format(name, col.run))
    end
  end
end

-- the table: published rows first (their datasets as columns too), then ours
local col_keys, col_label = {}, {}
local function add_col(key, label)
  if not col_label[key] then col_keys[#col_keys + 1] = key end
  col_label[key] = label
end
for _, d in ipairs { "ms-coco", "ln-coco", "cub" } do add_col(d, d .. " FID") end
for _, col in ipairs(columns) do add_col(col.key, ("%s %s"):format(col.key, knnd.eval.fid_label(col.extractor.id))) end
local header = { "system", "params (M)", "setting" }
for _, k in ipairs(col_keys) do header[#header + 1] = col_label[k] end
local rows, by_system = {}, {}
for _, b in ipairs(report.baselines {}) do
  local key = b.system .. (b.variant and (" (" .. b.variant .. ")") or "")
  local row = by_system[key]
  if not row then
    row = { key, b.params_m, b.setting }
    by_system[key] = row
    rows[#rows + 1] = row
  end
  for c, k in ipairs(col_keys) do
    if k == b.dataset and b.extractor == knnd.eval.INCEPTION_POOL3 then row[3 + c] = b.fid end
  end
end
local our_names = {}
for name in pairs(ours) do our_names[#our_names + 1] = name end
table.sort(our_names)
for _, name in ipairs(our_names) do
  local cells = ours[name]
  local row = { "ours: " .. name, cells.params / 1e6, "zero-shot (knnd)" }
  for c, k in ipairs(col_keys) do
    local r = cells[k]
    if r then row[3 + c] = r.fid end
  end
  rows[#rows + 1] = row
end
files.write_atomic(out .. "/table.csv", report.csv(header, rows))
local md = ("## Zero-shot FID (the paper's Table 1 layout)\n\n%s\n"
  .. "Published rows: eval/baselines/zero_shot_fid.csv (sources there). FID columns are pytorch-fid's "
  .. "Inception pool3; FID[name] columns use another extractor and compare only within themselves.\n")
  :format(report.markdown_table(header, rows))
files.write_atomic(out .. "/table.md", md)
io.write(md)
print(("zero_shot_table finished: %s/table.md and table.csv"):format(out))
