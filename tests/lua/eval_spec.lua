-- eval_spec.lua — knnd.eval on real Fashion-MNIST images: extractor identities and labels, the
-- image sources (tensor, dataset, PNG folder) agreeing, FID telling same-distribution sets from
-- different classes, KID, the refusal to compare different extractors, and the zero-shot
-- protocol end to end (samples in resumable parts, FID/KID/CLIP score/R-precision, result.json).
local knnd = require "knnd"
local h = require "spec_helpers"
local ev = knnd.eval
local function tmp(name) return h.tmp("eval_spec", name) end
local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function fresh_dir(name)
  local p = tmp(name)
  os.execute(("rm -rf '%s' && mkdir -p '%s'"):format(p, p))
  return p
end

local test = knnd.data.fashion_mnist { split = "test", limit = 2000 }
local labels = test.labels:totable()
local function rows_of(pred)
  local r = {}
  for i, l in ipairs(labels) do if pred(l, i) then r[#r + 1] = i - 1 end end
  return knnd.tensor(r, { dtype = "i64" })
end
-- an untrained classifier is a fixed random conv feature map: enough to tell distributions apart
local clf = knnd.classifier.new { channels = 1, image_size = 28, classes = 10, width = 8, seed = 1 }
local cnn = ev.classifier_extractor(clf, { name = "fmnist-cnn" })

describe("knnd.eval extractors", function()
  it("label a classifier's numbers FID[<name>] and identify its weights", function()
    assert.truthy(cnn.id:match("^fmnist%-cnn/penultimate@%x+$"))
    assert.are.equal(2 * 8 * 7 * 7, cnn.dim)
    assert.are.equal("FID[fmnist-cnn]", ev.fid_label(cnn.id))
    assert.are.equal("KID[fmnist-cnn]", ev.fid_label(cnn.id, "KID"))
    assert.are.equal("FID", ev.fid_label("inception-v3-fid/pool3"))
    local same = ev.classifier_extractor(clf, { name = "fmnist-cnn" })
    assert.are.equal(cnn.id, same.id)
    -- the id is the weights', not the time of a save: the same classifier a second later, and saved and loaded
    local t0 = os.time()
    while os.time() == t0 do end
    assert.are.equal(cnn.id, ev.classifier_extractor(clf, { name = "fmnist-cnn" }).id)
    local saved = tmp("eval_clf.h5")
    clf:save(saved)
    assert.are.equal(cnn.id, ev.classifier_extractor(saved, { name = "fmnist-cnn" }).id)
    local other = ev.classifier_extractor(knnd.classifier.new { channels = 1, image_size = 28, width = 8, seed = 2 },
      { name = "fmnist-cnn" })
    assert.are_not.equal(cnn.id, other.id) -- other weights, other extractor
  end)

  it("rejects bad arguments, naming them", function()
    h.errors_with(function() ev.classifier_extractor(clf, { nam = "x" }) end, "unknown option 'nam'")
    h.errors_with(function() ev.classifier_extractor(clf, { name = "a b" }) end, "option 'name'")
    h.errors_with(function() ev.classifier_extractor(42) end, "knnd.classifier")
    h.errors_with(function() ev.inception(tmp("missing.safetensors")) end, "missing.safetensors")
  end)
end)

describe("knnd.eval statistics and FID", function()
  it("give the same statistics for a tensor, a dataset file and a PNG folder of the same images", function()
    local imgs = test.images:narrow(1, 1, 40)
    local ds_path = tmp("forty.h5")
    knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "test", size = 28, limit = 40, progress = false }
    local dir = fresh_dir("pngs")
    for i = 1, 40 do knnd.save_png(("%s/%03d.png"):format(dir, i), imgs:narrow(1, i, 1):view(1, 28, 28)) end
    local a = ev.stats(imgs, { extractor = cnn, progress = false })
    local b = ev.stats(ds_path, { extractor = cnn, progress = false })
    local c = ev.stats(dir, { extractor = cnn, progress = false })
    assert.are.equal(40, a:n())
    assert.are.equal(40, c:n())
    assert.is_true(ev.fid(a, b) < 1e-6)
    assert.is_true(ev.fid(a, c) < 1e-6)
    assert.is_true(math.abs(knnd.sub(a:mean(), c:mean()):abs():max():item()) < 1e-9)
  end)

  it("is small between halves of one distribution and large between different classes", function()
    local first = test.images:index_select(1, rows_of(function(_, i) return i <= 1000 end))
    local second = test.images:index_select(1, rows_of(function(_, i) return i > 1000 end))
    local shoes = test.images:index_select(1, rows_of(function(l) return l == 5 or l == 7 or l == 9 end))
    local tops = test.images:index_select(1, rows_of(function(l) return l == 0 or l == 2 or l == 6 end))
    local same = ev.fid(first, second, { extractor = cnn, progress = false })
    local apart = ev.fid(shoes, tops, { extractor = cnn, progress = false })
    assert.is_true(same >= 0)
    assert.is_true(apart > 5 * same, ("FID halves %.3f, shoes vs tops %.3f"):format(same, apart))
    local kid_same = ev.kid(first, second, { extractor = cnn, subsets = 10, subset_size = 200, progress = false })
    local kid_apart = ev.kid(shoes, tops, { extractor = cnn, subsets = 10, subset_size = 200, progress = false })
    assert.is_true(kid_apart > 5 * math.abs(kid_same), ("KID %.5f vs %.5f"):format(kid_same, kid_apart))
  end)

  it("saves and loads statistics, and FID from the files equals FID from the images", function()
    local a_path, b_path = tmp("a.fid.h5"), tmp("b.fid.h5")
    local a = ev.stats(test.images:narrow(1, 1, 300), { extractor = cnn, out = a_path, progress = false })
    local b = ev.stats(test.images:narrow(1, 301, 300), { extractor = cnn, out = b_path, progress = false })
    assert.is_true(ev.is_stats_file(a_path))
    assert.is_false(ev.is_stats_file(tmp("forty.h5")))
    local direct = ev.fid(a, b)
    local from_files, info = ev.fid(a_path, b_path)
    assert.is_true(math.abs(direct - from_files) <= 1e-9 * math.max(1, direct))
    assert.are.equal("FID[fmnist-cnn]", info.label)
    assert.are.equal(cnn.id, ev.load_stats(a_path):extractor())
  end)

  it("refuses images without an extractor and statistics of different extractors", function()
    h.errors_with(function() ev.fid(test.images:narrow(1, 1, 10), test.images:narrow(1, 11, 10)) end, "extractor")
    local other = ev.classifier_extractor(knnd.classifier.new { channels = 1, image_size = 28, width = 8, seed = 5 },
      { name = "fmnist-cnn" })
    local a = ev.stats(test.images:narrow(1, 1, 50), { extractor = cnn, progress = false })
    local b = ev.stats(test.images:narrow(1, 1, 50), { extractor = other, progress = false })
    h.errors_with(function() ev.fid(a, b) end, "extractor")
    h.errors_with(function() ev.stats(test.images:narrow(1, 1, 1), { extractor = cnn, progress = false }) end, "at least 2")
    h.errors_with(function() ev.stats(tmp("nowhere.h5"), { extractor = cnn, progress = false }) end, "not found")
    h.errors_with(function() ev.stats(test.images, { extractor = {} }) end, "option 'extractor'")
    -- images of the wrong size for the classifier: the error says what was expected
    h.errors_with(function() ev.stats(knnd.zeros(4, 1, 32, 32, { dtype = "u8" }), { extractor = cnn, progress = false }) end,
      "28")
  end)
end)

describe("knnd.eval.zero_shot", function()
  local S, D = 16, 16
  local classes = knnd.data.fashion_mnist_classes
  local ds_path = tmp("train16.h5")
  knnd.dataset.prepare_fashion_mnist { out = ds_path, split = "train", size = S, limit = 300, progress = false }
  local ds = knnd.dataset.open(ds_path)
  local images = ds:images(knnd.arange(0, 300, { dtype = "i64" }))
  local tok = knnd.clip.train_tokenizer(classes, { path = tmp("merges.txt") })
  knnd.manual_seed(4)
  local clip = knnd.clip.new { embed_dim = D, image_size = S, patch_size = 4, vision_width = 32, vision_layers = 1,
    vision_heads = 2, context_length = 16, text_width = 32, text_layers = 1, text_heads = 2, tokenizer = tok }
  local emb_path = tmp("emb16.h5")
  os.remove(emb_path)
  clip:encode_dataset { images = images, output = emb_path, encoder = "spec-clip", progress = false }
  local index = knnd.index.build { store = knnd.embeddings.open(emb_path), factory = "Flat" }
  local model = knnd.knn_diffusion.new { image_size = S, channels = 1, seed = 2,
    unet = { channels = 32, channel_mult = { 1, 2 }, num_res_blocks = 1, attention_resolutions = { 8 } },
    cond = { mode = "knn", k = 3, dim = D }, diffusion = { T = 50 } }
  local clf16 = knnd.classifier.new { channels = 1, image_size = S, classes = 10, width = 8, seed = 1 }
  local ex16 = ev.classifier_extractor(clf16, { name = "fmnist16-cnn" })
  local captions = {}
  for i, c in ipairs(classes) do captions[i] = "a photo of a " .. c end

  it("generates in resumable parts and scores the samples against the reference", function()
    local out = fresh_dir("zs")
    local function run()
      return ev.zero_shot { model = model, clip = clip, index = index, captions = captions, n = 7, part = 4, batch = 3,
        reference = ds_path, extractor = ex16, out = out, steps = 3, guidance = 2, seed = 1, kid_subset_size = 7,
        kid_subsets = 5, progress = false, name = "spec" }
    end
    local row = run()
    assert.are.equal("spec", row.name)
    assert.are.equal(7, row.n)
    assert.are.equal(300, row.reference_n)
    assert.are.equal("FID[fmnist16-cnn]", row.fid_label)
    assert.are.equal("KID[fmnist16-cnn]", row.kid_label)
    assert.is_true(row.fid > 0 and row.fid < math.huge)
    assert.is_true(row.kid == row.kid)
    assert.is_true(row.clip_score >= 0 and row.clip_score <= 100)
    assert.is_true(row.r_precision >= 0 and row.r_precision <= 1)
    assert.are.equal(6, row.r_precision_negatives)
    assert.are.equal(model:num_params(), row.params)
    local parts = knnd.dataset.open(out .. "/samples/part-00001.h5")
    assert.are.equal(3, parts.n)
    assert.truthy(parts:caption(0):match("^a photo of a "))
    parts:close()
    local saved = require("dkjson").decode(read_file(out .. "/result.json"))
    assert.are.equal(row.fid, saved.fid)
    -- a lost part is generated again, the finished one is kept; the result is the same
    local function bytes(p) return read_file(p) end
    local kept = bytes(out .. "/samples/part-00000.h5")
    os.remove(out .. "/samples/part-00001.h5")
    local again = run()
    assert.are.equal(kept, bytes(out .. "/samples/part-00000.h5"))
    assert.is_true(math.abs(again.fid - row.fid) <= 1e-6 * row.fid)
    assert.is_true(math.abs(again.clip_score - row.clip_score) <= 1e-4)
  end)

  it("rejects missing pieces, naming them", function()
    local out = tmp("zs_bad")
    h.errors_with(function() ev.zero_shot { model = model, clip = clip, index = index, captions = captions, extractor = ex16, out = out } end,
      "option 'reference'")
    h.errors_with(function() ev.zero_shot { model = model, clip = clip, index = index, reference = ds_path, extractor = ex16, out = out } end,
      "option 'captions'")
    h.errors_with(function() ev.zero_shot { model = model, clip = clip, index = index, captions = tmp("none.txt"), reference = ds_path,
      extractor = ex16, out = out } end, "caption file")
    h.errors_with(function() ev.zero_shot { model = model, clip = clip, index = index, captions = captions, reference = ds_path,
      extractor = ex16, out = out, part = 0 } end, "option 'part'")
    h.errors_with(function() ev.zero_shot { model = {}, clip = clip, captions = captions, reference = ds_path, extractor = ex16,
      out = out } end, "option 'model'")
  end)
end)
