-- config.lua — validated experiment configs: documented defaults (a schema), overrides from the
-- command line (`--set model.channels=96 --set cond.k=5`) or from Lua, checked against the schema;
-- the resolved config is a plain table that serialises to JSON and is saved with every run.
--
--   local C = knnd.config
--   local defaults = {
--     cond  = C.param("knn", "conditioning mode", { values = { "knn", "no_knn", "lafite_noise", "knn_only" } }),
--     k     = C.param(10, "neighbours in the condition", { min = 1, max = 1000 }),
--     lr    = 1e-3,                        -- a plain value: its type is the value's, no constraints
--     model = { channels = C.param(32, "UNet base width", { min = 8 }), mult = { 1, 2 } },
--     data  = C.param(nil, "a prepared dataset (HDF5)", { type = "string" }),  -- may stay nil
--   }
--   local cfg = C.resolve(defaults, { ["model.channels"] = "96", k = 5 })
--
-- Types: number, integer, string, boolean, list (of number | integer | string | boolean), any (a Lua
-- value that cannot come from the command line). Strings from the command line are converted to
-- the key's type ("1,2,3" for a list); Lua values are checked as they are. Every error names the
-- key and what it accepts.
local M = {}

local PARAM = {} -- metatable of param specs: tells a documented leaf from a group of keys

local TYPES = { number = true, integer = true, string = true, boolean = true, list = true, any = true }
local ELEMENT_TYPES = { number = true, integer = true, string = true, boolean = true }
local PARAM_FIELDS = { default = true, doc = true, type = true, values = true, min = true, max = true,
  range = true, of = true }

local function is_list(v)
  return type(v) == "table" and getmetatable(v) == nil and (#v > 0 or next(v) == nil)
end

local function value_type(v)
  local t = type(v)
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "string" or t == "boolean" then return t end
  if is_list(v) then return "list" end
  return "any"
end

-- the element type of a list default: integer when every element is one, else the first's
local function element_type(list)
  if #list == 0 then return "string" end
  local all_int = true
  for _, x in ipairs(list) do if math.type(x) ~= "integer" then all_int = false end end
  if all_int then return "integer" end
  local t = value_type(list[1])
  return ELEMENT_TYPES[t] and t or "string"
end

local function fmt_value(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if is_list(v) then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = tostring(x) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return tostring(v)
end

local function copy(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end
M.copy = copy

--- A documented key: param(default, doc, {type=, values={...}, min=, max=, range={lo, hi}, of=})
--- or param{default=, doc=, type=, ...}. `type` defaults to the default's type; a nil default
--- needs an explicit type and leaves the key nil unless it is set.
function M.param(default, doc, opts)
  if doc == nil and opts == nil and type(default) == "table"
      and getmetatable(default) == nil and #default == 0 then
    local named = false
    for k in pairs(default) do
      if PARAM_FIELDS[k] then named = true
      else error(("knnd.config.param: unknown field '%s' (expected default, doc, type, values, min, max, range, of)"):format(tostring(k)), 2) end
    end
    if named then
      opts = default
      default, doc = opts.default, opts.doc
    end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("knnd.config.param: argument 3 expected a table of constraints, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not PARAM_FIELDS[k] then
      error(("knnd.config.param: unknown constraint '%s' (expected type, values, min, max, range, of)"):format(tostring(k)), 2)
    end
  end
  if doc ~= nil and type(doc) ~= "string" then error("knnd.config.param: argument 2 (doc) expected a string, got " .. type(doc), 2) end
  local ty = opts.type or (default ~= nil and value_type(default)) or nil
  if ty == nil then error("knnd.config.param: a nil default needs an explicit type", 2) end
  if not TYPES[ty] then
    error(("knnd.config.param: unknown type '%s' (expected number, integer, string, boolean, list, any)"):format(tostring(ty)), 2)
  end
  local spec = { default = default, doc = doc, type = ty, values = opts.values, min = opts.min, max = opts.max }
  if opts.range then
    if type(opts.range) ~= "table" or #opts.range ~= 2 then error("knnd.config.param: range expected {lo, hi}", 2) end
    spec.min, spec.max = opts.range[1], opts.range[2]
  end
  if ty == "list" then
    spec.of = opts.of or (type(default) == "table" and element_type(default)) or "string"
    if not ELEMENT_TYPES[spec.of] then
      error(("knnd.config.param: unknown list element type '%s' (expected number, integer, string, boolean)"):format(tostring(spec.of)), 2)
    end
  end
  if spec.values ~= nil and (type(spec.values) ~= "table" or #spec.values == 0) then
    error("knnd.config.param: values expected a non-empty list", 2)
  end
  return setmetatable(spec, PARAM)
end

function M.is_param(v) return getmetatable(v) == PARAM end

-- ---- the schema: defaults flattened to dotted keys ----------------------------------------
local function describe_allowed(spec)
  local ty = spec.type == "list" and ("a list of %s"):format(spec.of == "integer" and "integers" or spec.of .. "s")
    or (spec.type == "integer" and "an integer") or ("a " .. spec.type)
  if spec.values then
    local parts = {}
    for i, v in ipairs(spec.values) do parts[i] = tostring(v) end
    return ("one of %s"):format(table.concat(parts, ", ")), ty
  end
  if spec.min ~= nil and spec.max ~= nil then return ("%s in [%s, %s]"):format(ty, spec.min, spec.max), ty end
  if spec.min ~= nil then return ("%s >= %s"):format(ty, spec.min), ty end
  if spec.max ~= nil then return ("%s <= %s"):format(ty, spec.max), ty end
  return ty, ty
end

-- the leaves of a defaults table: {keys = sorted dotted keys, specs = key -> param, groups = key -> true}
local function compile(defaults, prefix, out)
  out = out or { keys = {}, specs = {}, groups = {} }
  for k, v in pairs(defaults) do
    if type(k) ~= "string" then
      error(("config: keys must be strings, got %s %s in the defaults"):format(type(k), tostring(k)), 0)
    end
    local key = prefix and (prefix .. "." .. k) or k
    if M.is_param(v) then
      out.specs[key] = v
    elseif type(v) == "table" and getmetatable(v) == nil and not is_list(v) then
      out.groups[key] = true
      compile(v, key, out)
    else
      local ty = value_type(v)
      out.specs[key] = setmetatable({ default = v, type = ty, of = ty == "list" and element_type(v) or nil }, PARAM)
    end
  end
  if not prefix then
    for key in pairs(out.specs) do out.keys[#out.keys + 1] = key end
    table.sort(out.keys)
  end
  return out
end

-- ---- conversion and checks ----------------------------------------------------------------
local function parse_scalar(ty, raw)
  if ty == "number" then return tonumber(raw) end
  if ty == "integer" then
    local n = tonumber(raw)
    return n and n == math.floor(n) and math.tointeger(n) or nil
  end
  if ty == "boolean" then
    if raw == "true" or raw == "1" or raw == "yes" then return true end
    if raw == "false" or raw == "0" or raw == "no" then return false end
    return nil
  end
  if ty == "string" then return raw end
end

local function check_scalar(ty, v)
  if ty == "number" then return type(v) == "number" and v or nil end
  if ty == "integer" then return math.type(v) == "integer" and v or (type(v) == "number" and v == math.floor(v) and math.tointeger(v)) or nil end
  if ty == "boolean" then if type(v) == "boolean" then return v end return nil end
  if ty == "string" then return type(v) == "string" and v or nil end
end

local function fail(ctx, fmt, ...)
  error(ctx.prefix .. ": " .. fmt:format(...), 0)
end

-- the value of `key` converted from a command-line string or checked as a Lua value
local function convert(ctx, key, spec, v)
  local noun = ctx.noun
  if v == nil then return nil end
  local from_string = type(v) == "string" and spec.type ~= "string"
  if spec.type == "any" then
    if from_string then fail(ctx, "%s '%s' (a Lua value) cannot be set from the command line", noun, key) end
    return v
  end
  if spec.type == "list" then
    local list = {}
    if from_string then
      for item in (v .. ","):gmatch("([^,]*),") do
        item = item:match("^%s*(.-)%s*$")
        if item ~= "" then list[#list + 1] = item end
      end
    elseif is_list(v) then
      list = copy(v)
    else
      fail(ctx, "%s '%s' expects a list of %ss (a,b,c on the command line); got %s", noun, key, spec.of, fmt_value(v))
    end
    for i, item in ipairs(list) do
      local x = type(item) == "string" and parse_scalar(spec.of, item) or check_scalar(spec.of, item)
      if x == nil then
        fail(ctx, "%s '%s' expects a list of %s; got %s at position %d", noun, key,
          spec.of == "integer" and "integers" or spec.of .. "s", fmt_value(item), i)
      end
      list[i] = x
    end
    return list
  end
  local x
  if type(v) == "string" then x = parse_scalar(spec.type, v) else x = check_scalar(spec.type, v) end
  if x == nil then
    local what = spec.type == "boolean" and "true or false" or (describe_allowed(spec))
    fail(ctx, "%s '%s' expects %s; got %s", noun, key, what, type(v) == "string" and "'" .. v .. "'" or fmt_value(v))
  end
  return x
end

local function check_constraints(ctx, key, spec, v)
  if v == nil then return end
  local items = spec.type == "list" and v or { v }
  for _, x in ipairs(items) do
    if spec.values then
      local ok = false
      for _, a in ipairs(spec.values) do if a == x then ok = true end end
      if not ok then fail(ctx, "%s '%s' expects %s; got %s", ctx.noun, key, (describe_allowed(spec)), fmt_value(x)) end
    end
    if (spec.min ~= nil and x < spec.min) or (spec.max ~= nil and x > spec.max) then
      fail(ctx, "%s '%s' expects %s; got %s", ctx.noun, key, (describe_allowed(spec)), fmt_value(x))
    end
  end
end

-- Levenshtein distance, for "did you mean" on a mistyped key
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:sub(i, i) == b:sub(j, j) and 0 or 1))
    end
    prev = cur
  end
  return prev[#b]
end

local function unknown(ctx, schema, key)
  local best, bd = nil, math.huge
  for _, k in ipairs(schema.keys) do
    local d = distance(key, k)
    if d < bd then best, bd = k, d end
  end
  local hint = (best and bd <= math.max(2, #key // 4)) and (" — did you mean '%s'?"):format(best) or ""
  fail(ctx, "unknown %s '%s'%s (allowed: %s)", ctx.noun, key, hint,
    #schema.keys > 0 and table.concat(schema.keys, ", ") or "none")
end

local function set_path(t, key, value)
  local node = t
  local parts = {}
  for part in key:gmatch("[^%.]+") do parts[#parts + 1] = part end
  for i = 1, #parts - 1 do
    if type(node[parts[i]]) ~= "table" then node[parts[i]] = {} end
    node = node[parts[i]]
  end
  node[parts[#parts]] = value
end
M.set = set_path

--- the value at a dotted key of a nested table (nil when absent)
function M.get(t, key)
  local node = t
  for part in key:gmatch("[^%.]+") do
    if type(node) ~= "table" then return nil end
    node = node[part]
  end
  return node
end

-- overrides, flat ("a.b" = v) or nested ({a = {b = v}}), as a flat list of {key, value}, sorted
local function flatten_overrides(ctx, schema, overrides, prefix, out)
  for k, v in pairs(overrides) do
    local key = prefix and (prefix .. "." .. tostring(k)) or tostring(k)
    if schema.groups[key] and type(v) == "table" and not is_list(v) then
      flatten_overrides(ctx, schema, v, key, out)
    elseif schema.groups[key] then
      local sub = {}
      for _, s in ipairs(schema.keys) do if s:sub(1, #key + 1) == key .. "." then sub[#sub + 1] = s end end
      fail(ctx, "%s '%s' is a group; set its keys (%s)", ctx.noun, key, table.concat(sub, ", "))
    else
      out[#out + 1] = { key, v }
    end
  end
  return out
end

local function context(opts)
  opts = opts or {}
  return { prefix = opts.prefix or "config", noun = opts.noun or "key" }
end

--- keys of a defaults table, sorted (dotted for nested groups)
function M.keys(defaults) return compile(defaults).keys end

--- the spec of every key: {key = {default=, type=, of=, values=, min=, max=, doc=}}
function M.specs(defaults) return compile(defaults).specs end

--- Defaults with overrides applied and checked. overrides: {["a.b"] = "5"} (strings are parsed,
--- as from --set) or Lua values, flat or nested. opts: {prefix = "config" (error prefix), noun = "key"}.
--- Returns a plain nested table (params replaced by their values).
function M.resolve(defaults, overrides, opts)
  local ctx = context(opts)
  if type(defaults) ~= "table" then fail(ctx, "the defaults must be a table, got %s", type(defaults)) end
  if overrides ~= nil and type(overrides) ~= "table" then fail(ctx, "the overrides must be a table, got %s", type(overrides)) end
  local schema = compile(defaults)
  local out = {}
  for _, key in ipairs(schema.keys) do
    local spec = schema.specs[key]
    local v = spec.default
    if v ~= nil and spec.type ~= "any" then
      v = convert(ctx, key, spec, v)
      local dctx = { prefix = ctx.prefix, noun = "the default of " .. ctx.noun }
      check_constraints(dctx, key, spec, v)
    end
    set_path(out, key, copy(v))
  end
  local flat = flatten_overrides(ctx, schema, overrides or {}, nil, {})
  table.sort(flat, function(a, b) return a[1] < b[1] end)
  for _, kv in ipairs(flat) do
    local key, raw = kv[1], kv[2]
    local spec = schema.specs[key]
    if not spec then unknown(ctx, schema, key) end
    local v = convert(ctx, key, spec, raw)
    check_constraints(ctx, key, spec, v)
    set_path(out, key, v)
  end
  return out
end

--- the leaves of a resolved config as {dotted key = value} (lists are leaves)
function M.flatten(t, prefix, out)
  out = out or {}
  for k, v in pairs(t) do
    local key = prefix and (prefix .. "." .. tostring(k)) or tostring(k)
    if type(v) == "table" and not is_list(v) and getmetatable(v) == nil then M.flatten(v, key, out)
    else out[key] = v end
  end
  return out
end

--- a copy that JSON can hold: functions, userdata and other Lua-only values become strings
function M.serialisable(v, seen)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  end
  if t == "string" or t == "boolean" or t == "nil" then return v end
  if t == "table" and getmetatable(v) == nil then
    seen = seen or {}
    if seen[v] then return "<cycle>" end
    seen[v] = true
    local c = {}
    for k, x in pairs(v) do c[type(k) == "number" and k or tostring(k)] = M.serialisable(x, seen) end
    seen[v] = nil
    return c
  end
  return ("<%s>"):format(t)
end

function M.to_json(cfg) return require("knnd.files").json_encode(M.serialisable(cfg)) end

--- the keys with their type, default, allowed values and doc, one per line (for --help texts)
function M.describe(defaults)
  local schema = compile(defaults)
  local lines = {}
  for _, key in ipairs(schema.keys) do
    local spec = schema.specs[key]
    local allowed = describe_allowed(spec)
    lines[#lines + 1] = ("  %-24s %-32s default %s%s"):format(key, allowed,
      spec.default == nil and "nil" or fmt_value(spec.default), spec.doc and ("  — " .. spec.doc) or "")
  end
  return table.concat(lines, "\n")
end

-- ---- overrides from the command line (knnd run|sweep --set k=v) ----------------------------
-- One pool per process: knnd.options and knnd.sweep take the keys they declare; keys nobody took
-- are an error after the script (a typo must not silently run the default experiment).
local cli = { overrides = {}, used = {}, declared = {}, lenient = false }

--- "key=value" strings (the --set options) as {key = value}; an error names a malformed one
function M.parse_sets(list)
  local out = {}
  for _, s in ipairs(list or {}) do
    local key, value = s:match("^([%w_%.%-]+)=(.*)$")
    if not key then error(("--set expects key=value, got '%s'"):format(s), 0) end
    out[key] = value
  end
  return out
end

--- a new pool of overrides; lenient: a declaration takes the keys it knows and leaves the others
--- to a later one (under `knnd sweep`, knnd.options leaves the sweep's keys to knnd.sweep)
function M.set_cli_overrides(t, opts)
  cli.overrides, cli.used, cli.declared = t or {}, {}, {}
  cli.lenient = opts ~= nil and opts.lenient == true
end

function M.cli_lenient() return cli.lenient end

--- keys a declaration (knnd.options) accepts, for the messages about keys nobody took
function M.declare_cli_keys(keys)
  for _, k in ipairs(keys) do cli.declared[#cli.declared + 1] = k end
end

function M.cli_declared_keys() return cli.declared end

--- the pending command-line overrides ({key = string}); mark the ones taken with M.use_cli_override
function M.cli_overrides() return cli.overrides end

function M.use_cli_override(key) cli.used[key] = true end

function M.cli_override_used(key) return cli.used[key] == true end

--- the overrides no declaration took, sorted
function M.unused_cli_overrides()
  local bad = {}
  for key in pairs(cli.overrides) do if not cli.used[key] then bad[#bad + 1] = key end end
  table.sort(bad)
  return bad
end

setmetatable(M, { __call = function(_, defaults, overrides, opts) return M.resolve(defaults, overrides, opts) end })
return M
