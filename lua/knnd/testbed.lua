-- testbed.lua — knnd.testbed: the Fashion-MNIST testbed the quickstart and the ablation sweeps
-- share. One folder holds what every experiment on the embedded data needs, each piece built once
-- (skipped when its file exists) so a sweep of twenty runs pays for CLIP and the index once:
--
--   data/train.h5        the training images (u8 [60000,1,28,28]) with template captions
--   clip.safetensors     a CLIP trained from scratch on the training images and class captions
--   judge.h5             a Fashion-MNIST classifier: text alignment, and the FID[fmnist-cnn] features
--   data/train_emb.h5    the CLIP image embeddings; data/train.index (FAISS Flat); data/train_nn.h5
--                        (each image's nearest other images: the training condition)
--   vqvae/model.h5       the discrete backbone's VQ-VAE (7x7 tokens), trained when a discrete model is
--                        first asked for (tb:vqvae())
--
--   local tb = knnd.testbed.fmnist{dir = "runs/quickstart"}
--   local model, r = tb:train{mode = "knn", k = 10, steps = 600, out = "runs/x/knn"}
--   local m = tb:evaluate{model = model, guidance = 3}     -- alignment, FID[fmnist-cnn], KID
local knnd = require "knnd"
local files = require "knnd.files"
local exists = files.exists

local M = {}
local Testbed = {}
Testbed.__index = Testbed
M.Testbed = Testbed

-- the quickstart's recipe (see experiments/quickstart.lua for why v-prediction and these sizes)
M.defaults = {
  seed = 0,
  device = "cpu", -- where the diffusion models train and sample (knn_diffusion.train's device; CLIP and the judge stay on the CPU)
  k = 10, -- neighbours in the cache (a model may use fewer)
  clip = { steps = 600, batch = 256, width = 64, layers = 2, lr = 2e-3 },
  judge = { steps = 500, batch = 64 },
  unet = { channels = 32, res_blocks = 1, steps = 600, batch = 64, lr = 1e-3, p_uncond = 0.1, ema = 0.99,
    checkpoint_every = 100, prediction = "v" },
  sample = { sampler = "dpmpp", steps = 20, guidance = 3.0, eval_per_class = 20 },
  -- backbone = "discrete": a VQ-VAE downsampling by 4 (28x28 -> 7x7 tokens of 128 codes, EMA codebook), then
  -- VQ-Diffusion's transformer over those 49 tokens (T = 100, as COCO's config; the sampler visits
  -- sample.steps of them)
  vqvae = { steps = 1500, batch = 64, lr = 2e-3, channels = 32, num_codes = 128, embed_dim = 16 },
  discrete = { dim = 128, heads = 4, layers = 4, T = 100, truncation = 0.86 },
}

local PARAPHRASES = { "a {} on a white background", "a picture of a {}", "a product photo of a {}" }

local function article(s)
  return (s:gsub("^a ([aeiou])", "an %1"):gsub(" a ([aeiou])", " an %1"))
end

local function merge(defaults, given)
  local out = {}
  for k, v in pairs(defaults) do
    if type(v) == "table" then out[k] = merge(v, type(given) == "table" and given[k] or nil)
    elseif type(given) == "table" and given[k] ~= nil then out[k] = given[k]
    else out[k] = v end
  end
  return out
end

--- knnd.testbed.fmnist{dir=, seed=0, k=10, clip={...}, judge={...}, stage=function(name, fn) end,
---   index_factory = "Flat", log = print, judge_path= (default dir/judge.h5), device = "cpu" (where tb:train,
---   tb:train_edit and tb:evaluate put the diffusion model: "cpu", "cuda", "cuda:N")} -> the testbed (each
---   piece built once in dir)
--- stage(name, fn) wraps every build step (the quickstart times and prints them); default: fn()
function M.fmnist(o)
  o = o or {}
  local cfg = merge(M.defaults, o)
  local dir = o.dir or error("knnd.testbed.fmnist: option 'dir' (the folder) is required", 2)
  knnd.knn_diffusion.check_device("knnd.testbed.fmnist", cfg.device)
  local stage = o.stage or function(_, fn) return fn() end
  local log = o.log or print
  files.mkdir_p(dir .. "/data")
  local tb = setmetatable({ dir = dir, cfg = cfg, stage = stage, log = log }, Testbed)
  tb.classes = knnd.data.fashion_mnist_classes
  tb.train_set = knnd.data.fashion_mnist { split = "train" }
  tb.test_set = knnd.data.fashion_mnist { split = "test" }
  tb.ds_path = dir .. "/data/train.h5"
  stage("dataset", function()
    if not exists(tb.ds_path) then
      knnd.dataset.prepare_fashion_mnist { out = tb.ds_path, split = "train", size = 28, channels = 1, seed = cfg.seed }
    end
  end)
  -- CLIP from scratch on images + class-name captions (the diffusion model never sees these)
  local clip_path, merges = dir .. "/clip.safetensors", dir .. "/clip.merges.txt"
  tb.clip = stage("clip", function()
    if exists(clip_path) and exists(merges) then return knnd.clip.load(clip_path, { tokenizer = merges }) end
    knnd.manual_seed(cfg.seed)
    local tok = knnd.clip.train_tokenizer(tb.classes, { path = merges })
    local w = cfg.clip.width
    local m = knnd.clip.new { embed_dim = w, image_size = 28, patch_size = 7, vision_width = w,
      vision_layers = cfg.clip.layers, vision_heads = math.max(1, w // 16), context_length = 16, text_width = w,
      text_layers = cfg.clip.layers, text_heads = math.max(1, w // 16), tokenizer = tok }
    knnd.clip.train { model = m, images = tb.train_set.images, labels = tb.train_set.labels, classes = tb.classes,
      steps = cfg.clip.steps, batch = cfg.clip.batch, lr = cfg.clip.lr, seed = cfg.seed, checkpoint = dir .. "/clip.ck.h5" }
    m:save(clip_path)
    return m
  end)
  -- the judge: a classifier trained on the labelled training images. judge_path: a file several
  -- folders share (testbeds that differ only in their CLIP), so that their scores compare
  local judge_path = o.judge_path or dir .. "/judge.h5"
  tb.judge = stage("judge", function()
    if exists(judge_path) then return knnd.classifier.load(judge_path) end
    local clf = knnd.classifier.new { channels = 1, image_size = 28, classes = 10, seed = cfg.seed }
    knnd.classifier.train { model = clf, images = tb.train_set.images, labels = tb.train_set.labels,
      steps = cfg.judge.steps, batch = cfg.judge.batch, seed = cfg.seed, desc = "judge" }
    clf.test_accuracy = clf:accuracy(tb.test_set.images, tb.test_set.labels)
    files.mkdir_p(judge_path:match("^(.*)/[^/]*$") or ".")
    clf:save(judge_path)
    return clf
  end)
  -- image embeddings, the index and the neighbour cache
  tb.emb_path, tb.index_path, tb.cache_path = dir .. "/data/train_emb.h5", dir .. "/data/train.index",
    dir .. "/data/train_nn.h5"
  tb.index = stage("retrieval", function()
    if not exists(tb.emb_path) then
      tb.clip:encode_dataset { images = tb.train_set.images, output = tb.emb_path, encoder = "quickstart-clip",
        source_name = tb.ds_path }
    end
    tb.store = knnd.embeddings.open(tb.emb_path)
    local idx = tb:index_for(o.index_factory or "Flat")
    if not exists(tb.cache_path) then
      knnd.cache.build(tb.cache_path, idx, tb.store, { k = cfg.k, exclude_self = true, progress = true })
    end
    return idx
  end)
  tb.store = tb.store or knnd.embeddings.open(tb.emb_path)
  tb.clip_dim = tb.index:info().dim -- the CLIP found in the folder decides, not the defaults
  -- prompts: the class prompts, and for the measurement each with three paraphrases
  tb.prompts, tb.eval_prompts, tb.eval_class = {}, {}, {}
  for c, name in ipairs(tb.classes) do
    tb.prompts[c] = article(("a photo of a %s"):format(name))
    tb.eval_prompts[#tb.eval_prompts + 1] = tb.prompts[c]
    tb.eval_class[#tb.eval_class + 1] = c - 1
    for _, p in ipairs(PARAPHRASES) do
      tb.eval_prompts[#tb.eval_prompts + 1] = article((p:gsub("{}", name)))
      tb.eval_class[#tb.eval_class + 1] = c - 1
    end
  end
  tb.paraphrases = #PARAPHRASES
  return tb
end

-- the file name of an index built with a FAISS factory string ("Flat" keeps the historical name)
local function index_file(dir, factory)
  if factory == "Flat" then return dir .. "/data/train.index" end
  return ("%s/data/train.%s.index"):format(dir, factory:gsub("[^%w]+", "_"))
end

--- tb:index_for(factory [, {nprobe=, efSearch=}]) -> the index over the training embeddings built
--- with that FAISS factory string (built once and saved beside the Flat one)
function Testbed:index_for(factory, params)
  local path = index_file(self.dir, factory)
  local idx
  if exists(path) then
    idx = knnd.index.load(path, { store = self.store })
  else
    idx = knnd.index.build { store = self.store, factory = factory, progress = true }
    idx:save(path)
  end
  if params then idx:set(params) end
  return idx
end

--- tb:cache_for(factory, k [, params]) -> the path of the neighbour cache (k nearest other images)
--- made with that index: approximate neighbours at training time for the index ablation
function Testbed:cache_for(factory, k, params)
  if factory == "Flat" and k <= self.cfg.k then return self.cache_path end
  -- one cache serves every smaller k: build them at 10, 100 or 1000 so a k sweep builds one or two
  for _, step in ipairs { self.cfg.k, 100, 1000 } do
    if k <= step then k = step break end
  end
  local path = ("%s/data/train_nn.%s.k%d.h5"):format(self.dir, factory:gsub("[^%w]+", "_"), k)
  if not exists(path) then
    knnd.cache.build(path, self:index_for(factory, params), self.store, { k = k, exclude_self = true, progress = true })
  end
  return path
end

--- tb:subset(name, rows) -> {name =, rows = i64 [n] (0-based training rows), embeddings = path, cache = path}:
--- the training images of `rows` (a list or an i64 tensor) as a database of their own, for a model
--- that must not see the other images, not even as neighbours in its condition (held-out concepts).
--- Built once under dir/data/subset-<name>/: emb.h5 (the rows' CLIP embeddings, their ids the rows)
--- and nn.h5 (each training image's k nearest images among the subset, itself excluded; rows of
--- emb.h5). Train with tb:train{rows = s.rows, cache = s.cache, database = s.embeddings}; sample with
--- the full index (tb.index) or any other. A name already built from other rows is an error.
function Testbed:subset(name, rows)
  local fname = "knnd.testbed:subset"
  if type(name) ~= "string" or not name:match("^[%w_.%-+=,]+$") then
    error(("%s: argument 1 'name' expected a folder-safe name (letters, digits, _ . - + = ,), got %s"):format(fname,
      tostring(name)), 2)
  end
  if knnd.is_tensor(rows) then rows = rows:reshape(-1):totable()
  elseif type(rows) ~= "table" then
    error(("%s: argument 2 'rows' expected a list of 0-based rows or an i64 tensor, got %s"):format(fname, type(rows)), 2)
  end
  local n, total = #rows, self.store:info().count
  if n == 0 then error(("%s: argument 2 'rows' is empty"):format(fname), 2) end
  for i = 1, n do
    local r = math.tointeger(rows[i])
    if not r or r < 0 or r >= total then
      error(("%s: argument 2 'rows': element %d is %s (expected a row in 0..%d, the training set's)"):format(fname, i,
        tostring(rows[i]), total - 1), 2)
    end
  end
  rows = knnd.tensor(rows, { dtype = "i64" })
  local dir = ("%s/data/subset-%s"):format(self.dir, name)
  local s = { name = name, rows = rows, embeddings = dir .. "/emb.h5", cache = dir .. "/nn.h5" }
  if exists(s.embeddings) then
    local ids = knnd.embeddings.open(s.embeddings):ids()
    if ids:numel() ~= n or knnd.eq(ids, rows):to("f32"):sum():item() ~= n then
      error(("%s: '%s' holds another subset (%d rows) than the %d rows given under the name '%s' (remove the folder or "
        .. "choose another name)"):format(fname, dir, ids:numel(), n, name), 2)
    end
  else
    files.mkdir_p(dir)
    local info = self.store:info()
    local function meta(v) return v ~= "" and v or nil end
    knnd.embeddings.save(s.embeddings, self.store:gather(rows), { ids = rows, encoder = meta(info.encoder),
      encoder_hash = meta(info.encoder_hash), source = meta(info.source) })
  end
  if not exists(s.cache) then
    local sub = knnd.embeddings.open(s.embeddings)
    local idx = knnd.index.build { store = sub, factory = "Flat", progress = false }
    knnd.cache.build(s.cache, idx, self.store, { k = self.cfg.k, exclude_self = true, progress = true })
  end
  return s
end

--- tb:vqvae([{steps=, batch=, lr=}]) -> the path of the testbed's VQ-VAE (vqvae/model.h5), trained on the
--- training images the first time (resumable; the options replace the testbed's vqvae settings then),
--- its reconstruction PSNR on 1,000 test images logged
function Testbed:vqvae(o)
  local dir = self.dir .. "/vqvae"
  local path = dir .. "/model.h5"
  if exists(path) then return path end
  local v = merge(self.cfg.vqvae, o)
  self.stage("vqvae", function()
    local r = knnd.vqvae.train { dataset = self.ds_path, out = dir, steps = v.steps, batch = v.batch, lr = v.lr,
      seed = self.cfg.seed, name = "vqvae", model = { channels = v.channels, channel_mult = { 1, 2, 2 },
        num_res_blocks = 1, num_codes = v.num_codes, embed_dim = v.embed_dim, codebook = "ema" } }
    local test_path = dir .. "/test1000.h5"
    if not exists(test_path) then
      knnd.dataset.prepare_fashion_mnist { out = test_path, split = "test", size = 28, channels = 1, limit = 1000,
        progress = false }
    end
    local e = knnd.vqvae.evaluate { model = r.model, dataset = test_path }
    self.log(("vqvae: %d steps, test PSNR %.2f dB, codebook usage %.0f%%, perplexity %.1f"):format(r.steps, e.psnr,
      100 * e.usage, e.perplexity))
  end)
  return path
end

-- the model of tb:train and tb:train_edit (edit: a local-manipulation model), its training settings, k and seed
local function new_model(self, o, edit)
  local u = merge(self.cfg.unet, o)
  local k = o.k or self.cfg.k
  local seed = o.seed or self.cfg.seed
  local cond = { mode = o.mode or "knn", k = k, dim = self.clip_dim, p_uncond = u.p_uncond, xi = o.xi }
  local model
  if (o.backbone or "continuous") == "discrete" then
    local dc = self.cfg.discrete
    model = knnd.knn_diffusion.new { image_size = 28, channels = 1, seed = seed, backbone = "discrete", cond = cond,
      edit = edit, discrete = { vqvae = self:vqvae(), dim = dc.dim, heads = dc.heads, layers = dc.layers, T = dc.T,
        truncation = dc.truncation } }
  else
    model = knnd.knn_diffusion.new { image_size = 28, channels = 1, seed = seed, edit = edit,
      unet = { channels = u.channels, num_res_blocks = u.res_blocks }, cond = cond,
      diffusion = { prediction = u.prediction } }
  end
  if o.log ~= false then self.log(tostring(model)) end
  return model, u, k, seed
end

--- tb:train{backbone= ("continuous" or "discrete"), mode=, k=, xi= (lafite_noise), out=, steps=, batch=, lr=, ema=,
---   p_uncond=, prediction=, channels=, res_blocks=, checkpoint_every=, seed=, cache= (path; default the Flat cache),
---   rows= and database= (train on these rows only, their neighbours rows of this store: tb:subset), name=,
---   progress=, device= (default the testbed's)}
--- -> the EMA model (loaded from out/model.h5), train's result. Resumes from out/checkpoint.h5.
--- The discrete backbone trains with the same budget, condition and optimiser settings as the UNet.
function Testbed:train(o)
  local model, u, k, seed = new_model(self, o, false)
  local r = knnd.knn_diffusion.train { model = model, dataset = self.ds_path, embeddings = self.emb_path,
    cache = o.cache or self:cache_for("Flat", k), database = o.database, rows = o.rows, out = o.out, steps = u.steps,
    batch = u.batch, lr = u.lr, ema = u.ema, seed = seed, checkpoint_every = u.checkpoint_every, name = o.name or o.mode,
    progress = o.progress, device = o.device or self.cfg.device }
  return knnd.knn_diffusion.load(o.out .. "/model.h5"), r
end

--- tb:train_edit{backbone=, mode=, k=, steps=, batch=, lr=, ema=, seed=, out=, align= ("ecc_affine", "ecc_euclidean" or
---   "resize"), box= {lo, hi}, aspect= {lo, hi}, name=, progress=} -> the EMA edit model (loaded from
---   out/model.h5), train's result, the pair maker (its stats: pairs made, ECC convergences)
--- A local-manipulation model (knnd.edit): the testbed's UNet taking Ĩ as extra channels (or, backbone =
--- "discrete", its VQ-Diffusion transformer taking Ĩ's tokens), trained on
--- pairs made from the training images with the testbed's CLIP and index; resumes from out/checkpoint.h5.
function Testbed:train_edit(o)
  local model, u, k, seed = new_model(self, o, true)
  local pairs = knnd.edit.pairs { clip = self.clip, index = self.index, images = self.train_set.images,
    embeddings = self.emb_path, k = math.max(k, 1), align = o.align, box = o.box, aspect = o.aspect }
  local r = knnd.knn_diffusion.train { model = model, dataset = self.ds_path, embeddings = self.emb_path, pairs = pairs,
    out = o.out, steps = u.steps, batch = u.batch, lr = u.lr, ema = u.ema, seed = seed, checkpoint_every = u.checkpoint_every,
    name = o.name or ("edit " .. (o.mode or "knn")), progress = o.progress, device = o.device or self.cfg.device }
  return knnd.knn_diffusion.load(o.out .. "/model.h5"), r, pairs
end

--- tb:fid_reference() -> the FID[fmnist-cnn] extractor, the test set's statistics and features
--- (the judge's penultimate features stand in for Inception's: labelled so, never mixed with FID)
function Testbed:fid_reference()
  if self.fid then return self.fid end
  local ex = knnd.eval.classifier_extractor(self.judge, { name = "fmnist-cnn" })
  local feats = knnd.eval.features(self.test_set.images, { extractor = ex, progress = false })
  local st = knnd.metrics.stats(ex.dim, { extractor = ex.id, preprocess = ex.preprocess })
  st:add(feats)
  st:finish()
  self.fid = { extractor = ex, label = knnd.eval.fid_label(ex.id), stats = st, features = feats }
  return self.fid
end

--- tb:samples_judged([per_class]) -> how many samples tb:evaluate draws
function Testbed:samples_judged(per_class)
  local per = math.max(1, (per_class or self.cfg.sample.eval_per_class) // (1 + self.paraphrases))
  return per * #self.eval_prompts
end

--- tb:real_floor([n]) -> FID[fmnist-cnn] and KID of n real training images against the test set:
--- the best a model can score with n samples
function Testbed:real_floor(n)
  n = n or self:samples_judged()
  local ref = self:fid_reference()
  local rows = knnd.randperm(self.train_set.n, { gen = knnd.Generator(self.cfg.seed + 7) }):narrow(1, 1, n)
  local real = self.train_set.images:index_select(1, rows)
  local fid = knnd.eval.fid(real, ref.stats, { extractor = ref.extractor, progress = false })
  local kid = knnd.eval.kid(real, ref.features, { extractor = ref.extractor, seed = self.cfg.seed, progress = false })
  return fid, kid
end

--- tb:evaluate{model=, index= (default the Flat index), sampler=, steps=, guidance=, eval_per_class=20,
---   seed=, device= (default the testbed's)} -> {alignment, alignment_class_prompts, alignment_paraphrases, per_class, fid_cnn,
---   kid_cnn, samples_judged}: the samples of every class prompt and paraphrase, judged by the
---   classifier and scored against the test set
function Testbed:evaluate(o)
  local s = merge(self.cfg.sample, o)
  local per = math.max(1, s.eval_per_class // (1 + self.paraphrases))
  local g = knnd.knn_diffusion.generate { model = o.model, clip = self.clip, index = o.index or self.index,
    prompts = self.eval_prompts, n = per, sampler = o.model:sampler_option(s.sampler), steps = s.steps, guidance = s.guidance,
    seed = (o.seed or self.cfg.seed) + 1, progress = o.progress, device = o.device or self.cfg.device }
  local target = {}
  for i = 0, g.prompt_index:numel() - 1 do target[i + 1] = self.eval_class[g.prompt_index:get(i + 1) + 1] end
  local pred = self.judge:predict(g.images)
  local hits = knnd.eq(pred, knnd.tensor(target, { dtype = "i64" })):to("f32")
  local m = { alignment = hits:mean():item(), samples_judged = hits:numel(), per_class = {} }
  local block = per * (1 + self.paraphrases)
  local on_class, on_para = 0, 0
  for c = 1, #self.classes do
    m.per_class[self.classes[c]] = hits:narrow(1, (c - 1) * block + 1, block):mean():item()
    on_class = on_class + hits:narrow(1, (c - 1) * block + 1, per):sum():item()
    on_para = on_para + hits:narrow(1, (c - 1) * block + per + 1, block - per):sum():item()
  end
  m.alignment_class_prompts = on_class / (per * #self.classes)
  m.alignment_paraphrases = on_para / ((block - per) * #self.classes)
  local ref = self:fid_reference()
  m.fid_cnn = knnd.eval.fid(g.images, ref.stats, { extractor = ref.extractor, progress = false })
  m.kid_cnn = knnd.eval.kid(g.images, ref.features, { extractor = ref.extractor, seed = self.cfg.seed, progress = false })
  m.images = g.images
  return m
end

local opened = {}
--- knnd.testbed.base([extra]) -> the config schema (knnd.config) the sweeps on the testbed share:
--- testbed (folder), mode, k, xi, steps, batch, guidance, sample_steps, sampler, per_class, seed;
--- `extra` adds keys or replaces these
function M.base(extra)
  local C = require "knnd.config"
  local b = {
    testbed = C.param("runs/quickstart", "the testbed folder (knnd.testbed): built there when absent"),
    mode = C.param("knn", "conditioning mode", { values = { "knn", "no_knn", "lafite_noise", "knn_only" } }),
    k = C.param(10, "neighbours in the condition", { min = 1 }),
    xi = C.param(3.0, "lafite_noise: the perturbation's norm relative to the embedding's (LAFITE's xi)", { min = 0 }),
    steps = C.param(600, "training steps", { min = 1 }),
    batch = C.param(64, "training batch", { min = 1 }),
    guidance = C.param(3.0, "classifier-free guidance scale at sampling (0: unconditional, 1: conditional only)",
      { min = 0 }),
    sample_steps = C.param(20, "sampler steps (the discrete backbone: about that many of its T timesteps)", { min = 1 }),
    backbone = C.param("continuous", "the diffusion backbone: the UNet over pixels, or VQ-Diffusion's transformer "
      .. "over VQ-VAE tokens", { values = { "continuous", "discrete" } }),
    sampler = C.param("dpmpp", "sampler", { values = { "dpmpp", "ddim", "ddpm" } }),
    per_class = C.param(20, "samples judged per class (its prompt and 3 paraphrases)", { min = 4 }),
    seed = 0,
  }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

--- knnd.testbed.open(dir [, opts]) -> the testbed of dir (knnd.testbed.fmnist), made once per process
function M.open(dir, o)
  if not opened[dir] then
    local t = {}
    for k, v in pairs(o or {}) do t[k] = v end
    t.dir = dir
    opened[dir] = M.fmnist(t)
  end
  return opened[dir]
end

--- tb:train_and_score(cfg, run [, {index=, cache=, rows=, database=, model_dir=}]) -> the final metrics of one sweep
--- run: trains cfg.mode with cfg.k neighbours for cfg.steps (batch, lr, seed from cfg when given)
--- into model_dir (default run.dir/model; resumed), logs the loss curve as run metrics, evaluates
--- with cfg.guidance / cfg.sample_steps / cfg.per_class, writes run.dir/samples.png (a row per
--- class: its prompt and paraphrases). Metrics: alignment, FID[fmnist-cnn], KID[fmnist-cnn],
--- final_loss, train_seconds, eval_seconds; and tb:evaluate's table (per_class, the images) as a
--- second value.
--- rows, database: train on a subset (tb:subset).
function Testbed:train_and_score(cfg, run, o)
  o = o or {}
  local t0 = knnd.wall_time()
  local model, r = self:train { backbone = cfg.backbone, mode = cfg.mode, k = cfg.k, xi = cfg.xi, steps = cfg.steps, batch = cfg.batch, lr = cfg.lr,
    seed = cfg.seed, out = o.model_dir or run:path("model"), cache = o.cache, rows = o.rows, database = o.database,
    name = run.name, log = false }
  local log = r.log or {}
  for i, step in ipairs(log.steps or {}) do run:metric("loss", step, log.loss[i]) end
  local t1 = knnd.wall_time()
  local m, e = self:score(model, cfg, run, o.index)
  -- a model directory trained before (index_sweep shares one per training index) leaves nothing to
  -- train and r.loss nil: the final loss is then the last row of its log.csv (r.log)
  local losses = log.loss or {}
  m.final_loss, m.train_seconds = r.loss or losses[#losses], t1 - t0
  return m, e
end

--- tb:score(model, cfg, run [, index]) -> the evaluation metrics of a trained model (see train_and_score),
--- and tb:evaluate's table
function Testbed:score(model, cfg, run, index)
  local t0 = knnd.wall_time()
  local e = self:evaluate { model = model, index = index, guidance = cfg.guidance, steps = cfg.sample_steps,
    sampler = cfg.sampler, eval_per_class = cfg.per_class, seed = cfg.seed, progress = false }
  local ref = self:fid_reference()
  local per = e.samples_judged // #self.classes
  knnd.save_grid(run:path("samples.png"), e.images, { nrow = per, range = { -1, 1 }, scale = 1,
    title = ("%s: a row per class (its prompt and paraphrases)"):format(run.name) })
  return { alignment = e.alignment, [ref.label] = e.fid_cnn, [knnd.eval.fid_label(ref.extractor.id, "KID")] = e.kid_cnn,
    eval_seconds = knnd.wall_time() - t0 }, e
end

return M
