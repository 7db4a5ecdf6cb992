-- dist_spec.lua — knnd.dist on one process (the multi-rank runs are tests/cli/test_dist_cli.sh under
-- mpirun): a world of one, the collectives as no-ops and copies, their argument errors, the
-- generator's sharded draws (every rank's slice, simulated here, put together = one whole draw,
-- also after draws of odd sizes) and the loader's shards (together = the unsharded batches).
local knnd = require "knnd"
local h = require "spec_helpers"
local dist = knnd.dist

local function same(a, b) return knnd.eq(a, b):to("f32"):min():item() == 1 end

describe("knnd.dist on one process", function()
  it("is rank 0 of 1 and needs no launcher", function()
    assert.are.equal(0, dist.rank())
    assert.are.equal(1, dist.size())
    assert.is_true(dist.is_main())
    assert.is_false(dist.active())
  end)

  it("keeps tensors as they are, gathers a copy and broadcasts values", function()
    local t = knnd.tensor({ 1, 2, 3 })
    assert.is_true(same(dist.all_reduce(t, "mean"), knnd.tensor({ 1, 2, 3 })))
    assert.is_true(same(dist.broadcast(t), t))
    local g = dist.all_gather(t)
    assert.is_true(same(g, t))
    g:fill_(0)
    assert.are.equal(1, t:totable()[1]) -- a copy, not the tensor
    assert.are.same({ a = { 1, 2 } }, dist.broadcast_value({ a = { 1, 2 } }))
    assert.are.equal(7, dist.run_main(function() return 7 end))
    dist.barrier()
  end)

  it("names bad arguments", function()
    h.errors_with(function() dist.all_reduce(knnd.ones(2), "median") end, "invalid option 'median'")
    h.errors_with(function() dist.all_reduce(knnd.ones(2, { dtype = "u8" })) end, "dtype u8 (expected f32, i32 or i64)")
    h.errors_with(function() dist.all_reduce(knnd.ones(2, { dtype = "i64" }), "mean") end, "mean needs an f32 tensor")
    h.errors_with(function() dist.broadcast(knnd.ones(2), 1) end, "root 1 (expected 0 .. 0)")
    h.errors_with(function() dist.all_gather(knnd.tensor(3)) end, "at least 1 dim")
    h.errors_with(function() dist.set_timeout(0) end, "expected > 0")
    h.errors_with(function() dist.shard(-1) end, "expected a non-negative integer")
    h.errors_with(function() knnd._dist.shard_generator(2, 2) end, "rank 2 of world 2")
    h.errors_with(function() dist.all_reduce_grads({ 1 }) end, "parameter 1 is a number, not a tensor")
    local p = knnd.ones(2, { requires_grad = true })
    h.errors_with(function() dist.all_reduce(p) end, "in-place on a leaf that requires grad")
  end)

  it("tells a time limit passed (the trainers' time_limit, rank 0's clock on every rank)", function()
    local t0 = knnd.wall_time()
    assert.is_false(dist.past(t0, nil))
    assert.is_false(dist.past(t0, 3600))
    assert.is_true(dist.past(t0 - 10, 5))
  end)

  it("splits n items into contiguous slices, the first n % world one longer", function()
    local got = {}
    for r = 0, 3 do got[#got + 1] = { dist.shard(10, r, 4) } end
    assert.are.same({ { 0, 3 }, { 3, 3 }, { 6, 2 }, { 8, 2 } }, got)
    assert.are.same({ 0, 10 }, { dist.shard(10) })
  end)
end)

describe("sharded generator draws", function()
  -- rank r of W draws its n values: together, in rank order, they are the whole draw of W * n
  local function by_ranks(W, draws)
    local parts = {}
    for r = 0, W - 1 do
      local g = knnd.Generator(21)
      knnd._dist.shard_generator(r, W, g)
      parts[r + 1] = draws(g, true)
    end
    local whole = draws(knnd.Generator(21), false)
    return parts, whole
  end

  for _, W in ipairs { 2, 3 } do
    it(("gives each of %d ranks its slice of one draw (normal, uniform, randint, bernoulli)"):format(W), function()
      local parts, whole = by_ranks(W, function(g, sharded)
        local m = sharded and 1 or W
        -- odd sizes on purpose: slices start inside Philox blocks
        return { knnd.randn(3 * m, 1, { gen = g }), knnd.rand(5 * m, { gen = g }),
          knnd.randint(0, 1000, { 7 * m }, { gen = g }), knnd.randn(1 * m, { gen = g }) }
      end)
      for i = 1, 4 do
        local cat = {}
        for r = 1, W do cat[r] = parts[r][i] end
        assert.is_true(same(knnd.cat(cat, 1), whole[i]), ("draw %d"):format(i))
      end
    end)
  end

  it("turns off with world 1 (and Generator(seed) starts unsharded)", function()
    local g = knnd.Generator(4)
    knnd._dist.shard_generator(1, 2, g)
    knnd._dist.shard_generator(0, 1, g)
    assert.is_true(same(knnd.randn(6, { gen = g }), knnd.randn(6, { gen = knnd.Generator(4) })))
  end)
end)

describe("the loader's shards", function()
  local path = h.tmp("dist_spec", "fm.h5")
  knnd.dataset.prepare_fashion_mnist { out = path, split = "test", size = 16, limit = 40, progress = false }
  local ds = knnd.dataset.open(path)

  it("read, together, the batches of one loader", function()
    local whole = ds:loader { batch = 6, seed = 3, flip = true }
    local parts = { ds:loader { batch = 6, seed = 3, flip = true, shard = { 0, 3 } },
      ds:loader { batch = 6, seed = 3, flip = true, shard = { 1, 3 } },
      ds:loader { batch = 6, seed = 3, flip = true, shard = { 2, 3 } } }
    for _ = 1, 9 do -- past the end of an epoch (40 // 6 = 6 batches)
      local w = whole:next()
      local xs, rows = {}, {}
      for r = 1, 3 do
        local b = parts[r]:next()
        assert.are.equal(2, b.x:size(1))
        assert.are.equal(w.epoch, b.epoch)
        xs[r], rows[r] = b.x, b.rows
      end
      assert.is_true(same(knnd.cat(rows, 1), w.rows))
      assert.is_true(same(knnd.cat(xs, 1), w.x))
    end
    assert.are.same(whole:state(), parts[2]:state())
  end)

  it("names a shard that cannot work", function()
    h.errors_with(function() ds:loader { batch = 5, shard = { 0, 2 } } end, "batch 5 does not divide among 2 ranks")
    h.errors_with(function() ds:loader { batch = 4, shard = { 2, 2 } } end, "expected {rank, world}")
    h.errors_with(function() ds:loader { batch = 4, shard = { 0, 2 }, drop_last = false } end, "needs drop_last")
  end)
end)

describe("knnd.cache.write", function()
  local path = h.tmp("dist_spec", "emb.h5")
  local x = knnd.randn(6, 4, { gen = knnd.Generator(2) })
  knnd.embeddings.save(path, x / x:square():sum { dim = 2, keepdim = true }:sqrt(), { encoder = "t", encoder_hash = "0" })
  local store = knnd.embeddings.open(path)

  it("writes a cache that knnd.cache.open reads", function()
    local rows = knnd.tensor({ { 1, 2 }, { 0, 2 }, { 0, 1 }, { 4, 5 }, { 3, 5 }, { 3, -1 } }, { dtype = "i64" })
    local out = h.tmp("dist_spec", "nn.h5")
    knnd.cache.write(out, rows, knnd.ones(6, 2), { store = store, exclude_self = true, index_factory = "Flat" })
    local c = knnd.cache.open(out)
    assert.are.same({ { 4, 5 }, { 3, -1 } }, c:lookup(knnd.tensor({ 3, 5 }, { dtype = "i64" })):totable())
    assert.are.equal(2, c:info().k)
  end)

  it("names what does not fit", function()
    local out = h.tmp("dist_spec", "bad.h5")
    h.errors_with(function() knnd.cache.write(out, knnd.zeros(5, 2, { dtype = "i64" }), knnd.ones(5, 2), { store = store }) end,
      "5 rows of neighbours for a query store of 6 rows")
    h.errors_with(function() knnd.cache.write(out, knnd.zeros(6, 2), knnd.ones(6, 2), { store = store }) end,
      "rows must be i64 [N,k]")
    h.errors_with(function() knnd.cache.write(out, knnd.full({ 6, 2 }, 9, { dtype = "i64" }), knnd.ones(6, 2),
      { store = store }) end, "row 9 is outside the store (6 rows)")
    h.errors_with(function() knnd.cache.write(out, knnd.zeros(6, 2, { dtype = "i64" }), knnd.ones(6, 3),
      { store = store }) end, "scores must be f32 of the rows' shape")
    h.errors_with(function() knnd.cache.write(out, knnd.zeros(6, 2, { dtype = "i64" }), knnd.ones(6, 2), {}) end,
      "option 'store' is required")
    assert.is_false(h.exists(out))
  end)
end)
