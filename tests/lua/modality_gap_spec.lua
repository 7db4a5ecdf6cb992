-- modality_gap_spec.lua — knnd.eval.modality_gap on real Fashion-MNIST images and their class
-- prompts embedded by a small CLIP: its means against cosines computed here in Lua (each image's
-- own row excluded), the gap narrowing as the CLIP trains (what experiments/modality_gap.lua
-- varies), and the errors.
local knnd = require "knnd"
local h = require "spec_helpers"
local function tmp(name) return h.tmp("modality_gap_spec", name) end

local N, K = 300, 5
local train = knnd.data.fashion_mnist { split = "train", limit = N }
local prompts = {}
for i, c in ipairs(train.classes) do prompts[i] = "a photo of a " .. c end
local tok = knnd.clip.train_tokenizer(train.classes, { num_merges = 100 })
local clip = knnd.clip.new { embed_dim = 32, image_size = 28, patch_size = 7, vision_width = 32, vision_layers = 1,
  vision_heads = 2, context_length = 16, text_width = 32, text_layers = 1, text_heads = 2, tokenizer = tok,
  gen = knnd.Generator(3) }

-- the CLIP's embeddings of the images (an index over them) and of the prompts
local function embed(name)
  local img, txt = knnd.no_grad(function()
    return clip:encode_images(train.images, { normalize = true }), clip:encode_text(prompts, { normalize = true })
  end)
  local path = tmp(name .. "_emb.h5")
  knnd.embeddings.save(path, img, { encoder = "spec-clip", encoder_hash = name })
  local store = knnd.embeddings.open(path)
  return knnd.index.build { store = store, factory = "Flat" }, img:totable(), txt
end

-- mean over queries of the best cosine and of the mean of the k best, skipping one row per query
local function reference(queries, images, k, skip)
  local t1, tk = 0, 0
  for qi, q in ipairs(queries) do
    local cos = {}
    for r, v in ipairs(images) do
      if skip == nil or skip[qi] ~= r - 1 then
        local dot, nq, nv = 0, 0, 0
        for d = 1, #q do dot, nq, nv = dot + q[d] * v[d], nq + q[d] ^ 2, nv + v[d] ^ 2 end
        cos[#cos + 1] = dot / math.sqrt(nq * nv)
      end
    end
    table.sort(cos, function(a, b) return a > b end)
    local s = 0
    for j = 1, k do s = s + cos[j] end
    t1, tk = t1 + cos[1], tk + s / k
  end
  return t1 / #queries, tk / #queries
end

describe("knnd.eval.modality_gap", function()
  it("gives the mean cosines of prompts and of images to their nearest images, each image's own row excluded", function()
    local index, images, txt = embed("init")
    local rows = { 0, 7, 42, 123, 299 }
    local g = knnd.eval.modality_gap { index = index, texts = txt, rows = knnd.tensor(rows, { dtype = "i64" }), k = K,
      batch = 2 }
    local t1, tk = reference(txt:totable(), images, K)
    local queries = {}
    for i, r in ipairs(rows) do queries[i] = images[r + 1] end
    local i1, ik = reference(queries, images, K, rows)
    h.assert_close({ g.text_top1, g.text_topk, g.image_top1, g.image_topk }, { t1, tk, i1, ik }, 1e-4)
    h.assert_close({ g.gap_top1, g.gap_topk }, { i1 - t1, ik - tk }, 1e-4)
    assert.are.same({ K, #prompts, #rows }, { g.k, g.texts, g.images })
    -- every row by default, the same as naming them all
    local all = knnd.eval.modality_gap { index = index, texts = txt, k = K }
    local named = knnd.eval.modality_gap { index = index, texts = txt, k = K, rows = knnd.arange(0, N, { dtype = "i64" }) }
    assert.are.equal(N, all.images)
    h.assert_close(all.image_topk, named.image_topk, 1e-6)
    assert.is_true(all.image_top1 < 1 - 1e-4, "an image is not its own neighbour")
  end)

  it("narrows as the CLIP learns to put prompts near their images", function()
    local index0, _, txt0 = embed("before")
    local before = knnd.eval.modality_gap { index = index0, texts = txt0, k = K }
    knnd.clip.train { model = clip, images = train.images, labels = train.labels, classes = train.classes, steps = 40,
      batch = 64, lr = 3e-3, seed = 1, progress = false }
    local index, _, txt = embed("after")
    local after = knnd.eval.modality_gap { index = index, texts = txt, k = K }
    print(("\n# text_topk %.3f -> %.3f, image_topk %.3f -> %.3f, gap %.3f -> %.3f after 40 CLIP steps"):format(
      before.text_topk, after.text_topk, before.image_topk, after.image_topk, before.gap_topk, after.gap_topk))
    assert.is_true(after.text_topk > before.text_topk + 0.1, "prompts move towards the images")
    assert.is_true(after.gap_topk < before.gap_topk - 0.1, "the gap narrows")
  end)

  it("names what is wrong", function()
    local index, _, txt = embed("errors")
    h.errors_with(function() knnd.eval.modality_gap { texts = txt } end, "option 'index'")
    h.errors_with(function() knnd.eval.modality_gap { index = index, texts = { 1, 2 } } end, "option 'texts'")
    h.errors_with(function() knnd.eval.modality_gap { index = index, texts = txt, k = N } end, "option 'k' is 300")
    h.errors_with(function() knnd.eval.modality_gap { index = index, texts = txt, kk = 3 } end, "unknown option 'kk'")
    h.errors_with(function() knnd.eval.modality_gap { index = index, texts = txt, rows = knnd.zeros(2, 2) } end,
      "option 'rows'")
  end)
end)
