-- testbed_subset_spec.lua — knnd.testbed's Testbed:subset, what experiments/heldout.lua trains on:
-- the seen classes' images as a database of their own, whose neighbour cache never points at a
-- held-out image (nor at the query itself), built once per name. Real Fashion-MNIST images and
-- labels; a random projection of their pixels stands in for the CLIP embeddings (the real
-- testbed takes minutes to build; experiments/heldout.lua runs on it in test_experiments_cli.sh).
local knnd = require "knnd"
local h = require "spec_helpers"
local testbed = require "knnd.testbed"

local N, D = 200, 16
local dir = h.tmp("testbed_subset_spec", "tb")
os.execute(("rm -rf '%s'"):format(dir))
os.execute(("mkdir -p '%s/data'"):format(dir))
local fm = knnd.data.fashion_mnist { split = "train", limit = N }
local pixels = fm.images:to("f32"):view(N, -1) / 255
local emb = knnd.matmul(pixels, knnd.randn(28 * 28, D, { gen = knnd.Generator(3) }))
emb = emb / emb:square():sum { dim = 2, keepdim = true }:sqrt()
local emb_path = dir .. "/data/train_emb.h5"
knnd.embeddings.save(emb_path, emb, { encoder = "projection", encoder_hash = "spec" })

local function new_testbed()
  return setmetatable({ dir = dir, cfg = { k = 4 }, store = knnd.embeddings.open(emb_path) }, testbed.Testbed)
end

-- the rows of classes other than `held` (0-based labels)
local function seen_rows(held)
  local rows, labels = {}, fm.labels:totable()
  for i, l in ipairs(labels) do if not held[l] then rows[#rows + 1] = i - 1 end end
  return rows, labels
end

describe("knnd.testbed Testbed:subset", function()
  it("builds a database of the seen images whose neighbour cache never reaches a held-out image", function()
    local tb = new_testbed()
    local held = { [5] = true, [8] = true } -- sandal, bag
    local rows, labels = seen_rows(held)
    assert.is_true(#rows < N and #rows > N / 2)
    local s = tb:subset("heldout-5-8", rows)
    assert.are.equal(dir .. "/data/subset-heldout-5-8/emb.h5", s.embeddings)
    assert.are.same(rows, s.rows:totable())
    local store = knnd.embeddings.open(s.embeddings)
    assert.are.same(rows, store:ids():totable())
    -- the subset store holds the seen rows' own embeddings
    h.assert_close(store:read(1, #rows), emb:index_select(1, s.rows):totable(), 1e-6)
    -- one cache row per training image (the dataset's rows), neighbours as rows of the subset store
    local cache = knnd.cache.open(s.cache)
    assert.are.equal(N, cache:info().count)
    local nb = cache:lookup(knnd.arange(0, N, { dtype = "i64" }), 4):totable()
    for q = 1, N do
      for _, r in ipairs(nb[q]) do
        assert.is_true(r >= 0 and r < #rows, ("row %d of the subset"):format(r))
        local original = rows[r + 1]
        assert.is_nil(held[labels[original + 1]], ("image %d's neighbour %d is held out"):format(q - 1, original))
        assert.are_not.equal(q - 1, original) -- itself excluded
      end
    end
    -- the nearest seen image of a seen image is what a brute-force search finds
    local q = rows[1]
    local best, best_score = nil, -math.huge
    local sims = knnd.matmul(emb:narrow(1, q + 1, 1), emb:t()):totable()[1]
    for _, r in ipairs(rows) do
      if r ~= q and sims[r + 1] > best_score then best, best_score = r, sims[r + 1] end
    end
    assert.are.equal(best, rows[nb[q + 1][1] + 1])
  end)

  it("reuses what it built, and refuses another set of rows under the same name", function()
    local tb = new_testbed()
    local rows = seen_rows { [5] = true, [8] = true }
    local s = tb:subset("heldout-5-8", rows)
    local f = assert(io.open(s.cache, "rb"))
    local before = f:read("a")
    f:close()
    tb:subset("heldout-5-8", knnd.tensor(rows, { dtype = "i64" }))
    f = assert(io.open(s.cache, "rb"))
    assert.are.equal(before, f:read("a"))
    f:close()
    h.errors_with(function() tb:subset("heldout-5-8", seen_rows { [1] = true }) end,
      "holds another subset (" .. #rows .. " rows)")
    h.errors_with(function() tb:subset("../x", rows) end, "knnd.testbed:subset: argument 1 'name' expected a folder-safe name")
    h.errors_with(function() tb:subset("x", {}) end, "knnd.testbed:subset: argument 2 'rows' is empty")
    h.errors_with(function() tb:subset("x", { 0, N }) end,
      ("knnd.testbed:subset: argument 2 'rows': element 2 is %d (expected a row in 0..%d"):format(N, N - 1))
  end)
end)
