-- options.lua — a script's options with command-line overrides (`knnd run s.lua --set k=v`).
--
--   local opt = knnd.options{steps = 300, lr = 1e-3, model = {channels = 32}}
--
-- returns the defaults with the --set overrides applied. The defaults are a knnd.config schema
-- (plain values, or knnd.config.param(...) for documented keys with allowed values or ranges);
-- overrides are converted to the type of the default; an unknown key or a wrong value is an error
-- naming the key and what it accepts.
local config = require "knnd.config"

local M = {}

--- {key = "value"} from the command line (cli.lua); a new pool each run (opts: {lenient = true}
--- under `knnd sweep`, see knnd.config.set_cli_overrides)
function M.set_overrides(t, opts) config.set_cli_overrides(t, opts) end

--- Defaults with the command-line overrides applied.
function M.declare(defaults)
  if type(defaults) ~= "table" then
    error("knnd.options: argument 1 expected a table of defaults, got " .. type(defaults), 2)
  end
  local overrides = config.cli_overrides()
  local keys = config.keys(defaults)
  config.declare_cli_keys(keys)
  if config.cli_lenient() then
    -- under `knnd sweep` the keys this script does not declare are the sweep's
    local known, mine = {}, {}
    for _, k in ipairs(keys) do known[k] = true end
    for k, v in pairs(overrides) do if known[k] then mine[k] = v end end
    overrides = mine
  end
  local result = config.resolve(defaults, overrides, { prefix = "knnd.options", noun = "option" })
  for key in pairs(overrides) do config.use_cli_override(key) end
  return result
end

--- After a run: overrides that no declaration consumed are an error (a typo must not silently
--- run the default experiment).
function M.check_unused()
  local bad = config.unused_cli_overrides()
  if #bad > 0 then
    error(("--set %s: the script declares no such option (use knnd.options{...} in the script)")
      :format(table.concat(bad, ", ")), 0)
  end
end

--- knnd.options.check_keys(fname, t, allowed[, how]) -> t: the options table t of the function fname
--- (e.g. "knnd.eval.fid") may hold only the keys in allowed (a list of names, or a set
--- {name = anything but nil}); otherwise an error "fname: unknown option 'x' (expected a, b, c)".
--- how (optional): {optional = true} lets t be nil (then {} is returned); {what = "cond key"} names the
--- keys in the message instead of "option". The one copy of the check every knnd.* module uses.
function M.check_keys(fname, t, allowed, how)
  local what = how and how.what or "option"
  if t == nil and how and how.optional then return {} end
  if type(t) ~= "table" then error(("%s: expected a table of %ss, got %s"):format(fname, what, type(t)), 0) end
  local set = allowed
  if allowed[1] ~= nil then
    set = {}
    for _, k in ipairs(allowed) do set[k] = true end
  end
  for k in pairs(t) do
    if set[k] == nil then
      local names = {}
      for n in pairs(set) do names[#names + 1] = n end
      table.sort(names)
      error(("%s: unknown %s '%s' (expected %s)"):format(fname, what, tostring(k), table.concat(names, ", ")), 0)
    end
  end
  return t
end

setmetatable(M, { __call = function(_, defaults) return M.declare(defaults) end })
return M
