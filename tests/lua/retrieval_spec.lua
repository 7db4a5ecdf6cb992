-- retrieval_spec.lua — knnd.embeddings, knnd.index, knnd.cond and knnd.cache from Lua: build,
-- search, tune, save/load, database swap, self-exclusion, conditioning tokens, neighbour caches,
-- progress callbacks, and the errors of misuse. (The recall and corruption checks are the C
-- test's, tests/core/test_retrieval.c.)
local knnd = require "knnd"

local h = require "spec_helpers"
local errors_with, exists = h.errors_with, h.exists
local function tmp(name) return h.tmp("retrieval_spec", name) end

local N, D = 2000, 16
local meta = { encoder = "spec-encoder", encoder_hash = "abc123", source = "synthetic" }

-- clustered vectors: 20 random centres plus noise
local function clustered(n, gen)
  local centres = knnd.randn(20, D, { gen = knnd.Generator(7) })
  local pick = knnd.randint(0, 20, { n }, { gen = gen })
  return knnd.index_select(centres, 1, pick) + knnd.randn(n, D, { gen = gen }) * 0.5
end

local db_path = tmp("db.h5")
local db = clustered(N, knnd.Generator(1))
local ids = knnd.arange(100, 100 + N, 1, { dtype = "i64" })
knnd.embeddings.save(db_path, db, { ids = ids, encoder = meta.encoder, encoder_hash = meta.encoder_hash,
  source = meta.source })

describe("knnd.embeddings", function()
  it("saves, opens and reads a store", function()
    local s = knnd.embeddings.open(db_path)
    local info = s:info()
    assert.are.equal(N, info.count)
    assert.are.equal(D, info.dim)
    assert.are.equal("f32", info.dtype)
    assert.are.equal("spec-encoder", info.encoder)
    assert.are.equal(16, #info.uid)
    assert.are.equal(N, #s)
    assert.are.same(db:narrow(1, 5, 3):totable(), s:read(5, 3):totable()) -- 1-based start
    assert.are.equal(104, s:ids():get(5))
    assert.are.same({ 2, 1, D }, s:gather(knnd.tensor({ { 0 }, { -1 } }, { dtype = "i64" })):shape())
    assert.matches("knnd.EmbeddingStore", tostring(s), 1, true)
  end)

  it("writes in batches and commits at close (or the end of a <close> block)", function()
    local path = tmp("f16.h5")
    os.remove(path)
    do
      local w <close> = knnd.embeddings.create(path, { dim = D, dtype = "f16", encoder = "e", encoder_hash = "h" })
      w:append(db:narrow(1, 1, 10))
      w:append(db:narrow(1, 11, 5), knnd.arange(5, { dtype = "i64" }))
      assert.is_false(exists(path))
    end
    assert.is_true(exists(path))
    local s = knnd.embeddings.open(path)
    assert.are.equal(15, s:info().count)
    assert.are.equal("f16", s:info().dtype)
    -- a block ended by an error leaves nothing
    os.remove(path)
    pcall(function()
      local w <close> = knnd.embeddings.create(path, { dim = D, encoder = "e", encoder_hash = "h" })
      w:append(db:narrow(1, 1, 10))
      error("boom")
    end)
    assert.is_false(exists(path))
  end)

  it("names what is wrong", function()
    errors_with(function() knnd.embeddings.open(tmp("missing.h5")) end, "knnd.embeddings.open: cannot open")
    errors_with(function() knnd.embeddings.save(tmp("x.h5"), db, { encoder = "e" }) end, "encoder_hash")
    errors_with(function() knnd.embeddings.create(tmp("x.h5"), { dim = D, encoder = "e", encoder_hash = "h", dtyp = 1 }) end,
      "unknown option 'dtyp'")
  end)
end)

describe("knnd.index", function()
  local store = knnd.embeddings.open(db_path)
  local q = clustered(50, knnd.Generator(2))

  it("builds by factory string, searches, tunes, and round-trips through a file", function()
    local calls = {}
    local idx = knnd.index.build { store = store, factory = "IVF16,Flat", train_size = 1000, batch_rows = 500,
      progress = function(stage, done, total) calls[#calls + 1] = stage .. done .. "/" .. total end }
    assert.are.same({ "train0/1", "train1/1", "add0/2000", "add500/2000", "add1000/2000", "add1500/2000",
      "add2000/2000" }, calls)
    local info = idx:info()
    assert.are.equal(N, info.ntotal)
    assert.are.equal("IVF16,Flat", info.factory)
    assert.are.equal("spec-encoder", info.encoder)
    assert.is_true(idx:store() == store)
    idx:set { nprobe = 16 } -- every list: exact
    local scores, labels = idx:search(q, 5)
    assert.are.same({ 50, 5 }, scores:shape())
    assert.are.equal("i64", labels:dtype())
    local exact = knnd.index.build { store = store }
    local es, el = exact:search(q, 5)
    assert.are.same(el:totable(), labels:totable())
    h.assert_close(scores, es:totable(), 1e-5)
    -- a single query
    local s1, l1 = idx:search(q:select(1, 1), 5)
    assert.are.same({ 5 }, l1:shape())
    assert.are.same(labels:select(1, 1):totable(), l1:totable())

    local path = tmp("ivf.index")
    idx:save(path)
    local back = knnd.index.load(path, { store = db_path }) -- the store by path: a database swap is one line
    assert.are.equal(info.build_id, back:info().build_id)
    local bs, bl = back:search(q, 5)
    assert.are.same(labels:totable(), bl:totable())
    assert.are.same(scores:totable(), bs:totable())
    assert.matches('knnd.Index("IVF16,Flat", 2000 x 16', tostring(back), 1, true)
  end)

  it("refuses a store of another encoder, and bad parameters", function()
    local other = tmp("other.h5")
    knnd.embeddings.save(other, db, { encoder = "another-encoder", encoder_hash = "abc123" })
    local idx = knnd.index.build { store = store }
    local flat_path = tmp("flat.index")
    idx:save(flat_path)
    errors_with(function() knnd.index.load(flat_path, { store = other }) end,
      "knnd.index.load: the index was built from embeddings of encoder 'spec-encoder'")
    errors_with(function() idx:set { efSearch = 10 } end, "no search parameter 'efSearch'")
    errors_with(function() idx:search(q, 0) end, "argument 'k' is 0")
    errors_with(function() knnd.index.build { store = store, factory = "Nope42" } end, "FAISS cannot build")
    errors_with(function() knnd.index.build { factory = "Flat" } end, "option 'store' is required")
    errors_with(function() knnd.index.load(tmp("missing.index")) end, "knnd.index.load: cannot open")
    -- an error in the progress callback stops the build and comes back as itself
    errors_with(function()
      knnd.index.build { store = store, progress = function(stage) if stage == "add" then error("stop here") end end }
    end, "stop here")
    -- returning false cancels
    errors_with(function() knnd.index.build { store = store, progress = function() return false end } end,
      "cancelled")
  end)

  it("finds neighbours with self-exclusion and builds the condition tokens", function()
    local idx = knnd.index.build { store = store }
    local rows_q = db:narrow(1, 1, 8)
    local qids = ids:narrow(1, 1, 8)
    local nb = idx:knn(rows_q, { k = 4 })
    assert.are.same({ 8, 4, D }, nb.embeddings:shape())
    for b = 1, 8 do assert.are.equal(b - 1, nb.rows:get(b, 1)) end -- each finds itself first
    nb = idx:knn(rows_q, { k = 4, ids = qids, exclude_self = true, exclude_duplicates = true })
    for b = 1, 8 do
      for j = 1, 4 do assert.are_not.equal(b - 1, nb.rows:get(b, j)) end
      assert.are.equal(nb.rows:get(b, 1) + 100, nb.ids:get(b, 1))
    end
    errors_with(function() idx:knn(rows_q, { k = 4, exclude_self = true }) end, "query_ids")

    local t = knnd.cond.knn(rows_q, nb.embeddings)
    assert.are.same({ 8, 5, D }, t:shape())
    assert.are.same({ 8, 1, D }, knnd.cond.no_knn(rows_q):shape())
    assert.are.same({ 8, 4, D }, knnd.cond.knn_only(rows_q, nb.embeddings):shape())
    local l1 = knnd.cond.lafite_noise(rows_q, { xi = 0.5, gen = knnd.Generator(3) })
    local l2 = knnd.cond.build("lafite_noise", rows_q, nil, { xi = 0.5, gen = knnd.Generator(3) })
    assert.are.same(l1:totable(), l2:totable())
    assert.are.same({ "knn", "no_knn", "lafite_noise", "knn_only" }, knnd.cond.modes())
    assert.are.same({ 11, true }, { knnd.cond.tokens("knn", 10) })
    local c = idx:cond("knn", rows_q, { k = 4, ids = qids, exclude_self = true })
    assert.are.same({ 8, 5, D }, c:shape())
    errors_with(function() knnd.cond.build("knn_plus", rows_q) end, "expected one of knn, no_knn, lafite_noise, knn_only")
    errors_with(function() knnd.cond.knn(rows_q) end, "'neighbors' is missing")
  end)

  it("precomputes a neighbour cache that remembers its index", function()
    local idx = knnd.index.build { store = store }
    local path = tmp("cache.h5")
    knnd.cache.build(path, idx, store, { k = 3, exclude_self = true, batch_rows = 700 })
    local c = knnd.cache.open(path, idx)
    assert.are.same({ count = N, k = 3 }, { count = c:info().count, k = c:info().k })
    local r = c:lookup(knnd.tensor({ 0, 5 }, { dtype = "i64" }), 2)
    local fresh = idx:knn(db:narrow(1, 6, 1), { k = 3, ids = ids:narrow(1, 6, 1), exclude_self = true })
    assert.are.same(fresh.rows:narrow(2, 1, 2):totable()[1], r:totable()[2])
    local other = knnd.index.build { store = store }
    errors_with(function() knnd.cache.open(path, other) end, "was built by index")
  end)
end)

describe("knnd.retrieval.neighbor_grid", function()
  -- Real Fashion-MNIST test images. Their embeddings here are the flattened pixels (the index
  -- L2-normalises them): a stand-in for CLIP image embeddings, which would come from the CLIP
  -- encoder in a real run; pixel cosine is enough to put footwear next to footwear.
  local fm = knnd.data.fashion_mnist { split = "test", limit = 2000 }
  local n_db = 1800
  local flat = fm.images:to("f32"):reshape(fm.n, 28 * 28) / 255
  local db_images, q_all = fm.images:narrow(1, 1, n_db), fm.images:narrow(1, n_db + 1, fm.n - n_db)
  local labels = fm.labels:totable()
  local footwear = { [5] = true, [7] = true, [9] = true } -- sandal, sneaker, ankle boot
  local idx = knnd.index.new { factory = "Flat", dim = 28 * 28 }
  idx:add(flat:narrow(1, 1, n_db))

  it("draws each query and its neighbours; a sneaker's neighbours are footwear", function()
    local sneakers = {} -- query rows (0-based, among the held-out images) that are sneakers
    for r = n_db, fm.n - 1 do
      if labels[r + 1] == 7 and #sneakers < 4 then sneakers[#sneakers + 1] = r - n_db end
    end
    assert.are.equal(4, #sneakers)
    local pick = knnd.tensor(sneakers, { dtype = "i64" })
    local q = knnd.index_select(flat:narrow(1, n_db + 1, fm.n - n_db), 1, pick)
    local k = 8
    local scores, rows = idx:search(q, k)
    local shoe, total = 0, 0
    for _, row in ipairs(rows:totable()) do
      for _, r in ipairs(row) do
        total = total + 1
        if footwear[labels[r + 1]] then shoe = shoe + 1 end
      end
    end
    assert.is_true(shoe / total >= 0.9, ("%d of %d neighbours of sneakers are footwear"):format(shoe, total))

    local path = tmp("neighbors.png")
    local captions = {}
    for r = 0, n_db - 1 do captions[r + 1] = fm.classes[labels[r + 1] + 1] end
    local grid = knnd.retrieval.neighbor_grid { path = path, images = db_images, neighbor_rows = rows,
      query_images = knnd.index_select(q_all, 1, pick), scores = scores, captions = captions, scale = 2,
      title = "pixel-space neighbours of Fashion-MNIST sneakers" }
    assert.is_true(exists(path))
    local png = knnd.read_png(path)
    assert.are.same(grid:shape(), png:shape())
    local c, h, w = table.unpack(png:shape())
    assert.are.equal(3, c)
    -- k+1 tiles of 56 px (28 x scale 2) with padding across, 4 rows of tiles plus captions down
    assert.is_true(w >= (k + 1) * 56 and w <= (k + 1) * 56 + (k + 2) * 8, "width " .. w)
    assert.is_true(h >= 4 * 56 and h <= 4 * 56 + 4 * 60 + 60, "height " .. h)
  end)

  it("shows a text query as a caption tile, and blank tiles for missing neighbours", function()
    local rows = knnd.tensor({ { 0, 1, -1 } }, { dtype = "i64" })
    local path = tmp("text_query.png")
    local g = knnd.retrieval.neighbor_grid { path = path, images = db_images, neighbor_rows = rows,
      query_texts = { "a sneaker" } }
    assert.is_true(exists(path))
    assert.are.same(g:shape(), knnd.read_png(path):shape())
    assert.is_true(g:size(3) >= 4 * 28)
    errors_with(function()
      knnd.retrieval.neighbor_grid { images = db_images, neighbor_rows = knnd.tensor({ { 5000 } }, { dtype = "i64" }),
        query_texts = { "x" } }
    end, "neighbor_rows[1][1] is 5000")
    errors_with(function()
      knnd.retrieval.neighbor_grid { images = db_images, neighbor_rows = rows }
    end, "exactly one of 'query_images' and 'query_texts'")
    errors_with(function() knnd.retrieval.neighbor_grid { images = db_images, rows = rows } end, "unknown option 'rows'")
  end)
end)
