-- options.lua — a script's options with command-line overrides (`knnd run s.lua --set k=v`).
--
--   local opt = knnd.options{steps = 300, lr = 1e-3, model = {channels = 32}}
--
-- returns the defaults with the --set overrides applied. Overrides are converted to the type of
-- the default; an unknown key or an unconvertible value is an error naming the key and the
-- options the script accepts (the full validated config system is the experiments issue's).
local M = {}

local overrides, used = {}, {}

function M.set_overrides(t)
  overrides, used = t or {}, {}
end

local function flatten(t, prefix, out)
  for k, v in pairs(t) do
    local key = prefix and (prefix .. "." .. k) or tostring(k)
    if type(v) == "table" and next(v) ~= nil and #v == 0 then
      flatten(v, key, out)
    else
      out[key] = v
    end
  end
  return out
end

local function convert(key, raw, default)
  local ty = type(default)
  if ty == "number" then
    local n = tonumber(raw)
    if not n then error(("option '%s' expects a number, got '%s'"):format(key, raw), 3) end
    if math.type(default) == "integer" then
      if n ~= math.floor(n) then error(("option '%s' expects an integer, got '%s'"):format(key, raw), 3) end
      n = math.tointeger(n)
    end
    return n
  elseif ty == "boolean" then
    if raw == "true" or raw == "1" or raw == "yes" then return true end
    if raw == "false" or raw == "0" or raw == "no" then return false end
    error(("option '%s' expects true or false, got '%s'"):format(key, raw), 3)
  elseif ty == "string" then
    return raw
  end
  error(("option '%s' (a %s) cannot be set from the command line"):format(key, ty), 3)
end

local function set_path(t, key, value)
  local node = t
  local parts = {}
  for part in key:gmatch("[^%.]+") do parts[#parts + 1] = part end
  for i = 1, #parts - 1 do node = node[parts[i]] end
  node[parts[#parts]] = value
end

local function deep_copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = deep_copy(v) end
  return c
end

--- Defaults with the command-line overrides applied.
function M.declare(defaults)
  if type(defaults) ~= "table" then
    error("knnd.options: argument 1 expected a table of defaults, got " .. type(defaults), 2)
  end
  local flat = flatten(defaults, nil, {})
  local result = deep_copy(defaults)
  local keys = {}
  for k in pairs(flat) do keys[#keys + 1] = k end
  table.sort(keys)
  for key, raw in pairs(overrides) do
    if flat[key] == nil then
      error(("knnd.options: unknown option '%s' (this script accepts: %s)"):format(key, table.concat(keys, ", ")), 2)
    end
    set_path(result, key, convert(key, raw, flat[key]))
    used[key] = true
  end
  return result
end

--- After a run: overrides that no knnd.options call consumed are an error (a typo must not
--- silently run the default experiment).
function M.check_unused()
  local bad = {}
  for key in pairs(overrides) do
    if not used[key] then bad[#bad + 1] = key end
  end
  if #bad > 0 then
    table.sort(bad)
    error(("--set %s: the script declares no such option (use knnd.options{...} in the script)")
      :format(table.concat(bad, ", ")), 0)
  end
end

setmetatable(M, { __call = function(_, defaults) return M.declare(defaults) end })
return M
