-- zero_shot.lua — the zero-shot protocol of the paper on a trained run: captions -> N samples per
-- model -> FID / KID / CLIP score / R-precision against the real images -> one row per model, a
-- table, and (with Inception weights) the published systems beside ours.
--
--   knnd run experiments/quickstart.lua && knnd run experiments/zero_shot.lua
--       the quickstart's knn and no_knn models on the Fashion-MNIST test captions, FID[fmnist-cnn]
--       (the quickstart's classifier as the feature extractor: no Inception weights needed)
--   knnd run experiments/zero_shot.lua --set inception=pt_inception.safetensors
--       adds pytorch-fid's FID (weights converted by eval/convert_inception.py)
--   knnd run experiments/zero_shot.lua --set run=runs/coco --set captions=coco_val2014_captions.txt \
--       --set reference=coco_val2014_30k.npz --set n=30000 --set dataset=ms-coco --set inception=...
--       the paper's MS-COCO protocol, given a run trained on the user's data
--   --set guidance_sweep=1,2,3,5 adds FID against guidance (<label>_vs_guidance.png)
--
-- Samples are kept in <out>/<model>/samples/part-*.h5: an interrupted evaluation continues.
local knnd = require "knnd"
local kd = knnd.knn_diffusion
local exists = require("knnd.cliutil").exists

local opt = knnd.options {
  run = "runs/quickstart",  -- a folder with clip.safetensors, clip.merges.txt, data/train.index, <model>/model.h5
  models = "knn,no_knn",    -- model folders of the run to evaluate
  captions = "",            -- one caption per line (default: the captions of the test split)
  reference = "",           -- real images or statistics (default: the test split)
  dataset = "fashion-mnist", -- the name the baselines table uses (ms-coco, ln-coco, cub)
  n = 1000,
  sampler = "dpmpp", steps = 20, guidance = 3.0, batch = 50, part = 500, seed = 0,
  inception = "",           -- pytorch-fid Inception weights (safetensors); adds FID
  judge = "",               -- the classifier for FID[<judge_name>] (default: <run>/judge.h5)
  judge_name = "fmnist-cnn",
  guidance_sweep = "",      -- e.g. "1,2,3,5": FID of each model at these guidance scales (n/4 samples)
  out = "",                 -- default <run>/zero_shot
}
local run = opt.run
local out = opt.out ~= "" and opt.out or (run .. "/zero_shot")
local function need(path, what)
  if not exists(path) then
    error(("zero_shot: %s '%s' not found (run experiments/quickstart.lua first, or --set run=<a trained run>)")
      :format(what, path), 0)
  end
  return path
end
local clip = knnd.clip.load(need(run .. "/clip.safetensors", "the run's CLIP"),
  { tokenizer = need(run .. "/clip.merges.txt", "the run's tokenizer") })
local store = knnd.embeddings.open(need(run .. "/data/train_emb.h5", "the run's image embeddings"))
local index = knnd.index.load(need(run .. "/data/train.index", "the run's index"), { store = store })
os.execute(("mkdir -p '%s'"):format(out))

-- the real set: the test split (prepared once), unless the user gives theirs
local reference, captions = opt.reference, opt.captions
if reference == "" or captions == "" then
  local test_path = run .. "/data/test.h5"
  if not exists(test_path) then
    knnd.dataset.prepare_fashion_mnist { out = test_path, split = "test", size = 28, channels = 1 }
  end
  if reference == "" then reference = test_path end
  if captions == "" then captions = test_path end
end
local caption_opts = knnd.eval.is_stats_file(captions) and error("zero_shot: 'captions' is a statistics file", 0)
  or (captions:match("%.h5$") and { dataset = captions } or { captions = captions })

-- the extractors: Inception when its weights are given, the run's classifier always (labelled)
local extractors = {}
if opt.inception ~= "" then extractors[#extractors + 1] = knnd.eval.inception(need(opt.inception, "the Inception weights")) end
local judge_path = opt.judge ~= "" and opt.judge or (run .. "/judge.h5")
if exists(judge_path) then
  extractors[#extractors + 1] = knnd.eval.classifier_extractor(judge_path, { name = opt.judge_name })
end
if #extractors == 0 then
  error(("zero_shot: no feature extractor: give --set inception=<weights> or a classifier at '%s'"):format(judge_path), 0)
end

local function evaluate(name, model, guidance, n, dir)
  local rows = {}
  for i, ex in ipairs(extractors) do
    local o = { model = model, clip = clip, index = index, n = n, reference = reference, extractor = ex,
      out = dir, batch = opt.batch, part = opt.part, sampler = opt.sampler, steps = opt.steps, guidance = guidance,
      seed = opt.seed, name = name, clip_score = i == 1, r_precision = i == 1 }
    for k, v in pairs(caption_opts) do o[k] = v end
    local r = knnd.eval.zero_shot(o)
    r.dataset = opt.dataset
    rows[#rows + 1] = r
  end
  return rows
end

local rows, by_guidance = {}, {}
for name in opt.models:gmatch("[^,%s]+") do
  local model = kd.load(need(run .. "/" .. name .. "/model.h5", "the model"))
  print(("%s: %s"):format(name, tostring(model)))
  for _, r in ipairs(evaluate(name, model, opt.guidance, opt.n, out .. "/" .. name)) do
    rows[#rows + 1] = r
    print(("%-10s %s %.3f  %s"):format(name, r.fid_label, r.fid, r.kid and
      ("%s %.5f ± %.5f"):format(r.kid_label, r.kid, r.kid_std) or ""))
  end
  for g in opt.guidance_sweep:gmatch("[^,%s]+") do
    local gv = tonumber(g) or error(("zero_shot: guidance_sweep holds '%s' (expected numbers)"):format(g), 0)
    local n = math.max(20, opt.n // 4)
    local rs = evaluate(name, model, gv, n, ("%s/%s/guidance_%s"):format(out, name, g))
    for _, r in ipairs(rs) do by_guidance[#by_guidance + 1] = r end
  end
end

knnd.report.write_table { rows = rows, markdown = out .. "/zero_shot.md", csv = out .. "/zero_shot.csv",
  title = ("Zero-shot evaluation on %s (%d samples per model)"):format(opt.dataset, opt.n) }
if #by_guidance > 0 then
  for _, ex in ipairs(extractors) do
    local label = knnd.eval.fid_label(ex.id):gsub("[^%w]+", "_"):gsub("_$", "")
    knnd.report.fid_vs { rows = by_guidance, x = "guidance", extractor = ex.id, group = "name",
      path = ("%s/%s_vs_guidance.png"):format(out, label:lower()),
      title = ("%s against the guidance scale"):format(knnd.eval.fid_label(ex.id)) }
  end
end
local inception_rows = {}
for _, r in ipairs(rows) do if r.extractor == knnd.eval.INCEPTION_POOL3 then inception_rows[#inception_rows + 1] = r end end
if #inception_rows > 0 then
  knnd.report.fid_vs_params { rows = inception_rows, dataset = opt.dataset, path = out .. "/fid_vs_params.png" }
end
print(("zero_shot finished: %s/zero_shot.md and .csv"):format(out))
io.write(require("knnd.files").read_all(out .. "/zero_shot.md"))
