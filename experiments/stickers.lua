-- stickers.lua — text-to-emoji: the method on the paper's second domain at small scale. Every
-- fully-qualified emoji rendered from Noto Color Emoji at 32x32 (3,655 images, captioned with
-- their Unicode names); a CLIP trained on images + names; the kNN-conditioned UNet (and the
-- no_knn ablation) trained on the images only; samples from emoji names judged by CLIP retrieval
-- among all 3,655 names.
--
--   knnd run experiments/stickers.lua [--set out=runs/stickers --set unet.steps=3000]
--   knnd run experiments/stickers.lua --set backbone=discrete   # VQ-Diffusion over VQ-VAE tokens instead
--   knnd run experiments/stickers.lua --set device=cuda         # the diffusion models train and sample on the GPU
--
-- backbone = discrete trains a VQ-VAE on the emoji first (out/vqvae/: 32x32 -> 8x8 tokens of 256
-- codes, its PSNR printed) and then VQ-Diffusion's transformer over its tokens with the same
-- condition, budget (unet.steps, batch, lr, EMA) and judge; the models go to out/<mode>-discrete/
-- (db_swap.lua takes them with --set modes=knn-discrete,no_knn-discrete).
--
-- experiments/db_swap.lua then samples this model with the EmojiOne index swapped in. Stages keep
-- their results in the run folder and are skipped on a rerun; training resumes from checkpoints.
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  out = "runs/stickers",
  seed = 0,
  size = 32,
  modes = "knn,no_knn",
  backbone = knnd.config.param("continuous", "the diffusion backbone", { values = { "continuous", "discrete" } }),
  device = knnd.config.param("cpu", "where the diffusion models train and sample: cpu, cuda or cuda:N (CLIP, the "
    .. "VQ-VAE's training and retrieval stay on the CPU)"),
  k = 10,
  clip = { steps = 1500, batch = 256, width = 96, layers = 2, lr = 1e-3, merges = 800, context = 24 },
  -- ema 0.995: at 0.999 the EMA of a 2000-step run still holds 0.999^2000 = 14% of the initial weights, and
  -- the zero-initialised output layer shrinks every predicted eps by that much: at the cosine schedule's
  -- alpha_bar of 2e-9 the sampler turned that into noise (the samples of every run before stop 22)
  unet = { channels = 64, res_blocks = 1, steps = 2000, batch = 32, lr = 3e-4, p_uncond = 0.1, ema = 0.995,
    checkpoint_every = 200, flip = false },
  sample = { sampler = "dpmpp", steps = 25, guidance = 3.0, per_prompt = 6 },
  vqvae = { steps = 2000, batch = 32, lr = 1e-3, channels = 64, num_codes = 256, embed_dim = 32 },
  discrete = { dim = 256, heads = 8, layers = 6, T = 100, truncation = 0.86 },
  prompts = "red apple,grinning face,cat face,pizza,rocket,green heart,sun,snowman,house,ghost,"
    .. "woman technologist,soccer ball",
}
local out = opt.out
kd.check_device("experiments/stickers.lua", opt.device) -- a bad device fails now, not after the CLIP stage
os.execute(("mkdir -p '%s/data'"):format(out))
local exists = require("knnd.cliutil").exists
local t_start = knnd.wall_time()
local timings, metrics = {}, { config = opt }
local function stage(name, fn)
  local t0 = knnd.wall_time()
  local r = fn()
  timings[name] = knnd.wall_time() - t0
  print(("[%.0f s] %s done in %.0f s"):format(knnd.wall_time() - t_start, name, timings[name]))
  return r
end

-- the dataset and its captions
local ds_path = ("%s/data/emoji%d.h5"):format(out, opt.size)
stage("dataset", function()
  if not exists(ds_path) then knnd.dataset.prepare_emoji { out = ds_path, size = opt.size } end
end)
local ds = knnd.dataset.open(ds_path)
local n = ds:count()
local all = knnd.arange(0, n, { dtype = "i64" })
local images = ds:images(all)
local captions = {}
for r = 0, n - 1 do captions[r + 1] = ds:caption(r) end
print(("emoji: %d images %dx%d from Noto Color Emoji, captioned with their names"):format(n, opt.size, opt.size))

-- CLIP on (image, name) pairs: the only text the pipeline sees before sampling
local clip_path, merges = out .. "/clip.safetensors", out .. "/clip.merges.txt"
local clip = stage("clip", function()
  if exists(clip_path) and exists(merges) then return knnd.clip.load(clip_path, { tokenizer = merges }) end
  knnd.manual_seed(opt.seed)
  local tok = knnd.clip.tokenizer { train = captions, num_merges = opt.clip.merges, min_frequency = 1, path = merges }
  local w = opt.clip.width
  local m = knnd.clip.new { embed_dim = w, image_size = opt.size, patch_size = opt.size // 4, vision_width = w,
    vision_layers = opt.clip.layers, vision_heads = math.max(1, w // 32), context_length = opt.clip.context,
    text_width = w, text_layers = opt.clip.layers, text_heads = math.max(1, w // 32), tokenizer = tok }
  knnd.clip.train { model = m, images = images, captions = captions, steps = opt.clip.steps, batch = opt.clip.batch,
    lr = opt.clip.lr, seed = opt.seed, checkpoint = out .. "/clip.ck.h5" }
  m:save(clip_path)
  return m
end)

-- CLIP retrieval among all names: the judge of text alignment (no labelled classes here)
local names_emb = knnd.no_grad(function() return clip:encode_text(captions, { normalize = true }) end)
local function retrieval_accuracy(imgs, target_rows)
  local e = knnd.no_grad(function() return clip:encode_images(imgs, { normalize = true }) end)
  local sim = knnd.matmul(e, names_emb:t()) -- [M, n]
  local own = sim:gather(2, target_rows:view(-1, 1)) -- the score of the right name
  local rank = knnd.gt(sim, own):to("f32"):sum { dim = 2 } -- names scored above it
  return knnd.lt(rank, 1):to("f32"):mean():item(), knnd.lt(rank, 10):to("f32"):mean():item()
end
metrics.clip_top1_real, metrics.clip_top10_real = retrieval_accuracy(images, all)
print(("CLIP: a real emoji's own name is the top-1 of %d names for %.1f%% of them (top-10: %.1f%%)")
  :format(n, 100 * metrics.clip_top1_real, 100 * metrics.clip_top10_real))

-- embeddings, index, neighbour cache
local emb_path, index_path, cache_path = out .. "/data/emoji_emb.h5", out .. "/data/emoji.index",
  out .. "/data/emoji_nn.h5"
local index = stage("retrieval", function()
  if not exists(emb_path) then
    clip:encode_dataset { images = images, output = emb_path, encoder = "stickers-clip", source_name = ds_path }
  end
  local store = knnd.embeddings.open(emb_path)
  local idx
  if exists(index_path) then
    idx = knnd.index.load(index_path, { store = store })
  else
    idx = knnd.index.build { store = store, factory = "Flat" }
    idx:save(index_path)
  end
  if not exists(cache_path) then knnd.cache.build(cache_path, idx, store, { k = opt.k, exclude_self = true }) end
  return idx
end)

local prompts = {}
for p in opt.prompts:gmatch("[^,]+") do prompts[#prompts + 1] = p end
local row_of = {}
for r, c in ipairs(captions) do row_of[c] = row_of[c] or (r - 1) end
do
  local q = knnd.no_grad(function() return clip:encode_text(prompts, { normalize = true }) end)
  local tn = index:knn(q, { k = 8 })
  knnd.retrieval.neighbor_grid { path = out .. "/neighbors_text.png", images = images, neighbor_rows = tn.rows,
    query_texts = prompts, scores = tn.scores, captions = captions, scale = 2,
    title = "prompts and their nearest emoji (the sampling condition)" }
  metrics.mean_cos_text_to_nn = tn.scores:mean():item()
end

-- the discrete backbone's VQ-VAE, trained once on the emoji (resumable)
local discrete = opt.backbone == "discrete"
local vq_path = out .. "/vqvae/model.h5"
if discrete then
  stage("vqvae", function()
    local v = opt.vqvae
    local r = knnd.vqvae.train { dataset = ds_path, out = out .. "/vqvae", steps = v.steps, batch = v.batch, lr = v.lr,
      seed = opt.seed, name = "vqvae", model = { channels = v.channels, channel_mult = { 1, 2, 2 }, num_res_blocks = 1,
        num_codes = v.num_codes, embed_dim = v.embed_dim, codebook = "ema" } }
    local e = knnd.vqvae.evaluate { model = r.model, dataset = ds_path }
    metrics.vqvae = { psnr = e.psnr, usage = e.usage, perplexity = e.perplexity, steps = r.steps }
    print(("VQ-VAE: %d steps, PSNR %.2f dB on the %d emoji, codebook usage %.0f%%, perplexity %.1f"):format(r.steps,
      e.psnr, e.count, 100 * e.usage, e.perplexity))
  end)
end

local modes = {}
for m in opt.modes:gmatch("[^,%s]+") do modes[#modes + 1] = m end
local logs = {}
metrics.modes = {}
for _, mode in ipairs(modes) do
  local name = discrete and (mode .. "-discrete") or mode
  local dir = out .. "/" .. name
  local r = stage("train " .. name, function()
    local cond = { mode = mode, k = opt.k, dim = opt.clip.width, p_uncond = opt.unet.p_uncond }
    local model
    if discrete then
      local dc = opt.discrete
      model = kd.new { image_size = opt.size, channels = 3, seed = opt.seed, backbone = "discrete", cond = cond,
        discrete = { vqvae = vq_path, dim = dc.dim, heads = dc.heads, layers = dc.layers, T = dc.T,
          truncation = dc.truncation } }
    else
      model = kd.new { image_size = opt.size, channels = 3, seed = opt.seed, cond = cond,
        unet = { channels = opt.unet.channels, num_res_blocks = opt.unet.res_blocks, attention_resolutions = { 16, 8 } } }
    end
    print(tostring(model))
    return kd.train { model = model, dataset = ds_path, embeddings = emb_path, cache = cache_path, out = dir,
      steps = opt.unet.steps, batch = opt.unet.batch, lr = opt.unet.lr, ema = opt.unet.ema, seed = opt.seed,
      checkpoint_every = opt.unet.checkpoint_every, flip = opt.unet.flip, name = name, device = opt.device }
  end)
  logs[#logs + 1] = { name = name, log = r.log }
  local model = kd.load(dir .. "/model.h5")
  local m = { final_loss = r.loss }
  stage("sample " .. name, function()
    local s = opt.sample
    local g = kd.generate { model = model, clip = clip, index = index, prompts = prompts, n = s.per_prompt,
      sampler = model:sampler_option(s.sampler), steps = s.steps, guidance = s.guidance, seed = opt.seed,
      grid = dir .. "/samples.png", title = ("%s: emoji from their names (the model never saw a caption)"):format(name),
      device = opt.device }
    -- alignment: is the prompt's own name CLIP's best match for the sample, among all names?
    local target, judged = {}, {}
    for i, p in ipairs(g.prompts) do
      if row_of[p] then
        target[#target + 1] = row_of[p]
        judged[#judged + 1] = i - 1
      end
    end
    if #judged > 0 then
      local sel = knnd.tensor(judged, { dtype = "i64" })
      local imgs = knnd.clamp((g.images:index_select(1, sel) + 1) * 127.5 + 0.5, 0, 255):to("u8")
      m.clip_top1, m.clip_top10 = retrieval_accuracy(imgs, knnd.tensor(target, { dtype = "i64" }))
      m.samples_judged = #judged
    end
  end)
  metrics.modes[name] = m
  print(("%s: the prompt's name is CLIP's top-1 (top-10) of %d names for %.1f%% (%.1f%%) of %d samples")
    :format(name, n, 100 * (m.clip_top1 or 0), 100 * (m.clip_top10 or 0), m.samples_judged or 0))
end
kd.plot_losses { path = out .. "/loss.png", runs = logs, title = ("stickers: %s training loss by mode"):format(discrete and "VQ-Diffusion" or "UNet") }
metrics.timings = timings
metrics.wall_seconds = knnd.wall_time() - t_start
kd.write_atomic(out .. "/metrics.json", require("dkjson").encode(metrics, { indent = true }) .. "\n")
print(("\nstickers finished in %.0f s. Results in %s/: metrics.json, loss.png, neighbors_text.png, <mode>/samples.png")
  :format(metrics.wall_seconds, out))
