-- edit.lua — `knnd edit IMAGE "text"`: text-driven local manipulation of a real image with an edit model
-- (knnd.edit; trained by experiments/manipulation.lua or knnd.knn_diffusion.train{pairs = ...}).
--
--   knnd edit shirt.png "a photo of a coat" --model runs/manipulation/.../edit/model.h5 \
--        --clip runs/quickstart/clip.safetensors --index runs/quickstart/data/train.index
--   knnd edit shirt.png "a photo of a coat" ... --strength 0.7 --seed 3 -n 4 --out coat.png --grid coat_grid.png
--
-- Writes the (first) result at --out and a before/after grid (the source, then the -n results) at --grid.
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"

local M = { help = "Edit an image with a sentence (a trained edit model: the object changes, the rest stays)." }

function M.setup(cmd)
  cmd:argument("image", "The image to edit (PNG or JPEG; resized to the model's size).")
  cmd:argument("text", "The edit, e.g. \"a photo of a coat\".")
  cmd:option("--model", "The edit model (.h5: model.h5 of its training run)."):count(1)
  cmd:option("--clip", "The CLIP the model was trained with (safetensors)."):count(1)
  cmd:option("--tokenizer", "BPE merges of that CLIP (default: <clip>.merges.txt when it exists).")
  cmd:option("--index", "An index over image embeddings (the model's neighbours; any index swaps the database).")
  cmd:option("--strength", "0 < s <= 1: below 1 sampling starts from the image noised to s·T, keeping more of it.", "1")
    :convert(cliutil.number("--strength"))
  cmd:option("--seed", "Sampling seed.", "0"):convert(tonumber)
  cmd:option("-n", "Results to draw.", "1"):convert(cliutil.positive_int("-n"))
  cmd:option("--steps", "Sampler steps.", "25"):convert(cliutil.positive_int("--steps"))
  cmd:option("--guidance", "Classifier-free guidance scale.", "3"):convert(cliutil.number("--guidance"))
  cmd:option("--sampler", "dpmpp, ddim or ddpm.", "dpmpp"):choices { "dpmpp", "ddim", "ddpm" }
  cmd:option("--out", "Where to write the result (PNG).", "edit.png")
  cmd:option("--grid", "Where to write the before/after grid (PNG).", "edit_grid.png")
  cmd:flag("-q --quiet", "No progress bar.")
end

local function need(path, what)
  if not cliutil.exists(path) then error(("%s '%s' not found"):format(what, path), 0) end
end

local function call(what, fn, ...)
  local ok, r = pcall(fn, ...)
  if not ok then error(("%s: %s"):format(what, tostring(r)), 0) end
  return r
end

function M.run(a)
  need(a.image, "the image")
  need(a.model, "--model")
  need(a.clip, "--clip")
  if not (a.strength > 0 and a.strength <= 1) then error(("--strength is %g (expected 0 < s <= 1)"):format(a.strength), 0) end
  local model = call("cannot load the model", knnd.knn_diffusion.load, a.model)
  if not model.config.edit then
    error(("'%s' is a text-to-image model, not an edit model (train one with experiments/manipulation.lua)"):format(a.model), 0)
  end
  local merges = a.tokenizer or ((a.clip:gsub("%.safetensors$", "")) .. ".merges.txt")
  if a.tokenizer then need(a.tokenizer, "--tokenizer") end
  local clip = call("cannot load the CLIP", knnd.clip.load, a.clip,
    { tokenizer = cliutil.exists(merges) and merges or nil })
  local idx
  if model.config.cond.needs_neighbors then
    if not a.index then
      error(("the model conditions on neighbours (mode %s): give --index"):format(model.config.cond.mode), 0)
    end
    need(a.index, "--index")
    local raw = call("cannot read the index", knnd.index.load, a.index)
    local info = raw:info()
    if info.store_path == "" then error("the index records no embedding store", 0) end
    need(info.store_path, "the index's embedding store")
    idx = call("the index does not match its store", knnd.index.load, a.index, { store = info.store_path })
  end
  local r = call("edit failed", knnd.edit.run, { model = model, clip = clip, index = idx, image = a.image, text = a.text,
    n = a.n, strength = a.strength, seed = a.seed, steps = a.steps, guidance = a.guidance,
    sampler = a.sampler, out = a.out, grid = a.grid, progress = not a.quiet })
  io.write(("edited %s: \"%s\" -> %s (%d result%s), before/after grid %s\n"):format(a.image, a.text, a.out,
    r.images:size(1), r.images:size(1) == 1 and "" or "s", a.grid))
  return 0
end

return M
