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
--
-- Every stage keeps its result in the run folder and is skipped when rerun (training resumes from
-- its checkpoint), so an interrupted quickstart picks up where it stopped.
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  out = "runs/quickstart",
  seed = 0,
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
os.execute(("mkdir -p '%s/data'"):format(out))
local exists = require("knnd.cliutil").exists
local function fmt_s(s) return ("%.0f s"):format(s) end
local t_start = knnd.wall_time()
local timings, metrics = {}, { config = opt }
local function stage(name, fn)
  local t0 = knnd.wall_time()
  local r = fn()
  timings[name] = knnd.wall_time() - t0
  print(("[%s] %s done in %s"):format(fmt_s(knnd.wall_time() - t_start), name, fmt_s(timings[name])))
  return r
end

local classes = knnd.data.fashion_mnist_classes
local train = knnd.data.fashion_mnist { split = "train" }
local test = knnd.data.fashion_mnist { split = "test" }
print(("Fashion-MNIST: %d training and %d test images (%s)"):format(train.n, test.n, knnd.data.fashion_mnist_dir))

-- 1a. the dataset the diffusion model trains on: u8 [N,1,28,28], the same row order as `train`
local ds_path = out .. "/data/train.h5"
stage("dataset", function()
  if not exists(ds_path) then
    knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = 28, channels = 1, seed = opt.seed }
  end
end)

-- 1b. CLIP from scratch on images + class-name captions (the diffusion model never sees these)
local clip_path = out .. "/clip.safetensors"
local merges = out .. "/clip.merges.txt"
local clip = stage("clip", function()
  if exists(clip_path) and exists(merges) then return knnd.clip.load(clip_path, { tokenizer = merges }) end
  knnd.manual_seed(opt.seed)
  local tok = knnd.clip.train_tokenizer(classes, { path = merges })
  local w = opt.clip.width
  local m = knnd.clip.new { embed_dim = w, image_size = 28, patch_size = 7, vision_width = w,
    vision_layers = opt.clip.layers, vision_heads = math.max(1, w // 16), context_length = 16, text_width = w,
    text_layers = opt.clip.layers, text_heads = math.max(1, w // 16), tokenizer = tok }
  knnd.clip.train { model = m, images = train.images, labels = train.labels, classes = classes,
    steps = opt.clip.steps, batch = opt.clip.batch, lr = opt.clip.lr, seed = opt.seed,
    checkpoint = out .. "/clip.ck.h5" }
  m:save(clip_path)
  return m
end)
metrics.clip_zero_shot = knnd.clip.zero_shot { model = clip, images = test.images, labels = test.labels,
  classes = classes }
print(("CLIP zero-shot accuracy on the test set: %.1f%%"):format(100 * metrics.clip_zero_shot))

-- 1c. the judge: a classifier trained on the labelled training images
local judge_path = out .. "/judge.h5"
local judge = stage("judge", function()
  if exists(judge_path) then return knnd.classifier.load(judge_path) end
  local clf = knnd.classifier.new { channels = 1, image_size = 28, classes = 10, seed = opt.seed }
  knnd.classifier.train { model = clf, images = train.images, labels = train.labels, steps = opt.judge.steps,
    batch = opt.judge.batch, seed = opt.seed, desc = "judge" }
  clf.test_accuracy = clf:accuracy(test.images, test.labels)
  clf:save(judge_path)
  return clf
end)
metrics.judge_test_accuracy = judge.test_accuracy
print(("judge (classifier) accuracy on the test set: %.1f%%"):format(100 * judge.test_accuracy))

-- 2. image embeddings, the index and the neighbour cache
local emb_path, index_path, cache_path = out .. "/data/train_emb.h5", out .. "/data/train.index",
  out .. "/data/train_nn.h5"
local index = stage("retrieval", function()
  if not exists(emb_path) then
    clip:encode_dataset { images = train.images, output = emb_path, encoder = "quickstart-clip",
      source_name = ds_path }
  end
  local store = knnd.embeddings.open(emb_path)
  local idx
  if exists(index_path) then
    idx = knnd.index.load(index_path, { store = store })
  else
    idx = knnd.index.build { store = store, factory = "Flat", progress = true }
    idx:save(index_path)
  end
  if not exists(cache_path) then
    knnd.cache.build(cache_path, idx, store, { k = opt.k, exclude_self = true,
      progress = true })
  end
  return idx
end)

-- what retrieval gives: training images and their neighbours, prompts and their nearest images
local prompts, prompt_class = {}, {}
for c, name in ipairs(classes) do
  prompts[c] = ("a photo of a %s"):format(name):gsub(" a ([aeiou])", " an %1")
  prompt_class[c] = c - 1
end
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

-- 3 + 4. train each conditioning mode without text, then sample from text and judge
local paraphrases = { "a {} on a white background", "a picture of a {}", "a product photo of a {}" }
local eval_prompts, eval_class = {}, {}
for c, name in ipairs(classes) do
  eval_prompts[#eval_prompts + 1] = prompts[c]
  eval_class[#eval_class + 1] = c - 1
  for _, p in ipairs(paraphrases) do
    eval_prompts[#eval_prompts + 1] = (p:gsub("{}", name):gsub("^a ([aeiou])", "an %1"):gsub(" a ([aeiou])", " an %1"))
    eval_class[#eval_class + 1] = c - 1
  end
end

-- FID[fmnist-cnn]: no Inception weights here, so the judge's penultimate features stand in for
-- Inception's (labelled so, never mixed with FID). The reference is the test set; the floor is
-- the same number for as many real training images as samples are judged (the best a model can
-- score at that sample size).
local fid_extractor = knnd.eval.classifier_extractor(judge, { name = "fmnist-cnn" })
local fid_label = knnd.eval.fid_label(fid_extractor.id)
local test_stats, test_features, floor_n
stage("fid reference", function()
  test_features = knnd.eval.features(test.images, { extractor = fid_extractor, progress = false })
  test_stats = knnd.metrics.stats(fid_extractor.dim, { extractor = fid_extractor.id, preprocess = fid_extractor.preprocess })
  test_stats:add(test_features)
  test_stats:finish()
  floor_n = #eval_prompts * math.max(1, opt.sample.eval_per_class // (1 + #paraphrases)) -- as many as are judged
  local rows = knnd.randperm(train.n, { gen = knnd.Generator(opt.seed + 7) }):narrow(1, 1, floor_n)
  local real = train.images:index_select(1, rows)
  metrics.fid_real_floor = knnd.eval.fid(real, test_stats, { extractor = fid_extractor, progress = false })
  metrics.kid_real_floor = knnd.eval.kid(real, test_features, { extractor = fid_extractor, seed = opt.seed, progress = false })
  metrics.fid_extractor = fid_extractor.id
  print(("%s of %d real training images against the test set (the floor at this sample size): %.2f")
    :format(fid_label, floor_n, metrics.fid_real_floor))
end)

local modes = {}
for m in opt.modes:gmatch("[^,%s]+") do modes[#modes + 1] = m end
local logs = {}
metrics.modes = {}
for _, mode in ipairs(modes) do
  local dir = out .. "/" .. mode
  local model_path = dir .. "/model.h5"
  local r = stage("train " .. mode, function()
    local model = kd.new { image_size = 28, channels = 1, seed = opt.seed,
      unet = { channels = opt.unet.channels, num_res_blocks = opt.unet.res_blocks },
      cond = { mode = mode, k = opt.k, dim = opt.clip.width, p_uncond = opt.unet.p_uncond },
      diffusion = { prediction = opt.unet.prediction } }
    print(tostring(model))
    return kd.train { model = model, dataset = ds_path, embeddings = emb_path, cache = cache_path, out = dir,
      steps = opt.unet.steps, batch = opt.unet.batch, lr = opt.unet.lr, ema = opt.unet.ema, seed = opt.seed,
      checkpoint_every = opt.unet.checkpoint_every, name = mode }
  end)
  logs[#logs + 1] = { name = mode, log = r.log }
  local model = kd.load(model_path)
  local m = { final_loss = r.loss, train_seconds = timings["train " .. mode] }
  stage("sample " .. mode, function()
    local s = opt.sample
    -- the picture: the class prompts, a row each
    kd.generate { model = model, clip = clip, index = index, prompts = prompts, n = s.per_prompt, sampler = s.sampler,
      steps = s.steps, guidance = s.guidance, seed = opt.seed, grid = dir .. "/samples.png",
      title = ("%s: samples from the class prompts (trained without text)"):format(mode) }
    -- the measurement: every eval prompt, judged by the classifier
    local per = math.max(1, s.eval_per_class // (1 + #paraphrases))
    local g = kd.generate { model = model, clip = clip, index = index, prompts = eval_prompts, n = per,
      sampler = s.sampler, steps = s.steps, guidance = s.guidance, seed = opt.seed + 1 }
    local target = {}
    for i = 0, g.prompt_index:numel() - 1 do target[i + 1] = eval_class[g.prompt_index:get(i + 1) + 1] end
    local pred = judge:predict(g.images)
    local hits = knnd.eq(pred, knnd.tensor(target, { dtype = "i64" })):to("f32")
    m.alignment = hits:mean():item()
    m.samples_judged = hits:numel()
    -- per class and on the class prompts vs. the paraphrases
    m.per_class = {}
    local block = per * (1 + #paraphrases)
    for c = 1, #classes do m.per_class[classes[c]] = hits:narrow(1, (c - 1) * block + 1, block):mean():item() end
    local on_class, on_para = 0, 0
    for c = 1, #classes do
      on_class = on_class + hits:narrow(1, (c - 1) * block + 1, per):sum():item()
      on_para = on_para + hits:narrow(1, (c - 1) * block + per + 1, block - per):sum():item()
    end
    m.alignment_class_prompts = on_class / (per * #classes)
    m.alignment_paraphrases = on_para / ((block - per) * #classes)
    -- the same samples against the test set's feature statistics
    m.fid_cnn = knnd.eval.fid(g.images, test_stats, { extractor = fid_extractor, progress = false })
    m.kid_cnn = knnd.eval.kid(g.images, test_features, { extractor = fid_extractor, seed = opt.seed, progress = false })
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
