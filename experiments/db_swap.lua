-- db_swap.lua — the database swap (the paper's out-of-distribution generation): the model that
-- experiments/stickers.lua trained on Noto emoji is sampled from the same prompts twice, once
-- with its own index and once with an index over EmojiOne — the same concepts drawn by another
-- artist, a database the model never saw. Nothing is retrained: the index is one argument.
--
--   knnd run experiments/stickers.lua                       (first: the model, its CLIP, its index)
--   knnd run experiments/db_swap.lua [--set stickers=runs/stickers --set out=runs/db_swap]
--
-- Written to out/: swap_<mode>.png (for each prompt: a row from the Noto index, then a row from
-- the EmojiOne index), neighbors_emojione.png (what the prompts retrieve from EmojiOne), and
-- metrics.json: for each index, the share of samples whose nearest image among both databases
-- (CLIP image embeddings) is an EmojiOne image — how far the swap moves the samples' style.
local knnd = require "knnd"
local kd = knnd.knn_diffusion

local opt = knnd.options {
  stickers = "runs/stickers",
  out = "runs/db_swap",
  modes = "knn",
  seed = 0,
  sample = { sampler = "dpmpp", steps = 25, guidance = 3.0, per_prompt = 6 },
  prompts = "red apple,grinning face,cat face,pizza,rocket,green heart,sun,snowman,house,ghost,"
    .. "woman technologist,soccer ball",
}
local src = opt.stickers
local exists = require("knnd.cliutil").exists
for _, f in ipairs { "clip.safetensors", "clip.merges.txt", "data/emoji_emb.h5", "data/emoji.index" } do
  if not exists(src .. "/" .. f) then
    error(("db_swap: %s/%s not found: run experiments/stickers.lua first (or --set stickers=<its out folder>)")
      :format(src, f), 0)
  end
end
os.execute(("mkdir -p '%s'"):format(opt.out))
local clip = knnd.clip.load(src .. "/clip.safetensors", { tokenizer = src .. "/clip.merges.txt" })
local noto_store = knnd.embeddings.open(src .. "/data/emoji_emb.h5")
local noto_index = knnd.index.load(src .. "/data/emoji.index", { store = noto_store })
local size = knnd.dataset.open((src .. "/data/emoji%d.h5"):format(clip:config().image_size)):image_shape()[2]

-- the other database: EmojiOne at the model's size, encoded with the same CLIP
local e1_path = ("%s/emojione%d.h5"):format(opt.out, size)
if not exists(e1_path) then knnd.dataset.prepare_emojione { out = e1_path, size = size } end
local e1 = knnd.dataset.open(e1_path)
local e1_images = e1:images(knnd.arange(0, e1:count(), { dtype = "i64" }))
local e1_emb_path = opt.out .. "/emojione_emb.h5"
if not exists(e1_emb_path) then
  clip:encode_dataset { images = e1_images, output = e1_emb_path, encoder = "stickers-clip", source_name = e1_path }
end
local e1_store = knnd.embeddings.open(e1_emb_path)
local e1_index = knnd.index.build { store = e1_store, factory = "Flat" }
print(("databases: %d Noto emoji, %d EmojiOne images (%dx%d), one CLIP"):format(#noto_store, #e1_store, size, size))

local prompts = {}
for p in opt.prompts:gmatch("[^,]+") do prompts[#prompts + 1] = p end
local e1_captions = {}
for r = 0, e1:count() - 1 do e1_captions[r + 1] = e1:caption(r) end
local q = knnd.no_grad(function() return clip:encode_text(prompts, { normalize = true }) end)
local tn = e1_index:knn(q, { k = 8 })
knnd.retrieval.neighbor_grid { path = opt.out .. "/neighbors_emojione.png", images = e1_images, neighbor_rows = tn.rows,
  query_texts = prompts, scores = tn.scores, captions = e1_captions, scale = 2,
  title = "prompts and their nearest EmojiOne images (the swapped-in condition)" }

-- which database is a sample closest to? (nearest neighbour among both, by CLIP image embedding)
local both = knnd.cat({ noto_store:read(1, #noto_store), e1_store:read(1, #e1_store) }, 1)
local function share_closer_to_emojione(images)
  local u8 = knnd.clamp((images + 1) * 127.5 + 0.5, 0, 255):to("u8")
  local e = knnd.no_grad(function() return clip:encode_images(u8, { normalize = true }) end)
  local nearest = knnd.argmax(knnd.matmul(e, both:t()), 2)
  return knnd.ge(nearest, #noto_store):to("f32"):mean():item()
end

local metrics = { config = opt, modes = {} }
for mode in opt.modes:gmatch("[^,%s]+") do
  local model_path = ("%s/%s/model.h5"):format(src, mode)
  if not exists(model_path) then error(("db_swap: %s not found (train mode %s in stickers.lua)"):format(model_path, mode), 0) end
  local model = kd.load(model_path)
  local s = opt.sample
  local rows, m = {}, {}
  for name, idx in pairs { noto = noto_index, emojione = e1_index } do
    local g = kd.generate { model = model, clip = clip, index = idx, prompts = prompts, n = s.per_prompt,
      sampler = s.sampler, steps = s.steps, guidance = s.guidance, seed = opt.seed }
    rows[name] = g.images
    m["closer_to_emojione_" .. name .. "_index"] = share_closer_to_emojione(g.images)
  end
  -- one grid: for each prompt, the Noto-index row then the EmojiOne-index row
  local P, n = #prompts, s.per_prompt
  local C = rows.noto:size(2)
  local grid = knnd.cat({ rows.noto:view(P, 1, n, C, size, size), rows.emojione:view(P, 1, n, C, size, size) }, 2)
  local caps = {}
  for p = 1, P do
    for which = 1, 2 do
      for j = 1, n do caps[#caps + 1] = j == 1 and (which == 1 and prompts[p] .. " (Noto)" or "(EmojiOne)") or "" end
    end
  end
  knnd.save_grid(("%s/swap_%s.png"):format(opt.out, mode), grid:reshape(2 * P * n, C, size, size),
    { nrow = n, range = { -1, 1 }, scale = 2, captions = caps,
      title = ("%s model trained on Noto emoji: its own index vs the EmojiOne index"):format(mode) })
  metrics.modes[mode] = m
  print(("%s: samples nearest to an EmojiOne image: %.1f%% with the Noto index, %.1f%% with the EmojiOne index")
    :format(mode, 100 * m.closer_to_emojione_noto_index, 100 * m.closer_to_emojione_emojione_index))
end
kd.write_atomic(opt.out .. "/metrics.json", require("dkjson").encode(metrics, { indent = true }) .. "\n")
print(("results in %s/: swap_<mode>.png, neighbors_emojione.png, metrics.json"):format(opt.out))
