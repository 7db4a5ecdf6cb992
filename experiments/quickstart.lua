-- quickstart.lua — the method end to end on the embedded data (Fashion-MNIST from Debian), no
-- pretrained weights, on 2 CPU cores in about a quarter of an hour:
--
--   1. train a small CLIP on the training images and caption templates (the only place text is used
--      before sampling), and a Fashion-MNIST classifier (the judge of text alignment);
--   2. encode the 60k training images, build the image index (FAISS, exact inner product) and
--      the neighbour cache (each image's k nearest other images);
--   3. train the kNN-conditioned UNet WITHOUT ANY TEXT (condition: the image's CLIP embedding and
--      its k neighbours), and an identical no_knn model (the embedding alone, the paper's ablation);
--   4. sample both from the 10 class prompts and paraphrases (text embedding + its k nearest
--      images), judge the samples with the classifier, score them with FID[fmnist-cnn] and KID
--      (the classifier's features standing in for Inception's) against the test set, write grids,
--      curves and metrics.
--
--   knnd run experiments/quickstart.lua [--set out=runs/quickstart --set unet.steps=1500 --set modes=knn]
--   knnd run experiments/quickstart.lua --set device=cuda   # the UNets train and sample on the GPU
--
-- Every stage keeps its result in the run folder and is skipped when rerun (training resumes from
-- its checkpoint), so an interrupted quickstart picks up where it stopped.
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  out = "runs/quickstart",
  seed = 0,
  device = knnd.config.param("cpu", "where the diffusion models train and sample: cpu, cuda or cuda:N (CLIP, the "
    .. "judge and retrieval stay on the CPU)"),
  modes = "knn,no_knn",      -- conditioning modes to train and compare (knn, no_knn, lafite_noise, knn_only)
  k = 10,                    -- neighbours in the condition
  clip = { steps = 600, batch = 256, width = 64, layers = 2, lr = 2e-3 },
  judge = { steps = 500, batch = 64 },
  -- v-prediction: near t = T the eps a short training run learns turns into x0 errors of ~10
  -- (alpha_bar ~ 1e-4 there); predicting v kept 300-step samples recognisable (39% vs 29% alignment)
  unet = { channels = 32, res_blocks = 1, steps = 600, batch = 64, lr = 1e-3, p_uncond = 0.1, ema = 0.99,
    checkpoint_every = 100, prediction = "v" },
  sample = { sampler = "dpmpp", steps = 20, guidance = 3.0, per_prompt = 8, eval_per_class = 20 },
}
local out = opt.out
kd.check_device("experiments/quickstart.lua", opt.device) -- a bad device fails now, not after the CLIP stage
local function fmt_s(s) return ("%.0f s"):format(s) end
local t_start = knnd.wall_time()
local timings, metrics = {}, { config = opt }
local function stage(name, fn)
  local t0 = knnd.wall_time()
  local r = table.pack(fn())
  timings[name] = knnd.wall_time() - t0
  print(("[%s] %s done in %s"):format(fmt_s(knnd.wall_time() - t_start), name, fmt_s(timings[name])))
  return table.unpack(r, 1, r.n)
end

-- 1-2. the testbed (lua/knnd/testbed.lua): the training set, CLIP from scratch on images and
-- class-name captions (the diffusion model never sees these), the judge (a classifier trained on
-- the labelled images), the CLIP image embeddings, the FAISS index and the neighbour cache. The
-- ablation sweeps of experiments/ share this folder.
local tb = knnd.testbed.fmnist { dir = out, seed = opt.seed, k = opt.k, clip = opt.clip, judge = opt.judge,
  unet = opt.unet, sample = opt.sample, stage = stage, device = opt.device }
local classes, train, test, clip, judge, index = tb.classes, tb.train_set, tb.test_set, tb.clip, tb.judge, tb.index
print(("Fashion-MNIST: %d training and %d test images (%s)"):format(train.n, test.n, knnd.data.fashion_mnist_dir))
metrics.clip_zero_shot = knnd.clip.zero_shot { model = clip, images = test.images, labels = test.labels,
  classes = classes }
print(("CLIP zero-shot accuracy on the test set: %.1f%%"):format(100 * metrics.clip_zero_shot))
metrics.judge_test_accuracy = judge.test_accuracy
print(("judge (classifier) accuracy on the test set: %.1f%%"):format(100 * judge.test_accuracy))

-- what retrieval gives: training images and their neighbours, prompts and their nearest images
local prompts = tb.prompts
do
  local store = index:store()
  local rows = knnd.tensor({ 0, 1, 2, 3, 5, 8, 16, 18 }, { dtype = "i64" })
  local nb = index:knn(store:gather(rows), { k = 8, ids = rows, exclude_self = true })
  knnd.retrieval.neighbor_grid { path = out .. "/neighbors_images.png", images = train.images,
    neighbor_rows = nb.rows, query_images = train.images:index_select(1, rows), scores = nb.scores, scale = 2,
    title = "training images (left) and their nearest neighbours in the index (the training condition)" }
  local q = knnd.no_grad(function() return clip:encode_text(prompts, { normalize = true }) end)
  local tn = index:knn(q, { k = 8 })
  knnd.retrieval.neighbor_grid { path = out .. "/neighbors_text.png", images = train.images, neighbor_rows = tn.rows,
    query_texts = prompts, scores = tn.scores, scale = 2,
    title = "class prompts and their nearest images (the sampling condition)" }
  -- the modality gap the kNN tokens bridge: cosine of a prompt to its nearest images vs. an
  -- image to its neighbours
  metrics.mean_cos_text_to_nn = tn.scores:mean():item()
  metrics.mean_cos_image_to_nn = nb.scores:mean():item()
end

-- FID[fmnist-cnn]: no Inception weights here, so the judge's penultimate features stand in for
-- Inception's (labelled so, never mixed with FID). The reference is the test set; the floor is
-- the same number for as many real training images as samples are judged (the best a model can
-- score at that sample size).
local fid_label, floor_n
stage("fid reference", function()
  local ref = tb:fid_reference()
  fid_label, floor_n = ref.label, tb:samples_judged()
  metrics.fid_extractor = ref.extractor.id
  metrics.fid_real_floor, metrics.kid_real_floor = tb:real_floor(floor_n)
  print(("%s of %d real training images against the test set (the floor at this sample size): %.2f")
    :format(fid_label, floor_n, metrics.fid_real_floor))
end)

-- 3 + 4. train each conditioning mode without text, then sample from text, judge and score
local modes = {}
for m in opt.modes:gmatch("[^,%s]+") do modes[#modes + 1] = m end
local logs = {}
metrics.modes = {}
for _, mode in ipairs(modes) do
  local dir = out .. "/" .. mode
  local model, r = stage("train " .. mode, function() return tb:train { mode = mode, out = dir, name = mode } end)
  logs[#logs + 1] = { name = mode, log = r.log }
  local m = { final_loss = r.loss, train_seconds = timings["train " .. mode] }
  stage("sample " .. mode, function()
    local s = opt.sample
    -- the picture: the class prompts, a row each
    kd.generate { model = model, clip = clip, index = index, prompts = prompts, n = s.per_prompt, sampler = s.sampler,
      steps = s.steps, guidance = s.guidance, seed = opt.seed, grid = dir .. "/samples.png", device = opt.device,
      title = ("%s: samples from the class prompts (trained without text)"):format(mode) }
    -- the measurement: every eval prompt, judged by the classifier and scored against the test set
    local e = tb:evaluate { model = model }
    e.images = nil
    for k, v in pairs(e) do m[k] = v end
  end)
  metrics.modes[mode] = m
  print(("%s: text alignment %.1f%% (class prompts %.1f%%, paraphrases %.1f%%) over %d samples, %s %.2f, final loss %.4f")
    :format(mode, 100 * m.alignment, 100 * m.alignment_class_prompts, 100 * m.alignment_paraphrases,
      m.samples_judged, fid_label, m.fid_cnn, m.final_loss or 0 / 0))
end

kd.plot_losses { path = out .. "/loss.png", runs = logs, title = "UNet training loss by conditioning mode" }
local names, values = {}, {}
for _, mode in ipairs(modes) do
  names[#names + 1] = mode
  values[#values + 1] = 100 * metrics.modes[mode].alignment
end
knnd.plot { path = out .. "/alignment.png", title = "text alignment of samples (classifier accuracy, %)",
  xlabel = "mode (" .. table.concat(names, ", ") .. ")", ylabel = "accuracy %",
  series = { { name = "alignment", x = (function() local x = {} for i = 1, #names do x[i] = i end return x end)(),
    y = values } } }
metrics.timings = timings
metrics.wall_seconds = knnd.wall_time() - t_start
kd.write_atomic(out .. "/metrics.json", require("dkjson").encode(metrics, { indent = true }) .. "\n")

print(("\nquickstart finished in %s. Results in %s/:"):format(fmt_s(metrics.wall_seconds), out))
print("  metrics.json           every number below, the config and the stage timings")
print("  loss.png, alignment.png  training loss per mode; text alignment per mode")
for _, mode in ipairs(modes) do
  print(("  %s/samples.png%s  samples from the class prompts (%s); %s/model.h5, checkpoint.h5, log.csv")
    :format(mode, (" "):rep(math.max(0, 10 - #mode)), mode, mode))
end
print("  neighbors_images.png, neighbors_text.png  what retrieval returns for images and for prompts")
print(("  text alignment (judge accuracy %.1f%% on real test images) and %s / KID[fmnist-cnn]x1000 against the test set:")
  :format(100 * judge.test_accuracy, fid_label))
for _, mode in ipairs(modes) do
  local m = metrics.modes[mode]
  print(("    %-12s %5.1f%%   %7.2f   %7.3f"):format(mode, 100 * m.alignment, m.fid_cnn, 1000 * m.kid_cnn))
end
print(("    %-12s %6s   %7.2f   %7.3f   (%d real training images: the floor)"):format("real", "",
  metrics.fid_real_floor, 1000 * metrics.kid_real_floor, floor_n))
