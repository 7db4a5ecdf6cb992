-- cliutil.lua — what the knnd subcommands (lua/knnd/commands/*.lua) share: argparse value
-- converters that name the option in their error, and a file test.
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

return M
