-- cliutil.lua — what the knnd subcommands (lua/knnd/commands/*.lua) share: argparse value
-- converters that name the option in their error, a file test, and running a user's script.
local M = {}

--- an argparse :convert() function accepting positive integers only
function M.positive_int(what)
  return function(s)
    local n = math.tointeger(tonumber(s))
    if not n or n < 1 then return nil, ("%s expects a positive integer, got '%s'"):format(what, s) end
    return n
  end
end

--- an argparse :convert() function accepting any number
function M.number(what)
  return function(s)
    local n = tonumber(s)
    if not n then return nil, ("%s expects a number, got '%s'"):format(what, s) end
    return n
  end
end

function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- run a Lua script as `knnd run` does: arg = {[0] = path, args...}, the arguments also passed as
--- `...`; an error is raised again as a plain message (with a traceback when KNND_TRACEBACK is set)
function M.run_script(path, args)
  local chunk, err = loadfile(path)
  if not chunk then
    error(("cannot load script: %s"):format(err), 0)
  end
  _G.arg = { [0] = path }
  for i, v in ipairs(args or {}) do _G.arg[i] = v end
  local ok, rerr = xpcall(chunk, function(e)
    if os.getenv("KNND_TRACEBACK") then return debug.traceback(tostring(e), 2) end
    return tostring(e)
  end, table.unpack(_G.arg))
  if not ok then
    error(rerr, 0)
  end
end

return M
