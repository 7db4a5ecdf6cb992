-- results.lua — the results store: the runs under a folder (run.json, summary.json, metrics.csv
-- written by knnd.run), filtered, grouped over seeds (mean ± sample std, 95% t confidence
-- interval), compared (paired t-tests between the values of a key, matched on the seed) and exported.
--
--   local runs = knnd.results.load("runs/ablation")            -- every run below the folder
--   local knn = knnd.results.filter(runs, {cond = "knn", status = "finished"})
--   local t = knnd.results.compare(runs, {by = {"cond"}, over = "seed", sort = "fid"})
--   print(knnd.results.markdown(t))
--   local p = knnd.results.paired(runs, {by = "cond", baseline = "no_knn", metric = "fid"})
--   print(knnd.results.paired_markdown(p))
--   knnd.results.to_csv(runs, "ablation.csv")
local files = require "knnd.files"
local config = require "knnd.config"
local fmt_number = require("knnd.run").fmt_number
local stats = require "knnd.stats"

local M = {}

local function fail(fname, fmt, ...) error(("knnd.results.%s: " .. fmt):format(fname, ...), 0) end

-- ---- loading ------------------------------------------------------------------------------
local function load_run(path, name)
  local info, err = files.read_json(path .. "/run.json")
  if not info then return nil, err end
  local summary = files.read_json(path .. "/summary.json") or {}
  local stale = require("knnd.run").is_stale(info)
  return {
    name = name, dir = path, info = info, config = info.config or {}, metrics = summary,
    -- a run left "running" by a killed process is "interrupted"; the file still says running
    status = stale and "interrupted" or info.status, recorded_status = info.status,
    duration_s = info.duration_s, seed = info.seed, error = info.error,
  }
end

--- every run at or below dir (folders holding a run.json, up to 4 levels deep), sorted by name
--- (the path below dir). Each: {name, dir, status (finished|failed|running|interrupted), config,
--- metrics (summary.json), duration_s, seed, error, info (the whole run.json)}.
function M.load(dir, opts)
  opts = opts or {}
  if type(dir) ~= "string" or not files.is_dir(dir) then
    fail("load", "'%s' is not a folder", tostring(dir))
  end
  local root = dir:gsub("/+$", "")
  if root == "" then root = "/" end
  local p = io.popen(("find %s -maxdepth %d -name run.json -type f 2>/dev/null"):format(files.shell_quote(root),
    opts.depth or 4))
  local paths = {}
  for line in p:lines() do paths[#paths + 1] = line end
  p:close()
  table.sort(paths)
  local runs, bad = {}, {}
  for _, f in ipairs(paths) do
    local rdir = f:sub(1, -(#"/run.json" + 1))
    local name = rdir == root and (root:match("([^/]+)$") or root) or rdir:sub(#root + 2)
    local r, err = load_run(rdir, name)
    if r then runs[#runs + 1] = r else bad[#bad + 1] = err end
  end
  return runs, bad
end

--- one run folder
function M.load_run(dir)
  local r, err = load_run(dir, dir:match("([^/]+)/*$") or dir)
  if not r then fail("load_run", "%s", err) end
  return r
end

--- the time series of one metric of a run: {steps = {...}, values = {...}} from metrics.csv
function M.series(run, name)
  local out = { steps = {}, values = {} }
  local f = io.open((type(run) == "table" and run.dir or run) .. "/metrics.csv", "rb")
  if not f then return out end
  for line in f:lines() do
    local step, n, v = line:match("^([^,]+),([^,]+),([^,]+),")
    -- a killed process may leave a half-written last line: only whole rows count
    if n == name and tonumber(step) and tonumber(v) then
      out.steps[#out.steps + 1] = tonumber(step)
      out.values[#out.values + 1] = tonumber(v)
    end
  end
  f:close()
  return out
end

-- ---- selecting ----------------------------------------------------------------------------
--- the value of a run field: name, status, duration_s, seed, a metric, or a dotted config key
function M.value(run, key)
  if key == "name" or key == "status" or key == "duration_s" or key == "seed" or key == "error" then return run[key] end
  local m = run.metrics and run.metrics[key]
  if m ~= nil then return m end
  return config.get(run.config or {}, key)
end

--- runs matching pred: a function(run) -> bool, or a table {key = value | {values...}} over
--- status, name, metrics and dotted config keys
function M.filter(runs, pred)
  if type(pred) == "table" then
    local t = pred
    pred = function(r)
      for k, want in pairs(t) do
        local v = M.value(r, k)
        if type(want) == "table" then
          local any = false
          for _, w in ipairs(want) do if w == v then any = true end end
          if not any then return false end
        elseif v ~= want then
          return false
        end
      end
      return true
    end
  elseif type(pred) ~= "function" then
    fail("filter", "argument 2 expected a function or a table of key = value, got %s", type(pred))
  end
  local out = {}
  for _, r in ipairs(runs) do if pred(r) then out[#out + 1] = r end end
  return out
end

--- the numeric final metrics of the runs, sorted by name
function M.metric_names(runs)
  local seen, out = {}, {}
  for _, r in ipairs(runs) do
    for k, v in pairs(r.metrics or {}) do
      if type(v) == "number" and not seen[k] then seen[k] = true; out[#out + 1] = k end
    end
  end
  table.sort(out)
  return out
end

-- ---- grouping over seeds --------------------------------------------------------------------
--- mean, sample standard deviation (n - 1; nil for n < 2) and n of a list of numbers
function M.mean_std(xs)
  local n = #xs
  if n == 0 then return nil, nil, 0 end
  local s = 0
  for _, x in ipairs(xs) do s = s + x end
  local mean = s / n
  if n < 2 then return mean, nil, n end
  local ss = 0
  for _, x in ipairs(xs) do ss = ss + (x - mean) ^ 2 end
  return mean, math.sqrt(ss / (n - 1)), n
end

local function value_text(v)
  if type(v) == "number" then return fmt_number(v) end
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = value_text(x) end
    return table.concat(parts, "+")
  end
  return tostring(v)
end
M.value_text = value_text

-- the config keys whose values differ between runs (lists compared by their text)
local function varying_keys(runs, over)
  local values, keys = {}, {}
  for _, r in ipairs(runs) do
    for k, v in pairs(config.flatten(r.config or {})) do
      values[k] = values[k] or {}
      values[k][value_text(v)] = true
    end
  end
  for k, set in pairs(values) do
    local n = 0
    for _ in pairs(set) do n = n + 1 end
    if n > 1 and k ~= over then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

--- Group runs by the config keys `by` (default: the keys that vary, minus `over`) and reduce every
--- metric over each group's finished runs (the `over` axis, default "seed"): mean ± sample std and
--- the half-width of the 95% t confidence interval of the mean (n - 1 df; nil for n < 2).
--- opts: {by = {...}, over = "seed", metrics = {...} (default: every numeric metric)}.
--- Returns {by = keys, metrics = names, over =, rows = {{group = {key = value}, label =, total =,
--- finished =, stats = {metric = {mean =, std =, ci95 =, n =}}, samples = {metric = {{over = the
--- run's `over` value, value =}, ...}}}}} with the rows in the order of their first run (samples:
--- what knnd.results.paired matches on).
function M.aggregate(runs, opts)
  opts = opts or {}
  local over = opts.over == nil and "seed" or opts.over
  local by = opts.by or varying_keys(runs, over)
  local finished = M.filter(runs, function(r) return r.status == "finished" end)
  local metrics = opts.metrics or M.metric_names(finished)
  local rows, index = {}, {}
  for _, r in ipairs(runs) do
    local group, parts = {}, {}
    for _, k in ipairs(by) do
      local v = config.get(r.config or {}, k)
      group[k] = v
      parts[#parts + 1] = k .. "=" .. (v == nil and "" or value_text(v))
    end
    local label = table.concat(parts, ",")
    local row = index[label]
    if not row then
      row = { group = group, label = label, total = 0, finished = 0, samples = {} }
      index[label] = row
      rows[#rows + 1] = row
    end
    row.total = row.total + 1
    if r.status == "finished" then
      row.finished = row.finished + 1
      for _, m in ipairs(metrics) do
        local v = r.metrics and r.metrics[m]
        if type(v) == "number" then
          row.samples[m] = row.samples[m] or {}
          table.insert(row.samples[m], { over = over and config.get(r.config or {}, over), value = v })
        end
      end
    end
  end
  for _, row in ipairs(rows) do
    row.stats = {}
    for _, m in ipairs(metrics) do
      local xs = {}
      for i, smp in ipairs(row.samples[m] or {}) do xs[i] = smp.value end
      local mean, std, n = M.mean_std(xs)
      row.stats[m] = { mean = mean, std = std, n = n, ci95 = n >= 2 and select(2, stats.mean_ci(xs, 0.95)) or nil }
    end
  end
  return { by = by, metrics = metrics, over = over, rows = rows }
end

--- aggregate, then rows sorted by the mean of opts.sort (ascending; opts.descending = true)
function M.compare(runs, opts)
  opts = opts or {}
  local agg = M.aggregate(runs, opts)
  if opts.sort then
    local m, desc = opts.sort, opts.descending
    local known = false
    for _, x in ipairs(agg.metrics) do if x == m then known = true end end
    if not known then
      fail("compare", "no metric '%s' (the runs have: %s)", m, table.concat(agg.metrics, ", "))
    end
    local pos = {}
    for i, row in ipairs(agg.rows) do pos[row] = i end
    table.sort(agg.rows, function(a, b)
      local x, y = a.stats[m].mean, b.stats[m].mean
      if x == nil or y == nil then
        if x == nil and y == nil then return pos[a] < pos[b] end
        return y == nil
      end
      if x == y then return pos[a] < pos[b] end
      if desc then return x > y end
      return x < y
    end)
  end
  return agg
end

-- ---- paired comparisons --------------------------------------------------------------------
local function is_aggregate(x) return type(x) == "table" and type(x.rows) == "table" and type(x.by) == "table" end

--- Paired comparisons between the values of one config key, matched on another (the seed): the
--- runs of value a and of value b that share the seed had the same data order, initialisation and
--- sampling noise, so their differences are what a paired t-test reads.
---   knnd.results.paired(runs or knnd.results.aggregate's table, {by = "mode", metric = "alignment"
---     (or a list; default every metric), pair_on = "seed" (an aggregate's own `over`), baseline = "no_knn"})
--- Within each combination of the other grouping keys (the strata), every value a of `by` is compared
--- with the baseline b (without one: every pair of values, in order of first appearance), on the
--- pair_on values both finished: d_i = metric(a, seed i) - metric(b, seed i), and knnd.stats.paired_t
--- gives the mean difference, its 95% confidence half-width, t, df and the two-sided p.
--- Returns {by =, pair_on =, baseline =, strata = {keys}, rows = {{group = {stratum key = value}, metric =,
--- a =, b =, n =, mean_a =, mean_b =, mean_diff =, ci95 =, t =, df =, p =}}} (nil where undefined: n < 2).
function M.paired(src, opts)
  local fname = "paired"
  if type(src) ~= "table" then fail(fname, "argument 1 expected a list of runs or an aggregate, got %s", type(src)) end
  if type(opts) ~= "table" then fail(fname, "argument 2 expected an options table {by = key, ...}, got %s", type(opts)) end
  local known = { by = 1, metric = 1, pair_on = 1, baseline = 1 }
  for k in pairs(opts) do
    if not known[k] then fail(fname, "unknown option '%s' (expected baseline, by, metric, pair_on)", tostring(k)) end
  end
  local by = opts.by
  if type(by) ~= "string" then fail(fname, "option 'by' (the config key whose values are compared) expected a string, got %s", type(by)) end
  local metrics = opts.metric
  if type(metrics) == "string" then metrics = { metrics }
  elseif metrics ~= nil and type(metrics) ~= "table" then
    fail(fname, "option 'metric' expected a metric name or a list of them, got %s", type(metrics))
  end
  local agg
  if is_aggregate(src) then
    agg = src
    if opts.pair_on ~= nil and opts.pair_on ~= agg.over then
      fail(fname, "option 'pair_on' is '%s' but the aggregate was made over '%s' (pass the runs instead)",
        tostring(opts.pair_on), tostring(agg.over))
    end
    if #agg.rows > 0 and agg.rows[1].samples == nil then
      fail(fname, "the aggregate holds no per-run samples (make it with knnd.results.aggregate)")
    end
  else
    local pair_on = opts.pair_on or "seed"
    local keys = varying_keys(src, pair_on)
    local has = false
    for _, k in ipairs(keys) do if k == by then has = true end end
    if not has then keys[#keys + 1] = by end
    agg = M.aggregate(src, { by = keys, over = pair_on })
  end
  local in_by = false
  local strata = {}
  for _, k in ipairs(agg.by) do
    if k == by then in_by = true else strata[#strata + 1] = k end
  end
  if not in_by then fail(fname, "option 'by': the runs are not grouped by '%s' (their keys: %s)", by, table.concat(agg.by, ", ")) end
  local available = {}
  for _, m in ipairs(agg.metrics) do available[m] = true end
  metrics = metrics or agg.metrics
  for _, m in ipairs(metrics) do
    if not available[m] then fail(fname, "no metric '%s' (the runs have: %s)", tostring(m), table.concat(agg.metrics, ", ")) end
  end

  -- the rows of the aggregate by stratum, and the values of `by` in order of first appearance
  local order, cells, values, seen_value = {}, {}, {}, {}
  for _, row in ipairs(agg.rows) do
    local parts = {}
    for _, k in ipairs(strata) do parts[#parts + 1] = value_text(row.group[k] == nil and "" or row.group[k]) end
    local key = table.concat(parts, "\0")
    if not cells[key] then
      local group = {}
      for _, k in ipairs(strata) do group[k] = row.group[k] end
      cells[key] = { group = group, by_value = {} }
      order[#order + 1] = key
    end
    local v = row.group[by]
    local vt = value_text(v == nil and "" or v)
    cells[key].by_value[vt] = row
    if not seen_value[vt] then seen_value[vt] = true; values[#values + 1] = { text = vt, value = v } end
  end
  local comparisons = {}
  if opts.baseline ~= nil then
    local bt = value_text(opts.baseline)
    if not seen_value[bt] then
      local names = {}
      for i, v in ipairs(values) do names[i] = v.text end
      fail(fname, "option 'baseline': '%s' is no value of '%s' (the runs have: %s)", bt, by, table.concat(names, ", "))
    end
    for _, v in ipairs(values) do
      if v.text ~= bt then comparisons[#comparisons + 1] = { v, { text = bt, value = opts.baseline } } end
    end
  else
    for i = 1, #values do
      for j = i + 1, #values do comparisons[#comparisons + 1] = { values[i], values[j] } end
    end
  end

  local function by_over(row, m)
    local out = {}
    for _, smp in ipairs(row and row.samples[m] or {}) do
      if smp.over ~= nil then
        local k = value_text(smp.over)
        if out[k] ~= nil then
          fail(fname, "two finished runs of %s share %s = %s: group them by the other keys that vary (the aggregate's by)",
            row.label, agg.over, k)
        end
        out[k] = smp.value
      end
    end
    return out
  end
  local out = { by = by, pair_on = agg.over, baseline = opts.baseline, strata = strata, metrics = metrics, rows = {} }
  for _, m in ipairs(metrics) do
    for _, key in ipairs(order) do
      local cell = cells[key]
      for _, pr in ipairs(comparisons) do
        local ra, rb = cell.by_value[pr[1].text], cell.by_value[pr[2].text]
        if ra and rb then
          local va, vb = by_over(ra, m), by_over(rb, m)
          local ks = {}
          for k in pairs(va) do if vb[k] ~= nil then ks[#ks + 1] = k end end
          table.sort(ks, function(x, y)
            local nx, ny = tonumber(x), tonumber(y)
            if nx and ny and nx ~= ny then return nx < ny end
            return x < y
          end)
          local xs, ys = {}, {}
          for i, k in ipairs(ks) do xs[i], ys[i] = va[k], vb[k] end
          local r = stats.paired_t(xs, ys)
          out.rows[#out.rows + 1] = { group = cell.group, metric = m, a = pr[1].value, b = pr[2].value, n = r.n,
            mean_a = #xs > 0 and M.mean_std(xs) or nil, mean_b = #ys > 0 and M.mean_std(ys) or nil,
            mean_diff = r.diff, ci95 = r.ci, t = r.t, df = r.df, p = r.p }
        end
      end
    end
  end
  return out
end

-- ---- text, Markdown and CSV -----------------------------------------------------------------
local function csv_field(v)
  local s = v == nil and "" or (type(v) == "number" and ("%.10g"):format(v)) or value_text(v)
  if s:find('[,"\n\r]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

--- the aggregate as CSV: the group keys, runs_finished, runs_total, then <metric>_mean, _std, _ci95
--- (the 95% confidence interval's half-width), _n
function M.aggregate_csv(agg)
  local head = {}
  for _, k in ipairs(agg.by) do head[#head + 1] = csv_field(k) end
  head[#head + 1] = "runs_finished"
  head[#head + 1] = "runs_total"
  for _, m in ipairs(agg.metrics) do
    head[#head + 1] = csv_field(m .. "_mean")
    head[#head + 1] = csv_field(m .. "_std")
    head[#head + 1] = csv_field(m .. "_ci95")
    head[#head + 1] = csv_field(m .. "_n")
  end
  local lines = { table.concat(head, ",") }
  for _, row in ipairs(agg.rows) do
    local f = {}
    for _, k in ipairs(agg.by) do f[#f + 1] = csv_field(row.group[k]) end
    f[#f + 1] = tostring(row.finished)
    f[#f + 1] = tostring(row.total)
    for _, m in ipairs(agg.metrics) do
      local s = row.stats[m]
      f[#f + 1] = csv_field(s.mean)
      f[#f + 1] = csv_field(s.std)
      f[#f + 1] = csv_field(s.ci95)
      f[#f + 1] = tostring(s.n)
    end
    lines[#lines + 1] = table.concat(f, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

--- "mean ± std (CI95 ±h, n=3)" of one cell (h: the 95% confidence interval's half-width)
function M.format_stat(s)
  if not s or s.n == 0 or s.mean == nil then return "—" end
  if s.std == nil then return ("%.4g (n=%d)"):format(s.mean, s.n) end
  if s.ci95 == nil then return ("%.4g ± %.2g (n=%d)"):format(s.mean, s.std, s.n) end
  return ("%.4g ± %.2g (CI95 ±%.2g, n=%d)"):format(s.mean, s.std, s.ci95, s.n)
end

local function md_escape(s) return (tostring(s):gsub("|", "\\|")) end

--- the aggregate as a Markdown table: one row per group, "mean ± std (CI95 ±h, n)" per metric
function M.markdown(agg)
  local head = {}
  for _, k in ipairs(agg.by) do head[#head + 1] = md_escape(k) end
  head[#head + 1] = "runs"
  for _, m in ipairs(agg.metrics) do head[#head + 1] = md_escape(m) end
  local lines = { "| " .. table.concat(head, " | ") .. " |" }
  local rule = {}
  for i = 1, #head do rule[i] = "---" end
  lines[2] = "|" .. table.concat(rule, "|") .. "|"
  for _, row in ipairs(agg.rows) do
    local f = {}
    for _, k in ipairs(agg.by) do f[#f + 1] = md_escape(row.group[k] == nil and "" or value_text(row.group[k])) end
    f[#f + 1] = ("%d/%d"):format(row.finished, row.total)
    for _, m in ipairs(agg.metrics) do f[#f + 1] = md_escape(M.format_stat(row.stats[m])) end
    lines[#lines + 1] = "| " .. table.concat(f, " | ") .. " |"
  end
  return table.concat(lines, "\n") .. "\n"
end

local function fmt_p(p)
  if p == nil then return "—" end
  if p == 0 then return "0" end
  if p < 1e-4 then return ("%.1e"):format(p) end
  return ("%.3g"):format(p)
end

--- knnd.results.paired's table as Markdown: one row per metric, stratum and pair, "a − b", the
--- number of pairs, the means, the mean difference with its 95% confidence interval, t (df) and p
function M.paired_markdown(pt)
  local head = { "metric" }
  for _, k in ipairs(pt.strata) do head[#head + 1] = md_escape(k) end
  for _, h in ipairs { md_escape(pt.by) .. ": a − b", "n", "mean a", "mean b", "a − b", "95% CI", "t (df)", "p" } do
    head[#head + 1] = h
  end
  local rule = {}
  for i = 1, #head do rule[i] = "---" end
  local lines = { "| " .. table.concat(head, " | ") .. " |", "|" .. table.concat(rule, "|") .. "|" }
  local function num(v, f) return v == nil and "—" or (f or "%.4g"):format(v) end
  for _, r in ipairs(pt.rows) do
    local f = { md_escape(r.metric) }
    for _, k in ipairs(pt.strata) do f[#f + 1] = md_escape(r.group[k] == nil and "" or value_text(r.group[k])) end
    f[#f + 1] = md_escape(("%s − %s"):format(value_text(r.a), value_text(r.b)))
    f[#f + 1] = tostring(r.n)
    f[#f + 1] = num(r.mean_a)
    f[#f + 1] = num(r.mean_b)
    f[#f + 1] = num(r.mean_diff, "%+.4g")
    f[#f + 1] = r.ci95 and ("[%+.4g, %+.4g]"):format(r.mean_diff - r.ci95, r.mean_diff + r.ci95) or "—"
    f[#f + 1] = r.t and ("%.3g (%d)"):format(r.t, r.df) or "—"
    f[#f + 1] = fmt_p(r.p)
    lines[#lines + 1] = "| " .. table.concat(f, " | ") .. " |"
  end
  return table.concat(lines, "\n") .. "\n"
end

--- knnd.results.paired's table as CSV: the strata keys (or the given `keys`: several tables under one
--- header; a key that is no stratum of a row stays empty), metric, by, a, b, n, mean_a, mean_b,
--- mean_diff, ci95, t, df, p. header = false leaves the header line out.
function M.paired_csv(pt, keys, header)
  keys = keys or pt.strata
  local head = {}
  for _, k in ipairs(keys) do head[#head + 1] = csv_field(k) end
  for _, h in ipairs { "metric", "by", "a", "b", "n", "mean_a", "mean_b", "mean_diff", "ci95", "t", "df", "p" } do
    head[#head + 1] = h
  end
  local lines = { header ~= false and table.concat(head, ",") or nil }
  for _, r in ipairs(pt.rows) do
    local f = {}
    for _, k in ipairs(keys) do f[#f + 1] = csv_field(r.group[k]) end
    for _, v in ipairs { r.metric, pt.by, r.a, r.b, r.n, r.mean_a, r.mean_b, r.mean_diff, r.ci95, r.t, r.df, r.p } do
      f[#f + 1] = csv_field(v)
    end
    lines[#lines + 1] = table.concat(f, ",")
  end
  return #lines > 0 and table.concat(lines, "\n") .. "\n" or ""
end

--- one row per run: name, status, duration_s, seed, the config keys that vary, the numeric metrics.
--- Written atomically to path when given; returns the text.
function M.to_csv(runs, path)
  local keys = varying_keys(runs, "seed") -- the seed has its own column
  local metrics = M.metric_names(runs)
  local head = { "name", "status", "duration_s", "seed" }
  for _, k in ipairs(keys) do head[#head + 1] = csv_field(k) end
  for _, m in ipairs(metrics) do head[#head + 1] = csv_field(m) end
  local lines = { table.concat(head, ",") }
  for _, r in ipairs(runs) do
    local f = { csv_field(r.name), csv_field(r.status), csv_field(r.duration_s), csv_field(r.seed) }
    for _, k in ipairs(keys) do f[#f + 1] = csv_field(config.get(r.config or {}, k)) end
    for _, m in ipairs(metrics) do
      local v = r.metrics and r.metrics[m]
      f[#f + 1] = csv_field(type(v) == "number" and v or nil)
    end
    lines[#lines + 1] = table.concat(f, ",")
  end
  local text = table.concat(lines, "\n") .. "\n"
  if path then files.write_atomic(path, text) end
  return text
end

--- rows of strings as an aligned text table (the first row is the header)
function M.text_table(rows)
  local widths = {}
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do widths[i] = math.max(widths[i] or 0, utf8.len(cell) or #cell) end
  end
  local lines = {}
  for r, row in ipairs(rows) do
    local f = {}
    for i, cell in ipairs(row) do f[i] = cell .. (" "):rep(widths[i] - (utf8.len(cell) or #cell)) end
    lines[#lines + 1] = (table.concat(f, "  "):gsub("%s+$", ""))
    if r == 1 then
      local rule = {}
      for i = 1, #row do rule[i] = ("-"):rep(widths[i]) end
      lines[#lines + 1] = table.concat(rule, "  ")
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function fmt_duration(s)
  if type(s) ~= "number" then return "" end
  if s < 60 then return ("%.1f s"):format(s) end
  if s < 3600 then return ("%d:%02d"):format(math.floor(s / 60), math.floor(s % 60)) end
  return ("%d:%02d:%02d"):format(math.floor(s / 3600), math.floor(s % 3600 / 60), math.floor(s % 60))
end

--- the listing `knnd results` prints: name, status, duration and the final metrics of each run
function M.listing(runs)
  local metrics = M.metric_names(runs)
  local rows = { { "name", "status", "duration" } }
  for _, m in ipairs(metrics) do rows[1][#rows[1] + 1] = m end
  local any_error = false
  for _, r in ipairs(runs) do if r.error then any_error = true end end
  if any_error then rows[1][#rows[1] + 1] = "error" end
  for _, r in ipairs(runs) do
    local row = { r.name, tostring(r.status), fmt_duration(r.duration_s) }
    for _, m in ipairs(metrics) do
      local v = r.metrics and r.metrics[m]
      row[#row + 1] = type(v) == "number" and ("%.6g"):format(v) or ""
    end
    if any_error then
      local e = tostring(r.error or ""):gsub("%s+", " ")
      row[#row + 1] = #e > 70 and e:sub(1, 67) .. "..." or e
    end
    rows[#rows + 1] = row
  end
  return M.text_table(rows)
end

return M
