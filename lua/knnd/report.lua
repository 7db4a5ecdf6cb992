-- report.lua — knnd.report: result tables (markdown + CSV) and the paper's figures (FID vs
-- parameters among the published systems of eval/baselines/, FID vs k, FID vs guidance).
--
--   local report = knnd.report
--   local rows = { knnd.eval.zero_shot{...}, ... }           -- result rows: name, extractor, fid, ...
--   report.write_table{rows = rows, markdown = "out/results.md", csv = "out/results.csv"}
--   report.fid_vs_params{rows = rows, dataset = "ms-coco", path = "out/fid_vs_params.png"}
--   report.fid_vs{rows = sweep, x = "k", path = "out/fid_vs_k.png"}
--
-- A result row is a table as knnd.eval.zero_shot returns it: name, extractor (the feature
-- extractor id behind fid/kid), fid, kid, kid_std, clip_score, r_precision, and what describes the
-- run (dataset, mode, k, guidance, sampler, steps, n, params = parameter count or params_m).
-- An FID is only comparable to FIDs of the same extractor: the column "FID" holds pytorch-fid's
-- Inception pool3 ("inception-v3-fid/pool3") only; any other extractor gets its own column
-- "FID[<name>]" (knnd.eval.fid_label), and only Inception FIDs on the same dataset are placed among
-- the published systems.
local knnd = require "knnd"
local options = require "knnd.options"

local M = {}

M.INCEPTION = "inception-v3-fid/pool3"

local function fail(fname, fmt, ...)
  error(("knnd.report.%s: " .. fmt):format(fname, ...), 0)
end

local function check_opts(fname, o, allowed) return options.check_keys("knnd.report." .. fname, o, allowed) end

-- the column label of an extractor's metric; knnd.eval's rule, so tables and eval agree
local function metric_label(extractor, metric)
  return require("knnd.eval").fid_label(extractor, metric)
end
M.metric_label = metric_label

-- "MS-COCO", "ms_coco", "mscoco" are one dataset
local function dataset_key(s) return (tostring(s):lower():gsub("[^%w]", "")) end

-- ---- CSV ------------------------------------------------------------------------------------------
-- RFC 4180: fields with a comma, a quote or a line break are quoted, quotes doubled
local function csv_field(v)
  if v == nil then return "" end
  local s = type(v) == "number" and M.format_number(v, true) or tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

--- knnd.report.csv(header, rows) -> the CSV text (rows: lists of values, nil for empty cells)
function M.csv(header, rows)
  local lines = {}
  local function line(values, n)
    local out = {}
    for i = 1, n do out[i] = csv_field(values[i]) end
    lines[#lines + 1] = table.concat(out, ",")
  end
  line(header, #header)
  for _, r in ipairs(rows) do line(r, #header) end
  return table.concat(lines, "\n") .. "\n"
end

--- knnd.report.parse_csv(text [, what]) -> header (list), rows (lists of strings, "" for empty)
--- RFC 4180 with quoted fields; every row must have the header's width
function M.parse_csv(text, what)
  what = what or "CSV"
  local records, record, field, i, n = {}, {}, {}, 1, #text
  local line = 1
  local function end_field() record[#record + 1] = table.concat(field); field = {} end
  local function end_record()
    end_field()
    if not (#record == 1 and record[1] == "") then records[#records + 1] = { cells = record, line = line } end
    record = {}
  end
  while i <= n do
    local c = text:sub(i, i)
    if c == '"' and #field == 0 then
      local j = i + 1
      while true do
        local q = text:find('"', j, true)
        if not q then error(("%s: line %d: a quoted field is not closed"):format(what, line), 0) end
        field[#field + 1] = text:sub(j, q - 1)
        if text:sub(q + 1, q + 1) == '"' then
          field[#field + 1] = '"'
          j = q + 2
        else
          i = q + 1
          break
        end
      end
      local _, nl = table.concat(field):gsub("\n", "")
      line = line + nl
    elseif c == "," then
      end_field()
      i = i + 1
    elseif c == "\n" or c == "\r" then
      end_record()
      line = line + 1
      i = i + ((c == "\r" and text:sub(i + 1, i + 1) == "\n") and 2 or 1)
    else
      local j = text:find('[,\r\n]', i) or n + 1
      field[#field + 1] = text:sub(i, j - 1)
      i = j
    end
  end
  if #field > 0 or #record > 0 then end_record() end
  if #records == 0 then error(("%s: no header line"):format(what), 0) end
  local header = records[1].cells
  local rows = {}
  for r = 2, #records do
    local cells = records[r].cells
    if #cells ~= #header then
      error(("%s: line %d has %d fields (expected %d, as the header)"):format(what, records[r].line, #cells, #header), 0)
    end
    rows[#rows + 1] = cells
  end
  return header, rows
end

--- knnd.report.read_csv(path) -> header, rows (see parse_csv)
function M.read_csv(path)
  local f, err = io.open(path, "rb")
  if not f then error(("cannot read '%s': %s"):format(path, err), 0) end
  local text = f:read("a")
  f:close()
  return M.parse_csv(text, path)
end

-- ---- markdown -------------------------------------------------------------------------------------
--- numbers as a table shows them: integers whole, others with 4 significant digits (full
--- precision with exact = true, for CSV)
function M.format_number(v, exact)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == math.huge or v == -math.huge then return v > 0 and "inf" or "-inf" end
  if exact then return ("%.10g"):format(v) end
  if v == math.floor(v) and math.abs(v) < 1e15 then return ("%d"):format(v) end
  return ("%.4g"):format(v)
end

local function md_cell(v)
  if v == nil then return "" end
  local s = type(v) == "number" and M.format_number(v) or tostring(v)
  return (s:gsub("\\", "\\\\"):gsub("|", "\\|"):gsub("\r?\n", " "))
end

--- knnd.report.markdown_table(header, rows) -> a GitHub-flavoured markdown table (numbers right-aligned)
function M.markdown_table(header, rows)
  local numeric = {}
  for c = 1, #header do
    numeric[c] = #rows > 0
    for _, r in ipairs(rows) do
      local v = r[c]
      if v ~= nil and v ~= "" and type(v) ~= "number" and not tonumber(v) then numeric[c] = false end
    end
  end
  local lines, cells, rule = {}, {}, {}
  for c = 1, #header do
    cells[c] = md_cell(header[c])
    rule[c] = numeric[c] and "---:" or "---"
  end
  lines[1] = "| " .. table.concat(cells, " | ") .. " |"
  lines[2] = "|" .. table.concat(rule, "|") .. "|"
  for _, r in ipairs(rows) do
    cells = {}
    for c = 1, #header do cells[c] = md_cell(r[c]) end
    lines[#lines + 1] = "| " .. table.concat(cells, " | ") .. " |"
  end
  return table.concat(lines, "\n") .. "\n"
end

-- ---- result tables --------------------------------------------------------------------------------
-- what describes a run, in this order, when any row has it
M.RUN_COLUMNS = { "dataset", "mode", "k", "guidance", "sampler", "steps", "n", "params" }
local FEATURE_METRICS = { { key = "fid", label = "FID" }, { key = "kid", label = "KID" },
  { key = "kid_std", label = "KID", suffix = " std" } }
local OTHER_METRICS = { { key = "clip_score", label = "CLIP score" }, { key = "r_precision", label = "R-precision" } }

local function check_rows(fname, rows)
  if type(rows) ~= "table" or #rows == 0 then
    fail(fname, "option 'rows' expected a non-empty list of result rows, got %s",
      type(rows) == "table" and "an empty table" or type(rows))
  end
  for i, r in ipairs(rows) do
    if type(r) ~= "table" then fail(fname, "row %d expected a table, got %s", i, type(r)) end
    local name = r.name or ("row " .. i)
    local has_feature_metric = r.fid ~= nil or r.kid ~= nil
    if has_feature_metric and type(r.extractor) ~= "string" then
      fail(fname, "row '%s' has an FID/KID but no 'extractor' (the feature extractor id, e.g. '%s')", name, M.INCEPTION)
    end
    if r.fid_label and r.extractor and r.fid_label ~= metric_label(r.extractor, "FID") then
      fail(fname, "row '%s' labels its FID '%s' but its extractor '%s' makes it '%s'", name, r.fid_label,
        r.extractor, metric_label(r.extractor, "FID"))
    end
  end
end

--- knnd.report.table(rows [, {columns = RUN_COLUMNS}]) -> {header = {...}, rows = {{...}, ...},
--- keys = {...}}: one line per run name (rows sharing a name merge, e.g. one per extractor; a
--- cell given twice with different values is an error), one column per metric and extractor
--- (keys[c] = "fid@<extractor id>" for feature metrics). Two extractors whose short labels
--- coincide get their full ids as labels, so their numbers never share a column.
function M.table(rows, o)
  o = check_opts("table", o or {}, { "columns" })
  check_rows("table", rows)
  local run_cols = o.columns or M.RUN_COLUMNS
  -- which extractors appear, first seen first
  local extractors, seen = {}, {}
  for _, r in ipairs(rows) do
    if r.extractor and not seen[r.extractor] and (r.fid ~= nil or r.kid ~= nil) then
      seen[r.extractor] = true
      extractors[#extractors + 1] = r.extractor
    end
  end
  local short_count = {}
  for _, ex in ipairs(extractors) do
    local l = metric_label(ex, "FID")
    short_count[l] = (short_count[l] or 0) + 1
  end
  local function label(ex, metric)
    if short_count[metric_label(ex, "FID")] > 1 then return ("%s[%s]"):format(metric, ex) end
    return metric_label(ex, metric)
  end
  -- columns: name, the run's description, then the metrics
  local cols = { { key = "name", label = "name", get = function(r) return r.name end } }
  for _, k in ipairs(run_cols) do
    local present = false
    for _, r in ipairs(rows) do present = present or (r[k] ~= nil or (k == "params" and r.params_m ~= nil)) end
    if present then
      if k == "params" then
        cols[#cols + 1] = { key = "params_m", label = "params (M)", get = function(r)
          return r.params_m or (r.params and r.params / 1e6) end }
      else
        cols[#cols + 1] = { key = k, label = k, get = function(r) return r[k] end }
      end
    end
  end
  for _, ex in ipairs(extractors) do
    for _, m in ipairs(FEATURE_METRICS) do
      local present = false
      for _, r in ipairs(rows) do present = present or (r.extractor == ex and r[m.key] ~= nil) end
      if present then
        cols[#cols + 1] = { key = m.key .. "@" .. ex, label = label(ex, m.label) .. (m.suffix or ""),
          get = function(r) if r.extractor == ex then return r[m.key] end end }
      end
    end
  end
  for _, m in ipairs(OTHER_METRICS) do
    local present = false
    for _, r in ipairs(rows) do present = present or r[m.key] ~= nil end
    if present then cols[#cols + 1] = { key = m.key, label = m.label, get = function(r) return r[m.key] end } end
  end
  -- one line per name
  local out, by_name = {}, {}
  for i, r in ipairs(rows) do
    local name = r.name or ("row " .. i)
    local line = by_name[name]
    if not line then
      line = {}
      by_name[name] = line
      out[#out + 1] = line
    end
    for c, col in ipairs(cols) do
      local v = c == 1 and name or col.get(r)
      if v ~= nil then
        if type(v) ~= "number" and type(v) ~= "string" and type(v) ~= "boolean" then v = tostring(v) end
        if line[c] ~= nil and line[c] ~= v then
          fail("table", "rows named '%s' disagree on '%s' (%s and %s)", name, col.label, tostring(line[c]), tostring(v))
        end
        line[c] = v
      end
    end
  end
  local header, keys = {}, {}
  for c, col in ipairs(cols) do header[c], keys[c] = col.label, col.key end
  return { header = header, rows = out, keys = keys }
end

local write_atomic = require("knnd.files").write_atomic

--- knnd.report.write_table{rows=, markdown= (path), csv= (path), title=, columns=} -> the table
--- (knnd.report.table). Each file is written atomically; the markdown has the title as a heading
--- and a note on what "FID" means.
function M.write_table(o)
  check_opts("write_table", o, { "rows", "markdown", "csv", "title", "columns" })
  if not o.markdown and not o.csv then fail("write_table", "give 'markdown' and/or 'csv' (the files to write)") end
  local t = M.table(o.rows, { columns = o.columns })
  if o.csv then write_atomic(o.csv, M.csv(t.header, t.rows)) end
  if o.markdown then
    local parts = {}
    if o.title then parts[#parts + 1] = "## " .. o.title .. "\n\n" end
    parts[#parts + 1] = M.markdown_table(t.header, t.rows)
    parts[#parts + 1] = ("\nFID: pytorch-fid's Inception-v3 pool3 features (%s); FID[name]: the features of "
      .. "another extractor, not comparable with FID or with each other.\n"):format(M.INCEPTION)
    write_atomic(o.markdown, table.concat(parts))
  end
  return t
end

-- ---- published baselines ----------------------------------------------------------------------
-- eval/baselines/ beside lua/ in the source tree (this file is lua/knnd/report.lua)
local function default_baselines_path()
  local src = debug.getinfo(1, "S").source
  local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/lua/knnd/[^/]+$")
  return (os.getenv("KNND_BASELINES") or ((dir or ".") .. "/eval/baselines/zero_shot_fid.csv"))
end

--- knnd.report.baselines{dataset= (e.g. "ms-coco"; all when nil), path= (default
--- eval/baselines/zero_shot_fid.csv, or $KNND_BASELINES)} -> list of rows {system=, variant=,
--- dataset=, fid= (number), params_m= (number or nil), extractor=, source=, original=, ...}
function M.baselines(o)
  o = check_opts("baselines", o or {}, { "dataset", "path" })
  local path = o.path or default_baselines_path()
  local ok, header, rows = pcall(M.read_csv, path)
  if not ok then fail("baselines", "%s", header) end
  local need = { system = true, dataset = true, fid = true, extractor = true, params_m = true }
  local col = {}
  for c, h in ipairs(header) do col[h] = c end
  for k in pairs(need) do
    if not col[k] then fail("baselines", "'%s' has no column '%s'", path, k) end
  end
  local out, datasets = {}, {}
  for i, cells in ipairs(rows) do
    local r = {}
    for c, h in ipairs(header) do r[h] = cells[c] ~= "" and cells[c] or nil end
    r.fid = tonumber(r.fid)
    if not r.fid then fail("baselines", "'%s' row %d (%s) has no numeric fid", path, i, tostring(r.system)) end
    if r.params_m then
      local p = tonumber(r.params_m)
      if not p then fail("baselines", "'%s' row %d (%s): params_m '%s' is not a number", path, i, r.system, r.params_m) end
      r.params_m = p
    end
    datasets[r.dataset] = true
    if not o.dataset or dataset_key(r.dataset) == dataset_key(o.dataset) then out[#out + 1] = r end
  end
  if o.dataset and #out == 0 then
    local names = {}
    for d in pairs(datasets) do names[#names + 1] = d end
    table.sort(names)
    fail("baselines", "no published FID for dataset '%s' in '%s' (it has %s)", o.dataset, path, table.concat(names, ", "))
  end
  return out
end

-- ---- figures --------------------------------------------------------------------------------------
local function row_params_m(r)
  if r.params_m then return r.params_m end
  if r.params then return r.params / 1e6 end
end

--- knnd.report.fid_vs_params{rows=, dataset=, path=, title=, skip = false, baselines= (rows as
--- knnd.report.baselines returns; default: read for the dataset), logx = true} -> path, skipped
--- Our runs (labelled by name) among the published systems: FID against parameters (millions).
--- Only Inception pool3 FIDs on the same dataset can stand there; any other row is an error
--- naming it, or with skip = true is left out and listed in `skipped` ({name=, reason=}).
function M.fid_vs_params(o)
  local fname = "fid_vs_params"
  check_opts(fname, o, { "rows", "dataset", "path", "title", "skip", "baselines", "logx", "baselines_path" })
  if type(o.path) ~= "string" then fail(fname, "option 'path' is required (the PNG file to write)") end
  if type(o.dataset) ~= "string" then fail(fname, "option 'dataset' is required (e.g. 'ms-coco'): FIDs on different data are not comparable") end
  local rows = o.rows or {}
  local pub = o.baselines or M.baselines { dataset = o.dataset, path = o.baselines_path }
  local ours, skipped = { x = {}, y = {}, labels = {} }, {}
  for i, r in ipairs(rows) do
    local name = r.name or ("row " .. i)
    local reason
    if r.fid == nil then
      reason = "has no FID"
    elseif r.extractor ~= M.INCEPTION then
      reason = ("has %s (extractor '%s'): only Inception pool3 FIDs ('FID', %s) are comparable with the published ones")
        :format(r.extractor and metric_label(r.extractor, "FID") or "an FID of no named extractor", tostring(r.extractor), M.INCEPTION)
    elseif r.dataset == nil or dataset_key(r.dataset) ~= dataset_key(o.dataset) then
      reason = ("is on dataset '%s', not '%s'"):format(tostring(r.dataset), o.dataset)
    elseif not row_params_m(r) then
      reason = "has no parameter count (params or params_m)"
    end
    if reason then
      if not o.skip then fail(fname, "row '%s' %s", name, reason) end
      skipped[#skipped + 1] = { name = name, reason = reason }
      io.stderr:write(("knnd.report.fid_vs_params: left out row '%s': it %s\n"):format(name, reason))
    else
      local n = #ours.x + 1
      ours.x[n], ours.y[n], ours.labels[n] = row_params_m(r), r.fid, name
    end
  end
  local published = { x = {}, y = {}, labels = {} }
  for _, b in ipairs(pub) do
    if b.extractor == M.INCEPTION and b.params_m and dataset_key(b.dataset) == dataset_key(o.dataset) then
      local n = #published.x + 1
      published.x[n], published.y[n] = b.params_m, b.fid
      published.labels[n] = b.system .. (b.variant and b.variant:match("^language%-free") and " (lang.-free)" or "")
    end
  end
  local series = {}
  if #published.x > 0 then series[#series + 1] = { name = "published", x = published.x, y = published.y, labels = published.labels } end
  if #ours.x > 0 then series[#series + 1] = { name = "ours (knnd)", x = ours.x, y = ours.y, labels = ours.labels } end
  if #series == 0 then fail(fname, "nothing to plot: no published system with a parameter count and no row of ours") end
  knnd.scatter { path = o.path, title = o.title or ("zero-shot FID vs parameters (%s)"):format(o.dataset),
    xlabel = "parameters (millions)", ylabel = "FID (Inception pool3)", logx = o.logx ~= false, series = series }
  return o.path, skipped
end

--- knnd.report.fid_vs{rows=, x = "k" | "guidance" | any numeric row field, path=, metric = "fid",
--- extractor= (id; needed when the rows hold several), group = "mode", title=, logx= (default: true
--- for k)} -> path. One line per group (rows sharing row[group]), points sorted by x.
function M.fid_vs(o)
  local fname = "fid_vs"
  check_opts(fname, o, { "rows", "x", "path", "metric", "extractor", "group", "title", "logx" })
  if type(o.path) ~= "string" then fail(fname, "option 'path' is required (the PNG file to write)") end
  if type(o.x) ~= "string" then fail(fname, "option 'x' is required: the row field on the x axis ('k', 'guidance', ...)") end
  check_rows(fname, o.rows)
  local metric, group = o.metric or "fid", o.group or "mode"
  local feature = metric == "fid" or metric == "kid"
  -- one extractor per figure: numbers of two extractors on one axis would invite comparing them
  local extractor = o.extractor
  if feature and not extractor then
    local seen, list = {}, {}
    for _, r in ipairs(o.rows) do
      if r[metric] ~= nil and not seen[r.extractor] then
        seen[r.extractor] = true
        list[#list + 1] = r.extractor
      end
    end
    if #list > 1 then
      fail(fname, "the rows hold %s of %d extractors (%s): choose one with option 'extractor'", metric:upper(), #list,
        table.concat(list, ", "))
    end
    extractor = list[1]
  end
  local groups, order = {}, {}
  for i, r in ipairs(o.rows) do
    local x, y = r[o.x], r[metric]
    if y ~= nil and (not feature or r.extractor == extractor) then
      if type(x) ~= "number" then fail(fname, "row '%s' has %s = %s (expected a number)", r.name or ("row " .. i), o.x, tostring(x)) end
      local g = tostring(r[group] or "run")
      if not groups[g] then
        groups[g] = {}
        order[#order + 1] = g
      end
      table.insert(groups[g], { x, y })
    end
  end
  if #order == 0 then fail(fname, "no row has %s%s", metric, extractor and (" of extractor '" .. extractor .. "'") or "") end
  local series = {}
  for _, g in ipairs(order) do
    local pts = groups[g]
    table.sort(pts, function(a, b) return a[1] < b[1] end)
    local xs, ys = {}, {}
    for i, p in ipairs(pts) do xs[i], ys[i] = p[1], p[2] end
    series[#series + 1] = { name = #order > 1 and g or nil, x = xs, y = ys }
  end
  local ylabel = feature and metric_label(extractor, metric:upper()) or metric
  local logx = o.logx
  if logx == nil then logx = o.x == "k" end
  knnd.plot { path = o.path, title = o.title or ("%s vs %s"):format(ylabel, o.x), xlabel = o.x, ylabel = ylabel,
    logx = logx, series = series }
  return o.path
end

--- knnd.report.plot_sweep(sweep, {x=, metric= (default: the first metric whose name starts with
--- "FID"), path= (relative paths go into the sweep's folder), title=, logx=}) -> path: the mean of a
--- metric over seeds (knnd.sweep's summary) against the config key x, one line per combination of
--- the other varying keys
function M.plot_sweep(sw, o)
  local fname = "plot_sweep"
  check_opts(fname, o, { "x", "metric", "path", "title", "logx" })
  if type(sw) ~= "table" or type(sw.summary) ~= "table" then fail(fname, "argument 1 expected what knnd.sweep returns") end
  if type(o.x) ~= "string" or type(o.path) ~= "string" then fail(fname, "options 'x' and 'path' are required") end
  local agg = sw.summary
  local metric = o.metric
  if not metric then
    for _, m in ipairs(agg.metrics or {}) do if m:match("^FID") then metric = m break end end
  end
  if not metric then fail(fname, "no metric named FID... in the sweep: give option 'metric'") end
  local groups, order = {}, {}
  for _, row in ipairs(agg.rows) do
    local xv = tonumber(row.group[o.x])
    local st = row.stats[metric]
    if xv == nil then fail(fname, "the sweep does not vary '%s' (its keys: %s)", o.x, table.concat(agg.by or {}, ", ")) end
    if st and st.mean then
      local parts = {}
      for _, k in ipairs(agg.by) do if k ~= o.x then parts[#parts + 1] = ("%s=%s"):format(k, tostring(row.group[k])) end end
      local name = #parts > 0 and table.concat(parts, ",") or metric
      if not groups[name] then groups[name] = { name = name, pts = {} }; order[#order + 1] = name end
      local g = groups[name]
      g.pts[#g.pts + 1] = { xv, st.mean }
    end
  end
  if #order == 0 then fail(fname, "no finished run has '%s'", metric) end
  local series = {}
  for _, name in ipairs(order) do
    local g = groups[name]
    table.sort(g.pts, function(a, b) return a[1] < b[1] end)
    local xs, ys = {}, {}
    for i, p in ipairs(g.pts) do xs[i], ys[i] = p[1], p[2] end
    series[#series + 1] = { name = name, x = xs, y = ys }
  end
  local path = o.path:sub(1, 1) == "/" and o.path or (sw.dir .. "/" .. o.path)
  knnd.plot { path = path, title = o.title or ("%s against %s"):format(metric, o.x), xlabel = o.x,
    ylabel = metric .. " (mean over seeds)", series = series, logx = o.logx == nil and o.x == "k" or o.logx }
  return path
end

--- knnd.report.plot_groups(sw, {by=, metrics = {...}, path=, title=, ylabel=}) -> the PNG's path: for a sweep
--- whose axis `by` is categorical (mode, align, backbone), each group's mean of every metric with its 95%
--- confidence interval over seeds as an error bar (none with one seed), one marker per metric, the group's
--- value written beside it. path relative to the sweep's folder unless absolute.
function M.plot_groups(sw, o)
  local fname = "plot_groups"
  check_opts(fname, o, { "by", "metrics", "path", "title", "ylabel" })
  if type(sw) ~= "table" or type(sw.summary) ~= "table" then fail(fname, "argument 1 expected what knnd.sweep returns") end
  if type(o.by) ~= "string" or type(o.path) ~= "string" then fail(fname, "options 'by' and 'path' are required") end
  if type(o.metrics) ~= "table" or #o.metrics == 0 then fail(fname, "option 'metrics' expected a non-empty list of names") end
  local agg = sw.summary
  local groups, at = {}, {}
  for _, row in ipairs(agg.rows) do
    local g = row.group[o.by]
    if g == nil then fail(fname, "the sweep does not vary '%s' (its keys: %s)", o.by, table.concat(agg.by or {}, ", ")) end
    g = tostring(g)
    if not at[g] then groups[#groups + 1] = g; at[g] = #groups end
  end
  local series, n_metrics = {}, #o.metrics
  for mi, metric in ipairs(o.metrics) do
    local xs, ys, errs, labels = {}, {}, {}, {}
    for _, row in ipairs(agg.rows) do
      local st = row.stats[metric]
      if st and st.mean then
        local gi = at[tostring(row.group[o.by])]
        -- the metrics of one group side by side around its position
        xs[#xs + 1] = gi + (mi - (n_metrics + 1) / 2) * 0.12
        ys[#ys + 1] = st.mean
        errs[#errs + 1] = st.ci95 or 0
        labels[#labels + 1] = mi == n_metrics and tostring(row.group[o.by]) or false -- right of the group
      end
    end
    if #xs > 0 then series[#series + 1] = { name = metric, x = xs, y = ys, err = errs, labels = labels } end
  end
  if #series == 0 then fail(fname, "no finished run has any of %s", table.concat(o.metrics, ", ")) end
  local path = o.path:sub(1, 1) == "/" and o.path or (sw.dir .. "/" .. o.path)
  knnd.scatter { path = path, title = o.title or ("by %s: mean ± CI95 over seeds"):format(o.by), xlabel = ("%s (%s)"):format(o.by, table.concat(groups, ", ")), ylabel = o.ylabel or "mean over seeds",
    series = series }
  return path
end

return M
