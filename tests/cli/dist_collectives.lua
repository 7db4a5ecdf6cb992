-- dist_collectives.lua — run by test_dist_cli.sh under mpirun (2 or 3 ranks) and on one process:
-- every collective against what it must give, its errors on every rank, the generator's sharded
-- draws against one whole draw, and the sharded index against one index over all rows (emb.h5,
-- made by the test's setup). Fails with error(); prints "collectives ok on N ranks".
local knnd = require "knnd"
local dist = knnd.dist
local r, W = dist.rank(), dist.size()

local function check(cond, what, ...) if not cond then error(("rank %d: %s"):format(r, what:format(...)), 2) end end
local function same(a, b, tol)
  local d = (a:to("f32") - b:to("f32")):abs():max():item()
  return d <= (tol or 0), d
end
local function errors_with(fn, text)
  local ok, err = pcall(fn)
  check(not ok, "expected an error with %q", text)
  check(tostring(err):find(text, 1, true), "error %q lacks %q", tostring(err), text)
end

-- all_reduce: sum, mean, max, min; integers
local t = knnd.tensor({ r + 1, -(r + 1) })
dist.all_reduce(t, "sum")
check(same(t, knnd.tensor({ W * (W + 1) / 2, -W * (W + 1) / 2 })), "all_reduce sum gave %s", tostring(t))
local m = dist.all_reduce(knnd.tensor({ r * 2.0 }), "mean")
check(same(m, knnd.tensor({ W - 1.0 }), 1e-6), "all_reduce mean gave %s", tostring(m))
check(dist.all_reduce(knnd.tensor({ r }), "max"):item() == W - 1, "all_reduce max")
check(dist.all_reduce(knnd.tensor({ r + 5 }, { dtype = "i64" }), "min"):item() == 5, "all_reduce min (i64)")
-- a non-contiguous view is reduced in place too
local base = knnd.arange(0, 6, 1):view(2, 3)
local col = base:t()
dist.all_reduce(col, "sum")
check(same(base, knnd.arange(0, 6, 1):view(2, 3) * W), "all_reduce of a transposed view")

-- broadcast (from the last rank), strings and values
local b = dist.broadcast(knnd.full({ 2, 2 }, r), W - 1)
check(same(b, knnd.full({ 2, 2 }, W - 1)), "broadcast from rank %d", W - 1)
local v = dist.broadcast_value(r == 0 and { name = "x", list = { 1, 2, 3 } } or nil)
check(v.name == "x" and #v.list == 3 and v.list[3] == 3, "broadcast_value")
check(dist.run_main(function() return 40 + 2 end) == 42, "run_main")

-- all_gather with different sizes along dim 1
local g = dist.all_gather(knnd.full({ r + 1, 2 }, r))
check(g:size(1) == W * (W + 1) // 2, "all_gather rows %d", g:size(1))
check(g[g:size(1)]:totable()[1] == W - 1, "all_gather order")

-- the ranks disagree: an error on every rank, naming it
if W > 1 then
  errors_with(function() dist.all_reduce(knnd.ones(r + 2)) end, "the ranks passed tensors of different shapes or dtypes")
end
errors_with(function() dist.all_reduce(knnd.ones(2, { dtype = "u8" })) end, "dtype u8")
errors_with(function() dist.broadcast(knnd.ones(2), W) end, ("root %d (expected 0 .. %d)"):format(W, W - 1))

-- shard: every item in exactly one slice
local covered = 0
for rank = 0, W - 1 do
  local first, count = dist.shard(10, rank, W)
  check(first == covered, "shard %d starts at %d", rank, first)
  covered = covered + count
end
check(covered == 10, "shards cover 10 items")

-- the generator: this rank's slice of one draw of W times the size
local whole = knnd.randn(W * 6, 5, { gen = knnd.Generator(11) })
local gen = knnd.Generator(11)
dist.shard_generator(true, gen)
local part = knnd.randn(6, 5, { gen = gen })
local ints = knnd.randint(0, 100, { 3 }, { gen = gen })
dist.shard_generator(false, gen)
check(same(part, whole:narrow(1, r * 6 + 1, 6)), "sharded normal draw")
local g2 = knnd.Generator(11)
knnd.randn(W * 6, 5, { gen = g2 })
local ints_whole = knnd.randint(0, 100, { 3 * W }, { gen = g2 })
check(same(ints, ints_whole:narrow(1, r * 3 + 1, 3)), "sharded randint after a normal draw (offsets agree)")
check(same(knnd.rand(4, { gen = gen }), knnd.rand(4, { gen = g2 })), "the streams continue together")

-- sharded search against one index over all rows
local store = knnd.embeddings.open("emb.h5")
local S = dist.sharded_index { store = store }
local one = knnd.index.build { store = store, factory = "Flat" }
local q = store:read(1, 20) + knnd.randn(20, 16, { gen = knnd.Generator(5) }) * 0.05
local s1, r1 = one:search(q, 7)
local s2, r2 = S:search(q, 7)
check(same(r1, r2), "sharded search rows differ from one index")
check(same(s1, s2, 1e-5), "sharded search scores differ from one index")
local ids = store:ids():narrow(1, 1, 20)
local k1 = one:knn(store:read(1, 20), { k = 5, ids = ids, exclude_self = true })
local k2 = S:knn(store:read(1, 20), { k = 5, ids = ids })
check(same(k1.rows, k2.rows), "sharded knn (own row left out) rows")
local ok_e, d_e = same(k1.embeddings, k2.embeddings, 1e-6)
check(ok_e, "sharded knn embeddings differ by %g", d_e)
check(same(k1.ids, k2.ids), "sharded knn ids")
local c = S:cond("knn", store:read(1, 4), { k = 3, ids = ids:narrow(1, 1, 4) })
check(c:size(1) == 4 and c:size(2) == 4 and c:size(3) == 16, "sharded cond tokens [4,4,16]")
errors_with(function() S:search(knnd.ones(2, 5), 3) end, "queries expected f32 [Q,16]")
-- the neighbour cache from the sharded index: the rows knnd.cache.build finds with one index
local cpath = ("sharded_nn_%d.h5"):format(W)
S:cache(cpath, { k = 3, batch_rows = 150, progress = false })
local c1, c2 = knnd.cache.open("nn.h5"), knnd.cache.open(cpath)
local all = knnd.arange(0, #store, 1, { dtype = "i64" })
check(same(c1:lookup(all, 3), c2:lookup(all, 3)), "sharded cache rows differ from knnd.cache.build's")
check(c2:info().k == 3 and c2:info().count == #store, "sharded cache info")

-- the overlapped reducer: buckets start while the backward runs, and it gives all_reduce_grads' gradients;
-- a parameter only rank 0 uses is averaged over all, one nobody uses keeps no gradient
local layers = { knnd.nn.Linear(4, 8, { gen = knnd.Generator(1) }), knnd.nn.Linear(8, 8, { gen = knnd.Generator(2) }),
  knnd.nn.Linear(8, 2, { gen = knnd.Generator(3) }) }
local unused, sometimes = knnd.zeros(3, { requires_grad = true }), knnd.ones(2, { requires_grad = true })
local params = {}
for _, l in ipairs(layers) do for _, p in ipairs(l:parameters()) do params[#params + 1] = p end end
params[#params + 1] = unused
params[#params + 1] = sometimes
local function backward()
  for _, p in ipairs(params) do p:zero_grad() end
  local x = knnd.randn(5, 4, { gen = knnd.Generator(100 + r) })
  local y = layers[3](knnd.tanh(layers[2](knnd.tanh(layers[1](x)))))
  local loss = y:square():mean()
  if r == 0 then loss = loss + sometimes:sum() * 3 end
  loss:backward()
end
backward()
dist.all_reduce_grads(params)
local want = {}
for i, p in ipairs(params) do want[i] = p.grad and p.grad:clone() or false end
for _, overlap in ipairs { false, true } do
  local sync = dist.grad_sync(params, { bucket_bytes = 64, overlap = overlap }) -- about one parameter per bucket
  for _ = 1, 2 do -- twice: the reducer is reused step after step
    sync.begin()
    backward()
    sync.finish()
    for i, p in ipairs(params) do
      if want[i] then
        local ok_g, d = same(p.grad, want[i], 1e-6)
        check(ok_g, "reducer (overlap %s) gradient %d differs from all_reduce_grads' by %g", tostring(overlap), i, d)
      else
        check(p.grad == nil, "reducer: parameter %d has a gradient no rank computed", i)
      end
    end
  end
  if W > 1 then
    local st = sync.stats()
    if overlap then
      check(st.buckets >= 6 and st.early >= 3, "buckets started during the backward: %d of %d", st.early, st.buckets)
    else
      check(st.early == 0, "without overlap no bucket starts early (%d did)", st.early)
    end
  end
end
check(want[#params] and same(want[#params], knnd.full({ 2 }, 3 / W), 1e-6), "a parameter rank 0 alone uses: 3 / %d", W)
check(not want[#params - 1], "a parameter nobody uses keeps no gradient")
-- the ring (long buffers) and MPI's all-reduce (short ones) give every rank the same bits
local long = knnd.randn(100003, { gen = knnd.Generator(7 + r) })
local want_long = knnd.zeros(100003)
for q = 0, W - 1 do want_long = want_long + knnd.randn(100003, { gen = knnd.Generator(7 + q) }) end
dist.all_reduce(long, "sum")
local ok_l, d_l = same(long, want_long, 1e-4)
check(ok_l, "ring all-reduce of 100003 values differs from the sum by %g", d_l)
local spread = dist.all_reduce(long:clone(), "max") - dist.all_reduce(long:clone(), "min")
check(spread:abs():max():item() == 0, "the ring gives every rank the same values")

-- a rank working alone (a sweep's shard): a world of one, no collectives
dist.work_alone(true)
check(dist.size() == 1 and dist.rank() == 0 and dist.is_main(), "alone: rank 0 of 1")
check(dist.all_reduce(knnd.tensor({ r })):item() == r, "alone: all_reduce leaves the values")
check(dist.all_gather(knnd.ones(2)):size(1) == 2, "alone: all_gather is a copy")
dist.work_alone(false)

dist.barrier()
if dist.is_main() then print(("collectives ok on %d rank%s"):format(W, W == 1 and "" or "s")) end
