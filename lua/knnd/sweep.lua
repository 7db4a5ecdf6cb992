-- sweep.lua — resumable, shardable sweeps over a grid of configs, with a summary over seeds.
--
--   knnd.sweep {
--     name = "ablation",                                   -- the folder: <dir>/<name>/
--     base = {steps = 300, cond = "knn", k = 10, seed = 0},  -- a knnd.config schema (--set applies here)
--     grid = {cond = {"knn", "no_knn"}, k = {1, 5, 10}, seed = {1, 2, 3}},
--     run = function(cfg, run) ...; return {fid = f, loss = l} end,   -- final metrics
--   }
--
-- Runs: every explicit config of `runs` (default: one, the base) crossed with the cartesian
-- product of `grid`, axes in `order` (default: sorted, the seed axis last; the last axis varies
-- fastest). Each run is a knnd.run folder named after the keys the sweep sets ("cond=knn,k=5,seed=1"),
-- seeded with cfg.seed. On resume finished runs are skipped, failed ones are run again only with
-- retry_failed, and a run left "running" by a process that no longer lives (killed, rebooted) is
-- run again. shard = {i, n} (1-based; default: SLURM_ARRAY_TASK_ID/COUNT, OMPI_COMM_WORLD_RANK/SIZE
-- or PMI_RANK/SIZE) runs runs i, i+n, i+2n, ... of the order, so a job array or MPI ranks split one
-- sweep. At the end the metrics of every run of the sweep found on disk are grouped over the seed
-- axis (mean ± sample std, the 95% t confidence interval's half-width, n) and printed and saved as
-- summary.csv and summary.md.
--
-- Paired comparisons: compare = {by = "mode", baseline = "no_knn", metrics = {"alignment", ...}}
-- (or a list of such tables) adds to summary.md, and to paired.csv, a paired t-test of every other
-- value of the grid axis `by` against the baseline (no baseline: every pair of values), matched on
-- the seed and within each combination of the other axes: the mean difference, its 95% CI, t, df
-- and the two-sided p (knnd.results.paired). Runs that share a seed share their data order,
-- initialisation and sampling noise, so pairing removes that variance from the comparison.
-- metrics defaults to the summary's; a metric no finished run reports yet is left out.
--
-- Other options: dir (results root, default "runs"), resume (default true; `knnd sweep` without
-- --resume: false, and a folder that already holds runs is refused), retry_failed, seed_key
-- ("seed"), metrics (the summary's metrics, default every numeric one), on_error ("continue" or
-- "stop"), progress (a bar over the runs), quiet (no printing), echo (run log level echoed).
-- `--set key=v` on the command line sets a base key; on a grid axis it replaces the axis values
-- (--set k=1,5). A finished run whose stored config differs from the planned one is an error.
local files = require "knnd.files"
local config = require "knnd.config"
local knnd_run = require "knnd.run"
local results = require "knnd.results"

local M = {}

-- set by `knnd sweep` (the command line's --resume, --retry-failed, --shard, --dir): the defaults
-- of every knnd.sweep call of the script; a field the script gives wins
M.defaults = {}
-- what the sweeps of this process did: {name, dir, ran, skipped, failed, ...} each
M.history = {}

local ALLOWED = { name = 1, grid = 1, runs = 1, base = 1, run = 1, dir = 1, resume = 1, retry_failed = 1, shard = 1,
  order = 1, seed_key = 1, metrics = 1, on_error = 1, progress = 1, echo = 1, quiet = 1, compare = 1 }

local function fail(fmt, ...) error(("knnd.sweep: " .. fmt):format(...), 0) end

-- knnd.dist when the knnd module is loaded (knnd.sweep itself runs without it in some tests)
local function knnd_dist()
  local ok, knnd = pcall(require, "knnd")
  if ok and type(knnd) == "table" and knnd._dist then return knnd.dist end
  return nil
end

-- ---- shards ---------------------------------------------------------------------------------
local function check_shard(i, n, what)
  i, n = math.tointeger(i), math.tointeger(n)
  if not i or not n or n < 1 or i < 1 or i > n then
    return nil, ("%s expects i/n with 1 <= i <= n"):format(what)
  end
  return { i, n }
end

--- "2/4" -> {2, 4}; nil and a message otherwise
function M.parse_shard(s)
  local i, n = tostring(s):match("^%s*(%d+)%s*/%s*(%d+)%s*$")
  local shard = i and check_shard(tonumber(i), tonumber(n), "--shard")
  if not shard then return nil, ("--shard expects i/n with 1 <= i <= n (e.g. 2/4), got '%s'"):format(tostring(s)) end
  return shard
end

--- the shard the environment gives (a SLURM job array, Open MPI or PMI ranks), or nil
function M.env_shard(getenv)
  getenv = getenv or os.getenv
  local function int(name) return math.tointeger(tonumber(getenv(name) or "")) end
  local id, count = int("SLURM_ARRAY_TASK_ID"), int("SLURM_ARRAY_TASK_COUNT")
  if id and count then
    local shard, err = check_shard(id - (int("SLURM_ARRAY_TASK_MIN") or 0) + 1, count,
      "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1 / SLURM_ARRAY_TASK_COUNT")
    if not shard then fail("%s (got %d/%d)", err, id, count) end
    return shard, "SLURM"
  end
  for _, v in ipairs { { "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE" }, { "PMI_RANK", "PMI_SIZE" } } do
    local rank, size = int(v[1]), int(v[2])
    if rank and size then
      local shard, err = check_shard(rank + 1, size, v[1] .. " + 1 / " .. v[2])
      if not shard then fail("%s (got rank %d of %d)", err, rank, size) end
      return shard, v[1]:match("^[^_]+")
    end
  end
  return nil
end

-- ---- the plan: configs in a deterministic order and their names ------------------------------
local function is_list(v) return type(v) == "table" and getmetatable(v) == nil and (#v > 0 or next(v) == nil) end

-- the text of a value in a run name
local value_text = results.value_text

-- FNV-1a, to shorten an overlong run name without losing its uniqueness
local function hash(s)
  local h = 2166136261
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return ("%08x"):format(h)
end

--- a run name safe as a folder name: letters, digits and . _ - = , + kept, anything else '_';
--- names over 120 characters end in a hash of the whole
function M.sanitise(name)
  local s = name:gsub("[^%w%._%-=,+]", "_")
  if s:sub(1, 1) == "." then s = "_" .. s:sub(2) end
  if #s > 120 then s = s:sub(1, 110) .. "-" .. hash(name) end
  return s
end

-- the type every value of an axis shares (for a key the base does not declare)
local function axis_param(key, values)
  local kinds = {}
  for _, v in ipairs(values) do
    local t = type(v)
    if t == "number" then t = math.type(v) == "integer" and "integer" or "number" end
    if is_list(v) then t = "list" end
    kinds[t] = true
  end
  local ty
  if kinds.list and next(kinds, next(kinds)) == nil then ty = "list"
  elseif (kinds.integer or kinds.number) and not kinds.string and not kinds.boolean and not kinds.list and not kinds.table then
    ty = kinds.number and "number" or "integer"
  elseif kinds.string and next(kinds, next(kinds)) == nil then ty = "string"
  elseif kinds.boolean and next(kinds, next(kinds)) == nil then ty = "boolean"
  else ty = "any" end
  return config.param(values[1], ("grid axis %s"):format(key), { type = ty })
end

local function axes_of(grid, order, seed_key)
  local axes = {}
  if grid == nil then return axes end
  if type(grid) ~= "table" then fail("option 'grid' expected a table {key = {values...}}, got %s", type(grid)) end
  local keys = {}
  for k, values in pairs(grid) do
    if type(k) ~= "string" then fail("grid keys must be config keys (strings), got %s", tostring(k)) end
    if not is_list(values) or #values == 0 then
      fail("grid axis '%s' expects a non-empty list of values, got %s", k, type(values) == "table" and "an empty or keyed table" or type(values))
    end
    keys[#keys + 1] = k
  end
  if order ~= nil then
    if not is_list(order) then fail("option 'order' expected a list of grid keys") end
    local pos = {}
    for i, k in ipairs(order) do
      if grid[k] == nil then fail("option 'order' names '%s', which is no grid axis (axes: %s)", tostring(k), table.concat(keys, ", ")) end
      pos[k] = i
    end
    table.sort(keys, function(a, b)
      local pa, pb = pos[a] or math.huge, pos[b] or math.huge
      if pa ~= pb then return pa < pb end
      if (a == seed_key) ~= (b == seed_key) then return b == seed_key end
      return a < b
    end)
  else
    table.sort(keys, function(a, b)
      if (a == seed_key) ~= (b == seed_key) then return b == seed_key end
      return a < b
    end)
  end
  for _, k in ipairs(keys) do
    local vals = {}
    for i, v in ipairs(grid[k]) do vals[i] = v end
    axes[#axes + 1] = { key = k, values = vals }
  end
  return axes
end

-- the explicit configs of `runs` as sorted lists of {key, value} (nested tables flattened)
local function explicit_runs(runs)
  if runs == nil then return { {} } end
  if not is_list(runs) or #runs == 0 then fail("option 'runs' expected a non-empty list of config tables") end
  local out = {}
  for i, r in ipairs(runs) do
    if type(r) ~= "table" then fail("runs[%d] expected a config table, got %s", i, type(r)) end
    local flat = config.flatten(r)
    local kv = {}
    for k, v in pairs(flat) do kv[#kv + 1] = { k, v } end
    table.sort(kv, function(a, b) return a[1] < b[1] end)
    out[i] = kv
  end
  return out
end

--- The runs of a sweep spec in order: {{name =, config =, index =}, ...}, without running
--- anything (`plan` is what knnd.sweep runs; `knnd sweep --dry-run` prints it). Also returns
--- the keys the names are made of.
function M.plan(spec, cli_overrides)
  local seed_key = spec.seed_key or "seed"
  local axes = axes_of(spec.grid, spec.order, seed_key)
  local explicit = explicit_runs(spec.runs)
  local base = spec.base or {}
  if type(base) ~= "table" then fail("option 'base' expected a config table, got %s", type(base)) end
  local base_specs = config.specs(base)
  local has_base = next(base_specs) ~= nil

  -- the schema the runs resolve against: the base plus the grid's axes it does not declare
  local schema = config.copy(base)
  local axis_index = {}
  for _, a in ipairs(axes) do
    axis_index[a.key] = a
    if not base_specs[a.key] then config.set(schema, a.key, axis_param(a.key, a.values)) end
  end
  local explicit_keys = {}
  for i, kv in ipairs(explicit) do
    for _, p in ipairs(kv) do
      local k = p[1]
      if axis_index[k] then fail("key '%s' is both a grid axis and set by runs[%d]; use one or the other", k, i) end
      if has_base and not base_specs[k] then
        local keys = config.keys(schema)
        fail("runs[%d] sets unknown key '%s' (the base declares: %s)", i, k, table.concat(keys, ", "))
      end
      explicit_keys[k] = true
    end
  end
  if not has_base then
    -- without a base, the explicit runs declare their keys (typed by their first value)
    local vals = {}
    for _, kv in ipairs(explicit) do
      for _, p in ipairs(kv) do vals[p[1]] = vals[p[1]] or {}; table.insert(vals[p[1]], p[2]) end
    end
    for k, vs in pairs(vals) do config.set(schema, k, axis_param(k, vs)) end
  end

  -- --set from the command line: a grid axis takes a list of values; any other key goes to the base
  local base_overrides = {}
  local schema_specs = config.specs(schema)
  for key, raw in pairs(cli_overrides or {}) do
    local a, s = axis_index[key], schema_specs[key]
    if a then
      if s.type == "list" or s.type == "any" then
        fail("--set %s: the grid axis '%s' holds %s values, which cannot be given on the command line", key, key, s.type)
      end
      local list_spec = config.param(nil, nil, { type = "list", of = s.type })
      local list = config.resolve({ [key] = list_spec }, { [key] = raw }, { prefix = "--set", noun = "grid axis" })[key]
      if #list == 0 then fail("--set %s: the grid axis '%s' needs at least one value", key, key) end
      a.values = list
      config.use_cli_override(key)
    elseif s then
      if explicit_keys[key] then
        fail("--set %s: '%s' is set by the sweep's runs list; change it in the script", key, key)
      end
      base_overrides[key] = raw
      config.use_cli_override(key)
    elseif not config.cli_override_used(key) then
      -- taken by nobody so far (knnd.options, called before the sweep, takes its own keys)
      local declared = config.cli_declared_keys()
      fail("--set %s: unknown key '%s' (the sweep's keys: %s%s)", key, key, table.concat(config.keys(schema), ", "),
        #declared > 0 and "; the script's knnd.options: " .. table.concat(declared, ", ") or "")
    end
  end

  -- the cartesian product: explicit runs outermost, then the axes in order (the last fastest)
  local points = {}
  for _, kv in ipairs(explicit) do
    local function rec(i, acc)
      if i > #axes then
        local p = {}
        for _, x in ipairs(kv) do p[#p + 1] = x end
        for _, x in ipairs(acc) do p[#p + 1] = x end
        points[#points + 1] = p
        return
      end
      for _, v in ipairs(axes[i].values) do
        acc[#acc + 1] = { axes[i].key, v }
        rec(i + 1, acc)
        acc[#acc] = nil
      end
    end
    rec(1, {})
  end

  local planned, names = {}, {}
  for idx, p in ipairs(points) do
    local overrides, parts = {}, {}
    for k, v in pairs(base_overrides) do overrides[k] = v end
    for _, x in ipairs(p) do
      overrides[x[1]] = x[2]
      parts[#parts + 1] = x[1] .. "=" .. value_text(x[2])
    end
    local ok, cfg = pcall(config.resolve, schema, overrides, { prefix = "knnd.sweep", noun = "key" })
    if not ok then
      fail("run %d (%s): %s", idx, table.concat(parts, ","), tostring(cfg):gsub("^knnd%.sweep: ", ""))
    end
    local name = #parts > 0 and M.sanitise(table.concat(parts, ",")) or "run"
    if names[name] then
      fail("runs %d and %d have the same name '%s' (the same config twice?)", names[name], idx, name)
    end
    names[name] = idx
    planned[idx] = { name = name, config = cfg, index = idx, keys = p }
  end
  -- the keys the names are made of, in name order: what the summary groups by (less the seed)
  local name_keys, seen = {}, {}
  for _, p in ipairs(points) do
    for _, x in ipairs(p) do
      if not seen[x[1]] then seen[x[1]] = true; name_keys[#name_keys + 1] = x[1] end
    end
  end
  return planned, name_keys, axes
end

-- ---- paired comparisons ---------------------------------------------------------------------
-- the `compare` option as a list of {by, baseline, metrics}, checked against the grid before any run
-- (a baseline that --set took off its axis leaves that comparison out, with a note)
local function compare_specs(compare, axes, grid, seed_key)
  if compare == nil then return {} end
  local usage = "{by = axis, baseline = value, metrics = {...}} or a list of them"
  if type(compare) ~= "table" then fail("option 'compare' expected %s, got %s", usage, type(compare)) end
  local list = compare.by ~= nil and { compare } or compare
  if #list == 0 then fail("option 'compare' expected %s", usage) end
  local axis_names = {}
  for _, a in ipairs(axes) do if a.key ~= seed_key then axis_names[#axis_names + 1] = a.key end end
  local out = {}
  for i, c in ipairs(list) do
    local what = #list > 1 and ("option 'compare'[%d]"):format(i) or "option 'compare'"
    if type(c) ~= "table" then fail("%s expected a table {by = axis, baseline = value, metrics = {...}}, got %s", what, type(c)) end
    for k in pairs(c) do
      if k ~= "by" and k ~= "baseline" and k ~= "metrics" then
        fail("%s: unknown key '%s' (expected by, baseline, metrics)", what, tostring(k))
      end
    end
    local axis
    for _, a in ipairs(axes) do if a.key == c.by and a.key ~= seed_key then axis = a end end
    if not axis then
      fail("%s: 'by' must name a grid axis other than the seed, got '%s' (the axes: %s)", what, tostring(c.by),
        table.concat(axis_names, ", "))
    end
    local skip
    if c.baseline ~= nil then
      local function has(values)
        for _, v in ipairs(values) do if value_text(v) == value_text(c.baseline) then return true end end
        return false
      end
      if not has(grid[c.by]) then
        local vals = {}
        for j, v in ipairs(grid[c.by]) do vals[j] = value_text(v) end
        fail("%s: the baseline '%s' is no value of the axis '%s' (its values: %s)", what, value_text(c.baseline), c.by,
          table.concat(vals, ", "))
      end
      if not has(axis.values) then
        skip = ("the baseline %s = %s is not in this sweep (--set %s)"):format(c.by, value_text(c.baseline), c.by)
      end
    end
    local metrics = c.metrics
    if type(metrics) == "string" then metrics = { metrics } end
    if metrics ~= nil and (not is_list(metrics) or #metrics == 0) then
      fail("%s: 'metrics' expected a list of metric names, got %s", what, type(c.metrics))
    end
    out[i] = { by = c.by, baseline = c.baseline, metrics = metrics, skip = skip }
  end
  return out
end

-- the comparisons as Markdown (for summary.md) and CSV (paired.csv); nil when there are none
local function paired_report(specs, agg, seed_key)
  if #specs == 0 then return nil end
  local available = {}
  for _, m in ipairs(agg.metrics) do available[m] = true end
  local md, tables = {}, {}
  for _, c in ipairs(specs) do
    local metrics = {}
    for _, m in ipairs(c.metrics or agg.metrics) do if available[m] then metrics[#metrics + 1] = m end end
    local title = ("### %s%s\n\n"):format(c.by, c.baseline ~= nil and (" vs " .. value_text(c.baseline)) or "")
    if c.skip then
      md[#md + 1] = title .. "left out: " .. c.skip .. "\n"
    elseif #metrics > 0 then
      local pt = results.paired(agg, { by = c.by, baseline = c.baseline, metric = metrics })
      md[#md + 1] = title .. results.paired_markdown(pt)
      tables[#tables + 1] = pt
    end
  end
  -- paired.csv: every comparison's rows under one header, the other axes as columns
  local csv
  if #tables > 0 then
    local keys = {}
    for _, k in ipairs(agg.by) do
      local used = false
      for _, pt in ipairs(tables) do for _, sk in ipairs(pt.strata) do if sk == k then used = true end end end
      if used then keys[#keys + 1] = k end
    end
    local parts = {}
    for i, pt in ipairs(tables) do parts[i] = results.paired_csv(pt, keys, i == 1) end
    csv = table.concat(parts)
  end
  local text = ("## paired comparisons\n\npaired t-tests over %s: the runs of a and of b with the same %s form a pair; "
    .. "a − b is the mean of their differences, with its 95%% confidence interval (t, n − 1 df) and the "
    .. "two-sided p\n\n%s"):format(seed_key, seed_key, #md > 0 and table.concat(md, "\n") or "no finished runs to compare yet\n")
  return text, csv
end

-- ---- running --------------------------------------------------------------------------------
local function script_name()
  local s = type(arg) == "table" and type(arg[0]) == "string" and arg[0] or nil
  return s and s:match("([^/]+)%.lua$") or nil
end

local function pick(spec, key, default)
  if spec[key] ~= nil then return spec[key] end
  if M.defaults[key] ~= nil then return M.defaults[key] end
  return default
end

local function metrics_text(m)
  if type(m) ~= "table" then return "" end
  local keys = {}
  for k, v in pairs(m) do if type(v) == "number" then keys[#keys + 1] = k end end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = ("%s=%.4g"):format(k, m[k]) end
  return table.concat(parts, " ")
end

-- the keys whose values differ between a stored config (from run.json) and a planned one, as
-- "key: old -> new"; both go through JSON first so that only real differences count
-- defaults (optional): the base's default config; a key the stored config lacks that the planned one
-- holds at its default is no difference (the sweep's schema gained that key after the run)
local function config_diff(stored, planned, defaults)
  local function norm(t) return config.flatten(require("dkjson").decode(config.to_json(t), 1, nil, nil, nil) or {}) end
  local a, b = norm(stored), norm(planned)
  local d = defaults and norm(defaults) or {}
  local keys, seen = {}, {}
  for k in pairs(a) do seen[k] = true; keys[#keys + 1] = k end
  for k in pairs(b) do if not seen[k] then keys[#keys + 1] = k end end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local x, y = a[k], b[k]
    local tx, ty = x == nil and "nil" or value_text(x), y == nil and "nil" or value_text(y)
    if x == nil and d[k] ~= nil and value_text(d[k]) == ty then ty = tx end
    if tx ~= ty then out[#out + 1] = ("%s: %s -> %s"):format(k, tx, ty) end
  end
  return out
end

--- The runs of the sweep as the results store reads them (every planned run, on disk or not).
local function collect(dir, planned)
  local runs = {}
  for _, p in ipairs(planned) do
    local ok, r = pcall(results.load_run, dir .. "/" .. p.name)
    if not ok then r = { name = p.name, dir = dir .. "/" .. p.name, status = "pending", metrics = {} } end
    r.name = p.name
    r.config = p.config -- the plan's config (the same as run.json's for runs of this plan)
    runs[#runs + 1] = r
  end
  return runs
end

--- Run a sweep; see the top of this file. Returns {name, dir, runs = {{name, config, status, metrics,
--- error}}, summary = (knnd.results.aggregate's table), ran, skipped, failed, shard}.
local function sweep_impl(spec)
  if type(spec) ~= "table" then fail("argument 1 expected a table, got %s", type(spec)) end
  local allowed = {}
  for k in pairs(ALLOWED) do allowed[#allowed + 1] = k end
  table.sort(allowed)
  for k in pairs(spec) do
    if not ALLOWED[k] then fail("unknown option '%s' (expected %s)", tostring(k), table.concat(allowed, ", ")) end
  end
  if type(spec.run) ~= "function" then fail("option 'run' expected a function(cfg, run) returning the final metrics, got %s", type(spec.run)) end
  if spec.grid == nil and spec.runs == nil then fail("give the configs to run: grid = {key = {values...}} and/or runs = {{...}, ...}") end
  local name = spec.name or script_name()
  if type(name) ~= "string" or name == "" then fail("option 'name' (the sweep's folder name) is required") end
  local root = pick(spec, "dir", "runs")
  local dir = root .. "/" .. name
  local resume = pick(spec, "resume", true)
  local retry_failed = pick(spec, "retry_failed", false)
  local on_error = spec.on_error or "continue"
  if on_error ~= "continue" and on_error ~= "stop" then fail("option 'on_error' expected 'continue' or 'stop', got '%s'", tostring(on_error)) end
  local quiet = spec.quiet == true
  local say = quiet and function() end or function(s) io.write(s, "\n") end
  local shard, shard_from = pick(spec, "shard", nil), "option"
  if type(shard) == "string" then
    local s, err = M.parse_shard(shard)
    if not s then fail("%s", err) end
    shard = s
  elseif shard ~= nil then
    local s = type(shard) == "table" and check_shard(shard[1], shard[2], "shard") or nil
    if not s then fail("option 'shard' expects {i, n} with 1 <= i <= n, got %s", type(shard) == "table"
      and ("{%s, %s}"):format(tostring(shard[1]), tostring(shard[2])) or tostring(shard)) end
    shard = s
  else
    shard, shard_from = M.env_shard()
  end
  shard = shard or { 1, 1 }
  -- a sweep launched as the ranks of an MPI job: each rank runs its shard of the runs on its own
  -- (no data-parallel training inside a run); data-parallel runs in a sweep would need every rank
  -- on the same run and rank 0 alone keeping the sweep's books, which knnd.sweep does not do yet
  local dist = knnd_dist()
  if dist and dist.size() > 1 then
    if shard_from ~= "OMPI" and shard_from ~= "PMI" then
      fail("this sweep runs as %d MPI ranks with its shard from %s: launch it with one process per shard "
        .. "(the ranks of an mpirun take their shard from their rank when --shard is not given)", dist.size(),
        shard_from == "option" and "--shard" or tostring(shard_from))
    end
    dist.work_alone(true)
  end

  local planned, name_keys, axes = M.plan(spec, config.cli_overrides())
  local comparisons = compare_specs(spec.compare, axes, spec.grid, spec.seed_key or "seed")
  local mine = {}
  for _, p in ipairs(planned) do
    if (p.index - 1) % shard[2] == shard[1] - 1 then mine[#mine + 1] = p end
  end

  if M.defaults.dry_run then
    say(("sweep %s: %d runs in %s%s"):format(name, #planned, dir, shard[2] > 1 and (" (shard %d/%d: %d runs)")
      :format(shard[1], shard[2], #mine) or ""))
    for k, p in ipairs(mine) do
      local info = knnd_run.read_info(dir .. "/" .. p.name)
      local state = not info and "pending" or (knnd_run.is_stale(info) and "interrupted") or info.status
      say(("[%d/%d] %-12s %s"):format(k, #mine, state, p.name))
    end
    local out = { name = name, dir = dir, shard = shard, runs = {}, ran = 0, skipped = #mine, failed = 0, failed_names = {},
      dry_run = true }
    M.history[#M.history + 1] = out
    return out
  end

  -- a finished run of another config under the same name (a --set that the names do not show)
  -- must not pass for this one
  local defaults = spec.base and select(2, pcall(config.resolve, spec.base, {}, { prefix = "knnd.sweep", noun = "key" }))
  if type(defaults) ~= "table" then defaults = nil end
  for _, p in ipairs(mine) do
    local info = knnd_run.read_info(dir .. "/" .. p.name)
    if info and info.status == "finished" then
      local diff = config_diff(info.config or {}, p.config, defaults)
      if #diff > 0 then
        fail("'%s/%s' finished with another config (%s); resume with the config it was run with, or use another "
          .. "sweep name or folder", dir, p.name, table.concat(diff, ", "))
      end
    end
  end

  if not resume then
    local existing = 0
    for _, p in ipairs(mine) do
      if files.exists(dir .. "/" .. p.name .. "/run.json") then existing = existing + 1 end
    end
    if existing > 0 then
      fail("'%s' already holds %d of this sweep's runs; resume it (--resume, or resume = true) or choose another folder",
        dir, existing)
    end
  end

  files.mkdir_p(dir)
  local plan_axes = {}
  for i, a in ipairs(axes) do plan_axes[i] = { key = a.key, values = a.values } end
  local plan_runs = {}
  for i, p in ipairs(planned) do plan_runs[i] = { name = p.name, config = p.config } end
  files.write_json(dir .. "/sweep.json", config.serialisable { name = name, axes = plan_axes, runs = plan_runs,
    seed_key = spec.seed_key or "seed" })

  local shard_note = shard[2] > 1 and (" (shard %d/%d%s: %d of %d runs)"):format(shard[1], shard[2],
    shard_from ~= "option" and " from " .. tostring(shard_from) or "", #mine, #planned) or ""
  say(("sweep %s: %d runs in %s%s"):format(name, #planned, dir, shard_note))

  local bar = pick(spec, "progress", not quiet) and require("knnd.progress") { total = #mine, desc = "sweep " .. name, unit = "run" } or nil
  local out = { name = name, dir = dir, shard = shard, runs = {}, ran = 0, skipped = 0, failed = 0, failed_names = {} }
  local stop = false
  for k, p in ipairs(mine) do
    if stop then break end
    local rdir = dir .. "/" .. p.name
    local info = knnd_run.read_info(rdir)
    local action, why = "run", nil
    if info and info.status == "finished" then
      action = "skip"
    elseif info and info.status == "failed" then
      if retry_failed then why = "failed before; retrying" else action = "skip-failed" end
    elseif info and info.status == "running" then
      if knnd_run.is_stale(info) then
        local pr = info.process or {}
        why = ("interrupted (process %s on %s is gone); running again"):format(tostring(pr.pid), tostring(pr.host))
      else
        action = "busy"
      end
    end
    local prefix = ("[%d/%d] %s"):format(k, #mine, p.name)
    local rec = { name = p.name, config = p.config, index = p.index }
    if action == "skip" then
      out.skipped = out.skipped + 1
      rec.status = "finished"
      say(prefix .. ": finished before, skipped")
    elseif action == "skip-failed" then
      out.skipped = out.skipped + 1
      rec.status = "failed"
      rec.error = info.error
      say(("%s: failed before (%s), skipped (retry with --retry-failed)"):format(prefix, tostring(info.error)))
    elseif action == "busy" then
      out.skipped = out.skipped + 1
      rec.status = "running"
      say(("%s: running in process %s, skipped"):format(prefix, tostring((info.process or {}).pid)))
    else
      if why then say(prefix .. ": " .. why) end
      local cfg = p.config
      local seed = cfg[spec.seed_key or "seed"]
      local r = knnd_run.run { name = p.name, dir = dir, config = cfg, seed = math.type(seed) == "integer" and seed or nil,
        on_error = "return", echo = spec.echo, meta = { sweep = name, index = p.index, of = #planned },
        fn = function(run)
          local m = spec.run(cfg, run)
          if m ~= nil and type(m) ~= "table" then
            error(("the sweep's run function must return a table of final metrics (or nothing), got %s"):format(type(m)), 0)
          end
          return m
        end }
      out.ran = out.ran + 1
      rec.status = r.status
      rec.metrics = r.final
      if r.status == "failed" then
        out.failed = out.failed + 1
        out.failed_names[#out.failed_names + 1] = p.name
        rec.error = r.error
        say(("%s: FAILED after %.1f s: %s"):format(prefix, r.info.duration_s, r.error))
        if on_error == "stop" then stop = true end
      else
        say(("%s: finished in %.1f s  %s"):format(prefix, r.info.duration_s, metrics_text(r.final)))
      end
    end
    out.runs[#out.runs + 1] = rec
    if bar then bar:update(1, { failed = out.failed }) end
  end
  if bar then bar:close() end

  -- the summary over every run of the sweep on disk (the other shards' too)
  local seed_key = spec.seed_key or "seed"
  local by = {}
  for _, k in ipairs(name_keys) do if k ~= seed_key then by[#by + 1] = k end end
  local all = collect(dir, planned)
  local agg = results.aggregate(all, { by = by, over = seed_key, metrics = spec.metrics })
  out.summary = agg
  local md = results.markdown(agg)
  local paired_md, paired_csv = paired_report(comparisons, agg, seed_key)
  files.write_atomic(dir .. "/summary.csv", results.aggregate_csv(agg))
  files.write_atomic(dir .. "/summary.md", ("# sweep %s\n\nmean ± sample std over %s, with the half-width of the mean's "
    .. "95%% confidence interval (CI95: t, n − 1 df) and n = finished runs\n\n%s%s")
    :format(name, seed_key, md, paired_md and ("\n" .. paired_md) or ""))
  if paired_csv then files.write_atomic(dir .. "/paired.csv", paired_csv) end
  local counts = {}
  for _, r in ipairs(all) do counts[r.status] = (counts[r.status] or 0) + 1 end
  local ctext = {}
  for _, s in ipairs { "finished", "failed", "running", "interrupted", "pending" } do
    if counts[s] then ctext[#ctext + 1] = ("%d %s"):format(counts[s], s) end
  end
  say(("\nsweep %s: %s (this process: %d ran, %d skipped, %d failed); mean ± std over %s:\n")
    :format(name, table.concat(ctext, ", "), out.ran, out.skipped, out.failed, seed_key))
  say(md)
  if paired_md then say(paired_md) end
  say(("saved %s/summary.md and %s/summary.csv%s"):format(dir, dir, paired_csv and (" and " .. dir .. "/paired.csv") or ""))
  M.history[#M.history + 1] = out
  if stop then fail("run %s failed: %s (on_error = 'stop')", out.failed_names[#out.failed_names], tostring(out.runs[#out.runs].error)) end
  return out
end

-- a sweep run by the ranks of a job works alone while it runs (see sweep_impl), and the process is
-- a rank of its job again afterwards
function M.sweep(spec)
  local dist = knnd_dist()
  local was = dist and dist.alone()
  local ok, res = pcall(sweep_impl, spec)
  if dist then dist.work_alone(was) end
  if not ok then error(res, 0) end
  return res
end

setmetatable(M, { __call = function(_, spec) return M.sweep(spec) end })
return M
