-- index.lua — `knnd index build|search|info`: FAISS indexes over embedding stores from the shell.
--
--   knnd index build db.h5 db.index --factory IVF256,Flat --train-sample 50000 --nprobe 16
--   knnd index search db.index --rows 0,5,10-12 -k 5 [--queries q.h5] [--json]
--   knnd index info db.index [--json]
--
-- Rows are 0-based, as the labels the index returns (rows of the store it was built from).
local knnd = require "knnd"
local cliutil = require "knnd.cliutil"
local positive_int, exists = cliutil.positive_int, cliutil.exists

local M = { help = "Build, search and describe FAISS indexes over embedding stores." }

function M.setup(cmd)
  cmd:command_target("index_command")
  cmd:require_command(true)
  local b = cmd:command("build", "Build an index over every row of an embedding store and save it.")
  b:argument("store", "The embedding store (HDF5) to index.")
  b:argument("output", "Where to write the index (written atomically).")
  b:option("--factory", "FAISS factory string: Flat, IVF1024,Flat, IVF4096,PQ64, HNSW32,Flat, ...", "Flat")
  b:option("--train-sample", "Rows sampled to train on (default: min(N, 200000)).")
    :convert(positive_int("--train-sample")):argname("<rows>")
  b:option("--batch-rows", "Rows read and added per batch (default 65536).")
    :convert(positive_int("--batch-rows")):argname("<rows>")
  b:option("--seed", "Seed of the training sample.", "0"):convert(tonumber)
  b:option("--nprobe", "IVF lists probed per query, saved with the index."):convert(positive_int("--nprobe"))
  b:option("--ef-search", "HNSW search breadth, saved with the index."):convert(positive_int("--ef-search"))
  b:flag("-q --quiet", "No progress bar.")

  local s = cmd:command("search", "Search an index with rows of an embedding store as the queries.")
  s:argument("index", "The index file.")
  s:option("--store", "The store the index was built from (default: the path the index records).")
  s:option("--queries", "Store holding the query embeddings (default: the index's store).")
  s:option("--rows", "Query rows, 0-based: 3,7,10-19 (default: the first 5).", "0-4")
  s:option("-k", "Neighbours per query.", "10"):convert(positive_int("-k"))
  s:option("--nprobe", "IVF lists probed per query."):convert(positive_int("--nprobe"))
  s:option("--ef-search", "HNSW search breadth."):convert(positive_int("--ef-search"))
  s:flag("--json", "Print JSON instead of a table.")

  local i = cmd:command("info", "Print what an index file records.")
  i:argument("index", "The index file.")
  i:flag("--json", "Print JSON instead of text.")
end

-- ---- helpers ---------------------------------------------------------------------------------
local function json(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for _, x in ipairs(v) do parts[#parts + 1] = json(x) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = json(tostring(k)) .. ":" .. json(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return ({ ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t" })[c] or ("\\u%04x"):format(c:byte())
    end) .. '"'
  elseif t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return ("%.7g"):format(v)
  end
  return tostring(v)
end

local function need_file(path, what)
  if not exists(path) then error(("%s '%s' not found"):format(what, path), 0) end
end

-- strip the "knnd.<fn>: " prefix of binding errors for the command's own message
local function call(what, fn, ...)
  local ok, res, res2 = pcall(fn, ...)
  if not ok then error(("%s: %s"):format(what, tostring(res):gsub("^knnd%.[%w_.:]+: ", "")), 0) end
  return res, res2
end

-- "3,7,10-19" -> {3, 7, 10, ..., 19}
local function parse_rows(spec, count)
  local rows = {}
  for part in spec:gmatch("[^,]+") do
    local a, b = part:match("^%s*(%d+)%s*%-%s*(%d+)%s*$")
    if not a then a = part:match("^%s*(%d+)%s*$"); b = a end
    if not a then error(("--rows expects 0-based rows like 3,7,10-19, got '%s'"):format(spec), 0) end
    a, b = math.tointeger(tonumber(a)), math.tointeger(tonumber(b))
    if b < a then error(("--rows: range %d-%d is empty"):format(a, b), 0) end
    for r = a, b do
      if r >= count then
        error(("--rows: row %d is out of range (the query store has %d rows, 0 .. %d)"):format(r, count, count - 1), 0)
      end
      rows[#rows + 1] = r
    end
  end
  if #rows == 0 then error("--rows selects no rows", 0) end
  return rows
end

local function set_params(idx, a)
  local p = {}
  if a.nprobe then p.nprobe = a.nprobe end
  if a.ef_search then p.efSearch = a.ef_search end
  if next(p) then call("cannot set the search parameters", idx.set, idx, p) end
end

-- ---- build -----------------------------------------------------------------------------------
local function cmd_build(a)
  need_file(a.store, "embedding store")
  local store = call("cannot open the embedding store", knnd.embeddings.open, a.store)
  local si = store:info()
  local t0 = knnd.wall_time and knnd.wall_time() or os.clock()
  local idx = call("cannot build the index", knnd.index.build, {
    store = store, factory = a.factory, train_size = a.train_sample, batch_rows = a.batch_rows,
    seed = math.tointeger(a.seed) or 0, progress = not a.quiet,
  })
  set_params(idx, a)
  call("cannot save the index", idx.save, idx, a.output)
  local dt = (knnd.wall_time and knnd.wall_time() or os.clock()) - t0
  local info = idx:info()
  io.write(("built %s: \"%s\" over %d x %d (%s, encoder %s) in %.2f s\n"):format(a.output, info.factory, info.ntotal,
    info.dim, a.store, si.encoder, dt))
  return 0
end

-- ---- search ----------------------------------------------------------------------------------
local function cmd_search(a)
  need_file(a.index, "index")
  local raw = call("cannot read the index", knnd.index.load, a.index)
  local info = raw:info()
  local store_path = a.store or (info.store_path ~= "" and info.store_path or nil)
  local idx, store = raw, nil
  if store_path then
    need_file(store_path, "embedding store")
    idx = call("the index does not match its store", knnd.index.load, a.index, { store = store_path })
    store = idx:store()
  end
  local qpath = a.queries or store_path
  if not qpath then error("the index records no store: pass --queries STORE", 0) end
  need_file(qpath, "query store")
  local qstore = qpath == store_path and store or call("cannot open the query store", knnd.embeddings.open, qpath)
  local qi = qstore:info()
  if qi.dim ~= info.dim then
    error(("dimension mismatch: the index holds %d-d vectors but the query store '%s' has %d-d embeddings")
      :format(info.dim, qpath, qi.dim), 0)
  end
  if info.encoder ~= "" and (qi.encoder ~= info.encoder or qi.encoder_hash ~= info.encoder_hash) then
    error(("encoder mismatch: the index was built from '%s' (weights %s) embeddings, the query store '%s' holds '%s' "
      .. "(weights %s)"):format(info.encoder, info.encoder_hash, qpath, qi.encoder, qi.encoder_hash), 0)
  end
  set_params(idx, a)
  local rows = parse_rows(a.rows, qi.count)
  local q = qstore:gather(knnd.tensor(rows, { dtype = "i64" }))
  local qids = qstore:ids()
  local scores, labels = call("search failed", idx.search, idx, q, a.k)
  local sc, lb = scores:totable(), labels:totable()
  local ids = store and store:ids() or nil
  local results = {}
  for qn, r in ipairs(rows) do
    local hits = {}
    for j = 1, a.k do
      local label = math.tointeger(lb[qn][j])
      if label >= 0 then
        hits[#hits + 1] = { row = label, id = ids and math.tointeger(ids:get(label + 1)) or nil, score = sc[qn][j] }
      end
    end
    results[qn] = { query_row = r, query_id = math.tointeger(qids:get(r + 1)), neighbors = hits }
  end
  if a.json then
    io.write(json({ index = a.index, factory = info.factory, k = a.k, queries = qpath, results = results }), "\n")
    return 0
  end
  for _, res in ipairs(results) do
    io.write(("query row %d (id %d):\n"):format(res.query_row, res.query_id))
    for rank, hit in ipairs(res.neighbors) do
      io.write(("  %3d  row %-8d id %-10s score %.4f\n"):format(rank, hit.row, hit.id and tostring(hit.id) or "-",
        hit.score))
    end
  end
  return 0
end

-- ---- info ------------------------------------------------------------------------------------
local function cmd_info(a)
  need_file(a.index, "index")
  local idx = call("cannot read the index", knnd.index.load, a.index)
  local info = idx:info()
  if a.json then
    info.path = a.index
    io.write(json(info), "\n")
    return 0
  end
  local function show(k, v) io.write(("%-13s %s\n"):format(k .. ":", tostring(v))) end
  show("index", a.index)
  show("factory", info.factory)
  show("dim", info.dim)
  show("ntotal", info.ntotal)
  show("trained", info.is_trained)
  show("encoder", info.encoder ~= "" and ("%s (weights %s)"):format(info.encoder, info.encoder_hash) or "(none)")
  show("store uid", info.store_uid ~= "" and info.store_uid or "(none)")
  show("store path", info.store_path ~= "" and info.store_path or "(none)")
  show("build id", info.build_id)
  return 0
end

function M.run(a)
  if a.build then return cmd_build(a) end
  if a.search then return cmd_search(a) end
  if a.info then return cmd_info(a) end
  error("knnd index: expected a subcommand (build, search, info)", 0)
end

return M
