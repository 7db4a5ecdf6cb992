-- dist.lua — knnd across processes: the MPI process group (rank, size, collectives), the helpers
-- data-parallel training uses, and a kNN index split across ranks.
--
--   mpirun -np 4 knnd run train.lua      -- every rank runs the script; knnd.dist says which it is
--
--   local dist = knnd.dist
--   if dist.is_main() then print("world of", dist.size()) end
--   dist.all_reduce(t, "mean")           -- in place, every rank gets the mean
--   local all = dist.all_gather(rows)    -- every rank's rows along dim 1, in rank order
--   local first, count = dist.shard(n)   -- this rank's contiguous slice of n items
--
-- On one process (no launcher) the world is rank 0 of 1 and every collective returns at once.
-- A rank that dies or stops taking part makes the others fail within the timeout (600 s, or
-- KNND_DIST_TIMEOUT, or dist.set_timeout) with a message naming the collective — never a hang;
-- the knnd executable then ends the whole job.
local knnd = require "knnd"
local D = knnd._dist

local M = {}

--- dist.work_alone(on): while on, this rank behaves as a world of one (knnd.sweep turns it on when its
--- runs are sharded over the ranks of a job, so that each run trains on one process); C included
function M.work_alone(on) D.work_alone(on == true) end
M.alone = D.alone

--- rank of this process (0-based) and the number of ranks (0 and 1 while working alone)
M.rank = D.rank
M.size = D.size
M.local_rank = D.local_rank
M.active = D.active
M.launched = D.launched
M.abort = D.abort

local function many() return D.size() > 1 end

--- true on rank 0: the rank that writes files, prints progress and logs
function M.is_main() return M.rank() == 0 end

--- seconds a collective waits for the other ranks before it fails
function M.timeout() return D.timeout() end
function M.set_timeout(seconds) return D.timeout(seconds) end

--- dist.barrier(): every rank waits for the others
M.barrier = D.barrier
--- dist.broadcast(t [, root = 0]) -> t, holding root's values on every rank (in place)
M.broadcast = D.broadcast -- (one rank: checks its arguments only; so do the others)
--- dist.all_reduce(t [, op = "sum" | "mean" | "max" | "min"]) -> t (in place)
M.all_reduce = D.all_reduce
--- dist.all_gather(t) -> every rank's t concatenated along dim 1 (sizes along dim 1 may differ)
M.all_gather = D.all_gather -- (one rank: a copy)
--- dist.all_reduce_grads(params [, bucket_bytes]): average the gradients over the ranks
M.all_reduce_grads = D.all_reduce_grads

--- dist.grad_sync(params [, {bucket_bytes = 25 MiB, overlap =}]) -> s: s:begin() before loss:backward(),
--- s:finish() after: the gradients averaged over the ranks (knnd/dist.h's reducer): around a ring at
--- finish, or with overlap (true, or KNND_DIST_OVERLAP=1) each bucket sent while the backward still
--- runs; s:stats() -> {buckets =, early =}. A world of one: no-ops.
function M.grad_sync(params, o)
  if not many() then
    return { begin = function() end, finish = function() end, stats = function() return { buckets = 0, early = 0 } end }
  end
  local r = D.reducer(params, o and o.bucket_bytes, o and o.overlap)
  return { begin = function() r:begin() end, finish = function() r:finish() end, stats = function() return r:stats() end,
    reducer = r }
end

--- dist.data_parallel(params, batch, who) -> world, rank, sync: what every trainer does first on the ranks
--- of a job: checks that the batch divides among them (an error "knnd.<who>: batch ... " otherwise),
--- gives every rank rank 0's parameters, and returns grad_sync(params)
function M.data_parallel(params, batch, who)
  local world, rank = D.size(), D.rank()
  if world > 1 then
    if batch % world ~= 0 then
      error(("knnd.%s: batch %d does not divide among the %d ranks of this job (give a multiple of %d)"):format(who,
        batch, world, world), 3)
    end
    knnd.no_grad(function() for _, p in ipairs(params) do D.broadcast(p, 0) end end)
  end
  return world, rank, M.grad_sync(params)
end

--- dist.past(t0, seconds) -> whether `seconds` have passed since wall time t0 (false when seconds is nil),
--- as rank 0's clock says on every rank: the trainers' time_limit, so that the ranks stop together
function M.past(t0, seconds)
  if seconds == nil then return false end
  local over = knnd.tensor({ knnd.wall_time() - t0 > seconds and 1 or 0 }, { dtype = "i32" })
  if many() then D.broadcast(over, 0) end
  return over:item() == 1
end

--- dist.broadcast_value(v [, root = 0]) -> root's v (nil, boolean, number, string or a table of
--- them, as JSON) on every rank
function M.broadcast_value(v, root)
  if not many() then return v end
  local json = require "dkjson"
  root = root or 0
  local s = nil
  if M.rank() == root then s = json.encode({ v = v }) end
  local got = D.broadcast_string(s, root)
  local t, _, err = json.decode(got)
  if type(t) ~= "table" then error("knnd.dist.broadcast_value: cannot decode the root's value (" .. tostring(err) .. ")", 2) end
  return t.v
end

--- dist.shard(n [, rank, world]) -> first (0-based), count: a contiguous slice of n items, the
--- first n % world ranks taking one more (every item in exactly one slice)
function M.shard(n, rank, world)
  if math.type(n) ~= "integer" or n < 0 then
    error(("knnd.dist.shard: argument 1 'n' expected a non-negative integer, got %s"):format(tostring(n)), 2)
  end
  rank, world = rank or M.rank(), world or M.size()
  local base, extra = n // world, n % world
  local first = rank * base + math.min(rank, extra)
  return first, base + (rank < extra and 1 or 0)
end

--- dist.shard_generator(on [, gen]): while on, every draw of n values from gen (the default
--- generator when nil) is this rank's slice of one draw of n * size values — ranks drawing
--- their part of a batch get what one process drawing the whole batch would (knnd/random.h)
function M.shard_generator(on, gen)
  if on and many() then D.shard_generator(D.rank(), D.size(), gen) else D.shard_generator(0, 1, gen) end
end

--- dist.run_main(fn, ...) -> fn's results, computed on rank 0 and sent to every rank (JSON values);
--- an error on rank 0 is raised on every rank
function M.run_main(fn, ...)
  local ok, res
  if M.rank() == 0 then ok, res = pcall(fn, ...) end
  local got = M.broadcast_value(M.rank() == 0 and { ok = ok, res = ok and res or tostring(res) } or nil, 0)
  if not got.ok then error(got.res, 0) end
  return got.res
end

-- ---- sharded search ------------------------------------------------------------------------
local Sharded = {}
Sharded.__index = Sharded

local function opt_store(v, fname)
  if type(v) == "string" then return knnd.embeddings.open(v) end
  if type(v) == "userdata" then return v end
  error(("knnd.%s: option 'store' expected an embedding store or its path"):format(fname), 3)
end

--- dist.sharded_index{store = path or store, factory = "Flat", train_size=, seed=, batch_rows=65536, progress=}
--- -> an index split across the ranks: rank r indexes its slice (dist.shard) of the store's rows,
--- a search is run by every rank on the same queries and the per-rank top k are merged, so the
--- result is that of one index over all rows (ties aside). Every rank must call its methods
--- together (they are collectives).
function M.sharded_index(o)
  local fname = "dist.sharded_index"
  if type(o) ~= "table" then error("knnd.dist.sharded_index: expected an options table", 2) end
  for k in pairs(o) do
    if not ({ store = 1, factory = 1, train_size = 1, seed = 1, batch_rows = 1, progress = 1 })[k] then
      error(("knnd.dist.sharded_index: unknown option '%s' (expected batch_rows, factory, progress, seed, store, "
        .. "train_size)"):format(tostring(k)), 2)
    end
  end
  local store = opt_store(o.store or error("knnd.dist.sharded_index: option 'store' is required", 2), fname)
  local n, dim = #store, store:info().dim
  local first, count = M.shard(n)
  local factory = o.factory or "Flat"
  local idx = knnd.index.new { factory = factory, dim = dim }
  if count > 0 then
    local batch = o.batch_rows or 65536
    local ok, err = pcall(function()
      if not idx:info().is_trained then
        -- a trained index (IVF, PQ): train on a sample of this rank's slice
        local m = math.min(count, o.train_size or count)
        idx:train(store:read(first + 1, m))
      end
      local at = 0
      while at < count do
        local m = math.min(batch, count - at)
        idx:add(store:read(first + at + 1, m))
        at = at + m
      end
    end)
    if not ok then error(("knnd.dist.sharded_index: rank %d: %s"):format(M.rank(), tostring(err)), 2) end
  end
  return setmetatable({ idx = idx, store = store, first = first, count = count, n = n, dim = dim, factory = factory },
    Sharded)
end

function Sharded:ntotal() return self.n end
--- s:info() -> {dim =, ntotal =, factory =, ranks =} (what knnd.knn_diffusion.generate asks an index: a sharded
--- index conditions generation too, every rank calling generate)
function Sharded:info()
  return { dim = self.dim, ntotal = self.n, factory = self.factory, ranks = M.size(), sharded = true }
end
function Sharded:__tostring()
  return ("knnd.dist sharded index (%s, %d rows over %d ranks; rank %d holds rows %d..%d)"):format(self.factory,
    self.n, M.size(), M.rank(), self.first, self.first + self.count - 1)
end

-- the best k of every query's candidates (score descending, then row ascending: deterministic
-- whatever the rank order); scores and rows are Lua lists of lists
local function merge(scores, rows, k)
  local out_s, out_r = {}, {}
  for i = 1, #scores do
    local cand = {}
    for j = 1, #scores[i] do cand[j] = { scores[i][j], rows[i][j] } end
    table.sort(cand, function(x, y)
      if x[1] ~= y[1] then return x[1] > y[1] end
      if (x[2] < 0) ~= (y[2] < 0) then return x[2] >= 0 end
      return x[2] < y[2]
    end)
    local s_i, r_i = {}, {}
    for j = 1, k do s_i[j], r_i[j] = cand[j][1], cand[j][2] end
    out_s[i], out_r[i] = s_i, r_i
  end
  return out_s, out_r
end

-- every rank's [Q,k] candidates for the same queries -> [Q][W*k] Lua lists
local function gather_candidates(s, r, Q, k)
  local W = M.size()
  local gs = M.all_gather(s:contiguous()):totable()
  local gr = M.all_gather(r:contiguous()):totable()
  local cs, cr = {}, {}
  for i = 1, Q do
    local si, ri = {}, {}
    for w = 0, W - 1 do
      for j = 1, k do
        si[#si + 1], ri[#ri + 1] = gs[w * Q + i][j], gr[w * Q + i][j]
      end
    end
    cs[i], cr[i] = si, ri
  end
  return cs, cr
end

-- this rank's candidates as Lua lists (rows of the store; -1 / -inf where none)
function Sharded:_candidates(q, k)
  local Q = q:size(1)
  local s, r
  if self.count > 0 then
    s, r = self.idx:search(q, k)
    local valid = knnd.ge(r, 0)
    r = knnd.where(valid, r + self.first, r)
    s = knnd.where(valid, s, knnd.full(s:shape(), -math.huge))
  else
    s, r = knnd.full({ Q, k }, -math.huge), knnd.full({ Q, k }, -1, { dtype = "i64" })
  end
  return gather_candidates(s, r, Q, k)
end

local function check_query(self, q, what)
  if not knnd.is_tensor(q) or (q:dim() ~= 1 and q:dim() ~= 2) or q:size(q:dim()) ~= self.dim then
    error(("knnd.dist sharded index: %s: queries expected f32 [Q,%d] or [%d]"):format(what, self.dim, self.dim), 3)
  end
end

--- s:search(q [Q,D] or [D], k) -> scores f32 [Q,k], rows i64 [Q,k] (0-based rows of the store, best
--- first; -1 and -inf where the database has fewer than k rows), as one index over the store
function Sharded:search(q, k)
  check_query(self, q, "search")
  if math.type(k) ~= "integer" or k < 1 then error("knnd.dist sharded index: search: k expected a positive integer", 2) end
  local single = q:dim() == 1
  if single then q = q:unsqueeze(1) end
  local cs, cr = self:_candidates(q:contiguous(), k)
  local ms, mr = merge(cs, cr, k)
  local top, rows = knnd.tensor(ms), knnd.tensor(mr, { dtype = "i64" })
  if single then return top:select(1, 1), rows:select(1, 1) end
  return top, rows
end

--- s:knn(q [Q,D], {k = 10, ids = (the queries' own store ids, left out)}) ->
--- {embeddings = [Q,k,D], rows = [Q,k], ids = [Q,k], scores = [Q,k]} as Index:knn on one index
function Sharded:knn(q, o)
  check_query(self, q, "knn")
  o = o or {}
  local k = o.k or 10
  if q:dim() == 1 then q = q:unsqueeze(1) end
  local Q = q:size(1)
  local own = o.ids and o.ids:to("i64"):totable() or nil
  local extra = own and 1 or 0
  local cs, cr = self:_candidates(q:contiguous(), k + extra)
  local store_ids = self.store:ids():totable()
  if own then
    -- leave out each query's own row (by store id)
    for i = 1, Q do
      for j = 1, #cr[i] do
        local row = cr[i][j]
        if row >= 0 and store_ids[row + 1] == own[i] then cs[i][j], cr[i][j] = -math.huge, -1 end
      end
    end
  end
  local ms, mr = merge(cs, cr, k)
  local ids = {}
  for i = 1, Q do
    ids[i] = {}
    for j = 1, k do ids[i][j] = mr[i][j] >= 0 and store_ids[mr[i][j] + 1] or -1 end
  end
  local rows = knnd.tensor(mr, { dtype = "i64" })
  return { embeddings = self.store:gather(rows), rows = rows, ids = knnd.tensor(ids, { dtype = "i64" }),
    scores = knnd.tensor(ms) }
end

--- s:cache(path, {k = 10, exclude_self = true, batch_rows = 4096, progress = true}): the neighbour cache of
--- the store's own rows (knnd.cache's format: knnd.knn_diffusion.train reads it) from the sharded index:
--- every rank searches its shard for each batch of rows, rank 0 gathers the merged rows and writes the file
function Sharded:cache(path, o)
  o = o or {}
  local k = o.k or 10
  local batch = o.batch_rows or 4096
  local exclude = o.exclude_self ~= false
  local ids = exclude and self.store:ids() or nil
  local rows, scores = {}, {}
  local bar = o.progress ~= false and M.is_main() and knnd.progress { total = self.n, desc = "sharded cache",
    unit = "row" } or nil
  for first = 0, self.n - 1, batch do
    local m = math.min(batch, self.n - first)
    local q = self.store:read(first + 1, m)
    local nb = self:knn(q, { k = k, ids = ids and ids:narrow(1, first + 1, m) })
    if M.is_main() then
      rows[#rows + 1], scores[#scores + 1] = nb.rows, nb.scores
    end
    if bar then bar:update(m) end
  end
  if bar then bar:close() end
  if M.is_main() then
    knnd.cache.write(path, knnd.cat(rows, 1), knnd.cat(scores, 1), { store = self.store, exclude_self = exclude,
      index_factory = ("%s, sharded over %d ranks"):format(self.factory, M.size()) })
  end
  M.barrier()
end

--- s:cond(mode, q, {k = 10, ids =, xi =, gen =}) -> condition tokens [Q, T, D] (knnd.cond.build on
--- the merged neighbours): the kNN conditioning on a sharded database
function Sharded:cond(mode, q, o)
  o = o or {}
  local nb = self:knn(q, { k = o.k, ids = o.ids })
  return knnd.cond.build(mode, q, nb.embeddings, { xi = o.xi, gen = o.gen })
end

return M
