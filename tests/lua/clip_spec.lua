-- clip_spec.lua — knnd.clip from Lua: the small transformers fixture (tests/reference/clip, made
-- by make_clip_fixture.py) through load/encode_images/encode_text, both namings, the tokenizer
-- against CLIPTokenizer's ids, BPE training, preprocessing, batching, save/load, parameters for
-- knnd.optim, contrastive training with checkpoint + resume, and a zero-shot floor on Fashion-MNIST.
local knnd = require "knnd"
local H = require "spec_helpers"

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local FIX = here .. "../reference/clip/"
local HINTS = { vision_heads = 4, text_heads = 2 } -- widths of 32 cannot tell the heads

local function max_abs_diff(a, b)
  return (a - b):abs():max():item()
end

local function fixture()
  return knnd.io.load_safetensors(FIX .. "small_io.safetensors")
end

local function hex_to_string(h)
  return (h:gsub("%x%x", function(c) return string.char(tonumber(c, 16)) end))
end

describe("knnd.clip", function()
  local io_ = fixture()

  it("matches transformers' CLIPModel on the small fixture (OpenAI names)", function()
    local m = knnd.clip.load(FIX .. "small_openai.safetensors", HINTS)
    knnd.set_grad_enabled(false)
    local img = m:encode_images(io_.pixels, { preprocess = false })
    local txt = m:encode_text(io_.input_ids)
    assert.is_true(max_abs_diff(img, io_.image_embeds) < 1e-4)
    assert.is_true(max_abs_diff(txt, io_.text_embeds_argmax) < 1e-4)
    assert.is_true(max_abs_diff(m:logits(img, txt), io_.logits_per_image) < 1e-3)
    knnd.set_grad_enabled(true)
  end)

  it("gives identical outputs for the Hugging Face-named copy", function()
    local a = knnd.clip.load(FIX .. "small_openai.safetensors", HINTS)
    local b = knnd.clip.load(FIX .. "small_hf.safetensors", HINTS)
    local x = a:encode_images(io_.pixels, { preprocess = false })
    local y = b:encode_images(io_.pixels, { preprocess = false })
    assert.are.equal(0, max_abs_diff(x, y))
    assert.are.equal(a:config().vision_width, b:config().vision_width)
  end)

  it("round-trips through save in both namings", function()
    local m = knnd.clip.load(FIX .. "small_openai.safetensors", HINTS)
    local ref = m:encode_images(io_.pixels, { preprocess = false })
    for _, naming in ipairs { "openai", "hf" } do
      local path = os.tmpname() .. ".safetensors"
      m:save(path, { naming = naming })
      local back = knnd.clip.load(path) -- heads come back from the file's metadata
      assert.are.equal(0, max_abs_diff(back:encode_images(io_.pixels, { preprocess = false }), ref))
      os.remove(path)
    end
  end)

  it("tokenizes as CLIPTokenizer on the fixture's cases (vocab.json + merges.txt and OpenAI merges)", function()
    local hf = knnd.clip.tokenizer { vocab = FIX .. "vocab.json", merges = FIX .. "merges.txt" }
    local oa = knnd.clip.tokenizer(FIX .. "bpe_merges.txt.gz")
    assert.are.equal(754, oa:vocab_size())
    assert.are.equal(753, oa:eot())
    local checked = 0
    for line in io.lines(FIX .. "tokenizer_cases.txt") do
      local hex, ids = line:match("^(%x*)\t([%d ]+)$")
      if ids then
        local expected = {}
        for d in ids:gmatch("%d+") do expected[#expected + 1] = tonumber(d) end
        local text = hex_to_string(hex)
        if text:find("\0", 1, true) then goto continue end -- a C string ends there: the C test covers it
        for _, tok in ipairs { hf, oa } do
          local row = tok:tokenize({ text }, { context_length = 77 }):totable()[1]
          assert.are.same(expected, table.move(row, 1, #expected, 1, {}), "case " .. hex)
        end
        checked = checked + 1
      end
      ::continue::
    end
    assert.is_true(checked >= 200)
    assert.are.equal("a photo of a dog", oa:decode(oa:encode("a photo of a dog")))
    local row = oa:tokenize("a dog", { context_length = 8 })
    assert.are.same({ 1, 8 }, row:shape())
    assert.are.equal("a dog", oa:decode(row:view(8):narrow(1, 1, 4)))
  end)

  it("trains BPE merges on a caption corpus", function()
    local classes = knnd.data.fashion_mnist_classes
    local tok = knnd.clip.train_tokenizer(classes, { num_merges = 100 })
    -- 256 bytes twice (with and without "</w>"), the merges (the corpus runs out before 100), sot, eot
    assert.is_true(tok:vocab_size() > 256 * 2 + 50 and tok:vocab_size() <= 256 * 2 + 100 + 2)
    assert.are.equal(tok:vocab_size() - 1, tok:eot())
    local ids = tok:encode("a photo of a sneaker.")
    assert.is_true(#ids < #"a photo of a sneaker.") -- merged
    assert.are.equal("a photo of a sneaker .", tok:decode(ids)) -- "</w>" decodes to a space, as in HF
    local path = os.tmpname()
    knnd.clip.tokenizer { train = { "a a b", "a b" }, num_merges = 5, min_frequency = 1, path = path }
    local again = knnd.clip.tokenizer(path)
    assert.are.same(again:encode("a b"), knnd.clip.tokenizer(path):encode("a b"))
    os.remove(path)
  end)

  it("preprocesses u8 images, batches and normalises", function()
    local cfg = { embed_dim = 16, image_size = 28, patch_size = 7, vision_width = 32, vision_layers = 1,
      vision_heads = 2, context_length = 8, vocab_size = 50, text_width = 32, text_layers = 1, text_heads = 2 }
    local m = knnd.clip.new(cfg)
    local imgs = knnd.randint(0, 256, { 5, 28, 28 }):to("u8")
    knnd.set_grad_enabled(false)
    local a = m:encode_images(imgs)
    local pixels = knnd.clip.preprocess(imgs:view(5, 1, 28, 28), { size = 28 })
    assert.are.same({ 5, 3, 28, 28 }, pixels:shape())
    assert.are.equal(0, max_abs_diff(a, m:encode_images(pixels, { preprocess = false })))
    local batched = m:encode_images(imgs, { batch = 2, normalize = true })
    local norms = batched:square():sum { dim = 2 }:sqrt()
    assert.is_true(max_abs_diff(norms, knnd.ones(5)) < 1e-5)
    assert.is_true(max_abs_diff(batched, a / a:square():sum { dim = 2, keepdim = true }:sqrt()) < 1e-5)
    knnd.set_grad_enabled(true)
    assert.are.equal(16, m:config().embed_dim)
  end)

  it("gives its parameters to knnd.optim and learns", function()
    local tok = knnd.clip.train_tokenizer({ "cat", "dog" }, { templates = { "a {}" }, num_merges = 10 })
    local m = knnd.clip.new { embed_dim = 16, image_size = 14, patch_size = 7, vision_width = 32, vision_layers = 1,
      vision_heads = 2, context_length = 8, text_width = 32, text_layers = 1, text_heads = 2, tokenizer = tok }
    assert.are.equal(tok:vocab_size(), m:config().vocab_size)
    local params = m:parameters()
    local total = 0
    for _, p in ipairs(params) do total = total + p:numel() end
    assert.are.equal(m:num_params(), total)
    local opt = knnd.optim.AdamW(params, { lr = 1e-2, weight_decay = 0 })
    local imgs = knnd.rand(4, 14, 14)
    local caps = { "a cat", "a dog", "a cat", "a dog" }
    local first, last
    for _ = 1, 15 do
      opt:zero_grad()
      local loss = knnd.clip.contrastive_loss(m, imgs, caps)
      loss:backward()
      opt:step()
      first = first or loss:item()
      last = loss:item()
    end
    assert.is_true(last < first * 0.7, ("loss %f -> %f"):format(first, last))
  end)

  it("raises clear errors", function()
    local m = knnd.clip.load(FIX .. "small_openai.safetensors", HINTS)
    H.errors_with(function() m:encode_text({ "a dog" }) end, "has no tokenizer")
    H.errors_with(function() m:encode_images(knnd.zeros(3)) end, "has 1 dims")
    H.errors_with(function() knnd.clip.load(FIX .. "small_openai.safetensors", { widht = 3 }) end, "unknown option 'widht'")
    H.errors_with(function() knnd.clip.load(FIX .. "missing.safetensors") end, "missing.safetensors")
    H.errors_with(function() knnd.clip.load(FIX .. "small_openai.safetensors", { vision_width = 48 }) end, "48")
    H.errors_with(function() knnd.clip.tokenizer { vocab = FIX .. "vocab.json" } end, "'merges' is required")
    H.errors_with(function() m.encode_images(3) end, "call it as m:encode_images")
  end)

  it("checkpoints and resumes training to the same weights", function()
    local d = knnd.data.fashion_mnist { split = "train", limit = 64 }
    local classes = d.classes
    local tok = knnd.clip.train_tokenizer(classes, { num_merges = 50 })
    local function model()
      return knnd.clip.new { embed_dim = 16, image_size = 28, patch_size = 7, vision_width = 16, vision_layers = 1,
        vision_heads = 2, context_length = 16, text_width = 16, text_layers = 1, text_heads = 2, tokenizer = tok,
        gen = knnd.Generator(5) }
    end
    local base = { images = d.images, labels = d.labels, classes = classes, batch = 32, steps = 6, lr = 1e-3,
      progress = false, checkpoint_every = 2 }
    local function run(extra)
      local o = {}
      for k, v in pairs(base) do o[k] = v end
      for k, v in pairs(extra) do o[k] = v end
      return knnd.clip.train(o)
    end
    local full = model()
    run { model = full }
    local ck = os.tmpname() .. ".h5"
    local r = run { model = model(), checkpoint = ck, until_step = 4 } -- interrupted after 4 steps
    assert.are.equal(4, r.steps)
    local resumed = model()
    r = run { model = resumed, checkpoint = ck }
    assert.are.equal(4, r.resumed_from)
    assert.are.equal(6, r.steps)
    local a, b = full:parameters(), resumed:parameters()
    for i = 1, #a do assert.are.equal(0, max_abs_diff(a[i], b[i])) end
    r = run { model = model(), checkpoint = ck } -- finished: nothing more to do
    assert.are.equal(6, r.resumed_from)
    os.remove(ck)
  end)

  it("reaches a zero-shot floor on Fashion-MNIST after a short training", function()
    local train = knnd.data.fashion_mnist { split = "train", limit = 12800 }
    local test = knnd.data.fashion_mnist { split = "test", limit = 2000 }
    local tok = knnd.clip.train_tokenizer(train.classes, { num_merges = 200 })
    local m = knnd.clip.new { embed_dim = 64, image_size = 28, patch_size = 7, vision_width = 64, vision_layers = 2,
      vision_heads = 4, context_length = 16, text_width = 64, text_layers = 1, text_heads = 4, tokenizer = tok,
      gen = knnd.Generator(1) }
    local t0 = knnd.wall_time()
    knnd.clip.train { model = m, images = train.images, labels = train.labels, classes = train.classes, steps = 150,
      batch = 128, lr = 2e-3, progress = false }
    local acc = knnd.clip.zero_shot { model = m, images = test.images, labels = test.labels, classes = test.classes }
    print(("\n# zero-shot top-1 %.1f%% on 2000 test images after 150 steps (%.1f s)"):format(100 * acc,
      knnd.wall_time() - t0))
    assert.is_true(acc >= 0.5, ("zero-shot accuracy %.3f (floor 0.5; chance 0.1)"):format(acc))
  end)
end)
