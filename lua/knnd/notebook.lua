-- notebook.lua — knnd.notebook: a results folder as a Jupyter notebook (nbformat 4.5), the logic
-- behind `knnd export-notebook RESULTS_DIR -o report.ipynb` (notebooks-export/README.md).
--
--   knnd.notebook.export("runs/quickstart", "runs/quickstart/report.ipynb")
--
-- The folder's config (config.json, config.lua, or the "config" of metrics.json), every
-- metrics.json flattened into a table, every *.csv as a table, every PNG embedded as a
-- display_data output (base64), then each subfolder (one level) as its own section. Nothing runs
-- in the notebook: it is a self-contained report that Jupyter, VS Code or GitHub show as is.
local knnd = require "knnd"
local report = require "knnd.report"
local files = require "knnd.files"
local encode_sorted = files.json_encode -- sorted keys: the same folder gives the same file

local M = {}

local function fail(fmt, ...)
  error(("knnd.notebook.export: " .. fmt):format(...), 0)
end

-- ---- base64 (RFC 4648) --------------------------------------------------------------------------
-- Debian's lua-basexx installs for Lua 5.1/5.2 only and encodes through a string of bits (about
-- 4 s per MB); a table of the 4096 two-letter pairs encodes 12 bits per lookup.
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local PAIRS = {}
for v = 0, 4095 do
  PAIRS[v] = ALPHABET:sub((v >> 6) + 1, (v >> 6) + 1) .. ALPHABET:sub((v & 63) + 1, (v & 63) + 1)
end

--- knnd.notebook.base64(bytes) -> the standard base64 text (with '=' padding, no line breaks)
function M.base64(s)
  local n, out, k = #s, {}, 0
  local full = n - n % 3
  for i = 1, full, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = (a << 16) | (b << 8) | c
    out[k + 1], out[k + 2] = PAIRS[v >> 12], PAIRS[v & 4095]
    k = k + 2
  end
  local rest = n - full
  if rest > 0 then
    local a, b = s:byte(full + 1, n)
    local v = (a << 16) | ((b or 0) << 8)
    local text = PAIRS[v >> 12] .. PAIRS[v & 4095]
    out[k + 1] = text:sub(1, rest + 1) .. ("="):rep(3 - rest)
  end
  return table.concat(out)
end

-- ---- the folder ---------------------------------------------------------------------------------
local shell_quote, is_dir = files.shell_quote, files.is_dir

-- entries of a folder, sorted by name: {name=, dir=true|false, size=} (GNU find; NUL-separated so
-- any file name survives)
local function list_dir(dir)
  local p = io.popen(("find %s -mindepth 1 -maxdepth 1 -printf '%%Y\\t%%s\\t%%f\\0' 2>/dev/null"):format(shell_quote(dir)))
  local text = p:read("a")
  p:close()
  local out = {}
  for y, size, name in text:gmatch("(%a)\t(%d+)\t([^%z]+)%z") do
    out[#out + 1] = { name = name, dir = y == "d", size = tonumber(size) }
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

local function human_size(n)
  if n < 1024 then return ("%d B"):format(n) end
  local units, u = { "KB", "MB", "GB", "TB" }, 0
  repeat
    n = n / 1024
    u = u + 1
  until n < 1024 or u == #units
  return ("%.1f %s"):format(n, units[u])
end

-- ---- cells ----------------------------------------------------------------------------------------
local OBJECT = { __jsontype = "object" }
local ARRAY = { __jsontype = "array" }

local Builder = {}
Builder.__index = Builder

local function builder()
  return setmetatable({ cells = {} }, Builder)
end

function Builder:markdown(text)
  self.cells[#self.cells + 1] = { cell_type = "markdown", id = ("cell-%d"):format(#self.cells + 1),
    metadata = setmetatable({}, OBJECT), source = text }
end

function Builder:image(rel, bytes)
  self.cells[#self.cells + 1] = { cell_type = "code", id = ("cell-%d"):format(#self.cells + 1),
    metadata = setmetatable({}, OBJECT), execution_count = require("dkjson").null, source = ("# %s (embedded below)"):format(rel),
    outputs = setmetatable({ { output_type = "display_data", metadata = setmetatable({}, OBJECT),
      data = { ["image/png"] = M.base64(bytes), ["text/plain"] = ("<image %s>"):format(rel) } } }, ARRAY) }
end

-- "a.b.c" = scalar for every leaf of nested JSON; short lists of scalars stay one value
local function flatten(v, prefix, out)
  if type(v) ~= "table" then
    out[#out + 1] = { prefix, v }
    return out
  end
  local n = #v
  if n > 0 then
    local scalars = n <= 16
    for i = 1, n do scalars = scalars and type(v[i]) ~= "table" end
    if scalars then
      local parts = {}
      for i = 1, n do parts[i] = type(v[i]) == "number" and report.format_number(v[i]) or tostring(v[i]) end
      out[#out + 1] = { prefix, "[" .. table.concat(parts, ", ") .. "]" }
      return out
    end
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  if #keys == 0 then out[#out + 1] = { prefix, "{}" } end
  for _, k in ipairs(keys) do flatten(v[k], prefix == "" and tostring(k) or (prefix .. "." .. tostring(k)), out) end
  return out
end
M.flatten = flatten

local function decode_json(text, what)
  local json = require "dkjson"
  local v, _, err = json.decode(text, 1, nil)
  if err then return nil, ("%s: %s"):format(what, err) end
  return v
end

local function fenced(lang, text)
  return ("```%s\n%s%s```\n"):format(lang, text, text:sub(-1) == "\n" and "" or "\n")
end

-- the sections of one folder, headings at level h; returns how many items it showed
local function add_folder(nb, root, rel, h, o, subfolders)
  local dir = rel == "" and root or (root .. "/" .. rel)
  local entries = list_dir(dir)
  local shown = 0
  local prefix = rel == "" and "" or (rel .. "/")
  local hashes = ("#"):rep(h)
  local by_name, others, dirs = {}, {}, {}
  for _, e in ipairs(entries) do by_name[e.name] = e end

  -- the config: config.json, config.lua, else the "config" of metrics.json
  local metrics, metrics_err
  if by_name["metrics.json"] and not by_name["metrics.json"].dir then
    local text, err = read_file(dir .. "/metrics.json")
    if text then metrics, metrics_err = decode_json(text, prefix .. "metrics.json") else metrics_err = err end
    if metrics ~= nil and type(metrics) ~= "table" then metrics = { value = metrics } end
  end
  local config_done = false
  for _, cfg in ipairs({ { "config.json", "json" }, { "config.lua", "lua" } }) do
    local e = by_name[cfg[1]]
    if e and not e.dir then
      local text = read_file(dir .. "/" .. cfg[1]) or ""
      if cfg[2] == "json" then
        local v = decode_json(text, prefix .. cfg[1])
        if type(v) == "table" then text = encode_sorted(v) end
      end
      nb:markdown(("%s Config (`%s`)\n\n%s"):format(hashes, prefix .. cfg[1], fenced(cfg[2], text)))
      shown, config_done = shown + 1, true
      e.used = true
    end
  end
  if not config_done and type(metrics) == "table" and type(metrics.config) == "table" then
    nb:markdown(("%s Config (the `config` of `%smetrics.json`)\n\n%s"):format(hashes, prefix,
      fenced("json", encode_sorted(metrics.config))))
    shown = shown + 1
  end

  -- metrics.json: every other value, flattened
  if by_name["metrics.json"] and not by_name["metrics.json"].dir then
    by_name["metrics.json"].used = true
    local body
    if metrics_err then
      body = ("could not read it: %s\n"):format(metrics_err)
    else
      local m = {}
      for k, v in pairs(metrics) do if k ~= "config" then m[k] = v end end
      local rows = {}
      for _, kv in ipairs(flatten(m, "", {})) do rows[#rows + 1] = { kv[1], kv[2] } end
      body = #rows > 0 and report.markdown_table({ "metric", "value" }, rows) or "(no values besides the config)\n"
    end
    nb:markdown(("%s Metrics (`%smetrics.json`)\n\n%s"):format(hashes, prefix, body))
    shown = shown + 1
  end

  -- every other JSON document, CSV and PNG, in name order
  for _, e in ipairs(entries) do
    local path, name = dir .. "/" .. e.name, prefix .. e.name
    local lower = e.name:lower()
    if e.dir then
      dirs[#dirs + 1] = e
    elseif e.used then
      -- shown above
    elseif lower:match("%.csv$") then
      local ok, header, rows = pcall(report.read_csv, path)
      local body
      if not ok then
        body = ("could not read it: %s\n"):format(header)
      else
        local n, note = #rows, ""
        if n > o.max_rows then
          local keep, half = {}, o.max_rows // 2
          for i = 1, half do keep[#keep + 1] = rows[i] end
          local gap = {}
          for c = 1, #header do gap[c] = c == 1 and ("... %d rows ..."):format(n - 2 * half) or "" end
          keep[#keep + 1] = gap
          for i = n - half + 1, n do keep[#keep + 1] = rows[i] end
          rows = keep
          note = ("\n%d rows; the first and last %d shown.\n"):format(n, half)
        end
        body = report.markdown_table(header, rows) .. note
      end
      nb:markdown(("%s `%s`\n\n%s"):format(hashes, name, body))
      shown = shown + 1
    elseif lower:match("%.png$") then
      local bytes, err = read_file(path)
      if bytes and bytes:sub(1, 8) == "\137PNG\r\n\26\n" and #bytes <= o.max_image_bytes then
        nb:markdown(("%s `%s`"):format(hashes, name))
        nb:image(name, bytes)
      else
        nb:markdown(("%s `%s`\n\nnot embedded: %s"):format(hashes, name, not bytes and err
          or (#bytes > o.max_image_bytes and ("%s, over the %s limit"):format(human_size(#bytes), human_size(o.max_image_bytes)))
          or "not a PNG file"))
      end
      shown = shown + 1
    elseif lower:match("%.json$") then
      local text = read_file(path) or ""
      local v, err = decode_json(text, name)
      local body
      if err then
        body = ("could not read it: %s\n"):format(err)
      else
        local rows = {}
        for _, kv in ipairs(flatten(v, "", {})) do rows[#rows + 1] = { kv[1], kv[2] } end
        body = report.markdown_table({ "key", "value" }, rows)
      end
      nb:markdown(("%s `%s`\n\n%s"):format(hashes, name, body))
      shown = shown + 1
    elseif lower:match("%.md$") and e.size <= 1 << 20 then
      nb:markdown(read_file(path) or "")
      shown = shown + 1
    else
      others[#others + 1] = e
    end
  end
  if #others > 0 or (#dirs > 0 and not subfolders) then
    local lines = {}
    for _, e in ipairs(others) do lines[#lines + 1] = ("- `%s` (%s)"):format(prefix .. e.name, human_size(e.size)) end
    if not subfolders then
      for _, e in ipairs(dirs) do lines[#lines + 1] = ("- `%s/` (folder, not exported)"):format(prefix .. e.name) end
    end
    nb:markdown(("%s Other files\n\n%s\n"):format(hashes, table.concat(lines, "\n")))
  end
  return shown, dirs
end

--- knnd.notebook.build(results_dir [, {max_rows = 40, max_image_bytes = 20 MB, title=}]) -> the
--- notebook as a Lua table (nbformat 4.5)
function M.build(dir, o)
  o = o or {}
  if type(dir) ~= "string" or dir == "" then fail("argument 1 expected the results folder, got %s", tostring(dir)) end
  dir = dir:gsub("/+$", "")
  if dir == "" then dir = "/" end
  if not is_dir(dir) then fail("'%s' is not a folder (expected a results folder, e.g. runs/quickstart)", dir) end
  local opts = { max_rows = o.max_rows or 40, max_image_bytes = o.max_image_bytes or 20 * 1024 * 1024 }
  local nb = builder()
  local name = dir:match("([^/]+)$") or dir
  nb:markdown(("# %s\n\nResults folder `%s`, exported by `knnd export-notebook` (knnd %s).\n"):format(
    o.title or name, dir, knnd.version()))
  local shown, dirs = add_folder(nb, dir, "", 2, opts, true)
  for _, d in ipairs(dirs) do
    local mark = #nb.cells
    nb:markdown(("## %s\n\nThe subfolder `%s/`.\n"):format(d.name, d.name))
    local n = add_folder(nb, dir, d.name, 3, opts, false)
    if n == 0 and #nb.cells == mark + 1 then
      table.remove(nb.cells) -- an empty subfolder: no section
    end
    shown = shown + n
  end
  if shown == 0 then
    local entries = list_dir(dir)
    fail("'%s' %s (expected a results folder: metrics.json, config, *.csv or *.png, or run subfolders holding them)",
      dir, #entries == 0 and "is empty" or "has no results to show")
  end
  for i, c in ipairs(nb.cells) do c.id = ("cell-%d"):format(i) end
  return {
    cells = nb.cells,
    metadata = {
      kernelspec = { name = "python3", display_name = "Python 3", language = "python" },
      language_info = { name = "python" },
      knnd = { results_dir = dir, exported_by = "knnd export-notebook", version = knnd.version() },
    },
    nbformat = 4,
    nbformat_minor = 5,
  }
end

--- knnd.notebook.export(results_dir, out_path [, opts as build]) -> out_path, the number of cells.
--- The notebook is written atomically (a temporary file renamed into place).
function M.export(dir, out, o)
  if type(out) ~= "string" or out == "" then fail("argument 2 expected the notebook file to write, got %s", tostring(out)) end
  local nb = M.build(dir, o)
  local text = encode_sorted(nb)
  local ok, err = pcall(files.write_atomic, out, text .. "\n")
  if not ok then fail("%s", err) end
  return out, #nb.cells
end

return M
