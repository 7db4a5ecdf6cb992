-- clip.lua — `knnd clip train|encode|zeroshot`: CLIP models from the shell.
--
--   knnd clip train model.safetensors --steps 600 --checkpoint clip.ck.h5   (Fashion-MNIST, from scratch)
--   knnd clip encode model.safetensors emb.h5 --fashion-mnist train          (images -> embedding store)
--   knnd clip encode model.safetensors emb.h5 --h5 data.h5 --key images     (an HDF5 image dataset)
--   knnd clip encode model.safetensors txt.h5 --captions captions.txt       (one caption a line)
--   knnd clip zeroshot model.safetensors                                    (Fashion-MNIST test accuracy)
--
-- A model trained here is saved with its BPE merges beside it (model.merges.txt); the other
-- subcommands use that file unless --tokenizer names another. Encoding is resumable: rerun the
-- same command after an interruption and the finished segments are skipped.
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"
local positive_int, number, exists = cliutil.positive_int, cliutil.number, cliutil.exists

local M = { help = "Train CLIP from scratch, encode datasets into embedding stores, zero-shot accuracy." }

function M.setup(cmd)
  cmd:command_target("clip_command")
  cmd:require_command(true)
  local t = cmd:command("train", "Train a small CLIP on Fashion-MNIST (captions from class names and templates).")
  t:argument("output", "Where to write the model (safetensors; its BPE merges go to <output>.merges.txt).")
  t:option("--steps", "Optimizer steps.", "600"):convert(positive_int("--steps"))
  t:option("--batch", "Images per step.", "256"):convert(positive_int("--batch"))
  t:option("--lr", "Peak learning rate (cosine schedule after a linear warm-up).", "2e-3"):convert(number("--lr"))
  t:option("--width", "Width of both towers.", "64"):convert(positive_int("--width"))
  t:option("--layers", "Layers of both towers.", "2"):convert(positive_int("--layers"))
  t:option("--patch", "Patch size of the vision tower (28x28 images).", "7"):convert(positive_int("--patch"))
  t:option("--limit", "Use only the first N training images."):convert(positive_int("--limit"))
  t:option("--checkpoint", "Checkpoint file (resumed from when it exists).")
  t:option("--checkpoint-every", "Steps between checkpoints.", "200"):convert(positive_int("--checkpoint-every"))
  t:option("--time-limit", "Stop after this many seconds (a checkpoint is written)."):convert(number("--time-limit"))
  t:option("--seed", "Seed of the initialisation and the data order.", "0"):convert(function(s)
    local n = math.tointeger(tonumber(s))
    if not n or n < 0 then return nil, ("--seed expects a non-negative integer, got '%s'"):format(s) end
    return n
  end)
  t:flag("--no-eval", "Skip the zero-shot accuracy on the 10k test images.")
  t:flag("-q --quiet", "No progress bar.")

  local e = cmd:command("encode", "Encode images (or captions) into an embedding store, L2-normalised.")
  e:argument("model", "The CLIP weights (safetensors, OpenAI or Hugging Face names).")
  e:argument("output", "The embedding store to write (HDF5, written atomically).")
  e:option("--fashion-mnist", "Encode Fashion-MNIST's split: train or test."):choices { "train", "test" }
  e:option("--h5", "Encode the images of an HDF5 file (u8 [N,H,W] or [N,C,H,W]).")
  e:option("--key", "The dataset in --h5 holding the images.", "images")
  e:option("--captions", "Encode the captions of a text file, one a line.")
  e:option("--tokenizer", "BPE merges file (default: <model>.merges.txt when it exists).")
  e:option("--limit", "Encode only the first N rows."):convert(positive_int("--limit"))
  e:option("--batch", "Rows per forward pass.", "256"):convert(positive_int("--batch"))
  e:option("--segment", "Rows per resumable segment.", "8192"):convert(positive_int("--segment"))
  e:option("--dtype", "Stored dtype: f32 or f16.", "f32"):choices { "f32", "f16" }
  e:option("--encoder", "Encoder name recorded in the store (default: the model file's name).")
  e:flag("-q --quiet", "No progress bar.")

  local z = cmd:command("zeroshot", "Zero-shot top-1 accuracy on Fashion-MNIST's test images.")
  z:argument("model", "The CLIP weights.")
  z:option("--tokenizer", "BPE merges file (default: <model>.merges.txt).")
  z:option("--limit", "Use only the first N test images."):convert(positive_int("--limit"))
end

local function merges_path(model_path)
  return (model_path:gsub("%.safetensors$", "")) .. ".merges.txt"
end

local function load_model(path, tokenizer)
  tokenizer = tokenizer or (exists(merges_path(path)) and merges_path(path) or nil)
  return knnd.clip.load(path, { tokenizer = tokenizer })
end

local function cmd_train(a)
  local data = knnd.data
  local classes = data.fashion_mnist_classes
  local train = data.fashion_mnist { split = "train", limit = a.limit }
  knnd.manual_seed(a.seed)
  local tok = knnd.clip.train_tokenizer(classes, { path = merges_path(a.output) })
  local heads = math.max(1, a.width // 16)
  local model = knnd.clip.new { embed_dim = a.width, image_size = 28, patch_size = a.patch, vision_width = a.width,
    vision_layers = a.layers, vision_heads = heads, context_length = 16, text_width = a.width,
    text_layers = a.layers, text_heads = heads, tokenizer = tok }
  -- under mpirun the ranks train together (knnd.clip.train splits each batch); rank 0 writes and reports
  local main = knnd.dist.is_main()
  if main then io.write(("%s, %d parameters\n"):format(tostring(model), model:num_params())) end
  local r = knnd.clip.train { model = model, images = train.images, labels = train.labels, classes = classes,
    steps = a.steps, batch = a.batch, lr = a.lr, checkpoint = a.checkpoint, checkpoint_every = a.checkpoint_every,
    time_limit = a.time_limit, seed = a.seed, progress = not a.quiet }
  if not main then return 0 end
  model:save(a.output)
  io.write(("trained %d steps in %.1f s%s, final loss %.4f; wrote %s and %s\n"):format(r.steps, r.seconds,
    r.resumed_from and (" (resumed from step %d)"):format(r.resumed_from) or "", r.loss or 0 / 0, a.output,
    merges_path(a.output)))
  if not a.no_eval then
    local test = data.fashion_mnist { split = "test" }
    local acc = knnd.clip.zero_shot { model = model, images = test.images, labels = test.labels, classes = classes }
    io.write(("zero-shot top-1 on %d test images: %.2f%%\n"):format(test.n, 100 * acc))
  end
  return 0
end

local function cmd_encode(a)
  local given = (a.fashion_mnist and 1 or 0) + (a.h5 and 1 or 0) + (a.captions and 1 or 0)
  if given ~= 1 then error("knnd clip encode: give exactly one of --fashion-mnist, --h5, --captions", 0) end
  local model = load_model(a.model, a.tokenizer)
  local opts = { output = a.output, batch = a.batch, segment = a.segment, dtype = a.dtype, progress = not a.quiet,
    encoder = a.encoder or a.model:match("([^/]+)$"):gsub("%.safetensors$", "") }
  if a.fashion_mnist then
    local d = knnd.data.fashion_mnist { split = a.fashion_mnist, limit = a.limit }
    opts.images, opts.source_name = d.images, "fashion-mnist:" .. a.fashion_mnist
  elseif a.h5 then
    local f = knnd.io.h5open(a.h5, "r")
    if not f:exists(a.key) then error(("knnd clip encode: %s has no dataset '%s' (--key)"):format(a.h5, a.key), 0) end
    local n = f:info(a.key).shape[1]
    if a.limit then n = math.min(n, a.limit) end
    opts.source, opts.n, opts.source_name = function(first, count) return f:read_rows(a.key, first, count) end, n, a.h5
  else
    if not model:tokenizer() then
      error("knnd clip encode: --captions needs a tokenizer (--tokenizer, or <model>.merges.txt)", 0)
    end
    local texts = {}
    local fh = io.open(a.captions, "r")
    if not fh then error(("knnd clip encode: cannot read %s"):format(a.captions), 0) end
    for line in fh:lines() do
      if not a.limit or #texts < a.limit then texts[#texts + 1] = line end
    end
    fh:close()
    if #texts == 0 then error(("knnd clip encode: %s has no captions"):format(a.captions), 0) end
    opts.texts, opts.source_name = texts, a.captions
  end
  local r = model:encode_dataset(opts) -- under mpirun: each rank its segments, rank 0 assembles
  if knnd.dist.is_main() then
    local ranks = knnd.dist.size() > 1 and (" (rank 0 of %d: its segments)"):format(knnd.dist.size()) or ""
    io.write(("encoded %d rows (%d skipped as already written) in %.1f s (%.0f rows/s%s) into %s\n"):format(r.rows,
      r.skipped, r.seconds, r.per_second, ranks, a.output))
  end
  return 0
end

local function cmd_zeroshot(a)
  local model = load_model(a.model, a.tokenizer)
  if not model:tokenizer() then error("knnd clip zeroshot: no tokenizer (--tokenizer, or <model>.merges.txt)", 0) end
  local test = knnd.data.fashion_mnist { split = "test", limit = a.limit }
  local acc = knnd.clip.zero_shot { model = model, images = test.images, labels = test.labels,
    classes = test.classes }
  io.write(("zero-shot top-1 on %d test images: %.2f%%\n"):format(test.n, 100 * acc))
  return 0
end

function M.run(a)
  if a.clip_command == "train" then return cmd_train(a) end
  if a.clip_command == "encode" then return cmd_encode(a) end
  return cmd_zeroshot(a)
end

return M
